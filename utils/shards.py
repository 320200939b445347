"""Token shards: documents -> [EOT] + GPT-2 tokens -> uint16 ``.npy`` files of a fixed size.

Layout as build-nanogpt: ``{prefix}_val_000000.npy``, ``{prefix}_train_000001.npy``, ... in one
directory; documents run on across shard boundaries. A ``done.json`` manifest, written last, records
the settings and the shards, so that an identical re-run is a no-op.

Sources: FineWeb-EDU (``datasets``), local .txt/.jsonl/.parquet files (val = whole documents) and a
built-in offline corpus (the stdlib's pydoc topics) for smoke runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from utils.cli import UserError
from utils.tokenizer import EOT, get_encoding

try:
    import fcntl
except ImportError:  # not POSIX: no lock, builds must not run concurrently
    fcntl = None

MANIFEST = "done.json"
MANIFEST_VERSION = 2  # bump when the tokenization or text cleaning changes
FINEWEB = ("HuggingFaceFW/fineweb-edu", "sample-10BT")
BUILTIN_SHARD_SIZE = 50_000
BUILTIN_MIN_VAL_TOKENS = 20 * 2 * 64 + 1  # the smoke preset: 20 val batches of 2x64 (+1 for the targets)
TEXT_SUFFIXES = (".txt", ".jsonl", ".parquet")


# ----------------------------------------------------------------------------- tokenizing

def tokenize_document(text: str) -> np.ndarray:
    """[EOT] + encode_ordinary(text) as uint16 (special-token text is encoded as ordinary text)."""
    tokens = np.array([EOT] + get_encoding().encode_ordinary(text), dtype=np.int64)
    return to_uint16(tokens)


def to_uint16(tokens: np.ndarray) -> np.ndarray:
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= 2**16):
        raise UserError(f"token id {int(tokens.max())} does not fit in uint16 (< 65536): wrong tokenizer?")
    return tokens.astype(np.uint16)


@contextlib.contextmanager
def document_tokenizer(workers: int = 1) -> Iterator[Callable[..., Iterator[np.ndarray]]]:
    """``tokenize(texts, chunksize)`` -> token arrays in order, on ``workers`` threads.

    Threads, not processes: tiktoken's encoder releases the GIL, so threads run the BPE in
    parallel without pickling every document and its tokens between processes (a process pool
    spent more CPU on that traffic than on tokenizing). At most 2 chunks per worker are in flight,
    so a streamed 10B-token dataset is never read ahead into memory.
    """
    get_encoding()  # build once, before the threads share it
    if workers <= 1:
        yield lambda texts, chunksize=1: map(tokenize_document, texts)
        return
    with ThreadPoolExecutor(workers) as pool:
        def tokenize(texts: Iterable[str], chunksize: int = 16) -> Iterator[np.ndarray]:
            pending: deque = deque()
            for chunk in _chunks(texts, chunksize):
                pending.append(pool.submit(lambda c: [tokenize_document(t) for t in c], chunk))
                if len(pending) >= 2 * workers:
                    yield from pending.popleft().result()
            while pending:
                yield from pending.popleft().result()

        yield tokenize


def _chunks(items: Iterable[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# ----------------------------------------------------------------------------- writing

def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """np.save via a temp file in the same directory, so no half-written shard is ever visible."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(obj, indent=1) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class ShardWriter:
    """Packs token arrays into shards of exactly ``shard_size`` tokens (the last of a split may be short).

    Shards are numbered globally across splits (val first), as in build-nanogpt. With
    ``val_shards=k`` the first k full shards are val and the rest train (the FineWeb layout);
    otherwise call ``start_split`` to switch (whole-document val).
    """

    def __init__(self, out_dir: Path, prefix: str, shard_size: int, split: str = "val",
                 val_shards: int | None = None, max_tokens: int | None = None, progress: tqdm | None = None):
        self.out_dir, self.prefix, self.shard_size = Path(out_dir), prefix, shard_size
        self.split, self.val_shards, self.max_tokens, self.progress = split, val_shards, max_tokens, progress
        self.buffer = np.empty(shard_size, dtype=np.uint16)
        self.fill = 0
        self.index = 0
        self.total = 0
        self.shards: list[dict] = []  # {"file", "split", "tokens"}

    @property
    def full(self) -> bool:
        return self.max_tokens is not None and self.total >= self.max_tokens

    def add(self, tokens: np.ndarray) -> bool:
        """Append tokens; False once --max-tokens is reached (the rest of ``tokens`` is dropped)."""
        tokens = to_uint16(tokens)
        if self.max_tokens is not None:
            tokens = tokens[: max(0, self.max_tokens - self.total)]
        while len(tokens):
            take = min(len(tokens), self.shard_size - self.fill)
            self.buffer[self.fill:self.fill + take] = tokens[:take]
            self.fill += take
            self.total += take
            tokens = tokens[take:]
            if self.progress is not None:
                self.progress.update(take)
            if self.fill == self.shard_size:
                self._write()
        return not self.full

    def start_split(self, split: str) -> None:
        """Flush the partial shard of the current split and continue with ``split``."""
        self._write()
        self.split = split

    def close(self) -> list[dict]:
        self._write()
        return self.shards

    def _write(self) -> None:
        if self.fill == 0:
            return
        name = f"{self.prefix}_{self.split}_{self.index:06d}.npy"
        atomic_save_npy(self.out_dir / name, self.buffer[:self.fill].copy())
        self.shards.append({"file": name, "split": self.split, "tokens": int(self.fill)})
        self.index += 1
        self.fill = 0
        if self.val_shards is not None and self.index >= self.val_shards:
            self.split = "train"


