"""The run-log format: write, parse, truncate.

A training log has one event per line, ``{step} train|val|hella {value}`` (see experiment/train_gpt.py
and ../shared/data/seed_logs). Lines that do not fit are skipped and counted; when a step is logged
twice (a resumed run), the last value wins. The samples file beside it holds blocks that start with
``=== step N ===``. """

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from utils.cli import UserError
from utils.io import atomic_write

KINDS = ("train", "val", "hella")
FORMATS = {"train": ".6f", "val": ".4f", "hella": ".4f"}  # the original's precision per kind
MAX_STEP = 10**9  # larger step numbers are corrupt lines, not runs


@dataclass
class RunLog:
    label: str
    series: dict[str, dict[int, float]] = field(default_factory=lambda: {k: {} for k in KINDS})
    n_lines: int = 0
    n_malformed: int = 0

    def steps_values(self, kind: str) -> tuple[list[int], list[float]]:
        """The ``kind`` series sorted by step."""
        items = sorted(self.series[kind].items())
        return [s for s, _ in items], [v for _, v in items]


def parse_line(line: str) -> tuple[int, str, float] | None:
    """``(step, kind, value)`` or None when the line is not a valid event."""
    parts = line.split()
    if len(parts) != 3 or parts[1] not in KINDS:
        return None
    try:
        step, value = int(parts[0]), float(parts[2])
    except ValueError:
        return None
    # an accuracy lies in [0, 1], a loss is finite and >= 0
    valid = 0.0 <= value <= 1.0 if parts[1] == "hella" else math.isfinite(value) and value >= 0
    if not 0 <= step <= MAX_STEP or not valid:
        return None
    return step, parts[1], value


def parse_log(lines, label: str = "run") -> RunLog:
    """Parse an iterable of lines. Blank lines are ignored, not counted as malformed."""
    run = RunLog(label=label)
    for line in lines:
        if not line.strip():
            continue
        run.n_lines += 1
        event = parse_line(line)
        if event is None:
            run.n_malformed += 1
            continue
        step, kind, value = event
        run.series[kind][step] = value  # a repeated step: the last one logged wins
    return run


def read_log(path: str | Path, label: str | None = None) -> RunLog:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"log file not found: {path}")
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            run = parse_log(f, label or path.stem)
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from e
    if not any(run.series.values()):
        raise UserError(f"{path}: no train/val/hella events found ({run.n_malformed} malformed lines)")
    return run


def format_event(step: int, kind: str, value: float) -> str:
    return f"{step} {kind} {value:{FORMATS[kind]}}"


def append_lines(path: str | Path, lines: list[str]) -> None:
    with open(path, "a") as f:
        f.write("".join(line + "\n" for line in lines))


def truncate_log(path: str | Path, step: int) -> None:
    """Keep what happened before checkpoint ``step`` was written: every line of earlier steps plus the
    evaluation lines of ``step`` itself (they precede its checkpoint); drop torn lines and the rest."""
    path = Path(path)
    if path.is_file():
        keep = [line.strip() + "\n" for line in path.read_text().splitlines()
                if (e := parse_line(line)) and (e[0] < step or (e[0] == step and e[1] != "train"))]
        atomic_write(path, "".join(keep))


SAMPLE_HEADER = re.compile(r"^=== step (\d+) ===$")


def truncate_samples(path: str | Path, step: int) -> None:
    """Drop the sample blocks written after checkpoint ``step``."""
    path = Path(path)
    if not path.is_file():
        return
    keep, current = [], 0
    for line in path.read_text().splitlines(keepends=True):
        if m := SAMPLE_HEADER.match(line.rstrip("\n")):
            current = int(m[1])
        if current <= step:
            keep.append(line)
    atomic_write(path, "".join(keep))
