"""Summaries and tables of run logs and evaluation/pruning reports, as compare.py prints and draws them."""

from __future__ import annotations

import json
import math
import statistics
from itertools import accumulate
from operator import itemgetter
from pathlib import Path

from evaluation.report import at_chance, comparable, hellaswag_cell, read_report, setting_label
from utils.cli import REPO, UserError
from utils.io import fmt
from utils.runlog import RunLog

FULL_HELLASWAG = 10_042  # examples in the validation set: what a logged value means when nothing says otherwise


def default_labels(paths: list[Path]) -> list[str]:
    """File stems; where two stems collide (e.g. logs/a/log.txt, logs/b/log.txt), ``parent/stem``."""
    stems = [p.stem for p in paths]
    return [f"{p.parent.name}/{p.stem}" if stems.count(p.stem) > 1 else p.stem for p in paths]


def ema(values: list[float], factor: float) -> list[float]:
    """Exponential moving average, ``s = factor*s + (1-factor)*x``, started at the first value."""
    return list(accumulate(values, lambda s, x: factor * s + (1 - factor) * x))


def run_setting(log_path: Path, key: str):
    """``key`` from the run.json beside a log (top level or one object down, e.g. train_config), or None."""
    path = Path(log_path).parent / "run.json"
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(info, dict):
        return None
    for d in (info, *(v for v in info.values() if isinstance(v, dict))):
        if isinstance(d.get(key), int) and not isinstance(d.get(key), bool) and d[key] > 0:
            return d[key]
    return None


def check_distinct_logs(paths: list[Path]) -> None:
    """A UserError when two logs are one run: the same file, or the same run_id in the run.json beside them."""
    seen: dict[tuple[str, str], Path] = {}
    for path in paths:
        try:
            run_id = json.loads((Path(path).parent / "run.json").read_text(encoding="utf-8")).get("run_id")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            run_id = None
        key = ("run_id", run_id) if isinstance(run_id, str) else ("file", str(Path(path).resolve()))
        if key in seen:
            raise UserError(f"{seen[key]} and {path} are the same run ({key[0]} {key[1]}); give each run once")
        seen[key] = path


def _argbest(series: dict[int, float], best) -> tuple[int | None, float | None]:
    """Step and value of the best finite entry (earliest step on ties); (None, None) if none."""
    finite = [(s, v) for s, v in sorted(series.items()) if math.isfinite(v)]
    return best(finite, key=itemgetter(1), default=(None, None))


def _last(series: dict[int, float]) -> float | None:
    return series[max(series)] if series else None


def summarize(run: RunLog, hella_n: int = FULL_HELLASWAG) -> dict:
    """Min train / min val (+step) / max HellaSwag (+step), the last step and the last values."""
    _, min_train = _argbest(run.series["train"], min)
    min_val_step, min_val = _argbest(run.series["val"], min)
    max_hella_step, max_hella = _argbest(run.series["hella"], max)
    last_hella = _last(run.series["hella"])
    return {
        "label": run.label,
        "min_train": min_train,
        "min_val": min_val, "min_val_step": min_val_step,
        "max_hella": max_hella, "max_hella_step": max_hella_step,
        "last_step": max((s for series in run.series.values() for s in series), default=None),
        "last_train": _last(run.series["train"]),
        "last_val": _last(run.series["val"]),
        "last_hella": last_hella,
        "hella_at_chance": last_hella is not None and at_chance(last_hella, hella_n),
    }


SUMMARY_COLUMNS = [  # (header, key, format)
    ("run", "label", ""),
    ("min train", "min_train", ".4f"),
    ("min val", "min_val", ".4f"),
    ("@ step", "min_val_step", ""),
    ("max hella", "max_hella", ".4f"),
    ("@ step", "max_hella_step", ""),
    ("last step", "last_step", ""),
    ("last train", "last_train", ".4f"),
    ("last val", "last_val", ".4f"),
    ("last hella", "last_hella", ".4f"),
]


def summary_rows(summaries: list[dict]) -> tuple[list[str], list[list[str]]]:
    headers = [h for h, _, _ in SUMMARY_COLUMNS]
    rows = [[fmt(s[key], spec) for _, key, spec in SUMMARY_COLUMNS] for s in summaries]
    for s, row in zip(summaries, rows):
        if s["hella_at_chance"]:
            row[-1] += " (at chance)"
    return headers, rows


