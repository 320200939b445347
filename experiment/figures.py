"""The figures compare.py draws: losses per step, val loss per token over seeds, HellaSwag, sparsity sweeps."""

from __future__ import annotations

from pathlib import Path
from statistics import fmean

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from evaluation.report import HELLASWAG_CHANCE
from experiment.tables import ema, sparsity_deltas

GPT2_124M_VAL = 3.2924  # OpenAI GPT-2 124M checkpoint on the FineWeb-EDU val shard
GPT2_124M_HELLA = 0.294463
GPT3_124M_HELLA = 0.337
DPI = 150
FIGSIZE = (10, 6)  # inches; with DPI -> 1500 x 900 pixels


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def _finish(ax, path: Path, title: str, xlabel: str, ylabel: str, **legend) -> None:
    """Labels, grid and legend of a one-axes figure, then save it."""
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, **legend)
    _save(ax.figure, path)


def _log_y(ax) -> None:
    ax.set_yscale("log")
    # plain numbers on the log axis: the interesting range is ~3-11, where 10^x labels say nothing
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))


def plot_losses(groups: dict, path: Path, smooth: float) -> None:
    """Train (faint) and val loss of every log against the step; one colour per label."""
    _, ax = plt.subplots(figsize=FIGSIZE)
    for i, (label, runs) in enumerate(groups.items()):
        color = f"C{i % 10}"
        for j, run in enumerate(runs):
            steps, train = run.steps_values("train")
            if steps:
                name = f"{label} train" + (f" (EMA {smooth:g})" if smooth > 0 else "")
                ax.plot(steps, ema(train, smooth) if smooth > 0 else train, color=color, lw=0.8, alpha=0.35,
                        zorder=1, label=name if j == 0 else None)
            steps, val = run.steps_values("val")
            if steps:
                ax.plot(steps, val, color=color, lw=2.2, marker="o" if len(steps) < 40 else None, ms=3,
                        zorder=3, label=f"{label} val" if j == 0 else None)
    ax.axhline(GPT2_124M_VAL, color="black", ls="--", lw=1.2, label="OpenAI GPT-2 124M (val)")
    _log_y(ax)
    _finish(ax, path, "Train and validation loss", "step", "loss (log scale)", ncol=2, loc="upper right")


def seed_band(runs) -> tuple[list[int], list[float], list[float], list[float]]:
    """Steps logged by every seed, and the mean, min and max val loss over seeds at each."""
    steps = sorted(set.intersection(*(set(r.series["val"]) for r in runs)))
    values = [[r.series["val"][s] for r in runs] for s in steps]
    return steps, [sum(v) / len(v) for v in values], [min(v) for v in values], [max(v) for v in values]


def plot_val_tokens(groups: dict, tokens_per_step: dict, path: Path) -> None:
    """Val loss per model against tokens seen: the mean over seeds, with the min-max band."""
    in_tokens = all(tokens_per_step.get(label) for label in groups)
    _, ax = plt.subplots(figsize=FIGSIZE)
    for i, (label, runs) in enumerate(groups.items()):
        steps, mean, low, high = seed_band(runs)
        if not steps:
            continue
        x = [s * tokens_per_step[label] for s in steps] if in_tokens else steps
        color = f"C{i % 10}"
        seeds = f" (mean of {len(runs)} seeds, min-max band)" if len(runs) > 1 else ""
        ax.plot(x, mean, color=color, lw=2, label=f"{label}{seeds}")
        if len(runs) > 1:
            ax.fill_between(x, low, high, color=color, alpha=0.2, lw=0)
    _log_y(ax)
    xlabel = "tokens" if in_tokens else "step (tokens per step unknown: give --tokens-per-step)"
    _finish(ax, path, "Validation loss", xlabel, "val loss (log scale)", loc="upper right")


def plot_hellaswag(groups: dict, path: Path) -> None:
    _, ax = plt.subplots(figsize=FIGSIZE)
    for i, (label, runs) in enumerate(groups.items()):
        for j, run in enumerate(runs):
            steps, acc = run.steps_values("hella")
            if steps:
                ax.plot(steps, acc, color=f"C{i % 10}", lw=1.5, marker="o", ms=2.5, label=label if j == 0 else None)
    ax.axhline(GPT3_124M_HELLA, color="tab:red", ls="--", lw=1.2, label=f"GPT-3 124M ({GPT3_124M_HELLA})")
    ax.axhline(GPT2_124M_HELLA, color="black", ls="--", lw=1.2, label=f"OpenAI GPT-2 124M ({GPT2_124M_HELLA})")
    ax.axhline(HELLASWAG_CHANCE, color="gray", ls=":", lw=1.2, label=f"chance ({HELLASWAG_CHANCE})")
    # the legend outside the axes: the reference lines cross the whole width, so no inside corner stays free
    _finish(ax, path, "HellaSwag validation accuracy", "step", "HellaSwag accuracy (acc_norm)", loc="upper left",
            bbox_to_anchor=(1.01, 1.0))


def plot_sparsity(reports: list[dict], path: Path) -> None:
    """Δ val loss (pruned - dense) against sparsity: one panel per model, one line per method (unstructured),
    N:M patterns as labelled markers. Reports of several runs of a model (seeds) give the mean, with the
    min-max over runs as a band (lines) or an error bar (N:M)."""
    deltas = sparsity_deltas(reports)
    models = list(dict.fromkeys(k[0] for k in deltas))
    methods = list(dict.fromkeys(r["pruning"]["method"] for r in reports))
    fig, axes = plt.subplots(1, len(models), figsize=(max(FIGSIZE[0], 5 * len(models)), FIGSIZE[1]),
                             squeeze=False, sharey=True)
    for ax, model in zip(axes[0], models):
        runs = max(len(v) for k, v in deltas.items() if k[0] == model)
        for k, method in enumerate(methods):
            color = f"C{k % 10}"
            mine = sorted(((s, nm, v) for (m, meth, s, nm), v in deltas.items() if (m, meth) == (model, method)),
                          key=lambda t: (t[0], t[1] or ""))
            line = [(100 * s, fmean(v), min(v), max(v)) for s, nm, v in mine if nm is None]
            if line:
                x, mean, low, high = zip(*line)
                ax.plot(x, mean, color=color, marker="o", lw=1.8, label=method)
                if runs > 1:
                    ax.fill_between(x, low, high, color=color, alpha=0.15, lw=0)
            for j, (s, nm, v) in enumerate((s, nm, v) for s, nm, v in mine if nm is not None):
                mean = fmean(v)
                offset = (k - (len(methods) - 1) / 2) * 0.8  # side by side, not on top of each other
                ax.errorbar(100 * s + offset, mean, yerr=[[mean - min(v)], [max(v) - mean]] if runs > 1 else None,
                            color=color, marker="s^vD"[j % 4], ms=8, ls="none", capsize=3, label=f"{method} {nm}")
        ax.axhline(0, color="gray", lw=1)
        ax.set(title=model + (f" (mean of {runs} runs, band = min-max)" if runs > 1 else ""),
               xlabel="sparsity of the pruned layers (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("Δ val loss against the dense model (nats)")
    fig.suptitle("Pruning: change in validation loss")
    _save(fig, path)
