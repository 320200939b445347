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
The --json report has the schema of utils/report.py: pruning/wanda.py's "before" block for the same
checkpoint and settings holds the same numbers.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.cli import (
    REPO,
    UserError,
    add_model_source_args,
    add_runtime_args,
    check_output_path,
    pick_device,
    positive_int,
    run_main,
)
from utils.io import atomic_write_json
from utils.precision import resolve_amp
from utils.report import (
    add_hellaswag_args,
    conventions_of,
    describe_block,
    eval_report,
    eval_settings,
    evaluate_model,
    load_hellaswag_examples,
    load_model_source,
)
from utils.seed import seed_everything

PROG = "test_gpt.py"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_source_args(ap)
    ap.add_argument("--data", default=None, help="token shard directory (default: see above)")
    ap.add_argument("--split", default="val", choices=("val", "train"))
    ap.add_argument("--batches", type=positive_int, default=20, help="micro-batches for the loss")
    ap.add_argument("--micro-batch", type=positive_int, default=4)
    ap.add_argument("--seq-len", type=positive_int, default=None,
                    help="default: the model's block size, at most 1024")
    add_hellaswag_args(ap)
    ap.add_argument("--json", default=None, metavar="OUT",
                    help="also write the report here (overwritten if it exists)")
    add_runtime_args(ap, seed=0)
    return ap.parse_args(argv)


def default_data(trained_on: str | None) -> str:
    if trained_on and Path(trained_on).is_dir():
        return trained_on
    fineweb = REPO / "data" / "edu_fineweb10B"
    if fineweb.is_dir():
        return str(fineweb)
    from utils.shards import prepare_builtin_corpus

    return str(prepare_builtin_corpus(REPO / "data" / "builtin"))


def main(argv=None) -> None:
    args = parse_args(argv)
    check_output_path(args.json, "--json", force=True, inputs=(args.ckpt,))
    device = pick_device(args.device)
    amp = resolve_amp(device, args.amp)
    seed_everything(args.seed)
    examples, hellaswag_path, limit = load_hellaswag_examples(args, device, note=print)
    model, header = load_model_source(args.ckpt, args.hf, device)
    seq_len = args.seq_len or min(model.config.block_size, 1024)
    if seq_len > model.config.block_size:
        raise UserError(f"--seq-len {seq_len} exceeds the model's block size {model.config.block_size}")

    from utils.loader import ShardLoader
    data = args.data or default_data(header["trained_on"])
    loader = ShardLoader(data, args.split, args.micro_batch, seq_len, shuffle=False,
                         vocab_size=model.config.vocab_size)
    conventions = () if examples is None else conventions_of(args.hellaswag_convention)
    settings = eval_settings(data=data, split=args.split, batches=args.batches, batch_size=args.micro_batch,
                             seq_len=seq_len, hellaswag=hellaswag_path, limit=limit, conventions=conventions,
                             amp=amp, device=device)
    print(f"{header['model']} from {header['source']} on {device} ({'bf16 autocast' if amp else 'fp32'})")
    t0 = time.perf_counter()
    metrics = evaluate_model(model, val_loader=loader, val_batches=args.batches, hellaswag_examples=examples,
                             conventions=conventions, device=device, amp=amp)
    split = "" if args.split == "val" else " (on the train split)"
    print(f"{metrics['params_total']:,} params ({metrics['params_nonzero']:,} nonzero) | "
          f"{describe_block(metrics)}{split}")
    if args.json:
        atomic_write_json(args.json, eval_report(header, {"seed": args.seed, "eval": settings}, metrics,
                                                 time.perf_counter() - t0))
        print(f"report: {args.json}")


if __name__ == "__main__":
    run_main(main, PROG)
