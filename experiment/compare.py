"""Compare training runs, evaluations and pruning sweeps: PNG figures plus summary tables.

    python experiment/compare.py logs/gpt2/log.txt logs/ndgpt2/log.txt --out-dir plots
    python experiment/compare.py ../shared/data/seed_logs/GPT2-124M-log.txt --tokens-per-step 524288 \\
        --smooth 0.99 --out-dir logs/original/plots
    # a study: 3 seeds per model (equal labels = seeds of one model), sweeps, full evaluations
    python experiment/compare.py logs/mini/runs/{gpt2,ndgpt2,gpt2-mlp1536}-s{1,2,3}/log.txt \\
        --labels gpt2 gpt2 gpt2 ndgpt2 ndgpt2 ndgpt2 gpt2-mlp1536 gpt2-mlp1536 gpt2-mlp1536 \\
        --pruning logs/mini/sweep/* --evals logs/mini/eval/*.json --out-dir logs/mini/plots

Writes into --out-dir:
  loss.png        train (faint) and val loss of every log against the step;
  val_tokens.png  val loss against tokens seen, per label: the mean over its seeds with a min-max band
                  (tokens per step from --tokens-per-step or the run.json beside each log.txt);
  hellaswag.png   HellaSwag during training; left out when every run ends at chance (the table says so);
  sparsity.png    with --pruning: Δ val loss against sparsity, one panel per model, one line per method;
  summary.md      the tables printed on the screen: runs, seeds (final val loss mean ± std), pruning
                  (Δ val loss, perplexity ratio), evaluations (both HellaSwag conventions).
An --out-dir holding these files from an earlier comparison is refused unless --force, which also
removes the earlier figures this comparison does not draw.
Log lines that are not valid events (unknown kind, val < 0, HellaSwag outside [0, 1], nan, step > 1e9)
are skipped and counted as malformed. Reports are the JSON of test_gpt.py, wanda.py and sweep.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.report import PRUNING_HEADERS, pruning_rows
from experiment import figures, tables
from utils.cli import ArgumentParser, UserError, check_writable_dir, positive_int, run_main
from utils.io import atomic_write, markdown_table, text_table
from utils.runlog import read_log

OUTPUTS = ("loss.png", "val_tokens.png", "hellaswag.png", "sparsity.png", "summary.md")


def parse_args(argv=None) -> argparse.Namespace:
    ap = ArgumentParser(prog="compare.py", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("logs", nargs="*", type=Path, help="training logs ('{step} train|val|hella {value}' lines)")
    ap.add_argument("--out-dir", type=Path, required=True, help="directory for the PNGs and summary.md")
    ap.add_argument("--labels", nargs="+", help="one label per log; equal labels are seeds of one model "
                                               "(default: file stem, or parent/stem when stems collide)")
    ap.add_argument("--pruning", nargs="+", type=Path, default=[], metavar="REPORT|DIR",
                    help="pruning reports of wanda.py, or sweep.py directories")
    ap.add_argument("--evals", nargs="+", type=Path, default=[], metavar="REPORT",
                    help="evaluation reports of test_gpt.py --json (a table)")
    ap.add_argument("--smooth", type=float, default=0.0,
                    help="EMA factor in [0, 1) smoothing the train loss curves (0 = raw, the default; "
                         "0.9-0.99 for long runs)")
    ap.add_argument("--tokens-per-step", nargs="+", type=positive_int, metavar="N",
                    help="tokens per optimizer step: one value for every log or one per log "
                         "(default: total_batch from the run.json beside each log)")
    ap.add_argument("--hella-n", type=positive_int, default=None,
                    help="examples behind each logged HellaSwag value, which decides 'at chance' (default: "
                         f"hellaswag_limit from run.json, else all {tables.FULL_HELLASWAG:,})")
    ap.add_argument("--force", action="store_true",
                    help="replace the figures and summary.md of an earlier compare.py in --out-dir")
    return ap.parse_args(argv)


def per_log(values, n: int, flag: str) -> list:
    if values is None or len(values) == n:
        return values or [None] * n
    if len(values) == 1:
        return values * n
    raise UserError(f"{flag} has {len(values)} entries but {n} logs were given (give one, or one per log)")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not (args.logs or args.pruning or args.evals):
        raise UserError("nothing to compare: give logs, --pruning or --evals")
    if args.labels is not None and len(args.labels) != len(args.logs):
        raise UserError(f"--labels has {len(args.labels)} entries but {len(args.logs)} logs were given")
    if not 0.0 <= args.smooth < 1.0:
        raise UserError(f"--smooth must be in [0, 1), got {args.smooth}")
    if args.out_dir.exists() and not args.out_dir.is_dir():
        raise UserError(f"--out-dir {args.out_dir} exists and is not a directory")
    check_writable_dir(args.out_dir, "--out-dir")
    earlier = [name for name in OUTPUTS if (args.out_dir / name).exists()]
    if earlier and not args.force:
        raise UserError(f"--out-dir {args.out_dir} already holds {', '.join(earlier)}; pass --force to replace "
                        "them or choose another --out-dir")
    tokens = per_log(args.tokens_per_step, len(args.logs), "--tokens-per-step")

    # read and check every input before anything is written
    tables.check_distinct_logs(args.logs)
    labels = args.labels or tables.default_labels(args.logs)
    runs = [read_log(path, label) for path, label in zip(args.logs, labels)]
    reports = tables.load_reports(args.pruning, "pruning")
    evals = tables.load_reports(args.evals, "eval")
    tables.sparsity_deltas(reports)  # the same run twice is refused now, before anything is written
    tables.seed_groups(evals, note=lambda _: None)
    tokens = [t or tables.run_setting(p, "total_batch") for t, p in zip(tokens, args.logs)]
    hella_n = [args.hella_n or tables.run_setting(p, "hellaswag_limit") or tables.FULL_HELLASWAG for p in args.logs]
    groups = tables.group_by_label(runs)
    tokens_per_step = {}
    for run, t in zip(runs, tokens):
        if tokens_per_step.setdefault(run.label, t) != t:
            raise UserError(f"the seeds of {run.label!r} have different tokens per step "
                            f"({tokens_per_step[run.label]} and {t})")

    for path, run in zip(args.logs, runs):
        counts = ", ".join(f"{len(run.series[k])} {k}" for k in run.series)
        print(f"{path}: {run.n_lines} lines, {counts}, {run.n_malformed} malformed lines skipped")

    args.out_dir.mkdir(parents=True, exist_ok=True)
    written, md = [], ["# Summary", ""]

    def table(title: str, headers, rows, n_left: int = 1) -> None:
        print(f"\n{title}\n{text_table(headers, rows, n_left)}")
        md.extend([f"## {title}", "", markdown_table(headers, rows, n_left), ""])

    if runs:
        summaries = [tables.summarize(run, n) for run, n in zip(runs, hella_n)]
        figures.plot_losses(groups, args.out_dir / "loss.png", args.smooth)
        figures.plot_val_tokens(groups, tokens_per_step, args.out_dir / "val_tokens.png")
        written += ["loss.png", "val_tokens.png"]
        if any(s["last_hella"] is not None and not s["hella_at_chance"] for s in summaries):
            figures.plot_hellaswag(groups, args.out_dir / "hellaswag.png")
            written.append("hellaswag.png")
        elif any(s["last_hella"] is not None for s in summaries):
            print("hellaswag.png left out: every run ends at chance (see the table)")
        table("Runs", *tables.summary_rows(summaries))
        if any(len(g) > 1 for g in groups.values()):
            table("Final val loss over seeds", *tables.seed_rows(groups, tokens_per_step))
    if reports:
        figures.plot_sparsity(reports, args.out_dir / "sparsity.png")
        written.append("sparsity.png")
        table("Pruning", PRUNING_HEADERS, pruning_rows(reports), n_left=3)
    if evals:
        table("Evaluation", tables.EVAL_HEADERS, tables.eval_rows(evals))
        table("Held-out val loss over seeds", *tables.eval_seed_rows(evals))
    atomic_write(args.out_dir / "summary.md", "\n".join(md))
    written.append("summary.md")
    for name in set(earlier) - set(written):  # an earlier figure this comparison has no data for
        (args.out_dir / name).unlink()
    print(f"\nwrote {', '.join(written)} to {args.out_dir}")


if __name__ == "__main__":
    run_main(main, "compare.py")
