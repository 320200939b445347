"""Evaluate a GPT: val loss + perplexity on token shards, and HellaSwag accuracy.

    python experiment/test_gpt.py --ckpt logs/gpt2-smoke/model_00300.pt
    python experiment/test_gpt.py --ckpt pruned.pt --data data/edu_fineweb10B --batches 20 --json out.json
    python experiment/test_gpt.py --hf gpt2 --limit 1000                      # OpenAI GPT-2 124M

Any checkpoint of this repo (any model, dense or Wanda-pruned; GPU-saved files load on the CPU).
--data defaults to the directory the checkpoint was trained on, else data/edu_fineweb10B, else the
builtin corpus.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from utils.checkpoint import load_any_gpt, load_checkpoint
from utils.cli import REPO, UserError, add_model_source_args, check_positive, pick_device, run_main
from utils.evaluation import evaluate_loss
from utils.params import count_params
from utils.seed import seed_everything

PROG = "test_gpt.py"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_source_args(ap)
    ap.add_argument("--data", default=None, help="token shard directory (default: see above)")
    ap.add_argument("--split", default="val", choices=("val", "train"))
    ap.add_argument("--batches", type=int, default=20, help="micro-batches for the loss")
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=None, help="default: the model's block size, at most 1024")
    ap.add_argument("--hellaswag", default=None,
                    help="HellaSwag jsonl (default: data/hellaswag or ../shared/data)")
    ap.add_argument("--limit", type=int, default=None, help="first N HellaSwag examples only")
    ap.add_argument("--no-hellaswag", action="store_true")
    ap.add_argument("--json", default=None, metavar="OUT", help="also write the results to this JSON file")
    ap.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                    help="bf16 autocast (default: on with CUDA)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:N, mps (default: best available)")
    return ap.parse_args(argv)


def default_data(args) -> str:
    if args.ckpt is not None:
        trained_on = (load_checkpoint(args.ckpt, expect_kind="gpt").get("train_args") or {}).get("data")
        if trained_on and Path(trained_on).is_dir():
            return trained_on
    fineweb = REPO / "data" / "edu_fineweb10B"
    if fineweb.is_dir():
        return str(fineweb)
    from utils.shards import prepare_builtin_corpus

    return str(prepare_builtin_corpus(REPO / "data" / "builtin"))


def main(argv=None) -> None:
    args = parse_args(argv)
    check_positive(batches=args.batches, micro_batch=args.micro_batch, seq_len=args.seq_len, limit=args.limit)
    device = pick_device(args.device)
    amp = torch.device(device).type == "cuda" if args.amp is None else args.amp
    seed_everything(args.seed)
    model, name = load_any_gpt(args.ckpt, args.hf, device)
    seq_len = args.seq_len or min(model.config.block_size, 1024)
    if seq_len > model.config.block_size:
        raise UserError(f"--seq-len {seq_len} exceeds the model's block size {model.config.block_size}")
    hellaswag = None
    if not args.no_hellaswag:  # load (and validate) before the long loss evaluation
        from utils.hellaswag import evaluate_hellaswag, load_hellaswag_if_found
        hellaswag = load_hellaswag_if_found(args.hellaswag, args.limit,
                                            note=lambda msg: print(msg, file=sys.stderr))

    from utils.loader import ShardLoader
    data = args.data or default_data(args)
    loader = ShardLoader(data, args.split, args.micro_batch, seq_len, shuffle=False)
    params = count_params(model)
    print(f"{name}: {params['total']:,} params ({params['nonzero']:,} nonzero) on {device}")
    loss = evaluate_loss(model, loader, args.batches, device, amp)
    result = {"model": name, "params": params["total"], "params_nonzero": params["nonzero"], "data": data,
              "split": args.split, "tokens": args.batches * args.micro_batch * seq_len,
              "val_loss": loss, "perplexity": math.exp(min(loss, 700))}
    print(f"{args.split} loss {loss:.4f} | perplexity {result['perplexity']:.2f} "
          f"({result['tokens']:,} tokens of {data})")
    if hellaswag is not None:
        hs = evaluate_hellaswag(model, hellaswag, device=device, amp=amp)
        result.update(hellaswag_acc=hs["acc"], hellaswag_acc_norm=hs["acc_norm"], hellaswag_n=hs["n"])
        print(f"hellaswag acc {hs['acc']:.4f} | acc_norm {hs['acc_norm']:.4f} (n={hs['n']})")
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    run_main(main, PROG)
