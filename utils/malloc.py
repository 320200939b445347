"""glibc malloc settings for CPU training loops: keep freed memory in the process.

A training step frees and allocates the same few hundred MB of activations and gradients every step.
With glibc's defaults, every block above 32 MiB (the logits, their gradient, the embedding and head
gradients) and many smaller ones (glibc's mmap threshold moves) are fresh mmaps, and freed heap
tops are given back to the OS, so each step page-faults its memory in again, 4 KiB at a time:
130-170k minor faults per step for the 6-layer benchmark models, which makes CPU steps slower and
their times noisy.

``keep_freed_memory`` tells glibc to serve every block from the heap (no mmap) and never trim it, so
the memory freed by one step is reused by the next without faults (what jemalloc or tcmalloc, the
usual LD_PRELOAD advice for PyTorch on CPUs, achieve). The price: the process keeps its peak
memory until it exits. Effect on CPU training steps: bench/RESULTS.md (`--default-malloc` compares).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Apply the settings above on Linux with glibc; return whether they took effect (no-op elsewhere).
    Affects allocations made from then on, so call it before the training loop."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    return mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
