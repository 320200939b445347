"""Download the original HellaSwag validation set (rowanz/hellaswag, 10,042 examples, ~11 MB).

    python data/hellaswag.py [--out-dir data/hellaswag] [--force] [--check PATH]

The file lands in data/hellaswag/hellaswag_val.jsonl, where the evaluator looks first. Offline,
pass the llama.cpp-derived copy instead (same 10,042 examples, lightly preprocessed WikiHow text):
--hellaswag ../shared/data/hellaswag/hellaswag_val_llamacpp_derived.jsonl.
``--check PATH`` validates a file and prints its example count without downloading anything.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.cli import run_main
from utils.hellaswag import HELLASWAG_VAL_URL, load_hellaswag
from utils.hellaswag import download_hellaswag as _download


def download_hellaswag(out_dir="data/hellaswag", url: str = HELLASWAG_VAL_URL, force: bool = False) -> Path:
    """Path of the cached validation jsonl in ``out_dir``, downloaded first if missing (or ``force``).
    Offline -> UserError pointing at the shared llama.cpp-derived copy."""
    return _download(out_dir, url=url, force=force)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", default="data/hellaswag", help="cache directory (default: %(default)s)")
    ap.add_argument("--url", default=HELLASWAG_VAL_URL, help="source URL (default: the rowanz GitHub file)")
    ap.add_argument("--force", action="store_true", help="download again even if the file is cached")
    ap.add_argument("--check", metavar="PATH", help="only validate PATH and print its example count")
    args = ap.parse_args()
    if args.check:
        examples = load_hellaswag(args.check)
        print(f"{args.check}: {len(examples)} valid HellaSwag examples")
        return
    cached = Path(args.out_dir) / Path(args.url).name
    if cached.is_file() and not args.force:
        print(f"already cached: {cached} ({cached.stat().st_size:,} bytes); --force downloads it again")
        return
    path = download_hellaswag(args.out_dir, url=args.url, force=args.force)
    print(f"{len(load_hellaswag(path))} examples cached at {path}")


if __name__ == "__main__":
    run_main(main, "hellaswag.py")
