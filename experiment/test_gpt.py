"""Evaluate a GPT: val loss + perplexity on token shards, and HellaSwag accuracy in both conventions.

    python experiment/test_gpt.py --ckpt logs/gpt2-smoke/model_00200.pt
    python experiment/test_gpt.py --ckpt pruned.pt --data data/edu_fineweb10B --batches 20 --json out.json
    python experiment/test_gpt.py --hf gpt2 --limit 0                       # OpenAI GPT-2 124M, all of HellaSwag

Any checkpoint of this repo (any model, dense or Wanda-pruned; GPU-saved files load on the CPU).
--data defaults to the directory the checkpoint was trained on, else data/edu_fineweb10B, else the
builtin corpus. HellaSwag: all 10,042 examples on CUDA; on other devices the first 1,000 unless
--limit says otherwise (--limit 0 = all; ~30 min for a small model on a 2-core CPU). Two conventions
(--hellaswag-convention): "seed" (no activity label, acc_norm per token: the training-log number) and
"lm-eval" (label kept, acc_norm per character of the ending, as lm-evaluation-harness computes it).
The --json report has the schema of evaluation/report.py: pruning/wanda.py's "before" block for the same
checkpoint and settings holds the same numbers. An existing --json file is refused unless --force.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.evaluator import Evaluation, add_hellaswag_args, add_val_args
from evaluation.report import describe_block
from utils.cli import ArgumentParser, add_model_source_args, add_runtime_args, check_output_path, positive_int, run_main
from utils.io import atomic_write_json

PROG = "test_gpt.py"


def parse_args(argv=None) -> argparse.Namespace:
    ap = ArgumentParser(prog=PROG, description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_source_args(ap)
    ap.add_argument("--data", default=None, help="token shard directory (default: see above)")
    ap.add_argument("--split", default="val", choices=("val", "train"))
    add_val_args(ap, micro_batch=4)
    ap.add_argument("--seq-len", type=positive_int, default=None,
                    help="default: the model's block size, at most 1024")
    add_hellaswag_args(ap)
    ap.add_argument("--json", default=None, metavar="OUT", help="also write the report here")
    ap.add_argument("--force", action="store_true", help="overwrite an existing --json")
    add_runtime_args(ap, seed=0)
    return ap.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    check_output_path(args.json, "--json", force=args.force, inputs=(args.ckpt, args.hellaswag))
    ev = Evaluation(args)
    seq_len = args.seq_len or min(ev.model.config.block_size, 1024)
    ev.use_val(args.data, args.split, args.val_batches, args.micro_batch, seq_len, "--seq-len")
    print(f"{ev.header['model']} from {ev.header['source']} on {ev.device} ({'bf16 autocast' if ev.amp else 'fp32'})")
    metrics, seconds = ev.evaluate()
    split = "" if args.split == "val" else " (on the train split)"
    print(f"{metrics['params_total']:,} params ({metrics['params_nonzero']:,} nonzero) | "
          f"{describe_block(metrics)}{split}")
    if args.json:
        atomic_write_json(args.json, ev.eval_report(args.seed, metrics, seconds))
        print(f"report: {args.json}")


if __name__ == "__main__":
    run_main(main, PROG)
