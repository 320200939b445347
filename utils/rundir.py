"""A run directory belongs to one run: an exclusive lock, its checkpoints, its current lineage.

    out-dir/.lock             fcntl lock held by the writing process (its PID inside)
    out-dir/run.json          what the run is (model, configs)
    out-dir/log.txt, samples.txt, summary.json
    out-dir/model_NNNNN.pt    the current lineage's checkpoints (newest --full-checkpoints resumable)
    out-dir/abandoned/<time>-after-NNNNN/   what a rewind set aside: later checkpoints, old log/samples

A plain ``--resume`` only looks at out-dir/model_*.pt, so it never picks an abandoned checkpoint.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

from utils.checkpoint import is_resumable, load_checkpoint, strip_to_model
from utils.cli import UserError
from utils.io import atomic_write, atomic_write_json, remove_dead_writers
from utils.runlog import truncate_log, truncate_samples

RUN_FILES = ("run.json", "log.txt", "samples.txt", "summary.json")
ABANDONED = "abandoned"
_CKPT_NAME = re.compile(r"^model_(\d+)\.pt$")


def checkpoint_path(out_dir, step: int) -> Path:
    return Path(out_dir) / f"model_{step:05d}.pt"


def checkpoint_step(path) -> int | None:
    m = _CKPT_NAME.match(Path(path).name)
    return int(m[1]) if m else None


def run_checkpoints(out_dir) -> list[Path]:
    """Checkpoints of the current lineage, newest (highest step) first (none where ``out_dir`` is missing)."""
    paths = (p for p in Path(out_dir).glob("model_*.pt") if checkpoint_step(p) is not None)
    return sorted(paths, key=checkpoint_step, reverse=True)


def holds_run(out_dir) -> bool:
    return any((Path(out_dir) / name).exists() for name in RUN_FILES) or bool(run_checkpoints(out_dir))


def lock(out_dir, what: str = "training"):
    """Create ``out_dir`` and take its exclusive lock for the life of this process (the returned file
    must stay open); a second writer gets a one-line UserError naming the holder's PID."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    f = open(out_dir / ".lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        pid = f.read().strip() or "unknown"
        f.close()
        raise UserError(f"{out_dir} is in use by another {what} process (PID {pid}); wait for it to "
                        "finish or choose another --out-dir") from None
    f.truncate(0)
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def newest_resumable(out_dir, warn=lambda msg: print(msg, file=sys.stderr)) -> tuple[Path, dict]:
    """(path, checkpoint) of the newest checkpoint of ``out_dir`` that --resume can continue from;
    unreadable ones and model-only snapshots are skipped with a warning."""
    candidates = run_checkpoints(out_dir)
    if not candidates:
        raise UserError(f"--resume: no checkpoint model_NNNNN.pt in {out_dir}")
    for path in candidates:
        try:
            ckpt = load_checkpoint(path, expect_kind="gpt")
        except UserError as e:
            warn(f"warning: skipping unreadable checkpoint: {e}")
            continue
        if is_resumable(ckpt):
            return path, ckpt
        warn(f"warning: skipping {path.name}: a model-only snapshot (no optimizer state)")
    raise UserError(f"--resume: no resumable checkpoint in {out_dir} ({len(candidates)} unreadable or model-only)")


def clear(out_dir) -> None:
    """--overwrite: delete the run that ``out_dir`` holds (checkpoints, log, samples, abandoned/)."""
    out_dir = Path(out_dir)
    for path in run_checkpoints(out_dir) + [out_dir / name for name in RUN_FILES]:
        path.unlink(missing_ok=True)
    shutil.rmtree(out_dir / ABANDONED, ignore_errors=True)


def set_aside(out_dir, step: int) -> Path | None:
    """Continue the lineage from checkpoint ``step``: later checkpoints move into abandoned/, with a
    copy of the log and samples as they were; the summary (of the old end) goes too."""
    out_dir = Path(out_dir)
    later = [p for p in run_checkpoints(out_dir) if checkpoint_step(p) > step]
    summary = out_dir / "summary.json"
    if not later:
        summary.unlink(missing_ok=True)
        return None
    aside = out_dir / ABANDONED / f"{time.strftime('%Y%m%d-%H%M%S')}-after-{step:05d}"
    aside.mkdir(parents=True, exist_ok=False)
    copy_record(out_dir, aside)
    for path in later + ([summary] if summary.exists() else []):
        path.rename(aside / path.name)
    return aside


def copy_record(src_dir, out_dir) -> None:
    """Copy the log and samples of ``src_dir`` (where they exist) into ``out_dir``."""
    for name in ("log.txt", "samples.txt"):
        if (Path(src_dir) / name).is_file():
            shutil.copy2(Path(src_dir) / name, Path(out_dir) / name)


def apply_policy(out_dir, keep: int, full: int) -> None:
    """Delete all but the newest ``keep`` checkpoints (0 = keep all); strip all but the newest ``full``
    of them to model-only snapshots (0 = all stay resumable)."""
    for i, path in enumerate(run_checkpoints(out_dir)):
        if keep and i >= keep:
            path.unlink(missing_ok=True)
        elif full and i >= full:
            strip_to_model(path)


def claim(out: Path, run_info: dict, resume_from: Path | None, start_step: int, overwrite: bool, say):
    """Lock ``out`` (returns the open lock file, to keep open) and make it hold this run's current lineage:
    a new run (refused where another run lives, unless ``overwrite``), or the run resumed from
    ``resume_from`` at ``start_step`` (in its own directory, or a copy of its record in an empty ``out``)."""
    handle = lock(out)
    try:
        remove_dead_writers(out.glob(".*.*.tmp"), min_age_s=0)  # a live writer's (wanda.py --out RUN/x.pt) stays
        run_info = json.loads(json.dumps(run_info))  # JSON's lists for tuples, as read back
        elsewhere = resume_from is not None and out.resolve() != resume_from.parent.resolve()
        if (resume_from is None or elsewhere) and holds_run(out) and not overwrite:
            try:
                held = json.loads((out / "run.json").read_text())
                what = (f"a run of {held['model']} ({held['preset']}), "
                        f"{'the same config' if held['config'] == run_info['config'] else 'another config'}")
            except (OSError, ValueError, KeyError, TypeError):
                what = "a run"
            hint = "pass --resume to continue it, --overwrite to replace it," if resume_from is None else \
                f"omit --out-dir to continue in {resume_from.parent}"
            raise UserError(f"{out} already holds {what}; {hint} or choose another --out-dir")
        if resume_from is None:
            if overwrite:
                clear(out)
            atomic_write(out / "log.txt", "")
        else:
            if elsewhere:  # --resume PATH --out-dir NEW: NEW starts with the record (not the checkpoints) of PATH's run
                copy_record(resume_from.parent, out)
            aside = set_aside(out, start_step)
            if aside is not None:
                say(f"rewound to step {start_step}: the later checkpoints and the old log are in {aside}")
            truncate_log(out / "log.txt", start_step)
            truncate_samples(out / "samples.txt", start_step)
        atomic_write_json(out / "run.json", run_info)
    except BaseException:
        handle.close()  # an in-process caller keeps the traceback (and would keep the lock)
        raise
    return handle
