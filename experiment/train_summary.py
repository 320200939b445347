"""The end of a training run: its final and best values beside GPT-2 / GPT-3, printed
as a table and written to out-dir/summary.json."""

from __future__ import annotations

from pathlib import Path

from utils.io import atomic_write_json, fmt
from utils.runlog import read_log

# GPT-2 val loss = OpenAI 124M checkpoint on FineWeb-EDU val; HellaSwag acc_norm from the GPT-2 / GPT-3
# papers as quoted by build-nanogpt.
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
GPT2_TRAIN_TOKENS = 10e9  # one epoch of FineWeb-EDU sample-10BT
# dense bf16 peak FLOP/s per GPU (vendor datasheets, SXM parts): the denominator of MFU
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12}


def peak_flops(device: str, processes: int = 1) -> float | None:
    """bf16 peak of ``processes`` known CUDA GPUs, else None (no MFU is reported on the CPU)."""
    import torch

    if torch.device(device).type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    peak = next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)
    return None if peak is None else peak * processes


def flops_per_token(params: int, n_layer: int, n_embd: int, seq_len: int) -> int:
    """Training FLOPs per token: 6N for the matmuls plus the attention scores (PaLM appendix B)."""
    return 6 * params + 12 * n_layer * n_embd * seq_len


def final_and_best(series: dict[int, float], best=min) -> dict:
    """{"final", "final_step", "best", "best_step"} of a {step: value} series (None when empty)."""
    if not series:
        return {"final": None, "final_step": None, "best": None, "best_step": None}
    final_step = max(series)
    best_step = best(sorted(series), key=series.get)  # the earliest step of the best value
    return {"final": series[final_step], "final_step": final_step, "best": series[best_step],
            "best_step": best_step}


def summary_table(stats: dict) -> str:
    """This run against the GPT-2 / GPT-3 reference numbers, plus final and best values and the gaps."""
    val, hella = stats["val_loss"], stats["hellaswag"]
    rows = [("this run: " + stats["model"], stats["params"], val["final"], hella["final"])] + BASELINES
    lines = [f"{'model':<32} {'params':>14} {'val loss':>9} {'hellaswag':>10}", "-" * 68]
    lines += [f"{name:<32} {params:>14,} {fmt(v, '.4f'):>9} {fmt(h, '.4f'):>10}" for name, params, v, h in rows]
    lines.append("-" * 68)
    gpt2_val, gpt2_hella, gpt3_hella = BASELINES[0][2], BASELINES[0][3], BASELINES[1][3]
    if val["final"] is not None:
        gap = "beaten" if val["best"] < gpt2_val else f"{val['best'] - gpt2_val:+.4f} to go"
        lines.append(f"val loss: final {val['final']:.4f} (step {val['final_step']}), best {val['best']:.4f} "
                     f"(step {val['best_step']}); GPT-2 124M {gpt2_val:.4f} -> {gap}")
    if hella["final"] is not None:
        lines.append(f"hellaswag acc_norm (n={stats['hellaswag_n']}): final {hella['final']:.4f} "
                     f"(step {hella['final_step']}), best {hella['best']:.4f} (step {hella['best_step']}); "
                     f"GPT-2 124M {gpt2_hella:.4f} ({hella['final'] - gpt2_hella:+.4f}), "
                     f"GPT-3 124M {gpt3_hella:.4f} ({hella['final'] - gpt3_hella:+.4f})")
    else:
        lines.append("hellaswag: not evaluated")
    tokens = stats["tokens_seen"]
    first = stats.get("first_step_s")
    lines.append(f"tokens seen {tokens:,} ({tokens / GPT2_TRAIN_TOKENS:.2%} of one 10B-token epoch), "
                 f"{fmt(stats['tokens_per_sec'], ',.0f')} tokens/s"
                 f"{'' if first is None else f' (the first step timed apart: {first:.1f} s, with any compilation)'}, "
                 f"wall time {stats['wall_time_s'] / 60:.1f} min, final checkpoint {stats['final_checkpoint']}")
    if stats.get("mfu") is not None:
        lines.append(f"MFU {stats['mfu']:.1%} of the bf16 peak ({stats['flops_per_token']:,} FLOPs per token)")
    return "\n".join(lines)


def steady_throughput(step_seconds: list[float], tokens_per_step: int) -> tuple[float | None, float | None]:
    """(tokens/s, seconds of the first step) of one session's training steps. The first step is timed apart:
    it pays for torch.compile's compilation (under compile, minutes on a GPU) and the first allocations, so
    tokens/s counts the steps after it; a session of one step has only that one to count."""
    if not step_seconds:
        return None, None
    steady = step_seconds[1:] or step_seconds
    return len(steady) * tokens_per_step / max(sum(steady), 1e-9), step_seconds[0]


def write_summary(out: Path, *, model: str, preset: str, params: int, tokens_per_step: int,
                  hellaswag_n: int | None, step_seconds: list[float], train_time: float, wall_time: float,
                  final_checkpoint: str, flops_per_token: int | None = None, peak: float | None = None,
                  machine: dict | None = None) -> str:
    """Read the run's log (its current lineage), write summary.json and return the table. ``step_seconds``:
    the time of every training step of this session (none: a resumed run that was already finished);
    ``machine`` what they were measured on (utils.precision.machine)."""
    log = read_log(out / "log.txt")
    val = final_and_best(log.series["val"], best=min)
    hella = final_and_best(log.series["hella"], best=max)
    tokens_seen = (val["final_step"] or 0) * tokens_per_step
    tokens_per_sec, first_step = steady_throughput(step_seconds, tokens_per_step)
    stats = {"model": model, "preset": preset, "params": params, "val_loss": val, "hellaswag": hella,
             "hellaswag_n": hellaswag_n, "tokens_seen": tokens_seen,
             "tokens_per_sec": tokens_per_sec if tokens_per_sec is not None else tokens_seen / max(train_time, 1e-9),
             "first_step_s": first_step, "train_time_s": train_time, "wall_time_s": wall_time,
             "final_checkpoint": final_checkpoint, "flops_per_token": flops_per_token, "machine": machine}
    stats["mfu"] = (stats["tokens_per_sec"] * flops_per_token / peak) if flops_per_token and peak else None
    table = summary_table(stats)
    atomic_write_json(out / "summary.json", {**stats, "table": table.splitlines()})
    return table
