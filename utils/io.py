"""Small file helpers every layer uses: one atomic write, one number formatter."""

from __future__ import annotations

import errno
import glob
import json
import os
import resource
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from utils.cli import UserError

FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)  # a full disk, the file size limit (ulimit -f), a quota


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
    except OSError as e:
        if e.errno in FULL or e.errno is None:  # None: a library's short write (numpy: "N requested and M written")
            raise UserError(f"cannot write {path}: {e.strerror or e} ({space_note(path.parent)})") from e
        raise
    finally:
        tmp.unlink(missing_ok=True)


def space_note(directory) -> str:
    """"1,234 MB free on its file system" (and the file size limit where one is set)."""
    free = shutil.disk_usage(directory).free
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    size = "" if limit == resource.RLIM_INFINITY else f"; files are limited to {limit / 2**20:,.1f} MB (ulimit -f)"
    return f"{free / 2**20:,.0f} MB free on its file system{size}"


def check_space(path, nbytes: int, what: str) -> None:
    """A UserError, before hours of work, when a file of ``nbytes`` cannot be written at ``path``: too little
    free space where it goes, or a file size limit below it."""
    directory = Path(path).resolve().parent
    while not directory.exists():
        directory = directory.parent
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if nbytes > shutil.disk_usage(directory).free or (limit != resource.RLIM_INFINITY and nbytes > limit):
        raise UserError(f"{what} {path} needs ~{nbytes / 2**20:,.0f} MB, but there is {space_note(directory)}")


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=2) + "\n")


def remove_dead_tmp(path: str | os.PathLike, min_age_s: float = 600) -> None:
    """Remove the temp siblings ``.NAME.PID.tmp`` (files or directories) of ``path`` that a write killed
    before its rename left behind: PID is gone here, and nothing has touched the file for ``min_age_s``
    (a writer on another host sharing the filesystem has a PID this host cannot see)."""
    path = Path(path)
    remove_dead_writers(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"), min_age_s)


def remove_dead_writers(temp_paths, min_age_s: float = 600) -> None:
    """Remove the ``.NAME.PID.tmp`` files or directories among ``temp_paths`` whose PID is gone here and
    that nothing has touched for ``min_age_s``."""
    for stale in temp_paths:
        try:
            recent = time.time() - stale.stat().st_mtime < min_age_s
        except OSError:
            continue
        if recent or alive(stale.name.rsplit(".", 2)[-2]):
            continue
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def alive(pid: str) -> bool:
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
