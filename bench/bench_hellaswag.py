"""HellaSwag evaluation: batched scorer vs the one-example-per-forward fp32 loop.

    python bench/bench_hellaswag.py [--examples 200] [--batch-size 16] [--repeats 3] [--convention seed]
                                    [--no-write]

A randomly initialised 4-layer / 256-wide GPT (vocab 50304) scores the same N real examples both
ways in one run, interleaved; both run in fp32 (the batched one with amp=False) and must give
identical acc / acc_norm counts. Goal: batched >= 2.5x faster.
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.common import bench_parser, interleaved_medians, machine_line, publish
from evaluation.hellaswag import HELLASWAG_CONVENTIONS, default_hellaswag_path, evaluate_hellaswag, load_hellaswag
from models import build_model
from utils.cli import UserError, pick_device, run_main, seed_int


def main() -> None:
    ap = bench_parser(__doc__)
    ap.add_argument("--hellaswag", help="HellaSwag jsonl (default: found as evaluation.hellaswag does)")
    ap.add_argument("--examples", type=int, default=200, help="examples per run (default: %(default)s)")
    ap.add_argument("--batch-size", type=int, default=16, help="examples per forward, batched scorer")
    ap.add_argument("--repeats", type=int, default=3, help="timed repetitions (default: %(default)s)")
    ap.add_argument("--convention", choices=HELLASWAG_CONVENTIONS, default="seed",
                    help="HellaSwag convention (evaluation/hellaswag.py; default: %(default)s)")
    ap.add_argument("--device", help="cpu / cuda (default: best available)")
    ap.add_argument("--seed", type=seed_int, default=0)
    args = ap.parse_args()
    if args.examples < 1 or args.repeats < 1:
        raise UserError("--examples and --repeats must be >= 1")
    device = pick_device(args.device)
    torch.manual_seed(args.seed)
    model = build_model("gpt2", n_layer=4, n_head=4, n_embd=256, vocab_size=50304).to(device).eval()
    examples = load_hellaswag(default_hellaswag_path(args.hellaswag), limit=args.examples)

    score = partial(evaluate_hellaswag, model, examples, device=device, progress=False, convention=args.convention)
    results = {}
    times = interleaved_medians({"per_example": partial(score, per_example=True),
                                 "batched": partial(score, batch_size=args.batch_size, amp=False)},
                                repeats=args.repeats, warmup=1, results=results)
    if results["batched"] != results["per_example"]:
        raise SystemExit(f"bench_hellaswag: counts differ: batched {results['batched']} vs "
                         f"per-example {results['per_example']}")
    n = len(examples)
    ratio = times["per_example"] / times["batched"]
    lines = [f"`python bench/bench_hellaswag.py --examples {n} --batch-size {args.batch_size} "
             f"--repeats {args.repeats} --convention {args.convention}` — random 4-layer/256-wide GPT "
             f"(vocab 50304), {n} examples, {args.convention} convention, "
             f"fp32 both, median of {args.repeats} interleaved runs; {device}, {machine_line()}.", "",
             "| scorer | time | examples/s | acc | acc_norm |", "|---|---|---|---|---|"]
    for name, label in (("per_example", "one example per forward, full logits"),
                        ("batched", f"batched ({args.batch_size} ex/forward, head at ending positions)")):
        r = results[name]
        lines.append(f"| {label} | {times[name]:.2f} s | {n / times[name]:.1f} | {r['acc']:.4f} | "
                     f"{r['acc_norm']:.4f} |")
    lines += ["", f"Identical counts; speed-up **{ratio:.2f}x** (goal >= 2.5x)."]
    publish("HellaSwag evaluation", "\n".join(lines), write=not args.no_write)


if __name__ == "__main__":
    run_main(main, "bench_hellaswag.py")
