"""Issue 23's question: does NdGPT-2's gap to its equal-parameter dense control close with more tokens or more
width? The paired gap (ndgpt2 minus gpt2-mlp1536, seed by seed: both saw the same windows in the same order)
at the end of each study, and along the val curves of its runs.

A study directory holds runs/<model>-s<seed>/{log.txt,run.json,summary.json} and eval/<model>-s<seed>.json,
as scripts/mini_repro.sh writes them (logs/mini, logs/horizon, logs/width).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from experiment.tables import load_reports
from utils.runlog import read_log

MODEL, CONTROL = "ndgpt2", "gpt2-mlp1536"


def seed_of(run_dir: Path) -> str:
    return run_dir.name.rsplit("-s", 1)[1]


def study_shape(study: Path) -> dict | None:
    """{"n_layer", "n_embd", "steps", "tokens_per_step"} of the study's finished control runs (None: none)."""
    for summary in sorted(study.glob(f"runs/{CONTROL}-s*/summary.json")):
        run = json.loads((summary.parent / "run.json").read_text())
        train = run["train_config"]
        return {"n_layer": run["config"]["n_layer"], "n_embd": run["config"]["n_embd"],
                "steps": train["max_steps"], "tokens_per_step": train["total_batch"]}
    return None


def final_gaps(study: Path) -> dict[str, float]:
    """seed -> held-out val loss of ndgpt2 minus gpt2-mlp1536 (the final evaluations, both present)."""
    loss: dict[tuple[str, str], float] = {}
    for report in load_reports(sorted(study.glob("eval/*.json")), "eval"):
        name = Path(report["path"]).stem
        loss[name.rsplit("-s", 1)[0], name.rsplit("-s", 1)[1]] = report["metrics"]["val_loss"]
    return {s: loss[MODEL, s] - loss[CONTROL, s] for m, s in sorted(loss) if m == MODEL and (CONTROL, s) in loss}


def curve_gaps(study: Path) -> dict[int, list[float]]:
    """step -> the paired gap of the logged val losses (one per seed with both runs logged at that step)."""
    curves: dict[int, list[float]] = {}
    for run in sorted(study.glob(f"runs/{MODEL}-s*/log.txt")):
        control = study / "runs" / f"{CONTROL}-s{seed_of(run.parent)}" / "log.txt"
        if not control.is_file():
            continue
        a, b = read_log(run).series["val"], read_log(control).series["val"]
        for step in sorted(set(a) & set(b)):
            curves.setdefault(step, []).append(a[step] - b[step])
    return curves


def trend_rows(studies: list[tuple[str, Path]]) -> list[list[str]]:
    """One row per study with finished pairs: what it trained, the gap per seed, its mean and range."""
    rows = []
    for label, study in studies:
        shape, gaps = study_shape(study), final_gaps(study)
        if shape is None or not gaps:
            continue
        values = list(gaps.values())
        rows.append([label, f"{shape['n_layer']} x {shape['n_embd']}", f"{shape['steps'] * shape['tokens_per_step']:,}",
                     str(len(values)), ", ".join(f"{g:+.4f}" for g in values), f"{statistics.fmean(values):+.4f}",
                     f"{min(values):+.4f} to {max(values):+.4f}"])
    return rows


TREND_HEADERS = ["study", "layers x width", "train tokens", "seeds", "gap per seed", "mean", "min to max"]


def plot_trend(studies: list[tuple[str, Path]], path: Path) -> bool:
    """The paired gap against tokens seen (log axis): each study's val-curve gap (mean, min-max band over seeds)
    and its final held-out gap (marker, min-max bar). False (nothing drawn) when no study has a pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 6))
    drawn = False
    for i, (label, study) in enumerate(studies):
        shape, gaps, curves = study_shape(study), final_gaps(study), curve_gaps(study)
        if shape is None or not gaps:
            continue
        color = f"C{i}"
        steps = [s for s in sorted(curves) if s > 0]
        tokens = [s * shape["tokens_per_step"] for s in steps]
        ax.plot(tokens, [statistics.fmean(curves[s]) for s in steps], color=color, lw=1, alpha=0.8,
                label=f"{label}: val curve (32,768 tokens)")
        ax.fill_between(tokens, [min(curves[s]) for s in steps], [max(curves[s]) for s in steps], color=color,
                        alpha=0.15, lw=0)
        end, values = shape["steps"] * shape["tokens_per_step"], list(gaps.values())
        mean = statistics.fmean(values)
        ax.errorbar([end], [mean], yerr=[[mean - min(values)], [max(values) - mean]], fmt="o", color=color, ms=7,
                    capsize=4, label=f"{label}: final held-out gap ({len(values)} seed{'s' * (len(values) > 1)})")
        drawn = True
    if not drawn:
        plt.close(fig)
        return False
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xscale("log")
    ax.set(title=f"{MODEL} minus {CONTROL}: paired val-loss gap against tokens seen", xlabel="training tokens",
           ylabel="val loss gap (nats)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return True


MECHANISM_HEADERS = ["study", "run", "features > 6", "features > 6 sd", "feature norm max/median",
                     "Δ 70% wanda", "Δ 70% magnitude-layer", "Δ 70% magnitude-row"]


def mechanism_rows(studies: list[tuple[str, Path]]) -> list[list[str]]:
    """Per run with an outliers report (pruning/outliers.py) and a 70% sweep: the mean share of input features
    beyond 6 and beyond 6 sd over the pruned layers, the median spread of Wanda's feature norms, and each
    method's Δ val loss at 70%."""
    rows = []
    for label, study in studies:
        for path in sorted(study.glob("outliers/*.json")):
            summary = json.loads(path.read_text())["summary"]
            deltas = {}
            sweep = study / "sweep" / path.stem
            for report in load_reports([sweep], "pruning") if sweep.is_dir() else []:
                p = report["pruning"]
                if p["nm"] is None and abs(p["sparsity"] - 0.7) < 1e-9:
                    deltas[p["method"]] = report["after"]["val_loss"] - report["before"]["val_loss"]
            rows.append([label, path.stem, f"{summary['mean_share_abs_gt_6']:.2%}",
                         f"{summary['mean_share_sd_gt_6']:.2%}", f"{summary['norm_max_over_median_median']:.2f}",
                         *(f"{deltas[m]:+.4f}" if m in deltas else "-"
                           for m in ("wanda", "magnitude-layer", "magnitude-row"))])
    return rows
