"""CPU memory settings for training loops: huge pages for PyTorch's big buffers, and a glibc malloc
that keeps freed memory.

A training step frees and allocates the same few hundred MB of activations and gradients every step.
With the defaults, buffers above 32 MiB (logits, their gradient, the embedding gradient) are fresh
mmaps, and with glibc's moving mmap threshold and heap trimming many smaller ones are too, so every
step page-faults its memory in again, 4 KiB at a time: 130-170k minor faults per step for the
6-layer benchmark models, a varying amount that makes step times slow and noisy.

* ``THP_MEM_ALLOC_ENABLE=1`` makes PyTorch's CPU allocator back buffers of 2 MiB and more with
  transparent huge pages (512x fewer faults). PyTorch reads it once, at its first allocation, so it
  must be set before ``import torch``.
* ``mallopt`` raises glibc's mmap threshold to its maximum (32 MiB) and turns heap trimming off, so
  freed blocks below 32 MiB stay in the process for the next step (what jemalloc or tcmalloc, the
  usual LD_PRELOAD advice for PyTorch on CPUs, would do).

Together: about 20x fewer page faults and 5-10% faster CPU steps (bench/RESULTS.md). Linux only;
elsewhere ``tune_cpu_memory`` does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc's upper limit on 64-bit systems


def tune_cpu_memory() -> list[str]:
    """Apply the settings above where possible; return the ones in effect. Call before ``import torch``."""
    if not sys.platform.startswith("linux"):
        return []
    in_effect = []
    if "torch" not in sys.modules:
        os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # an explicit 0 from the user is kept
    if os.environ.get("THP_MEM_ALLOC_ENABLE") == "1":
        in_effect.append("huge pages")
    if _keep_freed_memory():
        in_effect.append("malloc keeps freed memory")
    return in_effect


def _keep_freed_memory() -> bool:
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    return mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