def group_by_label(runs: list[RunLog]) -> dict[str, list[RunLog]]:
    """Runs with the same label are seeds of one model (in the order first seen)."""
    groups: dict[str, list[RunLog]] = {}
    for run in runs:
        groups.setdefault(run.label, []).append(run)
    return groups


def seed_rows(groups: dict[str, list[RunLog]], tokens_per_step: dict[str, int | None]) -> tuple[list, list]:
    """Per model: the final val loss (each seed's last) as mean ± std, min and max over seeds."""
    headers = ["model", "seeds", "final val mean", "± std", "min", "max", "last step", "tokens"]
    rows = []
    for label, runs in groups.items():
        finals = [r.series["val"][max(r.series["val"])] for r in runs if r.series["val"]]
        steps = [max(r.series["val"]) for r in runs if r.series["val"]]
        tokens = tokens_per_step.get(label)
        rows.append([label, str(len(runs)), fmt(statistics.fmean(finals) if finals else None, ".4f"),
                     fmt(statistics.stdev(finals) if len(finals) > 1 else None, ".4f"),
                     fmt(min(finals, default=None), ".4f"), fmt(max(finals, default=None), ".4f"),
                     "-" if not steps else "-".join(map(str, sorted({min(steps), max(steps)}))),
                     f"{max(steps) * tokens:,}" if steps and tokens else "-"])
    return headers, rows


def load_reports(paths: list[Path], kind: str) -> list[dict]:
    """Reports of ``kind`` from files, and from directories (every *.json of that kind in them, e.g. a sweep)."""
    reports = []
    for path in paths:
        if Path(path).is_dir():
            found = [{**read_report(p), "path": str(p)} for p in sorted(Path(path).glob("*.json"))]
            found = [r for r in found if r["kind"] == kind]
            if not found:
                raise UserError(f"{path}: no {kind} reports in this directory")
            reports += found
        else:
            reports.append({**read_report(path, kind), "path": str(path)})
    return reports


EVAL_HEADERS = ["model", "params", "nonzero", "val loss", "perplexity", "val tokens", "HellaSwag (seed)",
                "HellaSwag (lm-eval)", "examples"]


def pruned_label(report: dict) -> str:
    """"" for a dense model, else " pruned: wanda 50%" (every pass, oldest first)."""
    passes = [f"{p['method']} {setting_label(p)}" for p in report.get("pruning") or []]
    return f" pruned: {' + '.join(passes)}" if passes else ""


def run_identity(report: dict) -> tuple[str, str]:
    """What makes two reports the same seed: the training run, else the weights; reports written before
    fingerprints: the checkpoint path (as they were grouped then)."""
    for key in ("run_id", "fingerprint"):
        if report.get(key):
            return key, report[key]
    return "source", report.get("source")


def train_seed(header: dict, where) -> int:
    """The seed of the training run a report measured: its header's "train_seed"; for a report written before
    headers carried it, the seed in the run.json that train_gpt.py wrote beside the measured checkpoint, which
    must name the same model. Neither: a UserError (runs are never paired by their directory names)."""
    if header.get("train_seed") is not None:
        return header["train_seed"]
    source = Path(str(header.get("source")))
    run = next((d / "run.json" for d in (source.parent, REPO / source.parent) if (d / "run.json").is_file()), None)
    if run is None:
        raise UserError(f"{where}: names no training seed, and no run.json lies beside its checkpoint {source}")
    try:
        meta = json.loads(run.read_text(encoding="utf-8"))
        model, seed = meta["model"], meta["train_config"]["seed"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{where}: names no training seed, and the run.json beside its checkpoint "
                        f"{source} is not readable ({type(e).__name__})") from e
    if model != header.get("model") or not isinstance(seed, int):
        raise UserError(f"{where}: the run.json beside {source} is a run of {model} with seed {seed!r}, "
                        f"not of {header.get('model')}")
    return seed


