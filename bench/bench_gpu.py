"""Training throughput on one GPU: tokens/s and MFU of gpt2, ndgpt2 and gpt2-mlp1536 at their full shape
(12 layers, 768 wide, T 1024), compiled and eager, with torch.compile's compilation timed apart.

    python bench/bench_gpu.py [--models gpt2 ndgpt2 gpt2-mlp1536] [--modes compiled eager] [--batch 32]
                              [--steps 10] [--json t.json] [--md t.md] [--no-write]

One step is experiment/train_gpt.py's step without accumulation: forward and loss under bf16 autocast,
backward, gradient clipping at 1.0 and fused AdamW (decay on the matrices), loss and gradient norm read
back to the host, on a fixed batch of B x T random tokens (the speed does not depend on their values).
Per model and mode the first step, which compiles and allocates, is timed on its own (first_step_s);
then --warmup untimed steps, then --steps timed ones, synchronised: tokens/s = steps x B x T / seconds.
MFU = tokens/s x (6 N + 12 L T C) / the GPU's dense bf16 peak, as train_gpt.py's summary.json computes
it (experiment/train_summary.py). A case that fails (out of memory, a compile error) is recorded with
its error and the next one runs. The shape flags shrink everything for a check on the CPU.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.common import bench_parser, publish
from experiment.train_summary import flops_per_token, peak_flops
from models import MODEL_NAMES, build_model
from utils.io import atomic_write, atomic_write_json, fmt, markdown_table
from utils.precision import autocast, resolve_amp

MODELS = ("gpt2", "ndgpt2", "gpt2-mlp1536")
HEADERS = ["model", "mode", "params", "first step s", "ms/step", "tokens/s", "MFU", "peak GiB"]


def parse_args(argv=None):
    ap = bench_parser(__doc__)
    ap.add_argument("--models", nargs="+", choices=MODEL_NAMES, default=list(MODELS))
    ap.add_argument("--modes", nargs="+", choices=("compiled", "eager"), default=["compiled", "eager"])
    ap.add_argument("--batch", type=int, default=32, help="sequences per step (default 32)")
    ap.add_argument("--seq-len", type=int, default=1024, help="tokens per sequence and block size (default 1024)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per case (default 10)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps after the first (default 2)")
    ap.add_argument("--n-layer", type=int)
    ap.add_argument("--n-head", type=int)
    ap.add_argument("--n-embd", type=int)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--amp", action=argparse.BooleanOptionalAction, help="bf16 autocast (default: on with CUDA)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--md", help="write the table here")
    return ap.parse_args(argv)


def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def run_case(name: str, mode: str, args, amp: bool) -> dict:
    """Build, (compile,) and time one model; the figures of one table row."""
    device = args.device
    shape = {k: getattr(args, k) for k in ("n_layer", "n_head", "n_embd") if getattr(args, k) is not None}
    torch.manual_seed(0)
    model = build_model(name, block_size=args.seq_len, **shape).to(device)
    optimizer = model.configure_optimizers(0.1, 6e-4, device_type=torch.device(device).type)
    forward = torch.compile(model) if mode == "compiled" else model
    tokens = torch.randint(0, model.config.vocab_size, (args.batch, args.seq_len + 1),
                           generator=torch.Generator().manual_seed(0)).to(device)
    x, y = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()

    def timed(steps: int) -> float:
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, amp):
                _, loss = forward(x, y)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            loss.item(), norm.item()  # train_gpt.py reads both every step
        synchronize(device)
        return time.perf_counter() - t0

    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    first = timed(1)
    timed(args.warmup)
    seconds = timed(args.steps)
    params = sum(p.numel() for p in model.parameters())
    tps = args.steps * args.batch * args.seq_len / seconds
    peak = peak_flops(device)
    c = model.config
    return {"first_step_s": first, "step_s": seconds / args.steps, "tokens_per_sec": tps, "params": params,
            "mfu": tps * flops_per_token(params, c.n_layer, c.n_embd, args.seq_len) / peak if peak else None,
            "peak_memory_gib": (torch.cuda.max_memory_allocated(device) / 2**30
                                if torch.device(device).type == "cuda" else None)}


def free_memory() -> None:
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def row(r: dict) -> list[str]:
    return [r["model"], r["mode"], fmt(r.get("params"), ",d"), fmt(r.get("first_step_s"), ".1f"),
            fmt(None if r.get("step_s") is None else 1000 * r["step_s"], ".1f"), fmt(r.get("tokens_per_sec"), ",.0f"),
            fmt(r.get("mfu"), ".1%"), fmt(r.get("peak_memory_gib"), ".1f") if not r.get("error") else r["error"]]


def ratios(results: list[dict]) -> list[str]:
    """Speed-ups of compile over eager per model, and of each model over gpt2-mlp1536 in the same mode."""
    tps = {(r["model"], r["mode"]): r["tokens_per_sec"] for r in results if not r["error"]}
    lines = [f"{m}: compiled {tps[m, 'compiled'] / tps[m, 'eager']:.2f}x eager"
             for m in dict.fromkeys(r["model"] for r in results) if (m, "compiled") in tps and (m, "eager") in tps]
    lines += [f"{mode}: {m} {tps[m, mode] / tps['gpt2-mlp1536', mode]:.2f}x gpt2-mlp1536"
              for (m, mode) in tps if m != "gpt2-mlp1536" and ("gpt2-mlp1536", mode) in tps]
    return lines


def main(argv=None) -> None:
    args = parse_args(argv)
    amp = resolve_amp(args.device, args.amp)
    if torch.device(args.device).type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32, as train_gpt.py
        where = f"{torch.cuda.get_device_name(args.device)}, CUDA {torch.version.cuda}"
    else:
        where = "CPU"
    results = []
    for name in args.models:
        for mode in args.modes:
            print(f"{name} {mode} ...", flush=True)
            result = {"model": name, "mode": mode, "error": None}
            try:
                result.update(run_case(name, mode, args, amp))
            except Exception as e:  # OOM, a compiler error: keep the other cases of a one-shot GPU window
                traceback.print_exc()
                result["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            results.append(result)
            print("  " + " | ".join(row(result)), flush=True)
            free_memory()
    settings = {"device": where, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
                "batch": args.batch, "seq_len": args.seq_len, "steps": args.steps, "warmup": args.warmup,
                "amp": amp, "shape": {k: getattr(args, k) for k in ("n_layer", "n_head", "n_embd")}}
    body = (f"`python bench/bench_gpu.py` on {where}, torch {torch.__version__}, {settings['date']}: "
            f"fwd+bwd+clip+AdamW, {'bf16 autocast' if amp else 'fp32'}, batch {args.batch} x T {args.seq_len}; "
            f"tokens/s over {args.steps} steps after the first (compiling) step and {args.warmup} untimed ones.\n\n"
            f"{markdown_table(HEADERS, [row(r) for r in results], n_left=2)}\n\n"
            + "".join(f"- {line}\n" for line in ratios(results)))
    publish(f"GPU training throughput ({where})", body, write=not args.no_write)
    if args.json:
        atomic_write_json(args.json, {"settings": settings, "results": results})
    if args.md:
        atomic_write(args.md, body)


if __name__ == "__main__":
    main()
