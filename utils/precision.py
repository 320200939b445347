"""One precision rule for every entry point: bf16 autocast on CUDA; on the CPU fp32, unless this CPU
multiplies bf16 at least as fast as fp32 (AMX / AVX-512 BF16). Elsewhere (AVX2 only) PyTorch emulates
bf16 matmuls, ~50x slower than fp32. ``--amp`` / ``--no-amp`` override the rule in every script."""

from __future__ import annotations

import functools
import platform
import time

import torch


def cpuinfo(field: str) -> str:
    """The first ``field`` line of /proc/cpuinfo ("" off Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _matmul_seconds(dtype: torch.dtype, n: int = 512, reps: int = 5) -> float:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return best


def machine(device: str | torch.device = "cpu") -> dict:
    """What a timing was measured on, for reports and summaries: the CPU (model name and its native bf16, if
    any), torch's threads and version, and the GPU where ``device`` is one."""
    flags = set(cpuinfo("flags").split())
    bf16 = "AMX" if "amx_bf16" in flags else "AVX-512 BF16" if "avx512_bf16" in flags else None
    found = {"cpu": cpuinfo("model name") or platform.processor() or platform.machine(), "cpu_bf16": bf16,
             "threads": torch.get_num_threads(), "torch": torch.__version__}
    if torch.device(device).type == "cuda":
        found["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return found


@functools.cache
def cpu_bf16_is_fast() -> bool:
    """True if a bf16 matmul on this CPU is at least as fast as fp32 (checked once per process).
    Without bf16 instructions in the CPU flags the probe is skipped (an emulated bf16 matmul is slow)."""
    flags = set(cpuinfo("flags").split())
    if flags and not ({"amx_bf16", "avx512_bf16"} & flags):
        return False
    return _matmul_seconds(torch.bfloat16) <= _matmul_seconds(torch.float32)


def resolve_amp(device: str | torch.device, amp: bool | None) -> bool:
    """The flag if given (``--amp`` / ``--no-amp``), else the rule above."""
    if amp is not None:
        return bool(amp)
    kind = torch.device(device).type
    return kind == "cuda" or (kind == "cpu" and cpu_bf16_is_fast())


def autocast(device: str | torch.device, enabled: bool):
    """bf16 autocast context for ``device`` (a no-op when not ``enabled``)."""
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=enabled)
