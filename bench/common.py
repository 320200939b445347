"""Shared helpers for the benchmarks: interleaved repetitions, medians, RESULTS.md sections."""

from __future__ import annotations

import argparse
import re
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def bench_parser(doc: str) -> argparse.ArgumentParser:
    """A benchmark's argument parser: its docstring as the description, and --no-write."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-write", action="store_true", help="print only, do not update bench/RESULTS.md")
    return ap


def interleaved_medians(cases: dict, repeats: int = 7, warmup: int = 2, settle: int = 0,
                        results: dict | None = None) -> dict[str, float]:
    """Run every case once per round, ``repeats`` rounds, and return the median seconds per case.

    Interleaving spreads machine noise (other processes, turbo) evenly over the cases compared.
    ``settle`` untimed calls precede each timed one, so a case does not pay for the allocator and
    cache state the case before it left behind. ``results``, if given, receives each case's last return value.
    """
    for _ in range(warmup):
        for fn in cases.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            for _ in range(settle):
                fn()
            t0 = time.perf_counter()
            out = fn()
            times[name].append(time.perf_counter() - t0)
            if results is not None:
                results[name] = out
    return {name: statistics.median(ts) for name, ts in times.items()}


def machine_line() -> str:
    """The CPU (model name and whether it multiplies bf16 natively), threads, torch and the date."""
    from utils.precision import machine

    m = machine()
    return (f"CPU: {m['cpu']} ({m['cpu_bf16'] or 'no native bf16'}), {m['threads']} threads, "
            f"torch {m['torch']}, {time.strftime('%Y-%m-%d')}")


def write_section(name: str, body: str) -> None:
    """Replace (or append) the ``## name`` section of bench/RESULTS.md."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\nEvery figure is a ratio of " \
        "medians over interleaved repetitions measured in one run; rerun the command to regenerate.\n"
    section = f"## {name}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(name)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    RESULTS.write_text(text.rstrip() + "\n")


def publish(name: str, body: str, write: bool) -> None:
    """Print a benchmark's table and, unless --no-write, store it as the ``## name`` section of RESULTS.md."""
    print(body)
    if write:
        write_section(name, body)
