"""Sparsity sweep of one model: each method at each unstructured sparsity and N:M pattern, val loss and
perplexity against the dense model.

    python pruning/sweep.py --ckpt logs/mini/runs/gpt2-s1/model_00160.pt --data data/prose \\
        --out-dir logs/mini/sweep/gpt2-s1
    python pruning/sweep.py --ckpt CKPT --data DATA --out-dir DIR --methods wanda magnitude-layer \\
        --sparsities 0.3 0.5 --nm 2:4 --with-hellaswag --limit 500

Writes DIR/dense.json (the dense model, test_gpt.py's schema), one DIR/<method>-<setting>.json per
setting (wanda.py's schema, e.g. wanda-50pct.json, magnitude-layer-2of4.json) and DIR/sweep.md (the
table). A report whose settings match is reused, so a rerun is a no-op and an interrupted sweep
continues; the dense model is evaluated once. A DIR holding reports of other settings is refused.
HellaSwag is off by default (--with-hellaswag). Plot the sweeps with
`python experiment/compare.py --pruning DIR [DIR ...] --out-dir PLOTS`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tqdm import tqdm

from evaluation.evaluator import add_hellaswag_args
from evaluation.report import PRUNING_HEADERS, check_same, pruning_rows, read_report
from pruning.common import Setup, add_setup_args, check_setup
from pruning.masks import check_pruning_args, parse_nm
from pruning.methods import PRUNERS
from utils import rundir
from utils.cli import ArgumentParser, UserError, check_writable_dir, finite_float, run_main
from utils.io import atomic_write, atomic_write_json, markdown_table, text_table

PROG = "sweep.py"
SPARSITIES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


def parse_args(argv=None) -> argparse.Namespace:
    ap = ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_setup_args(ap)
    ap.add_argument("--out-dir", required=True, help="directory of the reports (created; reused on a rerun)")
    ap.add_argument("--methods", nargs="+", choices=list(PRUNERS), default=list(PRUNERS))
    ap.add_argument("--sparsities", nargs="*", type=finite_float, default=list(SPARSITIES),
                    help="unstructured sparsities (default 0.1 ... 0.7)")
    ap.add_argument("--nm", nargs="*", default=["2:4", "4:8"], help="N:M patterns (default 2:4 4:8; none: --nm)")
    add_hellaswag_args(ap, default_on=False)
    return ap.parse_args(argv)


def tag(sparsity: float, nm) -> str:
    return f"{nm[0]}of{nm[1]}" if nm else f"{round(100 * sparsity):g}pct"


def validate(args) -> list[tuple[str, float, tuple | None]]:
    """The settings to run, every flag checked before any work."""
    check_writable_dir(args.out_dir, "--out-dir")  # also refuses a file
    try:
        patterns = [parse_nm(text) for text in args.nm]
        for s in args.sparsities:
            check_pruning_args(s, None)
    except ValueError as e:
        raise UserError(str(e)) from e
    if any(s == 0 for s in args.sparsities):
        raise UserError("--sparsities: 0 is the dense model (dense.json); give sparsities > 0")
    named = {}
    for s in dict.fromkeys(args.sparsities):
        if (name := tag(s, None)) in named:
            raise UserError(f"--sparsities {named[name]:g} and {s:g} share the report name {name}; "
                            "give sparsities whole percents apart")
        named[name] = s
    settings = [(m, s, None) for m in args.methods for s in named.values()]
    settings += [(m, nm[0] / nm[1], nm) for m in args.methods for nm in dict.fromkeys(patterns)]
    if not settings:
        raise UserError("nothing to sweep: give --sparsities and/or --nm")
    check_setup(args)
    return settings


def main(argv=None) -> None:
    args = parse_args(argv)
    settings = validate(args)
    out = Path(args.out_dir)
    setup = Setup(args, note=tqdm.write)
    setup.progress = False
    lock = rundir.lock(out, "sweep")  # two sweeps into one directory would mix two models' reports
    for method, sparsity, nm in settings:
        setup.check_prunable(method, sparsity, nm)
    header = setup.header
    dense_path = out / "dense.json"
    if dense_path.exists():
        try:
            dense = setup.reusable_dense(dense_path)
        except UserError as e:
            raise UserError(f"{e}; use another --out-dir") from e
    else:
        dense, seconds = setup.evaluate()
        atomic_write_json(dense_path, setup.eval_report(args.seed, dense, seconds))
    dense_weights = {k: v.clone() for k, v in setup.model.state_dict().items()}
    reports, reused = [], 0
    for method, sparsity, nm in tqdm(settings, desc="sweep", unit="setting"):
        path = out / f"{method}-{tag(sparsity, nm)}.json"
        if path.exists():
            report = read_report(path, "pruning")
            try:
                check_same(report, header["fingerprint"], setup.settings(method, sparsity, nm), path)
            except UserError as e:
                raise UserError(f"{e}; use another --out-dir") from e
            reused += 1
        else:
            setup.model.load_state_dict(dense_weights)
            report, _ = setup.prune(method, sparsity, nm, dense)
            atomic_write_json(path, report)
        reports.append(report)
    rows = pruning_rows(reports)
    print(f"\n{text_table(PRUNING_HEADERS, rows, n_left=3)}")
    atomic_write(out / "sweep.md", f"# Sparsity sweep: {header['model']} ({header['source']})\n\n"
                                   f"{markdown_table(PRUNING_HEADERS, rows, n_left=3)}\n")
    print(f"\n{len(reports)} settings ({reused} reused) in {out}; table: {out / 'sweep.md'}")
    lock.close()


if __name__ == "__main__":
    run_main(main, PROG)
