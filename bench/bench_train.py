"""Training-step throughput on the CPU: our GPT-2 vs transformers' GPT2LMHeadModel, and NdGPT-2 vs GPT-2.

    python bench/bench_train.py [--batch 4] [--repeats 11] [--no-amp] [--default-malloc] [--no-write]

One step = forward + backward + (fused) AdamW step under bf16 autocast (ours with
models.gpt_kernels.use_cpu_kernels, as the training loop switches them on), at 6 layers, width 384, 6 heads,
T 256, vocab 50304, the same batch for every model; cases interleaved (each timed step after an
untimed one), medians compared. Goals: ours / HF >= 1.1x, NdGPT-2 / GPT-2 >= 1.05x. MFU is measured
against the bf16 matmul peak timed in the same run (a large square bf16 matmul), with
6*N + 12*L*T*C FLOPs per token.

By default every model runs with utils.malloc.keep_freed_memory, as experiment/train_gpt.py does on
the CPU; --default-malloc measures glibc's defaults, under which every step page-faults its large
buffers back in (HF's fp32 copy of the logits most of all).
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.common import bench_parser, interleaved_medians, machine_line, publish
from models import build_model
from models.gpt_kernels import use_cpu_kernels
from models.params import count_params
from utils.malloc import keep_freed_memory

CONFIG = dict(n_layer=6, n_embd=384, n_head=6, block_size=256, vocab_size=50304)


def hf_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    c = CONFIG
    config = GPT2Config(vocab_size=c["vocab_size"], n_positions=c["block_size"], n_embd=c["n_embd"],
                        n_layer=c["n_layer"], n_head=c["n_head"], activation_function="gelu_new",
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True)
    return GPT2LMHeadModel(config)


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """bf16 FLOP/s of an n x n x n matmul (median of ``repeats``)."""
    a, b = torch.randn(n, n, dtype=torch.bfloat16), torch.randn(n, n, dtype=torch.bfloat16)
    seconds = interleaved_medians({"matmul": partial(torch.matmul, a, b)}, repeats=repeats, warmup=1)["matmul"]
    return 2 * n**3 / seconds


def flops_per_token(model) -> float:
    """6 N (matmul params: all but the position table; the tied embedding counts once, as the head)
    + 12 L T C for attention scores and values."""
    c = CONFIG
    n = sum(p.numel() for name, p in model.named_parameters() if "wpe" not in name)
    return 6 * n + 12 * c["n_layer"] * c["block_size"] * c["n_embd"]


def main() -> None:
    ap = bench_parser(__doc__)
    ap.add_argument("--batch", type=int, default=4, help="sequences per step")
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True, help="bf16 autocast")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--default-malloc", action="store_true",
                    help="leave glibc malloc as it is (default: utils.malloc.keep_freed_memory, as train_gpt.py "
                         "does on the CPU)")
    args = ap.parse_args()
    if args.batch < 1 or args.repeats < 1:
        sys.exit("bench_train.py: error: --batch and --repeats must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    kept = not args.default_malloc and keep_freed_memory()
    malloc = "malloc keeps freed memory" if kept else "glibc malloc defaults"
    precision = "bf16 autocast" if args.amp else "fp32"

    torch.manual_seed(0)
    T = CONFIG["block_size"]
    x = torch.randint(0, 50257, (args.batch, T))
    y = torch.roll(x, -1, dims=1)
    models = {
        "GPT-2 (ours)": build_model("gpt2", **CONFIG),
        "GPT2LMHeadModel (HF)": hf_gpt2(),
        "NdGPT-2 (ours)": build_model("ndgpt2", **CONFIG),
    }
    for name, model in models.items():
        if "ours" in name:  # as train_gpt.py runs on the CPU without --compile
            use_cpu_kernels(model)

    def make_step(name, model):
        # the same (fused) AdamW for every model: the ratio compares the models' fwd+bwd
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8,
                                      weight_decay=0.1, fused=True)

        def step():
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.amp):
                loss = model(x, labels=x).loss if "HF" in name else model(x, y)[1]
            loss.backward()
            optimizer.step()
        return step

    cases = {name: make_step(name, m) for name, m in models.items()}
    peak = matmul_peak()
    medians = interleaved_medians(cases, repeats=args.repeats, warmup=1, settle=1)
    peak = max(peak, matmul_peak())  # before and after: the larger is closer to the true peak
    tokens = args.batch * T
    base = medians["GPT-2 (ours)"]
    lines = [f"`python bench/bench_train.py --batch {args.batch} --repeats {args.repeats}"
             f"{'' if args.amp else ' --no-amp'}{' --default-malloc' if args.default_malloc else ''}` — "
             f"fwd+bwd+AdamW, {precision}, 6 layers x 384, 6 heads, T {T}, batch {args.batch}, vocab 50304; "
             f"median of {args.repeats} interleaved steps (each after an untimed one); {malloc}; {machine_line()}. "
             f"bf16 matmul peak measured: {peak / 1e9:.1f} GFLOP/s.", "",
             "| model | params | ms/step | tokens/s | speed vs GPT-2 (ours) | MFU |",
             "|---|---|---|---|---|---|"]
    for name, model in models.items():
        t = medians[name]
        n_params = count_params(model, nonzero=False)["total"]
        mfu = flops_per_token(model) * tokens / t / peak
        lines.append(f"| {name} | {n_params:,} | {t * 1000:.1f} | {tokens / t:,.0f} | {base / t:.3f}x | "
                     f"{mfu:.1%} |")
    ours_vs_hf = medians["GPT2LMHeadModel (HF)"] / base
    nd_vs_gpt = base / medians["NdGPT-2 (ours)"]
    lines += ["", f"ours / HF speed-up: **{ours_vs_hf:.3f}x** (goal >= 1.1x); NdGPT-2 / GPT-2 speed-up: "
              f"**{nd_vs_gpt:.3f}x** (goal >= 1.05x). Ratios of interleaved medians are the robust figures; "
              "absolute times move with the machine's load."]
    defaults = ", glibc malloc defaults" if args.default_malloc else ""
    publish(f"Training step ({precision}{defaults})", "\n".join(lines), write=not args.no_write)


if __name__ == "__main__":
    main()
