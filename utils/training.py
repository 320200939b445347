"""Reusable training pieces: presets, lr schedule, val loss, sampling, run logs, the baseline table.

Used by experiment/train_gpt.py (and the sampling/eval helpers by generate.py and test_gpt.py).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from utils.runlog import parse_line

REPO = Path(__file__).resolve().parents[1]

# Training presets. "smoke" trains a tiny model 200 steps (~3 CPU-minutes of work on 2 cores, evals included);
# "gpt2-124m" is SPEC section 3 (build-nanogpt / GPT-3 small hyperparameters).
# total_batch None = exactly 2 micro-batches (so 1 or 2 processes see the same tokens).
PRESETS = {
    "smoke": dict(
        model=dict(n_layer=2, n_head=2, n_embd=64, block_size=64),
        data=None,  # the builtin corpus, prepared on first use
        micro_batch=4, seq_len=64, total_batch=None, max_steps=200, warmup_steps=20,
        lr=3e-3, min_lr=3e-4, weight_decay=0.1, grad_clip=1.0, eval_every=50, val_batches=20,
        hellaswag_limit=50,
    ),
    "gpt2-124m": dict(
        model=dict(),
        data=str(REPO / "data" / "edu_fineweb10B"),
        micro_batch=64, seq_len=1024, total_batch=524_288, max_steps=19_073, warmup_steps=715,
        lr=6e-4, min_lr=6e-5, weight_decay=0.1, grad_clip=1.0, eval_every=250, val_batches=20,
        hellaswag_limit=None,
    ),
}

# SPEC section 4: reference numbers (GPT-2 val loss = OpenAI 124M checkpoint on FineWeb-EDU val;
# HellaSwag acc_norm from the GPT-2 / GPT-3 papers as quoted by build-nanogpt).
BASELINES = [
    # name, params, val loss, hellaswag acc_norm
    ("GPT-2 124M (OpenAI)", 124_000_000, 3.2924, 0.294463),
    ("GPT-3 124M (paper)", 124_000_000, None, 0.337),
    ("GPT-2 350M (OpenAI)", 350_000_000, None, 0.375224),
    ("GPT-3 350M (paper)", 350_000_000, None, 0.436),
    ("GPT-2 774M (OpenAI)", 774_000_000, None, 0.431986),
    ("GPT-3 760M (paper)", 760_000_000, None, 0.510),
    ("GPT-2 1558M (OpenAI)", 1_558_000_000, None, 0.488946),
    ("GPT-3 1.3B (paper)", 1_300_000_000, None, 0.547),
]
GPT2_TRAIN_TOKENS = 10e9  # one epoch of FineWeb-EDU sample-10BT (GPT-3 small budget in build-nanogpt: 300B)


def cosine_lr(step: int, max_lr: float, min_lr: float, warmup_steps: int, max_steps: int) -> float:
    """Linear warmup to ``max_lr`` over ``warmup_steps``, cosine decay to ``min_lr`` at ``max_steps``,
    then ``min_lr``."""
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr
    ratio = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (max_lr - min_lr)


# ----- run logs: "{step} train {loss:.6f}", "{step} val {loss:.4f}", "{step} hella {acc_norm:.4f}" -----

def read_log(path: str | os.PathLike) -> list[tuple[int, str, float]]:
    """(step, kind, value) for every well-formed line of a run log (a torn last line is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [event for event in map(parse_line, path.read_text().splitlines()) if event is not None]


def _rewrite(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def truncate_log(path: str | os.PathLike, step: int) -> None:
    """Keep what happened before checkpoint ``step`` was written: every line of earlier steps plus the
    evaluation lines of ``step`` itself (they precede its checkpoint); drop torn lines and the rest."""
    path = Path(path)
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        event = parse_line(line)
        if event and (event[0] < step or (event[0] == step and event[1] != "train")):
            keep.append(line.strip() + "\n")
    _rewrite(path, "".join(keep))


SAMPLE_HEADER = re.compile(r"^=== step (\d+) ===$")


def truncate_samples(path: str | os.PathLike, step: int) -> None:
    """Drop the sample blocks written after checkpoint ``step`` (blocks start with '=== step N ===')."""
    path = Path(path)
    if not path.is_file():
        return
    keep, current = [], 0
    for line in path.read_text().splitlines(keepends=True):
        m = SAMPLE_HEADER.match(line.rstrip("\n"))
        if m:
            current = int(m[1])
        if current <= step:
            keep.append(line)
    _rewrite(path, "".join(keep))


# ----- checkpoints of a run directory -----

_CKPT_NAME = re.compile(r"^model_(\d+)\.pt$")


def checkpoint_path(out_dir: str | os.PathLike, step: int) -> Path:
    return Path(out_dir) / f"model_{step:05d}.pt"


def run_checkpoints(out_dir: str | os.PathLike) -> list[Path]:
    """Checkpoints of a run directory, newest (highest step) first."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    found = [(int(m[1]), p) for p in out_dir.iterdir() if (m := _CKPT_NAME.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


# ----- end-of-run statistics -----

def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def summary_table(stats: dict) -> str:
    """Markdown-ish table of this run against the GPT-2 / GPT-3 reference numbers, plus the gaps."""
    rows = [("this run: " + stats["model"], stats["params"], stats.get("final_val_loss"),
             stats.get("best_hellaswag"))] + BASELINES
    lines = [f"{'model':<32} {'params':>14} {'val loss':>9} {'hellaswag':>10}", "-" * 68]
    for name, params, val, hella in rows:
        lines.append(f"{name:<32} {params:>14,} {_fmt(val, '.4f'):>9} {_fmt(hella, '.4f'):>10}")
    lines.append("-" * 68)
    final, best = stats.get("final_val_loss"), stats.get("best_val_loss")
    gpt2_val, gpt2_hella, gpt3_hella = BASELINES[0][2], BASELINES[0][3], BASELINES[1][3]
    if final is not None:
        lines.append(f"val loss: final {final:.4f} (step {stats.get('final_step')}), best {best:.4f} "
                     f"(step {stats.get('best_val_step')}); GPT-2 124M {gpt2_val:.4f} -> "
                     f"{'beaten' if best < gpt2_val else f'{best - gpt2_val:+.4f} to go'}")
    hella = stats.get("best_hellaswag")
    if hella is not None:
        lines.append(f"hellaswag acc_norm: best {hella:.4f} (n={stats.get('hellaswag_n')}); "
                     f"GPT-2 124M {gpt2_hella:.4f} ({hella - gpt2_hella:+.4f}), "
                     f"GPT-3 124M {gpt3_hella:.4f} ({hella - gpt3_hella:+.4f})")
    else:
        lines.append("hellaswag: not evaluated")
    tokens = stats["tokens_seen"]
    lines.append(f"tokens seen {tokens:,} ({tokens / GPT2_TRAIN_TOKENS:.2%} of one 10B-token epoch), "
                 f"{stats['tokens_per_sec']:,.0f} tokens/s, wall time {stats['wall_time_s'] / 60:.1f} min, "
                 f"params {stats['params']:,}")
    return "\n".join(lines)
