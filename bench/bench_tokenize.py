"""Tokenization throughput: the parallel shard path vs a single-process ``encode_ordinary`` loop.

    python bench/bench_tokenize.py [--megabytes 4] [--workers 2] [--repeats 5] [--no-write]

The text is the first few MB of ../shared/data/text_corpus (Gutenberg prose), cut into documents of
about ``--doc-chars`` characters at paragraph breaks, like web pages. The parallel case is what
data/fineweb.py runs: a thread pool (started inside the timed region) over chunks of documents,
returning [EOT] + tokens as uint16. Goal: >= 1.7x with 2 workers.
"""

from __future__ import annotations

import os
import resource
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from bench.common import bench_parser, interleaved_medians, machine_line, publish
from utils.cli import UserError, run_main
from utils.tokenizer import document_tokenizer, get_encoding

REPO = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("NDGPT2_SHARED_DATA", REPO.parent / "shared" / "data")) / "text_corpus"


def load_documents(corpus: Path, megabytes: float, doc_chars: int) -> list[str]:
    files = sorted(corpus.glob("*.txt"))
    if not files:
        raise UserError(f"no .txt files in {corpus}")
    docs, total, current = [], 0, []
    for path in files:
        for paragraph in path.read_text(encoding="utf-8").replace("\r\n", "\n").split("\n\n"):
            current.append(paragraph)
            if sum(map(len, current)) >= doc_chars:
                docs.append("\n\n".join(current))
                total += len(docs[-1])
                current = []
                if total >= megabytes * 1e6:
                    return docs
    return docs + (["\n\n".join(current)] if current else [])


def main() -> None:
    ap = bench_parser(__doc__)
    ap.add_argument("--megabytes", type=float, default=4.0, help="millions of characters to tokenize")
    ap.add_argument("--doc-chars", type=int, default=4000, help="approximate document length")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--chunksize", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if args.workers < 2 or args.repeats < 1 or args.megabytes <= 0:
        raise UserError("need --workers >= 2, --repeats >= 1 and --megabytes > 0")

    enc = get_encoding()
    docs = load_documents(CORPUS, args.megabytes, args.doc_chars)

    cpu: dict[str, list[float]] = {"single": [], "parallel": []}

    def cpu_seconds() -> float:  # this process and its reaped children (the pool workers)
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    def single():
        start = cpu_seconds()
        tokens = [enc.encode_ordinary(d) for d in docs]
        cpu["single"].append(cpu_seconds() - start)
        return tokens

    def parallel():
        start = cpu_seconds()
        with document_tokenizer(args.workers) as tokenize:
            tokens = list(tokenize(docs, chunksize=args.chunksize))
        cpu["parallel"].append(cpu_seconds() - start)
        return tokens

    reference, ours = single(), parallel()
    assert all(np.array_equal(a[1:], b) for a, b in zip(ours, reference)), "parallel tokens differ"
    n_tokens = sum(map(len, reference))
    load_before = os.getloadavg()[0]
    t = interleaved_medians({"single": single, "parallel": parallel}, repeats=args.repeats, warmup=1)
    load = max(load_before, os.getloadavg()[0])  # other processes on the machine take CPUs from the pool
    speedup = t["single"] / t["parallel"]
    cmd = " ".join(["python bench/bench_tokenize.py", *sys.argv[1:]])
    lines = [f"`{cmd}` — {len(docs)} documents, {sum(map(len, docs)) / 1e6:.1f} M characters, "
             f"{n_tokens / 1e6:.2f} M tokens (text_corpus prose); median of {args.repeats} interleaved "
             f"repetitions, pool start-up included; {machine_line()}, {os.cpu_count()} CPUs, "
             f"1-min load average up to {load:.1f} during the run.", "",
             "| path | seconds | tokens/s | speed-up | CPU seconds, all processes |", "|---|---|---|---|---|",
             f"| single-process encode_ordinary loop | {t['single']:.2f} | "
             f"{n_tokens / t['single'] / 1e6:.2f} M | 1.00x | {statistics.median(cpu['single']):.2f} |",
             f"| pool of {args.workers} workers (data/fineweb.py path) | {t['parallel']:.2f} | "
             f"{n_tokens / t['parallel'] / 1e6:.2f} M | {speedup:.2f}x | "
             f"{statistics.median(cpu['parallel']):.2f} |"]
    publish("Tokenization", "\n".join(lines), write=not args.no_write)


if __name__ == "__main__":
    run_main(main, "bench_tokenize.py")
