"""The command line of pruning/wanda.py (see its docstring), and the setup pruning/sweep.py shares."""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

from pruning.masks import block_linears, check_pruning_args, parse_nm, skip_reason
from pruning.wanda import GROUPS, PRUNERS
from pruning.wanda import __doc__ as WANDA_DOC
from utils.checkpoint import save_checkpoint
from utils.cli import (
    ArgumentParser,
    UserError,
    add_model_source_args,
    add_runtime_args,
    check_output_path,
    finite_float,
    nonneg_int,
    positive_int,
)
from utils.io import atomic_write_json, fmt
from utils.loader import find_shards, sample_windows
from utils.report import Evaluation, add_hellaswag_args, describe_block, read_report
from utils.rundir import checkpoint_step, holds_run

PROG = "wanda.py"
DEPRECATED_METHODS = {"magnitude": "magnitude-row"}


def add_setup_args(ap) -> None:
    """Model, data, calibration, val loss, device: the flags wanda.py and sweep.py share."""
    add_model_source_args(ap, "GPT checkpoint of this repository (dense or already pruned)")
    ap.add_argument("--data", required=True, help="token shard directory (*_train_*.npy, *_val_*.npy)")
    ap.add_argument("--calib-samples", type=positive_int, default=128, help="calibration windows (default 128)")
    ap.add_argument("--calib-len", type=positive_int, default=None,
                    help="calibration and val window length (default block_size)")
    ap.add_argument("--calib-batch", type=positive_int, default=8, help="sequences per forward while pruning")
    ap.add_argument("--val-batches", type=nonneg_int,
                    help="val batches for the loss (default 20, or all the split holds where fewer; 0 to skip)")
    ap.add_argument("--val-batch-size", type=positive_int, default=8)
    add_runtime_args(ap, seed=1337)


def parse_args(argv=None) -> argparse.Namespace:
    ap = ArgumentParser(prog=PROG, description=WANDA_DOC,
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
    ap.add_argument("--json", help="write the report (utils/report.py schema) here")
    ap.add_argument("--before-json", metavar="REPORT",
                    help="reuse the dense numbers of an earlier report (wanda.py, sweep.py or test_gpt.py) of "
                         "the same checkpoint and evaluation settings instead of recomputing them")
    return ap.parse_args(argv)


def check_setup(args) -> None:
    """Checks that need no model, before any work."""
    if args.ckpt and not Path(args.ckpt).is_file():
        raise UserError(f"checkpoint not found: {args.ckpt}")
    find_shards(args.data, "train")  # UserError when the directory or its train shards are missing
    if args.val_batches != 0:
        find_shards(args.data, "val")


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


class Setup(Evaluation):
    """The evaluation setup (utils/report.py) with the calibration windows of the pruning methods."""

    def __init__(self, args, note=print):
        super().__init__(args, note)
        seq_len = args.calib_len or self.model.config.block_size
        self.use_val(args.data, "val", args.val_batches, args.val_batch_size, seq_len, "--calib-len")
        self.calib = sample_windows(args.data, "train", args.calib_samples, seq_len, args.seed,
                                    vocab_size=self.model.config.vocab_size)
        self.calib_settings = {"calib_samples": args.calib_samples, "calib_len": seq_len,
                               "calib_batch": args.calib_batch, "seed": args.seed}

    def settings(self, method: str, sparsity: float, nm) -> dict:
        return {"method": method, "sparsity": nm[0] / nm[1] if nm else sparsity, "nm": list(nm) if nm else None,
                **self.calib_settings, "eval": self.eval}

    def check_prunable(self, method: str, sparsity: float, nm) -> None:
        """A UserError when a nonzero sparsity would leave every layer dense (e.g. --nm 2:3, no width % 3)."""
        if nm is None and sparsity == 0:
            return
        linears = [layer for block in block_linears(self.model) for _, layer in block]
        if all(skip_reason(layer, sparsity, nm, GROUPS[method]) for layer in linears):
            widths = sorted({layer.in_features for layer in linears})
            what = f"{nm[0]}:{nm[1]}" if nm else f"sparsity {sparsity:g}"
            raise UserError(f"{what} prunes no layer of this model (input widths {widths}); nothing to do")

    def prune(self, method: str, sparsity: float, nm, dense: dict, dense_s: float = 0.0) -> tuple[dict, dict]:
        """Prune ``self.model`` in place and evaluate it: (report, pruning result)."""
        kwargs = {"batch_size": self.calib_settings["calib_batch"]} if method == "wanda" else {}
        result = PRUNERS[method](self.model, self.calib, sparsity=sparsity, nm=nm, progress=self.progress, **kwargs)
        after, after_s = self.evaluate()
        report = self.pruning_report(self.settings(method, sparsity, nm), result, dense, after,
                                     {"eval_before_s": dense_s, "eval_after_s": after_s})
        return report, result


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
    before, before_s = (setup.reusable_dense(args.before_json), 0.0) if args.before_json else setup.evaluate()
    print(f"dense: {describe_block(before)}")
    report, result = setup.prune(args.method, args.sparsity, args.nm, before, before_s)
    print_summary(report)
    if args.out:
        lineage = {k: v for k, v in (("step", setup.header["step"]), ("trained_on", setup.header["trained_on"]),
                                     ("earlier_pruning", setup.pruned_before or None)) if v is not None}
        save_checkpoint(args.out, setup.model, kind="gpt", model_name=setup.header["model"], **lineage,
                        val_loss=report["after"]["val_loss"], pruning=copy.deepcopy(result))
        print(f"pruned checkpoint: {args.out}")
    if args.json:
        atomic_write_json(args.json, report)
        print(f"report: {args.json}")
