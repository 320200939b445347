"""The corpora data/fineweb.py tokenizes: local .txt/.jsonl/.parquet files and FineWeb-EDU.

Each ``build_*`` reads its source into a plain stream of documents and hands it to
``utils.shards.write_shards``, with the settings that make a re-run with the same inputs a no-op.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from utils.cli import UserError
from utils.shards import MANIFEST_VERSION, pick_val_docs, up_to_date, write_shards

FINEWEB = ("HuggingFaceFW/fineweb-edu", "sample-10BT")
TEXT_SUFFIXES = (".txt", ".jsonl", ".parquet")

# ----------------------------------------------------------------------------- Project Gutenberg

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


# ----------------------------------------------------------------------------- local files

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


def check_inputs(paths: Iterable[str | Path], strip: bool = False) -> list[tuple[Path, int]]:
    """Validate every input file before anything is written: (path, number of non-empty documents) each."""
    files, seen = [], {}
    for p in paths:
        path = Path(p)
        if path.exists() and (same := seen.setdefault(path.resolve(), path)) is not path:
            raise UserError(f"input {path} is given twice (as {same}); a document would land in val and train")
        if path.suffix not in TEXT_SUFFIXES:
            raise UserError(f"{path}: unsupported input type (use {', '.join(TEXT_SUFFIXES)})")
        if not path.exists():
            raise UserError(f"input file {path} does not exist")
        if not path.is_file():
            raise UserError(f"input {path} is not a regular file")
        if path.stat().st_size == 0:
            raise UserError(f"input file {path} is empty")
        files.append((path, sum(1 for text in file_texts(path, strip) if text)))
    if not files:
        raise UserError("no input files given")
    if sum(n for _, n in files) == 0:
        raise UserError("empty corpus: the input files hold no non-empty document")
    return files


def file_documents(files: list[tuple[Path, int]], doc_ids: set[int], strip: bool = False) -> Iterator[str]:
    """The non-empty documents of ``files`` whose running index is in ``doc_ids``, in file order."""
    i = 0
    for path, n_docs in files:
        if path.suffix == ".txt" and i not in doc_ids:  # one document: skip the file without reading it
            i += n_docs
            continue
        for text in filter(None, file_texts(path, strip)):  # empty documents are dropped
            if i in doc_ids:
                yield text
            i += 1


def build_from_files(inputs: Iterable[str | Path], out_dir: str | Path, prefix: str = "data",
                     shard_size: int = 100_000_000, val_docs: int | None = None, val_fraction: float = 0.1,
                     seed: int = 0, strip: bool = False, max_tokens: int | None = None, workers: int = 1,
                     overwrite: bool = False) -> dict:
    """Shards from local files; val = whole documents drawn with ``seed``. Returns the manifest."""
    files = check_inputs(inputs, strip)
    n_docs = sum(n for _, n in files)
    val_ids = pick_val_docs(n_docs, seed, val_docs, val_fraction)
    settings = {"format": MANIFEST_VERSION, "source": "files", "shard_size": shard_size, "prefix": prefix,
                "seed": seed, "val_docs": sorted(val_ids), "strip_gutenberg": strip, "max_tokens": max_tokens,
                "inputs": [{"path": str(path.resolve()), "bytes": path.stat().st_size,
                            "mtime_ns": path.stat().st_mtime_ns} for path, _ in files]}
    splits = [("val", file_documents(files, val_ids, strip)),
              ("train", file_documents(files, set(range(n_docs)) - val_ids, strip))]
    # big documents (whole books) balance badly in large chunks; many small ones want larger chunks
    chunksize = max(1, min(16, n_docs // (8 * max(1, workers))))
    return write_shards(out_dir, settings, splits, max_tokens=max_tokens, overwrite=overwrite, workers=workers,
                        chunksize=chunksize)


# ----------------------------------------------------------------------------- FineWeb-EDU

def fineweb_texts() -> Iterator[str]:
    """FineWeb-EDU sample-10BT's texts, streamed in order; fails here (one line) when it is unreachable."""
    try:
        from datasets import load_dataset
        from huggingface_hub.utils import logging as hub_logging

        hub_logging.set_verbosity_error()  # no retry chatter: a failure is reported in one line
        dataset = load_dataset(FINEWEB[0], name=FINEWEB[1], split="train", streaming=True)
        next(iter(dataset))  # streaming is lazy: make sure the data is reachable before writing anything
    except Exception as e:  # network / hub / auth errors come in many types
        reason = str(e).splitlines()[0] if str(e) else ""
        raise UserError(f"cannot load {FINEWEB[0]} ({FINEWEB[1]}): {type(e).__name__}: {reason} "
                        "(offline? use --input or --builtin)") from e
    return (row["text"] for row in dataset)


def build_fineweb(out_dir: str | Path = "data/edu_fineweb10B", prefix: str = "edufineweb",
                  shard_size: int = 100_000_000, max_tokens: int | None = None, workers: int = 1,
                  overwrite: bool = False) -> dict:
    """FineWeb-EDU sample-10BT, streamed in order; shard 0 (the first shard_size tokens) is val."""
    settings = {"format": MANIFEST_VERSION, "source": "/".join(FINEWEB), "shard_size": shard_size,
                "prefix": prefix, "max_tokens": max_tokens}
    texts = [] if up_to_date(out_dir, settings) else fineweb_texts()  # no download for a finished directory
    return write_shards(out_dir, settings, [("train", texts)], val_shards=1, max_tokens=max_tokens,
                        overwrite=overwrite, workers=workers)
