"""One report schema (torch-free, so compare.py stays light): written by experiment/test_gpt.py,
pruning/wanda.py and pruning/sweep.py through evaluation/evaluator.py, read by experiment/compare.py.

An evaluation block (``Evaluation.evaluate``)::

    {"params_total": int, "params_nonzero": int,
     "val_loss": float | None, "perplexity": float | None, "val_tokens": int,
     "hellaswag": {"seed" | "lm-eval": {"acc": float, "acc_norm": float, "n": int}}}

A report (JSON) is one of::

    {"kind": "eval", "version": 1, HEADER, "settings": {..., "eval": EVAL},
     "metrics": BLOCK, "timings": {...}, "machine": {...}}                   # test_gpt.py --json
    {"kind": "pruning", "version": 1, HEADER, "settings": {..., "eval": EVAL},
     "pruning": {method, sparsity, nm, mask_groups, pruned_layers, ...},
     "before": BLOCK, "after": BLOCK, "timings": {...}, "machine": {...},
     "layers": [...]}                                                        # wanda.py / sweep.py --json

"machine" (utils.precision.machine) names the CPU / GPU, threads and torch the timings were measured with.

    HEADER = "model", "source", "step", "trained_on", "train_seed", "fingerprint", "run_id", "pruning", "parent"

Identity by content (utils/identity.py): the header's "fingerprint" is the hash of the measured weights,
"run_id" the training run they come from ("train_seed" its seed, which pairs the runs of a seeded study;
reports written before it have none, see experiment/tables.train_seed), "pruning" the passes that made
them (empty: dense) and "parent" the fingerprint before the last pass; ``settings["eval"]`` holds
everything the numbers of a block depend on, the data and HellaSwag examples by fingerprint ("data_id",
"hellaswag_id") beside their paths. Reuse (``--before-json``, sweeps) needs an equal fingerprint and equal
settings, paths aside; a report written before fingerprints is never reused.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from utils.cli import UserError
from utils.io import fmt

KINDS = ("eval", "pruning")
VERSION = 1
BLOCK_KEYS = ("params_total", "params_nonzero", "val_loss", "perplexity", "val_tokens", "hellaswag")
CONVENTIONS = ("seed", "lm-eval")  # evaluation.hellaswag.HELLASWAG_CONVENTIONS, without importing torch here


def pass_summary(pruning: dict) -> dict:
    """What one pruning pass did, without its per-layer record."""
    return {k: pruning.get(k) for k in ("method", "sparsity", "nm", "mask_groups")}


PATH_KEYS = ("data", "hellaswag")  # shown in settings.eval; compared through data_id and hellaswag_id


def comparable(settings: dict, only: tuple[str, ...] | None = None) -> dict:
    """``settings`` flattened to {"eval.val_batches": 20, ...} without the paths (identity is by content)."""
    flat = {}
    for key, value in settings.items():
        if only is not None and key not in only:
            continue
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items() if k not in PATH_KEYS})
        else:
            flat[key] = value
    return flat


def check_same(report: dict, fingerprint: str, settings: dict, where, only: tuple[str, ...] | None = None) -> None:
    """A UserError unless ``report`` measured the model of ``fingerprint`` with ``settings`` (paths aside)."""
    if report.get("fingerprint") is None or "data_id" not in report["settings"].get("eval", {}):
        raise UserError(f"{where} was written before reports carried fingerprints, so what it measured is "
                        "unknown; it cannot be reused (delete it, or write the new reports elsewhere)")
    if report["fingerprint"] != fingerprint:
        raise UserError(f"{where} measured another model (weights {report['fingerprint']}, these {fingerprint})")
    have, want = comparable(report["settings"], only), comparable(settings, only)
    differs = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
    if differs:
        raise UserError(f"{where} was measured with other settings ({', '.join(differs)})")


def describe_block(block: dict) -> str:
    """One line: val loss, perplexity, HellaSwag per convention."""
    parts = []
    if block["val_loss"] is not None:
        parts.append(f"val loss {block['val_loss']:.4f} | perplexity {block['perplexity']:.2f} "
                     f"({block['val_tokens']:,} tokens)")
    for conv, h in block["hellaswag"].items():
        parts.append(f"hellaswag[{conv}] acc {h['acc']:.4f} acc_norm {h['acc_norm']:.4f} (n={h['n']})")
    return " | ".join(parts) or "no evaluation"


# ----------------------------------------------------------------------------- reading reports

def _number(value, low=0.0, high=math.inf) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and low <= value <= high)


def check_block(block, where: str) -> dict:
    """``block`` if it is a valid evaluation block, else a UserError naming what is wrong."""
    missing = [k for k in BLOCK_KEYS if not isinstance(block, dict) or k not in block]
    if missing:
        raise UserError(f"{where}: not an evaluation block (missing {', '.join(missing)})")
    if not all(isinstance(block[k], int) and block[k] >= 0 for k in ("params_total", "params_nonzero",
                                                                     "val_tokens")):
        raise UserError(f"{where}: parameter and token counts must be integers >= 0")
    for key in ("val_loss", "perplexity"):
        if block[key] is not None and not _number(block[key]):
            raise UserError(f"{where}: {key} must be a finite number >= 0 or null, got {block[key]!r}")
    if not isinstance(block["hellaswag"], dict):
        raise UserError(f"{where}: hellaswag must be an object")
    for conv, h in block["hellaswag"].items():
        ok = (conv in CONVENTIONS and isinstance(h, dict) and _number(h.get("acc"), 0, 1)
              and _number(h.get("acc_norm"), 0, 1) and isinstance(h.get("n"), int) and h["n"] > 0)
        if not ok:
            raise UserError(f"{where}: hellaswag[{conv!r}] must hold acc, acc_norm in [0, 1] and n >= 1")
    return block


def read_report(path, kind: str | None = None) -> dict:
    """A report written by this repository's scripts, validated; any problem is a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"report not found: {path}")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a readable JSON file ({e})") from e
    if not isinstance(report, dict) or report.get("kind") not in KINDS:
        old = isinstance(report, dict) and ("before" in report or "val_loss" in report)
        raise UserError(f"{path}: " + ("written by an older test_gpt.py/wanda.py (no 'kind'); rerun it" if old
                                       else "not a report of test_gpt.py, wanda.py or sweep.py"))
    if kind is not None and report["kind"] != kind:
        raise UserError(f"{path}: a {report['kind']!r} report, expected a {kind!r} report")
    if not isinstance(report.get("version"), int) or report["version"] > VERSION:
        raise UserError(f"{path}: report version {report.get('version')!r}; this code reads up to {VERSION}")
    if not isinstance(report.get("settings"), dict) or not isinstance(report["settings"].get("eval"), dict):
        raise UserError(f"{path}: no settings.eval object")
    for stage in ("metrics",) if report["kind"] == "eval" else ("before", "after"):
        check_block(report.get(stage), f"{path} [{stage}]")
    if report["kind"] == "pruning" and not isinstance(report.get("pruning"), dict):
        raise UserError(f"{path}: no 'pruning' object")
    return report


