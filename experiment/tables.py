"""Summaries and tables of run logs and evaluation/pruning reports, as compare.py prints and draws them."""

from __future__ import annotations

import json
import math
from pathlib import Path

from utils.cli import UserError
from utils.runlog import RunLog


def default_labels(paths: list[Path]) -> list[str]:
    """File stems; where two stems collide (e.g. logs/a/log.txt, logs/b/log.txt), ``parent/stem``."""
    stems = [p.stem for p in paths]
    return [f"{p.parent.name}/{p.stem}" if stems.count(p.stem) > 1 else p.stem for p in paths]


def ema(values: list[float], factor: float) -> list[float]:
    """Exponential moving average, ``s = factor*s + (1-factor)*x``, started at the first value."""
    out, s = [], None
    for x in values:
        s = x if s is None else factor * s + (1 - factor) * x
        out.append(s)
    return out


def _argbest(series: dict[int, float], best) -> tuple[int | None, float | None]:
    """Step and value of the best finite entry (earliest step on ties); (None, None) if none."""
    finite = [(s, v) for s, v in sorted(series.items()) if math.isfinite(v)]
    if not finite:
        return None, None
    value = best(v for _, v in finite)
    return next(s for s, v in finite if v == value), value


def _last(series: dict[int, float]) -> float | None:
    return series[max(series)] if series else None


def summarize(run: RunLog) -> dict:
    """Min train / min val (+step) / max HellaSwag (+step), the last step and the last values."""
    _, min_train = _argbest(run.series["train"], min)
    min_val_step, min_val = _argbest(run.series["val"], min)
    max_hella_step, max_hella = _argbest(run.series["hella"], max)
    all_steps = [s for series in run.series.values() for s in series]
    return {
        "label": run.label,
        "min_train": min_train,
        "min_val": min_val, "min_val_step": min_val_step,
        "max_hella": max_hella, "max_hella_step": max_hella_step,
        "last_step": max(all_steps) if all_steps else None,
        "last_train": _last(run.series["train"]),
        "last_val": _last(run.series["val"]),
        "last_hella": _last(run.series["hella"]),
    }


SUMMARY_COLUMNS = [  # (header, key, format)
    ("run", "label", "{}"),
    ("min train", "min_train", "{:.4f}"),
    ("min val", "min_val", "{:.4f}"),
    ("@ step", "min_val_step", "{}"),
    ("max hella", "max_hella", "{:.4f}"),
    ("@ step", "max_hella_step", "{}"),
    ("last step", "last_step", "{}"),
    ("last train", "last_train", "{:.4f}"),
    ("last val", "last_val", "{:.4f}"),
    ("last hella", "last_hella", "{:.4f}"),
]


def _cell(value, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def summary_rows(summaries: list[dict]) -> tuple[list[str], list[list[str]]]:
    headers = [h for h, _, _ in SUMMARY_COLUMNS]
    rows = [[_cell(s[key], fmt) for _, key, fmt in SUMMARY_COLUMNS] for s in summaries]
    return headers, rows


# ----------------------------------------------------------------------------- pruning reports

def load_pruning_report(path: str | Path) -> dict:
    """Read a pruning/wanda.py report; needs ``before`` and ``after`` objects, the rest is optional."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"pruning report not found: {path}")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a readable JSON file ({e})") from e
    if not isinstance(report, dict) or not all(isinstance(report.get(k), dict) for k in ("before", "after")):
        raise UserError(f"{path}: not a pruning report (needs 'before' and 'after' objects)")
    report.setdefault("model_name", path.stem)
    return report


def report_name(report: dict) -> str:
    return str(report.get("label") or report.get("model_name") or "model")


def report_sparsity(report: dict) -> str:
    """``2:4`` for N:M, ``50%`` for unstructured, ``-`` when unknown."""
    nm = report.get("nm")
    if isinstance(nm, (list, tuple)) and len(nm) == 2:
        return f"{nm[0]}:{nm[1]}"
    s = report.get("sparsity")
    return f"{100 * s:g}%" if isinstance(s, (int, float)) else "-"


# names other versions of pruning/wanda.py use for the same numbers
METRIC_ALIASES = {"params_nonzero": "nonzero", "params_total": "total", "perplexity": "ppl"}


def report_metric(report: dict, stage: str, key: str) -> float | None:
    """A number from ``report[stage]`` (under its documented name or its alias), else None."""
    value = report[stage].get(key, report[stage].get(METRIC_ALIASES.get(key, key)))
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


PRUNING_COLUMNS = [  # (header, stage, key, format)
    ("nonzero before", "before", "params_nonzero", "{:,}"),
    ("nonzero after", "after", "params_nonzero", "{:,}"),
    ("val loss before", "before", "val_loss", "{:.4f}"),
    ("val loss after", "after", "val_loss", "{:.4f}"),
    ("ppl before", "before", "perplexity", "{:.2f}"),
    ("ppl after", "after", "perplexity", "{:.2f}"),
    ("hella before", "before", "hellaswag_acc_norm", "{:.4f}"),
    ("hella after", "after", "hellaswag_acc_norm", "{:.4f}"),
]


def pruning_rows(reports: list[dict]) -> tuple[list[str], list[list[str]]]:
    headers = ["model", "method", "sparsity"] + [h for h, _, _, _ in PRUNING_COLUMNS]
    rows = []
    for r in reports:
        row = [report_name(r), str(r.get("method", "-")), report_sparsity(r)]
        row += [_cell(report_metric(r, stage, key), fmt) for _, stage, key, fmt in PRUNING_COLUMNS]
        rows.append(row)
    return headers, rows


# ----------------------------------------------------------------------------- tables

def text_table(headers: list[str], rows: list[list[str]], n_left: int = 1) -> str:
    """Aligned plain-text table: the first ``n_left`` (text) columns left-aligned, numbers right-aligned."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]

    def fmt(cells):
        padded = (c.ljust(w) if i < n_left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        return "  ".join(padded)

    return "\n".join([fmt(headers), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows])


def markdown_table(headers: list[str], rows: list[list[str]], n_left: int = 1) -> str:
    align = ["---"] * n_left + ["---:"] * (len(headers) - n_left)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)
