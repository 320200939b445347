"""Issue 23's question: does NdGPT-2's gap to its equal-parameter dense control close with more tokens or more
width? The paired gap (ndgpt2 minus gpt2-mlp1536, seed by seed: both saw the same windows in the same order)
at the end of each study, and along the val curves of its runs.

A study directory holds runs/*/{log.txt,run.json,summary.json}, eval/*.json, sweep/*/ and outliers/*.json, as
scripts/mini_repro.sh writes them (logs/mini, logs/horizon, logs/width). Runs are paired by the model and seed
their run.json and reports record, never by file names.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from evaluation.report import comparable
from experiment.tables import load_reports, train_seed
from utils.cli import UserError
from utils.runlog import read_log

MODEL, CONTROL = "ndgpt2", "gpt2-mlp1536"


def study_runs(study: Path) -> dict[tuple[str, int], Path]:
    """(model, seed) -> run directory, as each run's run.json records them (not as its directory is named)."""
    runs: dict[tuple[str, int], Path] = {}
    for path in sorted(study.glob("runs/*/run.json")):
        meta = json.loads(path.read_text(encoding="utf-8"))
        key = meta["model"], meta["train_config"]["seed"]
        if key in runs:
            raise UserError(f"{runs[key]} and {path.parent} are both runs of {key[0]} with seed {key[1]}")
        runs[key] = path.parent
    return runs


def training(meta: dict, by_name: bool = False) -> dict:
    """A run.json's train config, its data named by fingerprint ("data_id"); runs written before run.json
    carried one (or ``by_name``) name it by the data directory's name."""
    train = dict(meta["train_config"])
    data = train.pop("data", None)
    train["data"] = (not by_name and meta.get("data_id")) or f"a directory named {Path(str(data)).name!r}"
    return train


def check_alike(run: Path, other: Path, what: str = "a pair", apart=("model",)) -> None:
    """A UserError unless the two runs trained alike (apart from ``apart``): same data, order, seed, schedule.
    When only one of them names its data by fingerprint, both are compared by the data directory's name."""
    metas = [json.loads((r / "run.json").read_text(encoding="utf-8")) for r in (run, other)]
    by_name = not all(meta.get("data_id") for meta in metas)
    a, b = (training(meta, by_name) for meta in metas)
    differs = sorted(k for k in set(a) | set(b) if k not in apart and a.get(k) != b.get(k))
    if differs:
        raise UserError(f"{run} and {other} are not {what}: they trained with different {', '.join(differs)}")


def pairs(study: Path, finished: bool = False) -> dict[int, tuple[Path, Path]]:
    """seed -> (ndgpt2 run, gpt2-mlp1536 run) of that seed, checked to be a pair; ``finished``: both summarized."""
    runs = study_runs(study)
    found = {}
    for (model, seed), run in sorted(runs.items()):
        control = runs.get((CONTROL, seed))
        if model != MODEL or control is None:
            continue
        if finished and not ((run / "summary.json").is_file() and (control / "summary.json").is_file()):
            continue
        check_alike(run, control)
        found[seed] = run, control
    return found


def study_shape(study: Path) -> dict | None:
    """{"n_layer", "n_embd", "steps", "tokens_per_step"} of the study's finished pairs (None: none)."""
    for _, control in pairs(study, finished=True).values():
        run = json.loads((control / "run.json").read_text(encoding="utf-8"))
        train = run["train_config"]
        return {"n_layer": run["config"]["n_layer"], "n_embd": run["config"]["n_embd"],
                "steps": train["max_steps"], "tokens_per_step": train["total_batch"]}
    return None


