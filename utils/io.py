"""Small file helpers every layer uses: one atomic write, one number formatter."""

from __future__ import annotations

import glob
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable[[IO[bytes]], None]) -> None:
    """Write ``data`` (bytes, text, or a function that writes into a binary file) to a temp file in the
    same directory, fsync it, then rename it over ``path``: a crash never leaves a torn ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_tmp(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=2) + "\n")


def remove_dead_tmp(path: str | os.PathLike, min_age_s: float = 600) -> None:
    """Remove the temp siblings ``.NAME.PID.tmp`` (files or directories) of ``path`` that a write killed
    before its rename left behind: PID is gone here, and nothing has touched the file for ``min_age_s``
    (a writer on another host sharing the filesystem has a PID this host cannot see)."""
    path = Path(path)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        try:
            recent = time.time() - stale.stat().st_mtime < min_age_s
        except OSError:
            continue
        if recent or _alive(stale.name.rsplit(".", 2)[-2]):
            continue
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (ValueError, OverflowError, PermissionError):  # not a PID, or another user's process
        return True
    return True


def remove_stale_tmp(directory: str | os.PathLike) -> None:
    """Delete ``.*.tmp`` files that ``atomic_write`` left behind when its process was killed."""
    for p in Path(directory).glob(".*.tmp"):  # nothing in a missing directory
        if p.is_file():
            p.unlink(missing_ok=True)


def fmt(value, spec: str = "", missing: str = "-") -> str:
    """``format(value, spec)``, or ``missing`` for None."""
    return missing if value is None else format(value, spec)


def text_table(headers: list[str], rows: list[list[str]], n_left: int = 1) -> str:
    """Aligned plain-text table: the first ``n_left`` (text) columns left-aligned, numbers right-aligned."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]

    def line(cells):
        return "  ".join(c.ljust(w) if i < n_left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(headers), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def markdown_table(headers: list[str], rows: list[list[str]], n_left: int = 1) -> str:
    align = ["---"] * n_left + ["---:"] * (len(headers) - n_left)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)
