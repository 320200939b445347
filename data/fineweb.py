"""Tokenize a corpus into GPT-2 uint16 token shards for training.

    python data/fineweb.py                      # FineWeb-EDU sample-10BT -> data/edu_fineweb10B (download)
    python data/fineweb.py --builtin            # offline pydoc corpus -> data/builtin (smoke runs)
    python data/fineweb.py --input ../shared/data/text_corpus/*.txt --strip-gutenberg --val-docs 4 \\
        --out-dir data/prose --prefix prose --shard-size 10000000
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.sources import build_fineweb, build_from_files
from utils.cli import ArgumentParser, UserError, check_writable_dir, run_main, seed_int
from utils.shards import BUILTIN_SHARD_SIZE, build_builtin


def parse_args() -> argparse.Namespace:
    parser = ArgumentParser(
        prog="fineweb.py",
        description="Tokenize documents with GPT-2 BPE ([EOT] + tokens per document) into uint16 .npy shards "
                    "'{prefix}_{val,train}_NNNNNN.npy'. Default: FineWeb-EDU sample-10BT (shard 0 = val). "
                    "--input: local .txt (one document per file), .jsonl ('text' field) or .parquet ('text' "
                    "column) files, val = whole documents. --builtin: an offline corpus for smoke runs. "
                    "A finished directory (done.json) is not rebuilt when re-run with the same settings.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--input", nargs="+", metavar="PATH", help="local .txt / .jsonl / .parquet files")
    source.add_argument("--builtin", action="store_true",
                        help="the stdlib's pydoc topics as an offline corpus (smoke training)")
    parser.add_argument("--out-dir", help="output directory (default: data/edu_fineweb10B, data/builtin "
                                          "with --builtin, data/custom with --input)")
    parser.add_argument("--prefix", help="shard file prefix (default: edufineweb; builtin with --builtin)")
    parser.add_argument("--shard-size", type=int,
                        help=f"tokens per shard (default: 100000000; {BUILTIN_SHARD_SIZE} with --builtin)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="tokenizer threads")
    val = parser.add_mutually_exclusive_group()
    val.add_argument("--val-docs", type=int, help="number of whole documents held out for val (--input)")
    val.add_argument("--val-fraction", type=float, default=0.1,
                     help="share of whole documents held out for val, at least one (--input)")
    parser.add_argument("--seed", type=seed_int, default=0, help="seed of the val document draw")
    parser.add_argument("--strip-gutenberg", action="store_true",
                        help="keep only the body of Project Gutenberg eBooks; CRLF -> LF (--input)")
    parser.add_argument("--max-tokens", type=int, help="stop after this many tokens in all")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace shards of this prefix made with other settings in --out-dir")
    return parser.parse_args()


def check_args(args: argparse.Namespace) -> None:
    for name in ("shard_size", "workers", "val_docs", "max_tokens"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if not 0 < args.val_fraction < 1:
        raise UserError(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    for flag, used in (("--val-docs", args.val_docs is not None), ("--strip-gutenberg", args.strip_gutenberg)):
        if used and args.input is None:
            raise UserError(f"{flag} only applies to --input files")
    if args.builtin and (args.max_tokens is not None or args.prefix is not None):
        raise UserError("--builtin takes no --max-tokens / --prefix")
    if args.prefix is not None and not args.prefix.replace("-", "").replace("_", "").isalnum():
        raise UserError(f"--prefix must be letters, digits, '-' or '_', got {args.prefix!r}")


def main() -> None:
    args = parse_args()
    check_args(args)
    common = {"prefix": args.prefix or "edufineweb", "shard_size": args.shard_size or 100_000_000,
              "max_tokens": args.max_tokens, "workers": args.workers, "overwrite": args.overwrite}
    default = "data/builtin" if args.builtin else "data/custom" if args.input else "data/edu_fineweb10B"
    out_dir = args.out_dir or default
    check_writable_dir(out_dir, "--out-dir")
    if args.builtin:
        manifest = build_builtin(out_dir, shard_size=args.shard_size or BUILTIN_SHARD_SIZE, seed=args.seed)
    elif args.input:
        manifest = build_from_files(args.input, out_dir, val_docs=args.val_docs, val_fraction=args.val_fraction,
                                    seed=args.seed, strip=args.strip_gutenberg, **common)
    else:
        manifest = build_fineweb(out_dir, **common)
    shards = manifest["shards"]
    state = "up to date, nothing to do" if manifest["skipped"] else "written"
    print(f"{out_dir}: {state}")
    for split in ("val", "train"):
        n = sum(1 for s in shards if s["split"] == split)
        print(f"  {split}: {manifest[f'{split}_tokens']:,} tokens in {n} shard(s)")


if __name__ == "__main__":
    run_main(main, "fineweb.py")