def final_gaps(study: Path) -> dict[int, float]:
    """seed -> held-out val loss of ndgpt2 minus gpt2-mlp1536: the final evaluations, paired by the training
    seed each report names, measured with the same settings (paths aside)."""
    found: dict[tuple[str, int], dict] = {}
    for report in load_reports(sorted(study.glob("eval/*.json")), "eval"):
        key = report["model"], train_seed(report, report["path"])
        if key in found:
            raise UserError(f"{found[key]['path']} and {report['path']} both evaluate {key[0]} seed {key[1]}")
        found[key] = report
    gaps = {}
    for (model, seed), report in sorted(found.items()):
        control = found.get((CONTROL, seed))
        if model != MODEL or control is None:
            continue
        if comparable(report["settings"], ("eval",)) != comparable(control["settings"], ("eval",)):
            raise UserError(f"{report['path']} and {control['path']} were measured with different settings")
        gaps[seed] = report["metrics"]["val_loss"] - control["metrics"]["val_loss"]
    return gaps


def curve_gaps(study: Path) -> dict[int, list[float]]:
    """step -> the paired gap of the logged val losses (one per seed with both runs logged at that step)."""
    curves: dict[int, list[float]] = {}
    for run, control in pairs(study).values():
        a, b = read_log(run / "log.txt").series["val"], read_log(control / "log.txt").series["val"]
        for step in sorted(set(a) & set(b)):
            curves.setdefault(step, []).append(a[step] - b[step])
    return curves


AGREEMENT_HEADERS = ["run", "steps", "max |Δ| train loss", "max |Δ| val loss", "final val: committed", "re-made"]


def agreement_rows(remade: Path, original: Path) -> list[list[str]]:
    """Runs trained again (``remade``) against the committed runs of the same model and seed that trained
    alike: how far apart their logged losses are at any step."""
    originals = study_runs(original)
    rows = []
    for (model, seed), run in sorted(study_runs(remade).items()):
        first = originals.get((model, seed))
        if first is None or not (run / "summary.json").is_file():
            continue
        check_alike(run, first, "the same run", apart=())
        a, b = read_log(run / "log.txt").series, read_log(first / "log.txt").series
        gaps = {kind: max(abs(a[kind][s] - b[kind][s]) for s in set(a[kind]) & set(b[kind]))
                for kind in ("train", "val")}
        last = max(b["val"])
        rows.append([f"{model}-s{seed}", str(len(a["train"])), f"{gaps['train']:.2e}", f"{gaps['val']:.2e}",
                     f"{b['val'][last]:.4f}", f"{a['val'][last]:.4f}"])
    return rows


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
    """Per run with an outliers report (pruning/outliers.py): the mean share of input features beyond 6 and
    beyond 6 sd over the pruned layers, the median spread of Wanda's feature norms, and each method's Δ val
    loss at 70% from the sweep reports that pruned the same weights (by fingerprint) with the same calibration."""
    rows = []
    for label, study in studies:
        sweeps = [r for d in sorted(study.glob("sweep/*/")) for r in load_reports([d], "pruning")]
        for path in sorted(study.glob("outliers/*.json")):
            report = json.loads(path.read_text(encoding="utf-8"))
            ckpt, calib, summary = report["checkpoint"], report["settings"], report["summary"]
            deltas = {}
            for r in sweeps:
                p, s = r["pruning"], r["settings"]
                same = (r["fingerprint"] == ckpt["fingerprint"] and p["nm"] is None and abs(p["sparsity"] - 0.7) < 1e-9
                        and all(s.get(k) == calib[k] for k in ("calib_samples", "calib_len", "seed")))
                if same:
                    deltas[p["method"]] = r["after"]["val_loss"] - r["before"]["val_loss"]
            rows.append([label, f"{ckpt['model']}-s{train_seed(ckpt, path)}", f"{summary['mean_share_abs_gt_6']:.2%}",
                         f"{summary['mean_share_sd_gt_6']:.2%}", f"{summary['norm_max_over_median_median']:.2f}",
                         *(f"{deltas[m]:+.4f}" if m in deltas else "-"
                           for m in ("wanda", "magnitude-layer", "magnitude-row"))])
    return rows
