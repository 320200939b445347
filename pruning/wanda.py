"""Wanda pruning (arXiv 2306.11695) and two magnitude baselines for every GPT of this repository.

    python pruning/wanda.py --ckpt logs/gpt2-gpt2-124m/model_19073.pt --data data/edu_fineweb10B --out pruned.pt
    python pruning/wanda.py --hf gpt2 --data data/edu_fineweb10B --nm 2:4 --method magnitude-layer

The command line of pruning/methods.py (described below), which this module re-exports (prune_wanda,
prune_magnitude, PRUNERS).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.evaluator import add_hellaswag_args
from evaluation.report import describe_block, read_report
from pruning import methods
from pruning.common import Setup, add_setup_args, check_setup
from pruning.masks import check_pruning_args, parse_nm
from pruning.methods import GROUPS, PRUNERS, prune_magnitude, prune_wanda
from utils.checkpoint import save_checkpoint
from utils.cli import ArgumentParser, UserError, check_output_path, finite_float, run_main
from utils.io import atomic_write_json, check_space, fmt
from utils.rundir import checkpoint_step, holds_run

__all__ = ["GROUPS", "PRUNERS", "main", "parse_nm", "prune_magnitude", "prune_wanda"]
PROG = "wanda.py"
DEPRECATED_METHODS = {"magnitude": "magnitude-row"}


def parse_args(argv=None) -> argparse.Namespace:
    ap = ArgumentParser(prog=PROG, description=f"{__doc__}\n{methods.__doc__}",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_setup_args(ap)
    ap.add_argument("--method", choices=[*PRUNERS, *DEPRECATED_METHODS], default="wanda",
                    help="wanda (default), magnitude-layer (the paper's baseline), magnitude-row; "
                         "'magnitude' is a deprecated name of magnitude-row")
    ap.add_argument("--sparsity", type=finite_float, default=None, help="unstructured (default 0.5)")
    ap.add_argument("--nm", help="N:M semi-structured sparsity instead, e.g. 2:4 or 4:8")
    add_hellaswag_args(ap)
    ap.add_argument("--out", help="write the pruned checkpoint here")
    ap.add_argument("--force", action="store_true", help="overwrite an existing --out / --json")
    ap.add_argument("--json", help="write the report (evaluation/report.py schema) here")
    ap.add_argument("--before-json", metavar="REPORT",
                    help="reuse the dense numbers of an earlier report (wanda.py, sweep.py or test_gpt.py) of "
                         "the same checkpoint and evaluation settings instead of recomputing them")
    return ap.parse_args(argv)


def validate(args) -> None:
    if args.method in DEPRECATED_METHODS:
        new = DEPRECATED_METHODS[args.method]
        print(f"{PROG}: warning: --method {args.method} is deprecated, it means {new} (per output row); "
              f"the paper's baseline is magnitude-layer", file=sys.stderr)
        args.method = new
    if args.nm is not None and args.sparsity is not None:
        raise UserError("give either --sparsity or --nm, not both (N:M sets the sparsity to N/M)")
    args.sparsity = 0.5 if args.sparsity is None else args.sparsity
    try:
        args.nm = parse_nm(args.nm) if args.nm is not None else None
        check_pruning_args(args.sparsity, args.nm)
    except ValueError as e:
        raise UserError(str(e)) from e
    inputs = (args.ckpt, args.before_json, args.hellaswag)
    for flag in ("out", "json"):
        check_output_path(getattr(args, flag), f"--{flag}", force=args.force, inputs=inputs)
    if args.out and checkpoint_step(args.out) is not None and holds_run(Path(args.out).parent):
        raise UserError(f"--out {args.out} would pass for a training checkpoint of the run in "
                        f"{Path(args.out).parent} (a resume would set it aside); choose another name")
    if args.out and args.json and Path(args.out).resolve() == Path(args.json).resolve():
        raise UserError("--out and --json must be different files")
    if args.before_json:
        read_report(args.before_json)  # unreadable: fail now, not after loading the model
    check_setup(args)


def print_summary(report: dict) -> None:
    p, before, after = report["pruning"], report["before"], report["after"]
    setting = f"{p['nm'][0]}:{p['nm'][1]}" if p["nm"] else f"sparsity {p['sparsity']:g}"
    print(f"\n{p['method']} pruning ({p['mask_groups']}), {setting}, {p['pruned_layers']} layers pruned, "
          f"{p['skipped_layers']} left dense")
    print(f"{'':28}{'before':>16}{'after':>16}")
    rows = [("total params", "params_total", ",d"), ("nonzero params", "params_nonzero", ",d"),
            ("val loss", "val_loss", ".4f"), ("perplexity", "perplexity", ".2f")]
    for label, key, spec in rows:
        print(f"{label:28}{fmt(before[key], spec):>16}{fmt(after[key], spec):>16}")
    for conv in after["hellaswag"]:
        print(f"{'HellaSwag acc_norm [' + conv + ']':28}"
              f"{fmt(before['hellaswag'].get(conv, {}).get('acc_norm'), '.4f'):>16}"
              f"{after['hellaswag'][conv]['acc_norm']:>16.4f}")
    print("\nper-layer sparsity")
    width = max(len(e["name"]) for e in report["layers"])
    for e in report["layers"]:
        shape = "x".join(map(str, e["shape"]))
        note = "" if e["pruned"] else f"  dense: {e['reason']}"
        print(f"  {e['name']:<{width}} {shape:>11} {e['sparsity']:7.2%}{note}")


def main(argv=None) -> None:
    args = parse_args(argv)
    validate(args)
    setup = Setup(args)
    setup.check_prunable(args.method, args.sparsity, args.nm)
    if args.out:
        check_space(args.out, sum(p.numel() * p.element_size() for p in setup.model.parameters()), "--out")
    before, before_s = (setup.reusable_dense(args.before_json), 0.0) if args.before_json else setup.evaluate()
    print(f"dense: {describe_block(before)}")
    report, result = setup.prune(args.method, args.sparsity, args.nm, before, before_s)
    print_summary(report)
    if args.out:
        h = setup.header  # parent: the weights this pass started from
        lineage = {k: v for k, v in (("step", h["step"]), ("trained_on", h["trained_on"]),
                                     ("train_seed", h["train_seed"]), ("run_id", h["run_id"]),
                                     ("parent", h["fingerprint"]), ("data_id", setup.eval["data_id"]),
                                     ("earlier_pruning", setup.pruned_before or None)) if v is not None}
        save_checkpoint(args.out, setup.model, kind="gpt", model_name=setup.header["model"], **lineage,
                        val_loss=report["after"]["val_loss"], pruning=copy.deepcopy(result))
        print(f"pruned checkpoint: {args.out}")
    if args.json:
        atomic_write_json(args.json, report)
        print(f"report: {args.json}")


if __name__ == "__main__":
    run_main(main, PROG)