# ----------------------------------------------------------------------------- text sources

START_RE = re.compile(r"^\*\*\* ?START OF (?:THIS|THE) PROJECT GUTENBERG E-?BOOK", re.I | re.M)
OLD_START_RE = re.compile(r"^\*END\*THE SMALL PRINT!.*$", re.I | re.M)
END_RE = re.compile(r"^(?:\*\*\* ?END OF (?:THIS|THE) PROJECT GUTENBERG"
                    r"|End of (?:the )?Project Gutenb[eu]rg)", re.I | re.M)


def strip_gutenberg(text: str) -> str:
    """The body of a Project Gutenberg eBook (header and licence removed), with LF line endings."""
    text = text.replace("\r\n", "\n")
    start = START_RE.search(text)
    if start is not None:
        closing = text.find("***", start.end(), start.end() + 300)  # the title may wrap onto a 2nd line
        begin = closing + 3 if closing != -1 else start.end()
        begin = text.find("\n", begin) + 1 or len(text)
    else:
        old = OLD_START_RE.search(text)
        begin = old.end() + 1 if old is not None else 0
    end = END_RE.search(text, begin)
    return text[begin:end.start() if end is not None else len(text)].strip() + "\n"


@dataclass(frozen=True)
class InputFile:
    path: Path
    n_docs: int


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start})") from e
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from e


def _jsonl_texts(path: Path) -> Iterator[str]:
    for lineno, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{lineno}: invalid JSON ({e.msg})") from e
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise UserError(f"{path}:{lineno}: no 'text' string field")
        yield record["text"]


def _parquet_texts(path: Path) -> Iterator[str]:
    import pyarrow.parquet as pq  # ships with `datasets`

    try:
        table = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises its own error types for corrupt files
        raise UserError(f"{path}: not a readable parquet file ({type(e).__name__})") from e
    if "text" not in table.schema_arrow.names:
        raise UserError(f"{path}: parquet file has no 'text' column")
    for batch in table.iter_batches(columns=["text"]):
        for text in batch.column(0).to_pylist():
            if not isinstance(text, str):
                raise UserError(f"{path}: 'text' column holds a non-string value")
            yield text


def file_texts(path: Path, strip: bool = False) -> Iterator[str]:
    """The documents of one input file: .txt = one document, .jsonl / .parquet = one per row."""
    if path.suffix == ".txt":
        texts: Iterable[str] = [_read_text(path)]
    elif path.suffix == ".jsonl":
        texts = _jsonl_texts(path)
    else:
        texts = _parquet_texts(path)
    for text in texts:
        yield strip_gutenberg(text) if strip else text


def check_inputs(paths: Iterable[str | Path], strip: bool = False) -> list[InputFile]:
    """Validate every input file before anything is written; count its non-empty documents."""
    files = []
    for p in paths:
        path = Path(p)
        if path.suffix not in TEXT_SUFFIXES:
            raise UserError(f"{path}: unsupported input type (use {', '.join(TEXT_SUFFIXES)})")
        if not path.exists():
            raise UserError(f"input file {path} does not exist")
        if not path.is_file():
            raise UserError(f"input {path} is not a regular file")
        if path.stat().st_size == 0:
            raise UserError(f"input file {path} is empty")
        files.append(InputFile(path, sum(1 for text in file_texts(path, strip) if text)))
    if not files:
        raise UserError("no input files given")
    if sum(f.n_docs for f in files) == 0:
        raise UserError("empty corpus: the input files hold no non-empty document")
    return files


