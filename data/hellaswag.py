"""Fetch the original HellaSwag validation set (rowanz/hellaswag, 10,042 examples, ~11 MB) and validate it.

    python data/hellaswag.py                                     # download into data/hellaswag/
    python data/hellaswag.py --url file:///path/to/hellaswag_val.jsonl   # copy a local file instead
    python data/hellaswag.py --check PATH                        # validate PATH, print its example count

The file lands in data/hellaswag/hellaswag_val.jsonl (whatever the source's name), where the evaluators
look first (then the shared llama.cpp-derived copy,
../shared/data/hellaswag/hellaswag_val_llamacpp_derived.jsonl: the same 10,042 examples,
lm-eval-preprocessed, usable offline with --hellaswag PATH). The download is validated line by line
before it is written (atomically), so a failed or cut-off download leaves nothing behind.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.hellaswag import HELLASWAG_VAL_URL, LOCAL_VAL, download_hellaswag, load_hellaswag
from utils.cli import ArgumentParser, check_writable_dir, run_main


def main(argv=None) -> None:
    ap = ArgumentParser(prog="hellaswag.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", default="data/hellaswag", help="cache directory (default: %(default)s)")
    ap.add_argument("--url", default=HELLASWAG_VAL_URL,
                    help="source URL, or file:///PATH to copy a local file (default: the rowanz GitHub file)")
    ap.add_argument("--force", action="store_true", help="fetch again even if the file is cached")
    ap.add_argument("--check", metavar="PATH", help="only validate PATH and print its example count")
    args = ap.parse_args(argv)
    if args.check is not None:
        print(f"{args.check}: {len(load_hellaswag(args.check))} valid HellaSwag examples")
        return
    cached = Path(args.out_dir) / LOCAL_VAL.name
    if cached.is_file() and not args.force:
        print(f"already cached: {cached} ({cached.stat().st_size:,} bytes); --force fetches it again")
        return
    check_writable_dir(args.out_dir, "--out-dir")
    path = download_hellaswag(args.out_dir, url=args.url, force=args.force)
    print(f"{len(load_hellaswag(path))} examples cached at {path}")


if __name__ == "__main__":
    run_main(main, "hellaswag.py")
