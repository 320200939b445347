"""NdLinear fwd+bwd vs the bare Linear and the PyPI ``ndlinear`` package.

    python bench/bench_ndlinear.py [--rows 4096] [--repeats 9] [--no-write]

Shape (rows, 768, 1) -> (1536, 2), the NdGPT-2 fc1. Upstream gradients are dense random tensors
(a ``.sum().backward()`` gradient is constant and can be special-cased). Goal: ours within 1.15x
of ``nn.Linear(768, 1536)`` and faster than the package, fp32 and bf16 autocast.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

from bench.common import bench_parser, interleaved_medians, machine_line, write_section
from models.ndlinear import NdLinear


def main() -> None:
    ap = bench_parser(__doc__)
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()
    try:
        from ndlinear import NdLinear as PackageNdLinear
    except ImportError:
        sys.exit("bench_ndlinear: the reference package is missing: pip install ndlinear==1.0.0")

    torch.manual_seed(0)
    rows, d, h = args.rows, 768, 1536
    dense = nn.Linear(d, h)
    ours = NdLinear((d, 1), (h, 2))
    package = PackageNdLinear((d, 1), (h, 2))
    package.load_state_dict(ours.state_dict())
    x2 = torch.randn(rows, d, requires_grad=True)
    x3 = x2.detach().view(rows, d, 1).requires_grad_()
    g_dense, g_nd = torch.randn(rows, h), torch.randn(rows, h, 2)

    lines = [f"`python bench/bench_ndlinear.py` — ({rows}, {d}, 1) -> ({h}, 2), fwd+bwd, "
             f"median of {args.repeats} interleaved repetitions; {machine_line()}.", "",
             "| precision | nn.Linear 768->1536 | ours | package | ours / Linear | package / Linear | "
             "package / ours |", "|---|---|---|---|---|---|---|"]
    for precision in ("fp32", "bf16 autocast"):
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision != "fp32")
        grad_dtype = torch.float32 if precision == "fp32" else torch.bfloat16

        def step(layer, x, g, autocast=autocast, grad_dtype=grad_dtype):
            g = g.to(grad_dtype)  # the upstream gradient arrives in the output's dtype

            def run():
                with autocast:
                    y = layer(x)
                y.backward(g)
            return run

        t = interleaved_medians({"dense": step(dense, x2, g_dense), "ours": step(ours, x3, g_nd),
                                 "package": step(package, x3, g_nd)}, repeats=args.repeats)
        row = (f"| {precision} | {t['dense'] * 1e3:.1f} ms | {t['ours'] * 1e3:.1f} ms | {t['package'] * 1e3:.1f} ms"
               f" | {t['ours'] / t['dense']:.3f}x | {t['package'] / t['dense']:.3f}x | "
               f"{t['package'] / t['ours']:.3f}x |")
        print(row)
        lines.append(row)
    if not args.no_write:
        write_section("NdLinear fwd+bwd", "\n".join(lines))


if __name__ == "__main__":
    main()
