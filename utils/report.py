"""One evaluation, one report schema: written by experiment/test_gpt.py, pruning/wanda.py and
pruning/sweep.py, read by experiment/compare.py.

An evaluation block (``Evaluation.evaluate``)::

    {"params_total": int, "params_nonzero": int,
     "val_loss": float | None, "perplexity": float | None, "val_tokens": int,
     "hellaswag": {"seed" | "lm-eval": {"acc": float, "acc_norm": float, "n": int}}}

A report (JSON) is one of::

    {"kind": "eval", "version": 1, "model", "source", "step", "trained_on", "settings": {..., "eval": EVAL},
     "metrics": BLOCK, "timings": {...}}                                     # test_gpt.py --json
    {"kind": "pruning", "version": 1, "model", "source", "step", "trained_on", "settings": {..., "eval": EVAL},
     "pruning": {method, sparsity, nm, mask_groups, pruned_layers, ...},
     "before": BLOCK, "after": BLOCK, "timings": {...}, "layers": [...]}     # wanda.py / sweep.py --json

``settings["eval"]`` (``Evaluation.use_val``) holds everything the numbers of a block depend on: two
blocks with the same source and eval settings are the same numbers (a pruning report's "before"
equals test_gpt.py's "metrics"), which is what lets ``--before-json`` and the sweep reuse them.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from utils.cli import REPO, UserError, nonneg_int
from utils.io import fmt

KINDS = ("eval", "pruning")
VERSION = 1
BLOCK_KEYS = ("params_total", "params_nonzero", "val_loss", "perplexity", "val_tokens", "hellaswag")
CONVENTIONS = ("seed", "lm-eval")  # utils.hellaswag.HELLASWAG_CONVENTIONS, without importing torch here
CPU_HELLASWAG_LIMIT = 1000  # the default HellaSwag subset on the CPU (the full 10,042 take ~30 min there)
DEFAULT_VAL_BATCHES = 20  # test_gpt.py --batches, wanda.py / sweep.py --val-batches


# ----------------------------------------------------------------------------- evaluation

def add_hellaswag_args(ap, default_on: bool = True) -> None:
    """--hellaswag, --limit, --no-hellaswag (or --with-hellaswag), --hellaswag-convention."""
    ap.add_argument("--hellaswag", help="HellaSwag jsonl (default: data/hellaswag, else ../shared/data)")
    ap.add_argument("--limit", type=nonneg_int, default=None,
                    help=f"first N HellaSwag examples; 0 = all (default: all on CUDA, the first "
                         f"{CPU_HELLASWAG_LIMIT:,} on other devices)")
    if default_on:
        ap.add_argument("--no-hellaswag", action="store_true", help="skip HellaSwag")
    else:
        ap.add_argument("--with-hellaswag", dest="no_hellaswag", action="store_false",
                        help="also evaluate HellaSwag (off by default: slow)")
    ap.add_argument("--hellaswag-convention", choices=("seed", "lm-eval", "both"), default="both",
                    help="seed: no activity label, acc_norm per token (the training-log number); lm-eval: "
                         "label kept, acc_norm per character, as lm-evaluation-harness computes it; default both")


def hellaswag_limit(limit: int | None, device: str) -> int | None:
    """The number of examples to evaluate (None = all): ``--limit``, 0 = all, default by device."""
    if limit is None:
        return None if str(device).startswith("cuda") else CPU_HELLASWAG_LIMIT
    return limit or None


def conventions_of(flag: str) -> tuple[str, ...]:
    return CONVENTIONS if flag == "both" else (flag,)


def load_hellaswag_examples(args, device: str, note=print):
    """(examples, resolved path, limit) that the flags ask for, loaded and checked before any long
    work; (None, None, None) with --no-hellaswag or when no HellaSwag file is found (``note`` says so)."""
    if args.no_hellaswag:
        return None, None, None
    from utils.hellaswag import default_hellaswag_path, load_hellaswag

    limit = hellaswag_limit(args.limit, device)
    try:
        path = default_hellaswag_path(args.hellaswag)
    except UserError as e:
        if args.hellaswag is not None:
            raise
        note(f"note: HellaSwag skipped ({e})")
        return None, None, None
    examples = load_hellaswag(path, limit)
    how = "all" if limit is None else f"the first {len(examples):,}"
    default = " (the default on this device; --limit 0 for all)" if args.limit is None and limit else ""
    note(f"HellaSwag: {how} examples of {path}{default}, conventions "
         f"{', '.join(conventions_of(args.hellaswag_convention))}")
    return examples, str(Path(path).resolve()), limit


def default_data(trained_on: str | None) -> str:
    """The directory the model was trained on, else data/edu_fineweb10B, else the builtin corpus."""
    for candidate in (trained_on, REPO / "data" / "edu_fineweb10B"):
        if candidate and Path(candidate).is_dir():
            return str(candidate)
    from utils.shards import prepare_builtin_corpus

    return str(prepare_builtin_corpus(REPO / "data" / "builtin"))


class Evaluation:
    """What test_gpt.py, wanda.py and sweep.py do before evaluating: device, precision, seed, the HellaSwag
    examples the flags ask for (before the model: a bad file fails fast), the model of --ckpt / --hf with its
    report header {"model", "source", "step", "trained_on"}; then ``use_val`` sets the val loss up."""

    progress = True

    def __init__(self, args, note=print):
        from utils.checkpoint import load_any_gpt, load_gpt
        from utils.cli import pick_device
        from utils.precision import resolve_amp
        from utils.seed import seed_everything

        self.note = note
        self.device = pick_device(args.device)
        self.amp = resolve_amp(self.device, args.amp)
        seed_everything(args.seed)
        self.examples, self.hellaswag_path, self.limit = load_hellaswag_examples(args, self.device, note=note)
        self.conventions = conventions_of(args.hellaswag_convention) if self.examples else ()
        if args.ckpt is not None:
            self.model, c = load_gpt(args.ckpt, self.device)
            train = c.get("train_config") or c.get("train_args") or {}  # the latter: checkpoints before TrainConfig
            trained_on = c.get("trained_on") or (train.get("data") if isinstance(train, dict) else None)  # pruned
            self.header = {"model": c.get("model_name", "gpt2"), "source": str(args.ckpt), "step": c.get("step"),
                           "trained_on": trained_on}
            # a pruned checkpoint pruned again keeps the record of every pass
            self.pruned_before = [*c.get("earlier_pruning", []), c["pruning"]] if "pruning" in c else []
        else:
            self.model, _ = load_any_gpt(None, args.hf, self.device)
            model = "gpt2" if self.model.config.mlp == "dense" else "ndgpt2"  # an NdLinear export: its family
            self.header = {"model": model, "source": f"hf:{args.hf}", "step": None, "trained_on": None}
            self.pruned_before = []

    def use_val(self, data, split: str, batches: int | None, batch_size: int, seq_len: int, seq_len_flag: str) -> None:
        """The val loader (none when ``batches`` is 0) and ``self.eval``, everything the numbers of an evaluation
        block depend on. ``data`` None: ``default_data``. ``batches`` None: DEFAULT_VAL_BATCHES, or all the
        split holds where that is fewer (a note says so); a number given is never cut, nor read twice."""
        from utils.loader import ShardLoader

        block_size, vocab = self.model.config.block_size, self.model.config.vocab_size
        if seq_len > block_size:
            raise UserError(f"{seq_len_flag} {seq_len} exceeds the model's block size {block_size}")
        data = data or default_data(self.header["trained_on"])
        self.val_loader = (ShardLoader(data, split, batch_size, seq_len, shuffle=False, vocab_size=vocab)
                           if batches != 0 else None)
        if batches is None:
            batches = min(DEFAULT_VAL_BATCHES, self.val_loader.steps_per_epoch)
            if batches < DEFAULT_VAL_BATCHES:
                self.note(f"note: the '{split}' split of {data} holds {batches} val batches of {batch_size} x "
                          f"{seq_len} tokens; using them all (default {DEFAULT_VAL_BATCHES})")
        self.val_batches = batches
        if batches and batches > self.val_loader.steps_per_epoch:  # the loader would wrap: tokens counted twice
            raise UserError(f"{batches} val batches of {batch_size} x {seq_len} tokens asked for, but the "
                            f"'{split}' split of {data} holds {self.val_loader.steps_per_epoch}; ask for fewer")
        self.eval = {"data": str(data), "split": split, "val_batches": batches, "val_batch_size": batch_size,
                     "seq_len": seq_len, "hellaswag": self.hellaswag_path, "hellaswag_limit": self.limit,
                     "conventions": list(self.conventions), "amp": bool(self.amp),
                     "device": str(self.device).split(":")[0]}

    def evaluate(self) -> tuple[dict, float]:
        """(the evaluation block of the model as it is now, seconds): parameter counts, val loss (the loader
        is reset first: the same tokens every call), HellaSwag in each convention."""
        from utils.evaluation import evaluate_loss
        from utils.hellaswag import evaluate_hellaswag
        from utils.params import count_params

        t0, model = time.perf_counter(), self.model
        counts = count_params(model)
        block = {"params_total": counts["total"], "params_nonzero": counts["nonzero"], "val_loss": None,
                 "perplexity": None, "val_tokens": 0, "hellaswag": {}}
        was_training = model.training
        if self.val_loader is not None:
            loss = evaluate_loss(model, self.val_loader, self.val_batches, self.device, self.amp)
            block.update(val_loss=loss, perplexity=math.exp(min(loss, 700)),
                         val_tokens=self.val_batches * self.val_loader.B * self.val_loader.T)
        for convention in self.conventions:
            r = evaluate_hellaswag(model, self.examples, device=self.device, amp=self.amp, progress=self.progress,
                                   convention=convention)
            block["hellaswag"][convention] = {"acc": r["acc"], "acc_norm": r["acc_norm"], "n": r["n"]}
        model.train(was_training)
        return block, time.perf_counter() - t0

    def reusable_dense(self, path) -> dict:
        """The dense block of report ``path`` if it measured this model (source and step) with these eval
        settings; a UserError naming the differences otherwise."""
        report = read_report(path)
        differs = [k for k in sorted(set(self.eval) | set(report["settings"]["eval"]))
                   if self.eval.get(k) != report["settings"]["eval"].get(k)]
        differs += [k for k in ("source", "step") if report.get(k) != self.header[k]]
        if differs:
            raise UserError(f"{path} was measured with other settings ({', '.join(differs)})")
        return report["metrics"] if report["kind"] == "eval" else report["before"]

    def eval_report(self, seed: int, metrics: dict, seconds: float) -> dict:
        return {"kind": "eval", "version": VERSION, **self.header, "settings": {"seed": seed, "eval": self.eval},
                "metrics": metrics, "timings": {"eval_s": seconds}}

    def pruning_report(self, settings: dict, result: dict, before: dict, after: dict, timings: dict) -> dict:
        """``result`` is what pruning.wanda's prune functions return."""
        summary = {k: v for k, v in result.items() if k not in ("layers", "seconds")}
        return {"kind": "pruning", "version": VERSION, **self.header, "settings": settings, "pruning": summary,
                "before": before, "after": after, "timings": {"prune_s": result["seconds"], **timings},
                "layers": result["layers"]}


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
