"""A run directory belongs to one run: an exclusive lock, its checkpoints, its current lineage.

    out-dir/.lock             fcntl lock held by the writing process (its PID inside)
    out-dir/run.json          what the run is (model, configs)
    out-dir/log.txt, samples.txt, summary.json
    out-dir/model_NNNNN.pt    the current lineage's checkpoints (newest --full-checkpoints resumable)
    out-dir/abandoned/<time>-after-NNNNN/   what a rewind set aside: later checkpoints, old log/samples

A plain ``--resume`` only looks at out-dir/model_*.pt, so it never picks an abandoned checkpoint.

``locate`` holds the resume rules and ``RunDir`` the run's life in its directory (claim, restore, save with
the retention policy, release), for train_gpt.py and train_vit.py alike; a ``Scheme`` says how each names,
resumes and records its checkpoints.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from utils.checkpoint import RESUME_KEYS, load_checkpoint, save_checkpoint, strip_to_model
from utils.cli import UserError, check_writable_dir
from utils.identity import new_run_id
from utils.io import atomic_write, atomic_write_json, remove_dead_writers
from utils.runlog import truncate_log, truncate_samples
from utils.seed import get_rng_state, set_rng_state

RUN_FILES = ("run.json", "log.txt", "samples.txt", "summary.json")
ABANDONED = "abandoned"
_CKPT_NAME = re.compile(r"^model_(\d+)\.pt$")


def truncate_record(out_dir, step: int) -> None:
    """Cut log.txt and samples.txt back to what was written before checkpoint ``step`` (utils/runlog.py)."""
    truncate_log(Path(out_dir) / "log.txt", step)
    truncate_samples(Path(out_dir) / "samples.txt", step)


@dataclass(frozen=True)
class Scheme:
    """How a trainer names, resumes and records its checkpoints in a run directory."""
    kind: str  # the checkpoints' kind (utils/checkpoint.py)
    counter: str = "step"  # the checkpoint field that numbers it: model_{counter:0{digits}d}.pt
    digits: int = 5
    resume_keys: tuple[str, ...] = (*RESUME_KEYS, "step")  # a checkpoint without one of them is model-only
    truncate: Callable[[Path, int], None] = truncate_record  # the run's record back to checkpoint N


GPT = Scheme("gpt")


def checkpoint_path(out_dir, step: int, digits: int = 5) -> Path:
    return Path(out_dir) / f"model_{step:0{digits}d}.pt"


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


def resumable(ckpt: dict, scheme: Scheme = GPT) -> bool:
    return all(key in ckpt for key in scheme.resume_keys)


def newest_resumable(out_dir, warn=lambda msg: print(msg, file=sys.stderr), scheme: Scheme = GPT) -> tuple[Path, dict]:
    """(path, checkpoint) of the newest checkpoint of ``out_dir`` that --resume can continue from;
    unreadable ones and model-only snapshots are skipped with a warning."""
    candidates = run_checkpoints(out_dir)
    if not candidates:
        raise UserError(f"--resume: no checkpoint model_{'N' * scheme.digits}.pt in {out_dir}")
    for path in candidates:
        try:
            ckpt = load_checkpoint(path, expect_kind=scheme.kind)
        except UserError as e:
            warn(f"warning: skipping unreadable checkpoint: {e}")
            continue
        if resumable(ckpt, scheme):
            return path, ckpt
        warn(f"warning: skipping {path.name}: a model-only snapshot (no optimizer state)")
    raise UserError(f"--resume: no resumable checkpoint in {out_dir} ({len(candidates)} unreadable or model-only)")


def load_resumable(path, scheme: Scheme = GPT) -> dict:
    """Checkpoint ``path``, which --resume PATH must be able to continue from."""
    ckpt = load_checkpoint(path, expect_kind=scheme.kind)
    if not resumable(ckpt, scheme):
        raise UserError(f"{path} is a model-only checkpoint (no optimizer/data state); it can be evaluated but "
                        "not resumed")
    return ckpt


def locate(scheme: Scheme, resume: str | None, out_dir, default_out, overwrite: bool = False,
           warn=lambda msg: print(msg, file=sys.stderr)) -> tuple[Path, Path | None, dict | None]:
    """The resume rules: (run directory, checkpoint to resume from, its contents). A new run (``resume`` None)
    writes into ``out_dir`` or ``default_out``; ``resume`` "latest" continues from the newest resumable
    checkpoint there, ``resume`` PATH from PATH, in PATH's own directory unless ``out_dir`` names another."""
    if resume is not None and overwrite:
        raise UserError("--overwrite starts a new run; it cannot be combined with --resume")
    explicit = resume not in (None, "latest")
    out = Path(out_dir or (Path(resume).parent if explicit else default_out))
    check_writable_dir(out, "--out-dir")
    if resume is None:
        return out, None, None
    if explicit:
        return out, Path(resume), load_resumable(resume, scheme)
    return (out, *newest_resumable(out, warn, scheme))


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


def describe_run(out: Path, config: dict) -> str:
    """What ``out`` holds, for a refusal: "a run of gpt2 (smoke), the same config" where run.json says."""
    try:
        held = json.loads((out / "run.json").read_text())
        return (f"a run of {held['model']} ({held['preset']}), "
                f"{'the same config' if held['config'] == config else 'another config'}")
    except (OSError, ValueError, KeyError, TypeError):
        return "checkpoints" if run_checkpoints(out) else "a run"


