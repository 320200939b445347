"""Compare training runs (and pruning results): PNG figures plus a summary table.

    python experiment/compare.py logs/gpt2/log.txt logs/ndgpt2/log.txt --out-dir plots
    python experiment/compare.py ../shared/data/seed_logs/*.txt --out-dir /tmp/seedplots --smooth 0.9
    python experiment/compare.py LOG --out-dir plots --pruning logs/prune/report.json ...

Writes loss.png, hellaswag.png, summary.md (and pruning.png with --pruning) into --out-dir.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from experiment.tables import (
    default_labels,
    ema,
    load_pruning_report,
    markdown_table,
    pruning_rows,
    report_metric,
    report_name,
    report_sparsity,
    summarize,
    summary_rows,
    text_table,
)
from utils.cli import UserError, run_main
from utils.runlog import read_log

GPT2_124M_VAL = 3.2924  # OpenAI GPT-2 124M checkpoint on the FineWeb-EDU val shard
GPT2_124M_HELLA = 0.294463
GPT3_124M_HELLA = 0.337
HELLA_CHANCE = 0.25
DPI = 150
FIGSIZE = (10, 6)  # inches; with DPI -> 1500 x 900 pixels


def plot_losses(runs, path: Path, smooth: float) -> None:
    fig, ax = plt.subplots(figsize=FIGSIZE)
    for i, run in enumerate(runs):
        color = f"C{i % 10}"
        steps, train = run.steps_values("train")
        if steps:
            label = f"{run.label} train" + (f" (EMA {smooth:g})" if smooth > 0 else "")
            ax.plot(steps, ema(train, smooth) if smooth > 0 else train, color=color, lw=0.8, alpha=0.35,
                    zorder=1, label=label)
        steps, val = run.steps_values("val")
        if steps:
            ax.plot(steps, val, color=color, lw=2.2, marker="o" if len(steps) < 40 else None, ms=3,
                    zorder=3, label=f"{run.label} val")
    ax.axhline(GPT2_124M_VAL, color="black", ls="--", lw=1.2, label="OpenAI GPT-2 124M (val)")
    ax.set_yscale("log")
    # plain numbers on the log axis: the interesting range is ~3-11, where 10^x labels say nothing
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.set_xlabel("step")
    ax.set_ylabel("loss (log scale)")
    ax.set_title("Train and validation loss")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_hellaswag(runs, path: Path) -> None:
    fig, ax = plt.subplots(figsize=FIGSIZE)
    for i, run in enumerate(runs):
        steps, acc = run.steps_values("hella")
        if steps:
            ax.plot(steps, acc, color=f"C{i % 10}", lw=1.5, marker="o", ms=2.5, label=run.label)
    ax.axhline(GPT3_124M_HELLA, color="tab:red", ls="--", lw=1.2, label=f"GPT-3 124M ({GPT3_124M_HELLA})")
    ax.axhline(GPT2_124M_HELLA, color="black", ls="--", lw=1.2,
               label=f"OpenAI GPT-2 124M ({GPT2_124M_HELLA})")
    ax.axhline(HELLA_CHANCE, color="gray", ls=":", lw=1.2, label=f"chance ({HELLA_CHANCE})")
    ax.set_xlabel("step")
    ax.set_ylabel("HellaSwag accuracy (acc_norm)")
    ax.set_title("HellaSwag validation accuracy")
    ax.grid(True, alpha=0.3)
    # outside the axes: the reference lines cross the whole width, so no inside corner stays free
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_pruning(reports, path: Path) -> None:
    metrics = [("params_nonzero", "nonzero parameters (M)", 1e-6), ("val_loss", "val loss", 1.0)]
    if any(report_metric(r, stage, "hellaswag_acc_norm") is not None
           for r in reports for stage in ("before", "after")):
        metrics.append(("hellaswag_acc_norm", "HellaSwag acc_norm", 1.0))
    groups = [f"{report_name(r)}\n{r.get('method', '?')} {report_sparsity(r)}" for r in reports]
    width_in = min(24.0, max(FIGSIZE[0], 1.4 * len(reports) * len(metrics)))
    fig, axes = plt.subplots(1, len(metrics), figsize=(width_in, FIGSIZE[1]), squeeze=False)
    width = 0.38
    for ax, (key, title, scale) in zip(axes[0], metrics):
        for j, (stage, color) in enumerate([("before", "tab:blue"), ("after", "tab:orange")]):
            xs, heights = [], []
            for g, r in enumerate(reports):
                x, value = g + (j - 0.5) * width, report_metric(r, stage, key)
                if value is None:  # a metric the report lacks: no bar, say so
                    ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize=7, color="gray")
                else:
                    xs.append(x)
                    heights.append(value * scale)
            bars = ax.bar(xs, heights, width, color=color, label=stage)
            ax.bar_label(bars, fmt="%.1f" if key == "params_nonzero" else "%.3f", fontsize=7, padding=2)
        ax.set_xticks(range(len(reports)), groups, fontsize=8, rotation=30 if len(reports) > 4 else 0,
                      ha="right" if len(reports) > 4 else "center")
        ax.set_xlim(-0.6, len(reports) - 0.4)
        ax.set_title(title)
        ax.margins(y=0.12)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Pruning: before vs after")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def load_eval(path: Path) -> dict:
    """A JSON written by experiment/test_gpt.py --json."""
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read evaluation {path}: {e}") from e
    missing = [k for k in ("model", "params", "val_loss", "perplexity") if k not in result]
    if missing:
        raise UserError(f"{path} is not a test_gpt.py --json result (missing {', '.join(missing)})")
    return result


def _fmt4(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="compare.py",
        description="Plot and summarise training logs ('{step} train|val|hella {value}' per line) and "
                    "optional pruning reports: writes loss.png, hellaswag.png, summary.md "
                    "(and pruning.png) into --out-dir and prints the summary tables.")
    parser.add_argument("logs", nargs="+", type=Path, help="training log files")
    parser.add_argument("--out-dir", type=Path, required=True, help="directory for the PNGs and summary.md")
    parser.add_argument("--labels", nargs="+", help="one legend label per log (default: file stem)")
    parser.add_argument("--pruning", nargs="+", type=Path, default=[], metavar="REPORT.json",
                        help="pruning reports written by pruning/wanda.py")
    parser.add_argument("--evals", nargs="+", type=Path, default=[], metavar="EVAL.json",
                        help="evaluation results written by experiment/test_gpt.py --json (a table)")
    parser.add_argument("--smooth", type=float, default=0.0,
                        help="EMA factor in [0, 1) smoothing the train loss curves (0 = raw, the default; "
                             "0.9-0.99 for long runs)")
    args = parser.parse_args(argv)

    if args.labels is not None and len(args.labels) != len(args.logs):
        raise UserError(f"--labels has {len(args.labels)} entries but {len(args.logs)} logs were given")
    if not 0.0 <= args.smooth < 1.0:
        raise UserError(f"--smooth must be in [0, 1), got {args.smooth}")
    if args.out_dir.exists() and not args.out_dir.is_dir():
        raise UserError(f"--out-dir {args.out_dir} exists and is not a directory")

    # read and check every input before anything is written
    labels = args.labels or default_labels(args.logs)
    runs = [read_log(path, label) for path, label in zip(args.logs, labels)]
    reports = [load_pruning_report(p) for p in args.pruning]
    evals = [load_eval(p) for p in args.evals]

    for path, run in zip(args.logs, runs):
        counts = ", ".join(f"{len(run.series[k])} {k}" for k in run.series)
        print(f"{path}: {run.n_lines} lines, {counts}, {run.n_malformed} malformed lines skipped")

    args.out_dir.mkdir(parents=True, exist_ok=True)
    plot_losses(runs, args.out_dir / "loss.png", args.smooth)
    plot_hellaswag(runs, args.out_dir / "hellaswag.png")
    written = ["loss.png", "hellaswag.png"]

    headers, rows = summary_rows([summarize(r) for r in runs])
    print()
    print(text_table(headers, rows))
    md = ["# Run summary", "", markdown_table(headers, rows), ""]
    if reports:
        plot_pruning(reports, args.out_dir / "pruning.png")
        written.append("pruning.png")
        p_headers, p_rows = pruning_rows(reports)
        print()
        print(text_table(p_headers, p_rows, n_left=3))
        md += ["## Pruning", "", markdown_table(p_headers, p_rows, n_left=3), ""]
    if evals:
        e_headers = ["model", "params", "val loss", "perplexity", "HellaSwag acc", "acc_norm", "examples"]
        e_rows = [[e["model"].split(" from ")[0], f"{e['params']:,}", f"{e['val_loss']:.4f}",
                   f"{e['perplexity']:.1f}", _fmt4(e.get("hellaswag_acc")), _fmt4(e.get("hellaswag_acc_norm")),
                   str(e.get("hellaswag_n") or "-")] for e in evals]
        print()
        print(text_table(e_headers, e_rows))
        md += ["## Evaluation", "", markdown_table(e_headers, e_rows), ""]
    (args.out_dir / "summary.md").write_text("\n".join(md), encoding="utf-8")
    written.append("summary.md")
    print(f"\nwrote {', '.join(written)} to {args.out_dir}")


if __name__ == "__main__":
    run_main(main, "compare.py")
