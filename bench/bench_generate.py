"""Sampling speed: our GPT.generate with and without the KV cache vs transformers' generate(use_cache=True).

    python bench/bench_generate.py [--batch 1 4] [--prompt 32] [--new-tokens 128] [--repeats 3] [--no-write]

Greedy decoding (ours: top_k=1; HF: do_sample=False) of a randomly initialised dense GPT-2 (6 layers,
width 384, 6 heads, vocab 50304), the same weights in both (exported with GPT.save_hf), fp32,
2 threads by default. Every case generates exactly --new-tokens tokens; the tokens of all three
are checked equal. Goal: ours with the cache at least as fast as HF's.
"""

from __future__ import annotations

import sys
import tempfile
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.common import bench_parser, interleaved_medians, machine_line, publish
from models import build_model
from utils.cli import positive_int, run_main

CONFIG = dict(n_layer=6, n_embd=384, n_head=6, block_size=1024, vocab_size=50304)


def main() -> None:
    ap = bench_parser(__doc__)
    ap.add_argument("--batch", type=positive_int, nargs="+", default=[1, 4], help="batch sizes to run")
    ap.add_argument("--prompt", type=positive_int, default=32, help="prompt tokens")
    ap.add_argument("--new-tokens", type=positive_int, default=128)
    ap.add_argument("--repeats", type=positive_int, default=3)
    ap.add_argument("--threads", type=positive_int, default=2)
    args = ap.parse_args()
    if args.prompt + args.new_tokens > CONFIG["block_size"]:
        ap.error(f"--prompt + --new-tokens must be <= {CONFIG['block_size']} (the block size)")
    torch.set_num_threads(args.threads)
    from tqdm import tqdm
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    ours = build_model("gpt2", **CONFIG).eval()
    with tempfile.TemporaryDirectory() as tmp:
        ours.save_hf(tmp)
        hf = GPT2LMHeadModel.from_pretrained(tmp).eval()
    hf.generation_config.eos_token_id = None  # no early stop: exactly --new-tokens tokens, as ours
    new = args.new_tokens

    lines = [f"`python bench/bench_generate.py --batch {' '.join(map(str, args.batch))} --prompt {args.prompt} "
             f"--new-tokens {new} --repeats {args.repeats}` — greedy, fp32, random dense GPT-2 6 layers x 384, "
             f"6 heads, vocab 50304, prompt {args.prompt}, {new} new tokens; median of {args.repeats} interleaved "
             f"runs; {machine_line()}.", "",
             "| batch | ours, KV cache | ours, no cache | HF generate(use_cache=True) | cache / no cache | "
             "ours / HF | same tokens |", "|---|---|---|---|---|---|---|"]
    generators = {"cache": lambda p: ours.generate(p, new, top_k=1),
                  "no cache": lambda p: ours.generate(p, new, top_k=1, use_cache=False),
                  "hf": lambda p: hf.generate(p, attention_mask=torch.ones_like(p), do_sample=False, max_new_tokens=new,
                                              use_cache=True, pad_token_id=0)}
    for batch in tqdm(args.batch, desc="batch sizes"):
        prompt = torch.randint(0, 50257, (batch, args.prompt), generator=torch.Generator().manual_seed(batch))
        outputs: dict[str, torch.Tensor] = {}
        with torch.inference_mode():
            t = interleaved_medians({name: partial(fn, prompt) for name, fn in generators.items()},
                                    repeats=args.repeats, warmup=1, results=outputs)
        same = torch.equal(outputs["cache"], outputs["no cache"]) and torch.equal(outputs["cache"], outputs["hf"])
        rate = {name: batch * new / seconds for name, seconds in t.items()}
        lines.append(f"| {batch} | {rate['cache']:,.0f} tok/s | {rate['no cache']:,.0f} tok/s | {rate['hf']:,.0f} tok/s"
                     f" | {rate['cache'] / rate['no cache']:.2f}x | {rate['cache'] / rate['hf']:.2f}x | "
                     f"{'yes' if same else 'no'} |")
    publish("Sampling (bench/bench_generate.py)", "\n".join(lines), write=not args.no_write)


if __name__ == "__main__":
    run_main(main, "bench_generate.py")