# ----------------------------------------------------------------------------- tables

HELLASWAG_CHANCE = 0.25


def at_chance(acc: float, n: int) -> bool:
    """True if ``acc`` on ``n`` examples is within two standard errors of guessing (0.25)."""
    return acc < HELLASWAG_CHANCE + 2 * math.sqrt(HELLASWAG_CHANCE * (1 - HELLASWAG_CHANCE) / max(n, 1))


def hellaswag_cell(block: dict, convention: str = "seed") -> str:
    h = block["hellaswag"].get(convention)
    if h is None:
        return "-"
    return f"{h['acc_norm']:.4f}" + (" (at chance)" if at_chance(h["acc_norm"], h["n"]) else "")


def setting_label(pruning: dict) -> str:
    """``2:4`` for N:M, ``50%`` for unstructured."""
    nm = pruning.get("nm")
    return f"{nm[0]}:{nm[1]}" if nm else f"{100 * pruning['sparsity']:g}%"


PRUNING_HEADERS = ["model", "method", "sparsity", "nonzero after", "val loss before", "val loss after",
                   "Δ val loss", "ppl after", "ppl ratio", "HellaSwag after"]


def pruning_rows(reports: list[dict]) -> list[list[str]]:
    """One row per pruning report (PRUNING_HEADERS): the change against the dense model."""
    rows = []
    for r in reports:
        p, before, after = r["pruning"], r["before"], r["after"]
        loss, ppl = (before["val_loss"], after["val_loss"]), (before["perplexity"], after["perplexity"])
        has_loss = None not in loss
        rows.append([str(r.get("label") or r["model"]), p["method"], setting_label(p), f"{after['params_nonzero']:,}",
                     fmt(loss[0], ".4f"), fmt(loss[1], ".4f"), f"{loss[1] - loss[0]:+.4f}" if has_loss else "-",
                     fmt(ppl[1], ".2f"), f"{ppl[1] / ppl[0]:.3f}" if has_loss and ppl[0] else "-",
                     hellaswag_cell(after)])
    return rows