def pick_val_docs(n_docs: int, seed: int, val_docs: int | None = None, val_fraction: float = 0.1) -> set[int]:
    """Indices of the whole documents held out for val (at least one; at least one left for train)."""
    n_val = val_docs if val_docs is not None else max(1, round(n_docs * val_fraction))
    if n_val >= n_docs:
        raise UserError(f"cannot hold out {n_val} of {n_docs} documents for val and keep some for train")
    rng = np.random.default_rng(seed)
    return {int(i) for i in rng.choice(n_docs, size=n_val, replace=False)}


# ----------------------------------------------------------------------------- building

def _manifest_matches(out_dir: Path, settings: dict) -> dict | None:
    try:
        manifest = json.loads((out_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("settings") != settings:
        return None
    if not all((out_dir / s["file"]).is_file() for s in manifest.get("shards", [])):
        return None
    return manifest


def _prepare_out_dir(out_dir: Path, prefix: str, overwrite: bool) -> None:
    """Refuse to mix with shards of other settings, unless --overwrite says to replace them."""
    old = sorted(out_dir.glob(f"{prefix}_val_*.npy")) + sorted(out_dir.glob(f"{prefix}_train_*.npy"))
    if old and not overwrite:
        raise UserError(f"{out_dir} already holds {len(old)} '{prefix}' shard(s) made with other settings "
                        "(or unfinished); pass --overwrite to replace them or choose another --out-dir")
    (out_dir / MANIFEST).unlink(missing_ok=True)
    for path in old:
        path.unlink()


def _finish(out_dir: Path, settings: dict, shards: list[dict]) -> dict:
    totals = {split: sum(s["tokens"] for s in shards if s["split"] == split) for split in ("val", "train")}
    if totals["val"] == 0 or totals["train"] == 0:
        for s in shards:  # an unusable result: leave nothing behind that looks finished
            (out_dir / s["file"]).unlink(missing_ok=True)
        raise UserError(f"empty corpus: {totals['val']} val and {totals['train']} train tokens "
                        "(need both; more input or a larger --max-tokens?)")
    manifest = {"settings": settings, "shards": shards,
                "val_tokens": totals["val"], "train_tokens": totals["train"]}
    atomic_write_json(out_dir / MANIFEST, manifest)
    return manifest


@contextlib.contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    """An exclusive lock on the directory itself: concurrent builders (e.g. DDP ranks) take turns."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    fd = os.open(out_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _build(out_dir: Path, prefix: str, settings: dict, overwrite: bool,
           write: Callable[[ShardWriter], None], writer_kwargs: dict, max_tokens: int | None) -> dict:
    with _locked(out_dir):
        manifest = _manifest_matches(out_dir, settings)
        if manifest is not None:
            manifest["skipped"] = True
            return manifest
        _prepare_out_dir(out_dir, prefix, overwrite)
        manifest = _write_all(out_dir, prefix, settings, write, writer_kwargs, max_tokens)
    manifest["skipped"] = False
    return manifest


def _write_all(out_dir: Path, prefix: str, settings: dict, write: Callable[[ShardWriter], None],
               writer_kwargs: dict, max_tokens: int | None) -> dict:
    with tqdm(total=max_tokens, unit="tok", unit_scale=True, desc=f"tokenizing -> {out_dir}") as bar:
        writer = ShardWriter(out_dir, prefix, settings["shard_size"], max_tokens=max_tokens, progress=bar,
                             **writer_kwargs)
        try:
            write(writer)
            shards = writer.close()
        except BaseException:
            for s in writer.shards:  # an interrupted build is not reused, so do not leave its shards
                (out_dir / s["file"]).unlink(missing_ok=True)
            raise
    return _finish(out_dir, settings, shards)


def _write_documents(writer: ShardWriter, token_arrays: Iterable[np.ndarray]) -> None:
    for tokens in token_arrays:
        if not writer.add(tokens):
            break


def build_from_files(inputs: Iterable[str | Path], out_dir: str | Path, prefix: str = "data",
                     shard_size: int = 100_000_000, val_docs: int | None = None, val_fraction: float = 0.1,
                     seed: int = 0, strip: bool = False, max_tokens: int | None = None, workers: int = 1,
                     overwrite: bool = False) -> dict:
    """Shards from local files; val = whole documents drawn with ``seed``. Returns the manifest."""
    files = check_inputs(inputs, strip)
    n_docs = sum(f.n_docs for f in files)
    val_ids = pick_val_docs(n_docs, seed, val_docs, val_fraction)
    settings = {"format": MANIFEST_VERSION, "source": "files", "shard_size": shard_size, "prefix": prefix,
                "seed": seed, "val_docs": sorted(val_ids), "strip_gutenberg": strip, "max_tokens": max_tokens,
                "inputs": [{"path": str(f.path.resolve()), "bytes": f.path.stat().st_size,
                            "mtime_ns": f.path.stat().st_mtime_ns} for f in files]}
    # big documents (whole books) balance badly in large chunks; many small ones want larger chunks
    chunksize = max(1, min(16, n_docs // (8 * max(1, workers))))

    def documents(want_val: bool) -> Iterator[str]:
        i = 0
        for f in files:
            if f.path.suffix == ".txt" and (i in val_ids) != want_val:
                i += 1  # a .txt file is one document: skip it without reading
                continue
            for text in filter(None, file_texts(f.path, strip)):  # empty documents are dropped
                if (i in val_ids) == want_val:
                    yield text
                i += 1

    def write(writer: ShardWriter) -> None:
        with document_tokenizer(workers) as tokenize:
            _write_documents(writer, tokenize(documents(True), chunksize))
            writer.start_split("train")
            if not writer.full:
                _write_documents(writer, tokenize(documents(False), chunksize))

    return _build(Path(out_dir), prefix, settings, overwrite, write, {"split": "val"}, max_tokens)


def build_fineweb(out_dir: str | Path = "data/edu_fineweb10B", prefix: str = "edufineweb",
                  shard_size: int = 100_000_000, max_tokens: int | None = None, workers: int = 1,
                  overwrite: bool = False) -> dict:
    """FineWeb-EDU sample-10BT, streamed in order; shard 0 (the first shard_size tokens) is val."""
    settings = {"format": MANIFEST_VERSION, "source": "/".join(FINEWEB), "shard_size": shard_size,
                "prefix": prefix, "max_tokens": max_tokens}
    out_dir = Path(out_dir)
    if _manifest_matches(out_dir, settings) is None:
        try:
            from datasets import load_dataset
            from huggingface_hub.utils import logging as hub_logging

            hub_logging.set_verbosity_error()  # no retry chatter: a failure is reported in one line
            dataset = load_dataset(FINEWEB[0], name=FINEWEB[1], split="train", streaming=True)
            first = iter(dataset)
            next(first)  # streaming is lazy: make sure the data is reachable before writing anything
        except Exception as e:  # network / hub / auth errors come in many types
            reason = str(e).splitlines()[0] if str(e) else ""
            raise UserError(f"cannot load {FINEWEB[0]} ({FINEWEB[1]}): {type(e).__name__}: {reason} "
                            "(offline? use --input or --builtin)") from e
    else:
        dataset = []

    def write(writer: ShardWriter) -> None:
        with document_tokenizer(workers) as tokenize:
            _write_documents(writer, tokenize((row["text"] for row in dataset), chunksize=16))

    return _build(out_dir, prefix, settings, overwrite, write, {"split": "val", "val_shards": 1}, max_tokens)


def builtin_documents() -> list[str]:
    """The stdlib's pydoc topic texts (Python's own reference documentation), one per document."""
    from pydoc_data.topics import topics

    return [topics[name] for name in sorted(topics)]


def build_builtin(out_dir: str | Path = "data/builtin", prefix: str = "builtin",
                  shard_size: int = BUILTIN_SHARD_SIZE, seed: int = 0, overwrite: bool = True) -> dict:
    """The offline corpus: pydoc topics as documents, 10% of them (whole) for val."""
    import hashlib

    docs = builtin_documents()
    val_ids = pick_val_docs(len(docs), seed, val_fraction=0.1)
    digest = hashlib.sha1("\0".join(docs).encode()).hexdigest()
    settings = {"format": MANIFEST_VERSION, "source": "builtin:pydoc_data.topics", "sha1": digest,
                "shard_size": shard_size, "prefix": prefix, "seed": seed, "val_docs": sorted(val_ids)}

    def write(writer: ShardWriter) -> None:
        with document_tokenizer(1) as tokenize:
            _write_documents(writer, tokenize(d for i, d in enumerate(docs) if i in val_ids))
            writer.start_split("train")
            _write_documents(writer, tokenize(d for i, d in enumerate(docs) if i not in val_ids))

    manifest = _build(Path(out_dir), prefix, settings, overwrite, write, {"split": "val"}, None)
    if manifest["val_tokens"] < BUILTIN_MIN_VAL_TOKENS:
        raise UserError(f"builtin val split has only {manifest['val_tokens']} tokens; try another seed")
    return manifest


def prepare_builtin_corpus(out_dir: str | Path = "data/builtin",
                           shard_size: int = BUILTIN_SHARD_SIZE) -> Path:
    """Build the offline corpus if needed (a no-op when it is up to date) and return its directory."""
    build_builtin(out_dir, shard_size=shard_size)
    return Path(out_dir)
