"""Sample text from a trained GPT checkpoint of this repo (any model, dense or pruned), an exported HF
directory (experiment/export_hf.py) or an HF GPT-2.

    python experiment/generate.py --ckpt logs/gpt2-smoke/model_00200.pt --prompt "The meaning of life is"
    python experiment/generate.py --hf gpt2 --num-samples 2 --max-new-tokens 64     # OpenAI weights

``<|endoftext|>`` in --prompt is the end-of-text token (a document boundary), not plain text. Sampling
uses a KV cache (--no-cache recomputes the whole context at every step: slower, same tokens), and runs
the samples in batches that fit in memory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.sampling import sample_texts
from utils.checkpoint import load_any_gpt
from utils.cli import (
    ArgumentParser,
    add_model_source_args,
    add_runtime_args,
    pick_device,
    positive_float,
    positive_int,
    run_main,
)
from utils.precision import resolve_amp
from utils.seed import seed_everything
from utils.tokenizer import get_encoding

PROG = "generate.py"


def parse_args(argv=None) -> argparse.Namespace:
    ap = ArgumentParser(prog=PROG, description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_source_args(ap, "checkpoint model_NNNNN.pt written by train_gpt.py or pruning/wanda.py")
    ap.add_argument("--prompt", default="Hello, I'm a language model,")
    ap.add_argument("--num-samples", type=positive_int, default=4)
    ap.add_argument("--max-new-tokens", type=positive_int, default=32)
    ap.add_argument("--top-k", type=positive_int, default=50, help="sample from the k most likely tokens (1: greedy)")
    ap.add_argument("--temperature", type=positive_float, default=1.0, help="> 0; lower is more conservative")
    ap.add_argument("--no-cache", action="store_true", help="no KV cache: recompute the context at every step")
    add_runtime_args(ap, seed=42)
    return ap.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    device = pick_device(args.device)
    seed_everything(args.seed)
    model, name = load_any_gpt(args.ckpt, args.hf, device)
    texts = sample_texts(model, get_encoding(), args.prompt, args.num_samples, args.max_new_tokens,
                         top_k=args.top_k, temperature=args.temperature, seed=args.seed, device=device,
                         amp=resolve_amp(device, args.amp), use_cache=not args.no_cache, progress=True)
    print(f"# {name}, top-k {args.top_k}, temperature {args.temperature}, seed {args.seed}")
    for i, text in enumerate(texts):
        print(f"--- sample {i}\n{text}")


if __name__ == "__main__":
    run_main(main, PROG)
