"""Whole-model Wanda vs one plain forward pass over the same calibration set.

    python bench/bench_wanda.py [--layers 4] [--width 256] [--samples 32] [--seq-len 256] [--no-write]

Wanda runs every block twice (once dense with the norm hooks, once pruned to feed the next block)
plus a per-row sort of every weight matrix; the forward pass includes the LM head. Goal: Wanda
<= 3x the forward, for GPT-2 and NdGPT-2 (whose NdLinear runs its literal per-mode path
while the norms are gathered, models.ndlinear.literal_path).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.common import bench_parser, interleaved_medians, machine_line, publish
from models import build_model
from pruning.wanda import prune_wanda
from utils.cli import UserError, run_main, seed_int


def main() -> None:
    ap = bench_parser(__doc__)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--samples", type=int, default=32, help="calibration sequences")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8, help="sequences per forward (both cases)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=seed_int, default=0)
    args = ap.parse_args()
    if min(args.layers, args.width, args.samples, args.seq_len, args.batch_size, args.repeats) < 1:
        raise UserError("every size must be >= 1")
    if args.width % 64:
        raise UserError("--width must be a multiple of 64 (heads of 64)")

    torch.manual_seed(args.seed)
    calib = torch.randint(0, 50257, (args.samples, args.seq_len))
    lines = [f"`python bench/bench_wanda.py` — {args.layers} layers, width {args.width}, calibration "
             f"{args.samples} x {args.seq_len} tokens in batches of {args.batch_size}, fp32, median of "
             f"{args.repeats} interleaved repetitions; {machine_line()}.", "",
             "| model | forward pass | whole-model Wanda | Wanda / forward | goal <= 3x |",
             "|---|---|---|---|---|"]
    for name in ("gpt2", "ndgpt2"):
        model = build_model(name, n_layer=args.layers, n_head=args.width // 64, n_embd=args.width,
                            block_size=args.seq_len).eval()

        def forward(model=model):
            with torch.no_grad():
                for idx in calib.split(args.batch_size):
                    model(idx)

        def wanda(model=model):  # re-pruning the same model does the same work: same passes, same top-k
            prune_wanda(model, calib, sparsity=0.5, progress=False, batch_size=args.batch_size)

        t = interleaved_medians({"forward": forward, "wanda": wanda}, repeats=args.repeats, warmup=1)
        ratio = t["wanda"] / t["forward"]
        lines.append(f"| {name} | {t['forward']:.2f} s | {t['wanda']:.2f} s | {ratio:.2f}x | "
                     f"{'yes' if ratio <= 3 else 'NO'} |")
        print(lines[-1], flush=True)
    publish("Wanda", "\n".join(lines), write=not args.no_write)


if __name__ == "__main__":
    run_main(main, "bench_wanda.py")