def claim(out: Path, run_info: dict, resume_from: Path | None, start_step: int, overwrite: bool, say,
          truncate: Callable[[Path, int], None] = truncate_record, counter: str = "step"):
    """Lock ``out`` (returns the open lock file, to keep open) and make it hold this run's current lineage:
    a new run (refused where another run lives, unless ``overwrite``), or the run resumed from
    ``resume_from`` at checkpoint ``start_step`` (in its own directory, or a copy of its record in an empty
    ``out``), its record cut back by ``truncate``."""
    handle = lock(out)
    try:
        remove_dead_writers(out.glob(".*.*.tmp"), min_age_s=0)  # a live writer's (wanda.py --out RUN/x.pt) stays
        run_info = json.loads(json.dumps(run_info))  # JSON's lists for tuples, as read back
        elsewhere = resume_from is not None and out.resolve() != resume_from.parent.resolve()
        if (resume_from is None or elsewhere) and holds_run(out) and not overwrite:
            hint = "pass --resume to continue it, --overwrite to replace it," if resume_from is None else \
                f"omit --out-dir to continue in {resume_from.parent}"
            raise UserError(f"{out} already holds {describe_run(out, run_info['config'])}; {hint} or choose "
                            "another --out-dir")
        if resume_from is None:
            if overwrite:
                clear(out)
            atomic_write(out / "log.txt", "")
        else:
            if elsewhere:  # --resume PATH --out-dir NEW: NEW starts with the record (not the checkpoints) of PATH's run
                copy_record(resume_from.parent, out)
            aside = set_aside(out, start_step)
            if aside is not None:
                say(f"rewound to {counter} {start_step}: the later checkpoints and the old log are in {aside}")
            truncate(out, start_step)
        atomic_write_json(out / "run.json", run_info)
    except BaseException:
        handle.close()  # an in-process caller keeps the traceback (and would keep the lock)
        raise
    return handle


class RunDir:
    """One run in its directory, for every trainer (in the spirit of torchtitan's CheckpointManager): ``claim``
    takes the lock and makes the directory hold this run's lineage, ``restore`` loads the resumed checkpoint
    into the live objects, ``save`` writes checkpoint N from them and applies the retention policy,
    ``release`` lets the directory go. Only the ``writer`` (rank 0) claims and saves; every process restores.

    ``out``, ``resume_from`` and ``checkpoint`` come from ``locate``; a checkpoint's number (``scheme.counter``)
    and contents are checked by the trainer before they get here."""

    def __init__(self, out, scheme: Scheme = GPT, resume_from: Path | None = None, checkpoint: dict | None = None,
                 *, keep: int = 0, full: int = 0, writer: bool = True):
        self.out, self.scheme, self.resume_from = Path(out), scheme, resume_from
        self.start = checkpoint[scheme.counter] if checkpoint is not None else 0  # the resumed checkpoint's N
        self.run_id = (checkpoint or {}).get("run_id") or new_run_id()  # a new run gets a new id; a resume keeps it
        self.keep, self.full, self.writer = keep, full, writer
        self._checkpoint, self._live, self._lock = checkpoint, None, None

    def path(self, n: int) -> Path:
        return checkpoint_path(self.out, n, self.scheme.digits)

    def claim(self, run_info: dict, overwrite: bool = False, say=print) -> None:
        """Lock the directory and make it this run's (``claim``); run.json gets ``run_info`` and the run id."""
        if self.writer:
            self._lock = claim(self.out, {**run_info, "run_id": self.run_id}, self.resume_from, self.start,
                               overwrite, say, self.scheme.truncate, self.scheme.counter)

    def restore(self, model, optimizer, loader=None) -> dict:
        """Load the resumed checkpoint into ``model``, ``optimizer``, ``loader`` (a resumable data loader) and
        the RNGs, and keep the three for ``save``. Returns the checkpoint's other fields ({} for a new run);
        the state itself is handed over once, so its memory goes when the caller's copy does."""
        self._live = (model, optimizer, loader)
        ckpt, self._checkpoint = self._checkpoint, None
        if ckpt is None:
            return {}
        try:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])  # moves the AdamW state to the parameters' device
            if loader is not None:
                loader.load_state_dict(ckpt["data_state"])
            if "rng" in ckpt:
                set_rng_state(ckpt["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:  # a damaged or hand-edited file
            raise UserError(f"{self.resume_from} cannot be resumed: its saved state is malformed "
                            f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})") from e
        return {key: value for key, value in ckpt.items() if key not in ("model", *RESUME_KEYS)}

    def save(self, n: int, **fields) -> None:
        """Checkpoint ``n`` with everything a resume needs (the restored objects' state, the RNGs, the run id)
        and ``fields`` (``model_name`` at least), then the retention policy: the newest ``keep`` checkpoints
        stay (0 = all), the newest ``full`` of them resumable (0 = all)."""
        if not self.writer:
            return
        model, optimizer, loader = self._live
        state = {"optimizer": optimizer.state_dict(), "rng": get_rng_state()}
        if loader is not None:
            state["data_state"] = loader.state_dict()
        save_checkpoint(self.path(n), model, kind=self.scheme.kind, **{self.scheme.counter: n}, run_id=self.run_id,
                        **state, **fields)
        apply_policy(self.out, self.keep, self.full)

    def release(self) -> None:
        """Let the directory go (the lock also goes with the process)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None
