"""Token shards: a stream of documents -> [EOT] + GPT-2 tokens -> uint16 ``.npy`` files of a fixed size.

Layout as build-nanogpt: ``{prefix}_val_000000.npy``, ``{prefix}_train_000001.npy``, ... in one
directory; documents run on across shard boundaries. A ``done.json`` manifest, written last, records
the settings and the shards, so that an identical re-run is a no-op.

The readers of real corpora (local files, FineWeb-EDU) are in ``data/sources.py``; this module holds
the writer and the built-in offline corpus (the stdlib's pydoc topics) that smoke runs and tests use.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from utils.cli import UserError
from utils.io import atomic_write, atomic_write_json, remove_stale_tmp
from utils.tokenizer import document_tokenizer

try:
    import fcntl
except ImportError:  # not POSIX: no lock, builds must not run concurrently
    fcntl = None

MANIFEST = "done.json"
BUILDING = ".building"  # present from the start of a build until its manifest is written
MANIFEST_VERSION = 2  # bump when the tokenization or text cleaning changes
BUILTIN_SHARD_SIZE = 50_000
# The builtin corpus is for smoke runs: its val split (10% of the topics, whole; 12,305 tokens with
# seed 0) must hold one smoke-preset evaluation of distinct tokens, 20 val batches x 4 x 64 + 1 for the
# targets. Only another --seed can fall short; a caller with a larger need passes min_val_tokens.
BUILTIN_MIN_VAL_TOKENS = 20 * 4 * 64 + 1
SHARD_NAME = re.compile(r"(.+)_(val|train)_\d{6}\.npy")


class ShardWriter:
    """Packs token arrays into shards of exactly ``shard_size`` tokens (the last of a split may be short).

    Shards are numbered globally across splits (val first), as in build-nanogpt. ``start_split``
    flushes the current split's partial shard; with ``val_shards=k`` the first k shards are val
    whatever the split (FineWeb's layout: val = the first k x shard_size tokens of one stream).
    """

    def __init__(self, out_dir: Path, prefix: str, shard_size: int, val_shards: int, max_tokens: int | None,
                 progress: tqdm):
        self.out_dir, self.prefix, self.shard_size = Path(out_dir), prefix, shard_size
        self.val_shards, self.max_tokens, self.progress = val_shards, max_tokens, progress
        self.split = "val"
        self.buffer = np.empty(shard_size, dtype=np.uint16)
        self.fill = 0
        self.total = 0
        self.shards: list[dict] = []  # {"file", "split", "tokens", "sha256"}

    @property
    def full(self) -> bool:
        return self.max_tokens is not None and self.total >= self.max_tokens

    def add(self, tokens: np.ndarray) -> bool:
        """Append tokens; False once ``max_tokens`` is reached (the rest of ``tokens`` is dropped)."""
        tokens = np.asarray(tokens)
        if tokens.size and (tokens.min() < 0 or tokens.max() >= 2**16):
            raise UserError(f"token id {int(tokens.max())} does not fit in uint16 (< 65536): wrong tokenizer?")
        tokens = tokens.astype(np.uint16)
        if self.max_tokens is not None:
            tokens = tokens[: max(0, self.max_tokens - self.total)]
        while len(tokens):
            take = min(len(tokens), self.shard_size - self.fill)
            self.buffer[self.fill:self.fill + take] = tokens[:take]
            self.fill += take
            self.total += take
            tokens = tokens[take:]
            self.progress.update(take)
            if self.fill == self.shard_size:
                self._write()
        return not self.full

    def start_split(self, split: str) -> None:
        self._write()
        self.split = split

    def close(self) -> list[dict]:
        self._write()
        return self.shards

    def discard(self) -> None:
        """Delete what was written: an unfinished or unusable build must not look like data."""
        for s in self.shards:
            (self.out_dir / s["file"]).unlink(missing_ok=True)

    def _write(self) -> None:
        if self.fill == 0:
            return
        index = len(self.shards)
        split = "val" if index < self.val_shards else self.split
        name = f"{self.prefix}_{split}_{index:06d}.npy"
        atomic_write(self.out_dir / name, lambda f: np.save(f, self.buffer[:self.fill]))
        self.shards.append({"file": name, "split": split, "tokens": int(self.fill),
                            "sha256": tokens_sha256(self.buffer[:self.fill])})
        self.fill = 0


def tokens_sha256(tokens: np.ndarray, chunk: int = 1 << 24) -> str:
    """sha256 of a token array's uint16 little-endian bytes: what the manifest records per shard, and what
    utils/identity.py hashes from the files of a build that predates it."""
    h = hashlib.sha256()
    for start in range(0, len(tokens), chunk):
        h.update(np.ascontiguousarray(tokens[start:start + chunk], dtype="<u2").data)
    return h.hexdigest()


def read_manifest(data_dir: str | Path) -> dict | None:
    """The directory's ``done.json``, or None when it has none (or an unreadable one)."""
    try:
        manifest = json.loads((Path(data_dir) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def check_finished(data_dir: str | Path) -> None:
    """A UserError naming the command to rerun when ``data_dir`` is a build that stopped before its manifest."""
    marker = Path(data_dir) / BUILDING
    if marker.is_file() and not (Path(data_dir) / MANIFEST).is_file():
        try:
            command = marker.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            command = ""
        raise UserError(f"{data_dir} is an unfinished build (stopped before {MANIFEST} was written); run "
                        f"{command or 'the same data/fineweb.py command'} again to finish it")


def up_to_date(out_dir: str | Path, settings: dict) -> dict | None:
    """The manifest if ``out_dir`` was finished with exactly ``settings`` and still holds its shards."""
    manifest = read_manifest(out_dir)
    if manifest is None or manifest.get("settings") != settings:
        return None
    if not all((Path(out_dir) / s["file"]).is_file() for s in manifest.get("shards", [])):
        return None
    return manifest


@contextlib.contextmanager
def locked(out_dir: Path) -> Iterator[None]:
    """An exclusive lock on the directory itself: concurrent builders (e.g. DDP ranks) take turns. A
    directory created here is removed again when the build fails before writing anything into it."""
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(out_dir, os.O_RDONLY) if fcntl is not None else None
    try:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    except BaseException:
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


def write_shards(out_dir: str | Path, settings: dict, splits: Iterable[tuple[str, Iterable[str | np.ndarray]]],
                 *, val_shards: int = 0, max_tokens: int | None = None, overwrite: bool = False,
                 workers: int = 1, chunksize: int = 16) -> dict:
    """Tokenize ``splits``, (split, documents) pairs written in order, into shards of
    ``settings["shard_size"]`` tokens named by ``settings["prefix"]``; a document is a text or a token
    array. Returns the manifest, with ``skipped`` True when ``out_dir`` was already finished with
    ``settings``. Shards of this prefix made with other settings are refused unless ``overwrite``."""
    out_dir, prefix = Path(out_dir), settings["prefix"]
    with locked(out_dir):
        manifest = up_to_date(out_dir, settings)
        if manifest is not None:
            return {**manifest, "skipped": True}
        others = sorted({m[1] for path in out_dir.glob("*.npy")
                         if (m := SHARD_NAME.fullmatch(path.name)) and m[1] != prefix})
        if others:  # the loader reads every *_{split}_*.npy of a directory: two builds would mix
            raise UserError(f"{out_dir} holds the shards of another build (prefix {', '.join(others)}); "
                            "choose another --out-dir")
        remove_stale_tmp(out_dir)  # from a build that was killed; we hold the lock, so no one is writing
        old = sorted(out_dir.glob(f"{prefix}_val_*.npy")) + sorted(out_dir.glob(f"{prefix}_train_*.npy"))
        if old and not overwrite:
            raise UserError(f"{out_dir} already holds {len(old)} '{prefix}' shard(s) made with other settings "
                            "(or unfinished); pass --overwrite to replace them or choose another --out-dir")
        atomic_write(out_dir / BUILDING, shlex.join(["python", *sys.argv]) + "\n")  # names the rerun
        (out_dir / MANIFEST).unlink(missing_ok=True)
        for path in old:
            path.unlink()

        with tqdm(total=max_tokens, unit="tok", unit_scale=True, desc=f"tokenizing -> {out_dir}") as bar, \
                document_tokenizer(workers) as tokenize:
            writer = ShardWriter(out_dir, prefix, settings["shard_size"], val_shards, max_tokens, bar)
            try:
                for split, documents in splits:
                    writer.start_split(split)
                    for tokens in tokenize(documents, chunksize):
                        if not writer.add(tokens):
                            break
                    if writer.full:
                        break
                shards = writer.close()
            except BaseException:
                writer.discard()
                (out_dir / BUILDING).unlink(missing_ok=True)  # nothing left that looks like data
                raise

        totals = {split: sum(s["tokens"] for s in shards if s["split"] == split) for split in ("val", "train")}
        if totals["val"] == 0 or totals["train"] == 0:
            writer.discard()
            (out_dir / BUILDING).unlink(missing_ok=True)
            raise UserError(f"empty corpus: {totals['val']} val and {totals['train']} train tokens "
                            "(need both; more input or a larger --max-tokens?)")
        manifest = {"settings": settings, "shards": shards,
                    "val_tokens": totals["val"], "train_tokens": totals["train"]}
        atomic_write_json(out_dir / MANIFEST, manifest)
        (out_dir / BUILDING).unlink(missing_ok=True)
    return {**manifest, "skipped": False}


def pick_val_docs(n_docs: int, seed: int, val_docs: int | None = None, val_fraction: float = 0.1) -> set[int]:
    """Indices of the whole documents held out for val (at least one; at least one left for train)."""
    n_val = val_docs if val_docs is not None else max(1, round(n_docs * val_fraction))
    if n_val >= n_docs:
        raise UserError(f"cannot hold out {n_val} of {n_docs} documents for val and keep some for train")
    rng = np.random.default_rng(seed)
    return {int(i) for i in rng.choice(n_docs, size=n_val, replace=False)}


# ----------------------------------------------------------------------------- the builtin corpus

def builtin_documents() -> list[str]:
    """The stdlib's pydoc topic texts (Python's own reference documentation), one per document."""
    from pydoc_data.topics import topics

    return [topics[name] for name in sorted(topics)]


def build_builtin(out_dir: str | Path, shard_size: int = BUILTIN_SHARD_SIZE, seed: int = 0,
                  min_val_tokens: int = BUILTIN_MIN_VAL_TOKENS) -> dict:
    """The offline corpus: pydoc topics as documents, 10% of them (whole) for val; rebuilt over other settings."""
    docs = builtin_documents()
    val_ids = pick_val_docs(len(docs), seed)
    settings = {"format": MANIFEST_VERSION, "source": "builtin:pydoc_data.topics",
                "sha1": hashlib.sha1("\0".join(docs).encode()).hexdigest(),
                "shard_size": shard_size, "prefix": "builtin", "seed": seed, "val_docs": sorted(val_ids)}
    splits = [("val", [d for i, d in enumerate(docs) if i in val_ids]),
              ("train", [d for i, d in enumerate(docs) if i not in val_ids])]
    manifest = write_shards(out_dir, settings, splits, overwrite=True)
    if manifest["val_tokens"] < min_val_tokens:
        raise UserError(f"builtin val split has only {manifest['val_tokens']} tokens (need {min_val_tokens}); "
                        "try another seed")
    return manifest


def prepare_builtin_corpus(out_dir: str | Path) -> Path:
    """Build the offline corpus if needed (a no-op when it is up to date) and return its directory."""
    build_builtin(out_dir)
    return Path(out_dir)
