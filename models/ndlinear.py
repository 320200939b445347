"""NdLinear: one small Linear per tensor mode (arXiv 2503.17353).

Same maths, parameters and state-dict keys (``align_layers.{i}.weight/bias``) as the PyPI
``ndlinear`` 1.0.0 package, so checkpoints interchange. For an input ``[*batch, D_1, ..., D_n]``
mode ``i`` is mapped ``D_i -> H_i`` by ``align_layers[i]`` (in order 1..n, or n..1 when
``transform_outer=False``), with its bias added at that step.

Two paths compute this map:

* ``forward_literal``: the package's algorithm, mode by mode through the factor nn.Linear modules.
  ``with literal_path(model):`` makes every NdLinear inside ``model`` run it, so a forward hook on a
  factor sees exactly the input that factor multiplies (Wanda's calibration needs this).
* the fast path (default): the package moves every mode last with a transpose + ``.contiguous()``
  copy, runs a GEMM, and copies back. Here the linear part ``X x_1 A_1 ... x_n A_n`` is computed in
  the cheapest mode order (the maps on different modes commute), with no copies: an innermost mode
  is a plain GEMM, a tiny mode (e.g. 1 -> 2) is multiply-adds instead of a K=1 GEMM, and the biases
  are folded in analytically (a bias added at step k is later multiplied by the row sums of the
  factors applied after it).
"""

from __future__ import annotations

import contextlib
import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from models.ndlinear_kernels import SmallFactor

# A mode whose factor has at most this many weights is applied by multiply-adds, not by a GEMM.
_SMALL_FACTOR = 16


class NdLinear(nn.Module):
    def __init__(self, input_dims, hidden_size, transform_outer: bool = True):
        super().__init__()
        input_dims, hidden_size = tuple(int(d) for d in input_dims), tuple(int(h) for h in hidden_size)
        if len(input_dims) != len(hidden_size) or not input_dims:
            raise ValueError(f"NdLinear: input_dims {input_dims} and hidden_size {hidden_size} must be "
                             "non-empty and of the same length")
        if min(input_dims + hidden_size) < 1:
            raise ValueError(f"NdLinear: every dimension must be >= 1, got {input_dims} -> {hidden_size}")
        self.input_dims = input_dims
        self.hidden_size = hidden_size
        self.transform_outer = transform_outer
        self.align_layers = nn.ModuleList(nn.Linear(d, h) for d, h in zip(input_dims, hidden_size))
        self.literal = False  # set by literal_path()
        self._fast_order = _cheapest_order(input_dims, hidden_size)

    @property
    def num_modes(self) -> int:
        return len(self.input_dims)

    def mode_order(self) -> list[int]:
        """Order in which the factors (and their biases) are applied, as in the package."""
        order = list(range(self.num_modes))
        return order if self.transform_outer else order[::-1]

    def extra_repr(self) -> str:
        return f"{self.input_dims} -> {self.hidden_size}, transform_outer={self.transform_outer}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.num_modes
        if x.dim() < n + 1 or tuple(x.shape[-n:]) != self.input_dims:
            raise ValueError(f"NdLinear expects [*batch, {', '.join(map(str, self.input_dims))}], "
                             f"got {tuple(x.shape)}")
        if self.literal:
            return self.forward_literal(x)
        lead = x.shape[:-n]
        x = x.reshape(-1, *self.input_dims)
        dims = list(self.input_dims)
        for step, i in enumerate(self._fast_order):
            bias = self.folded_bias() if step == n - 1 else None
            x = _apply_mode(x, self.align_layers[i].weight, i, dims, bias)
            dims[i] = self.hidden_size[i]
        return x.reshape(*lead, *self.hidden_size)

    def forward_literal(self, x: torch.Tensor) -> torch.Tensor:
        """The package's algorithm (mode moved last, Linear, moved back), through the factor modules."""
        n = self.num_modes
        lead = x.shape[:-n]
        x = x.reshape(-1, *self.input_dims)
        for i in self.mode_order():
            x = x.movedim(i + 1, -1)
            x = self.align_layers[i](x)  # nn.Linear handles any leading dims
            x = x.movedim(-1, i + 1)
        return x.reshape(*lead, *self.hidden_size)

    def folded_bias(self) -> torch.Tensor:
        """Sum of every factor's bias as it reaches the output, shape ``hidden_size``."""
        n, order = self.num_modes, self.mode_order()
        total = None
        for k, i in enumerate(order):
            term = self.align_layers[i].bias.view([-1 if m == i else 1 for m in range(n)])
            for j in sorted(order[k + 1:]):  # later factors act on the bias's ones-vector
                rowsum = self.align_layers[j].weight.sum(dim=1)
                term = term * rowsum.view([-1 if m == j else 1 for m in range(n)])
            total = term if total is None else total + term
        return total.expand(self.hidden_size)


@contextlib.contextmanager
def literal_path(module: nn.Module):
    """While active, every NdLinear inside ``module`` (NdGPT-2's MLP included) runs ``forward_literal``
    through its factor nn.Linear modules, so a forward hook on a factor sees exactly its input."""
    layers = [m for m in module.modules() if isinstance(m, NdLinear)]
    before = [layer.literal for layer in layers]
    for layer in layers:
        layer.literal = True
    try:
        yield module
    finally:
        for layer, flag in zip(layers, before):
            layer.literal = flag


def _apply_mode(x: torch.Tensor, weight: torch.Tensor, mode: int, dims: list[int],
                bias: torch.Tensor | None) -> torch.Tensor:
    """Multiply mode ``mode`` of x (shape ``[N, *dims]``) by ``weight`` (H x D); then add ``bias``
    (shape of the output without N) if given."""
    out_dim, in_dim = weight.shape
    n = x.shape[0]
    rows, after = math.prod(dims[:mode]), math.prod(dims[mode + 1:])
    new_shape = [n, *dims[:mode], out_dim, *dims[mode + 1:]]
    small = weight.numel() <= _SMALL_FACTOR
    if after == 1 and small:  # innermost, e.g. 1 -> 2: multiply-adds instead of a K=1 GEMM, bias fused
        b = None if bias is None else bias.reshape(rows, out_dim)
        return SmallFactor.apply(x.reshape(n, rows, in_dim), weight, b).view(new_shape)
    if after == 1:  # innermost: one GEMM over every row, no copy
        fused = bias is not None and bias.numel() == out_dim
        out = F.linear(x.reshape(n * rows, in_dim), weight, bias.reshape(out_dim) if fused else None)
        bias = None if fused else bias
    elif small:  # e.g. a 1 -> 1 scale on a leading mode: broadcast multiply-adds
        x3 = x.reshape(n * rows, in_dim, after)
        out = sum(x3[:, k : k + 1, :] * weight[:, k].view(1, out_dim, 1) for k in range(in_dim))
    else:
        out = torch.matmul(weight, x.reshape(n * rows, in_dim, after))  # batched GEMM over the leading modes
    out = out.view(new_shape)
    return out if bias is None else out + bias


def _cheapest_order(input_dims: tuple, hidden_size: tuple) -> list[int]:
    """Mode order with the fewest multiply-adds per row (exhaustive for <= 5 modes)."""
    n = len(input_dims)

    def cost(order) -> int:
        dims, total = list(input_dims), 0
        for m in order:
            others = math.prod(dims) // dims[m]
            total += others * input_dims[m] * hidden_size[m]
            dims[m] = hidden_size[m]
        return total

    if n > 5:
        return sorted(range(n), key=lambda m: hidden_size[m] / input_dims[m])
    return list(min(itertools.permutations(range(n)), key=cost))