def eval_rows(evals: list[dict]) -> list[list[str]]:
    rows = []
    for e in evals:
        m = e["metrics"]
        n = {h["n"] for h in m["hellaswag"].values()}
        name = (f"{e['model']} step {e['step']}" if e.get("step") is not None else e["model"]) + pruned_label(e)
        rows.append([name, f"{m['params_total']:,}", f"{m['params_nonzero']:,}", fmt(m["val_loss"], ".4f"),
                     fmt(m["perplexity"], ".1f"), f"{m['val_tokens']:,}", hellaswag_cell(m, "seed"),
                     hellaswag_cell(m, "lm-eval"), "/".join(map(str, sorted(n))) or "-"])
    return rows


def eval_seed_rows(evals: list[dict], reference: str = "gpt2-mlp1536") -> tuple[list, list]:
    """Per model: the held-out val loss of its evaluations (one per seed) as mean ± std, min, max, and the gap
    of the mean to ``reference``'s with the standard error of a difference of two means."""
    groups: dict[str, list[float]] = {}
    for name, members in seed_groups(evals).items():
        values = [e["metrics"]["val_loss"] for e in members if e["metrics"]["val_loss"] is not None]
        if values:
            groups[name] = values
    ref = groups.get(reference)

    def sem2(values):  # squared standard error of the mean (0 with one value: no spread known)
        return statistics.variance(values) / len(values) if len(values) > 1 else 0.0

    headers = ["model", "seeds", "val loss mean", "± std", "min", "max", f"gap to {reference}", "± s.e."]
    rows = []
    for model, values in groups.items():
        gap = None if ref is None or model == reference else statistics.fmean(values) - statistics.fmean(ref)
        se = None if gap is None or len(values) < 2 or len(ref) < 2 else math.sqrt(sem2(values) + sem2(ref))
        rows.append([model, str(len(values)), fmt(statistics.fmean(values), ".4f"),
                     fmt(statistics.stdev(values) if len(values) > 1 else None, ".4f"), fmt(min(values), ".4f"),
                     fmt(max(values), ".4f"), fmt(gap, "+.4f"), fmt(se, ".4f")])
    return headers, rows


def seed_groups(evals: list[dict], note=print) -> dict[str, list[dict]]:
    """The reports that are seeds of one model: the same model name, pruning passes and eval settings (paths
    aside), each from another run. Unequal eval settings make separate rows, named by what differs (a note
    says so); the same run twice in a row is a UserError."""
    by_model: dict[str, list[dict]] = {}
    for e in evals:
        by_model.setdefault(e["model"] + pruned_label(e), []).append(e)
    groups: dict[str, list[dict]] = {}
    for name, members in by_model.items():
        settings = [comparable(e["settings"], only=("eval",)) for e in members]
        differs = sorted({k for s in settings for k in s if any(s.get(k) != t.get(k) for t in settings)})
        if differs:
            note(f"note: {name}: evaluations with different settings ({', '.join(differs)}) are separate rows")
        for e, s in zip(members, settings):
            label = name + "".join(f" [{k.removeprefix('eval.')} {s.get(k)}]" for k in differs)
            groups.setdefault(label, []).append(e)
    for label, members in groups.items():
        seen: dict[tuple, str] = {}
        for e in members:
            key, where = run_identity(e), e.get("path") or e.get("source")
            if key in seen:
                raise UserError(f"{seen[key]} and {where} both measure {label} of the same run ({key[0]} "
                                f"{key[1]}); each seed counts once")
            seen[key] = where
    return groups


def sparsity_deltas(reports: list[dict]) -> dict[tuple, list[float]]:
    """(model, method, sparsity, N:M label or None) -> the Δ val loss of each run (report) measured there."""
    deltas: dict[tuple, list[float]] = {}
    seen: dict[tuple, str] = {}
    for r in reports:
        p = r["pruning"]
        key = (r.get("label") or r["model"], p["method"], p["sparsity"], setting_label(p) if p["nm"] else None)
        where = r.get("path") or r.get("source")
        if seen.setdefault((key, run_identity(r)), where) != where:
            raise UserError(f"{seen[(key, run_identity(r))]} and {where} both prune the same run at the same "
                            "setting; each run counts once")
        if None not in (r["before"]["val_loss"], r["after"]["val_loss"]):
            deltas.setdefault(key, []).append(r["after"]["val_loss"] - r["before"]["val_loss"])
    return deltas
