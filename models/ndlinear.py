"""NdLinear: one small Linear per tensor mode (arXiv 2503.17353).

Same maths, parameters and state-dict keys (``align_layers.{i}.weight/bias``) as the PyPI
``ndlinear`` 1.0.0 package, so checkpoints interchange. For an input ``[*batch, D_1, ..., D_n]``
mode ``i`` is mapped ``D_i -> H_i`` by ``align_layers[i]`` (in order 1..n, or n..1 when
``transform_outer=False``), with its bias added at that step.

Why this is faster than the package: the package moves every mode last with a transpose +
``.contiguous()`` copy, runs a GEMM, and copies back. Here the linear part ``X x_1 A_1 ... x_n A_n``
is computed in the cheapest mode order (the maps on different modes commute), with no copies:
a mode that is last (or followed only by size-1 modes) is a plain GEMM, a tiny mode (e.g. 1 -> 2)
is a broadcast multiply-add instead of a K=1 GEMM, and the biases are folded in analytically
(a bias added at step k is later multiplied by the row sums of the factors applied after it).

Observability: as soon as a hook is registered on one of the factor Linears (Wanda does this to
collect input norms), the layer runs the literal mode-by-mode path through those modules, so each
hook sees exactly the input its factor matrix multiplies.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

# A mode whose factor has at most this many weights is applied by broadcasting, not by a GEMM.
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

    def observed(self) -> bool:
        """True when a hook sits on a factor: then the layer runs mode by mode through the factors."""
        return any(layer._forward_hooks or layer._forward_pre_hooks for layer in self.align_layers)

    def _check_input(self, x: torch.Tensor) -> None:
        n = self.num_modes
        if x.dim() < n + 1 or tuple(x.shape[-n:]) != self.input_dims:
            raise ValueError(f"NdLinear expects [*batch, {', '.join(map(str, self.input_dims))}], "
                             f"got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        if self.observed():
            return self.forward_modewise(x)
        return self._forward_fast(x)

    def forward_modewise(self, x: torch.Tensor) -> torch.Tensor:
        """The package's algorithm (mode moved last, Linear, moved back), through the factor modules."""
        n = self.num_modes
        lead = x.shape[:-n]
        x = x.reshape(-1, *self.input_dims)
        for i in self.mode_order():
            x = x.movedim(i + 1, -1)
            x = self.align_layers[i](x)  # nn.Linear handles any leading dims
            x = x.movedim(-1, i + 1)
        return x.reshape(*lead, *self.hidden_size)

    def _forward_fast(self, x: torch.Tensor) -> torch.Tensor:
        n = self.num_modes
        lead = x.shape[:-n]
        x = x.reshape(-1, *self.input_dims)
        dims = list(self.input_dims)
        for step, i in enumerate(self._fast_order):
            last = step == n - 1
            x = _apply_mode(x, self.align_layers[i].weight, i, dims, self._bias_tensor() if last else None)
            dims[i] = self.hidden_size[i]
        return x.reshape(*lead, *self.hidden_size)

    def _bias_tensor(self) -> torch.Tensor:
        """Sum of every factor's bias as it reaches the output, shape ``hidden_size``."""
        n = self.num_modes
        total = None
        applied: set[int] = set()
        for i in self.mode_order():
            term = self.align_layers[i].bias.view([-1 if m == i else 1 for m in range(n)])
            for j in range(n):
                if j != i and j not in applied:  # later factors act on the bias's ones-vector
                    rowsum = self.align_layers[j].weight.sum(dim=1)
                    term = term * rowsum.view([-1 if m == j else 1 for m in range(n)])
            total = term if total is None else total + term
            applied.add(i)
        return total.expand(self.hidden_size)


def _apply_mode(x: torch.Tensor, weight: torch.Tensor, mode: int, dims: list[int],
                bias: torch.Tensor | None) -> torch.Tensor:
    """Multiply mode ``mode`` of x (shape ``[N, *dims]``) by ``weight`` (H x D); then add ``bias``
    (shape of the output without N) if given."""
    out_dim, in_dim = weight.shape
    n_rows = x.shape[0]
    before = n_rows * math.prod(dims[:mode])
    after = math.prod(dims[mode + 1:])
    new_shape = [n_rows, *dims[:mode], out_dim, *dims[mode + 1:]]
    if after == 1 and out_dim * in_dim <= _SMALL_FACTOR:  # e.g. 1 -> 2: no K=1 GEMM
        rows_per_item = before // n_rows
        b = None if bias is None else bias.reshape(rows_per_item, out_dim)
        return _SmallInnermostFactor.apply(x.reshape(before, in_dim), weight, b, rows_per_item).view(new_shape)
    if after == 1 and (bias is None or bias.numel() == out_dim):  # innermost: one GEMM, no copy
        return F.linear(x.reshape(before, in_dim), weight, None if bias is None else bias.reshape(out_dim)).view(
            new_shape)
    x3 = x.reshape(before, in_dim, after)
    if out_dim * in_dim <= _SMALL_FACTOR:
        out = sum(x3[:, k : k + 1, :] * weight[:, k].view(1, out_dim, 1) for k in range(in_dim))
    elif after == 1:
        out = F.linear(x3.view(before, in_dim), weight)
    elif before == 1:
        out = torch.mm(weight, x3[0])
    else:
        out = torch.matmul(weight, x3)  # batched GEMM over the leading modes
    out = out.view(new_shape)
    return out if bias is None else out + bias


class _SmallInnermostFactor(torch.autograd.Function):
    """``y = x @ W.T (+ bias)`` for a factor of a few weights (1 -> 2, 2 -> 1, ...).

    Autograd through broadcast multiplies would make ~6 passes over the (large) output; this writes
    the output once and makes three reductions backward. Skinny GEMMs are fast in fp32 but slow for bf16 on CPU,
    where the backward uses per-column multiply-adds instead.
    x: (M, D), W: (H, D), bias: (R, H) repeating every R rows, or None.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, rows_per_item):
        ctx.param_dtype, ctx.has_bias, ctx.rows = weight.dtype, bias is not None, rows_per_item
        weight = weight.to(x.dtype)  # under autocast x may be bf16 while the parameters are fp32
        bias = x.new_zeros(rows_per_item, weight.shape[0]) if bias is None else bias.to(x.dtype)
        ctx.save_for_backward(x, weight)
        out_dim, in_dim = weight.shape
        x3 = x.view(-1, rows_per_item, in_dim)
        if x.element_size() >= 4:  # fp32: one broadcast multiply-add per input column
            out = torch.addcmul(bias.view(1, rows_per_item, out_dim), x3[..., 0:1], weight[:, 0])
            for k in range(1, in_dim):
                out.addcmul_(x3[..., k : k + 1], weight[:, k])
            return out.view(-1, out_dim)
        out = x.new_empty(x3.shape[0], rows_per_item, out_dim)
        for h in range(out_dim):  # bf16/fp16 CPU kernels broadcasting over a short last dim are slow
            col = out[..., h]
            torch.addcmul(bias[:, h], x3[..., 0], weight[h, 0], out=col)
            for k in range(1, in_dim):
                col.addcmul_(x3[..., k], weight[h, k])
        return out.view(-1, out_dim)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad = grad.to(x.dtype)
        out_dim, in_dim = weight.shape
        low_precision = x.element_size() < 4
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            if low_precision:
                grad_x = torch.stack([_column_sum(grad, weight[:, k]) for k in range(in_dim)], dim=1)
            else:
                grad_x = grad @ weight
        if ctx.needs_input_grad[1]:
            if low_precision:
                grad_w = torch.stack([torch.stack([(grad[:, h] * x[:, k]).sum() for k in range(in_dim)])
                                      for h in range(out_dim)])
            else:
                grad_w = grad.t() @ x
            grad_w = grad_w.to(ctx.param_dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.view(-1, ctx.rows * out_dim).sum(0)  # CPU/CUDA sums of bf16 accumulate in fp32
            grad_b = grad_b.view(ctx.rows, out_dim).to(ctx.param_dtype)
        return grad_x, grad_w, grad_b, None


def _column_sum(matrix: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """``matrix @ coeffs`` for a (M, H) matrix with few columns, as multiply-adds."""
    out = matrix[:, 0] * coeffs[0]
    for h in range(1, matrix.shape[1]):
        out = torch.addcmul(out, matrix[:, h], coeffs[h])
    return out


def is_branch_pair(fc: NdLinear, proj: NdLinear) -> bool:
    """True for ``fc: (D, 1) -> (H, k)`` followed by ``proj: (H, k) -> (D, 1)``, NdGPT-2's MLP shape."""
    if fc.num_modes != 2 or not (fc.transform_outer and proj.transform_outer):
        return False
    (d, one), (h, k) = fc.input_dims, fc.hidden_size
    return one == 1 and k > 1 and proj.input_dims == (h, k) and proj.hidden_size == (d, 1)


def branch_mlp(x: torch.Tensor, fc: NdLinear, proj: NdLinear, approximate: str) -> torch.Tensor:
    """``proj(gelu(fc(x)))`` for x of shape (M, D) and an ``is_branch_pair`` (fc, proj); returns (M, D).

    fc's big factor maps x to y (M, H); its 1 -> k factor (weights w, biases folded into c) makes k
    affine copies ``w[b] * y + c[b]``; proj's k -> 1 factor (weights v) mixes them back before its
    big factor. Held as the package lays it out, the hidden tensor (M, H, k) interleaves the k copies
    in its last dimension, and every element-wise pass over it is strided (slow for bf16 on the CPU).
    Here the copies are k contiguous (M, H) planes, and the middle runs as one autograd Function.
    """
    y = F.linear(x, fc.align_layers[0].weight)
    z = _BranchGelu.apply(y, fc.align_layers[1].weight.view(-1), fc._bias_tensor().t(),
                          proj.align_layers[1].weight.view(-1), approximate)
    return F.linear(z, proj.align_layers[0].weight, proj._bias_tensor().reshape(-1))


class _BranchGelu(torch.autograd.Function):
    """``z = sum_b v[b] * gelu(w[b] * y + c[b])`` for y (M, H), w and v (k,), c (k, H).

    Every pass reads and writes contiguous (M, H) planes; the parameter gradients are reductions,
    returned in the parameters' dtype.
    """

    @staticmethod
    def forward(ctx, y, w, c, v, approximate):
        ctx.approximate, ctx.param_dtype = approximate, w.dtype
        w, c, v = w.to(y.dtype), c.to(y.dtype).contiguous(), v.to(y.dtype)  # under autocast y is bf16
        pre = y.new_empty(len(w), *y.shape)
        for b in range(len(w)):
            torch.addcmul(c[b], y, w[b], out=pre[b])
        act = F.gelu(pre, approximate=approximate)
        z = act[0] * v[0]
        for b in range(1, len(w)):
            z.addcmul_(act[b], v[b])
        ctx.save_for_backward(y, w, v, pre, act)
        return z

    @staticmethod
    def backward(ctx, grad):
        y, w, v, pre, act = ctx.saved_tensors
        grad = grad.to(y.dtype).contiguous()
        # e[b] = gelu'(pre[b]) * grad; the gradient at pre[b] is v[b] * e[b]
        e = torch.ops.aten.gelu_backward(grad.expand_as(pre), pre, approximate=ctx.approximate)
        grad_y = grad_w = grad_c = grad_v = None
        if ctx.needs_input_grad[0]:
            vw = v * w
            grad_y = e[0] * vw[0]
            for b in range(1, len(w)):
                grad_y.addcmul_(e[b], vw[b])
        # sums of products through one scratch buffer; CPU and CUDA sums accumulate bf16 in fp32
        scratch = torch.empty_like(y)
        if ctx.needs_input_grad[1]:
            grad_w = v * torch.stack([torch.mul(e[b], y, out=scratch).sum() for b in range(len(w))])
        if ctx.needs_input_grad[2]:
            grad_c = e.sum(1) * v.unsqueeze(1)
        if ctx.needs_input_grad[3]:
            grad_v = torch.stack([torch.mul(act[b], grad, out=scratch).sum() for b in range(len(w))])
        grad_w, grad_c, grad_v = (None if g is None else g.to(ctx.param_dtype) for g in (grad_w, grad_c, grad_v))
        return grad_y, grad_w, grad_c, grad_v, None


def _cheapest_order(input_dims: tuple, hidden_size: tuple) -> list[int]:
    """Mode order with the fewest multiply-adds per row (exhaustive for <= 5 modes)."""
    n = len(input_dims)

    def cost(order) -> int:
        dims, total = list(input_dims), 0
        for m in order:
            others = 1
            for j, d in enumerate(dims):
                if j != m:
                    others *= d
            total += others * input_dims[m] * hidden_size[m]
            dims[m] = hidden_size[m]
        return total

    if n > 5:
        return sorted(range(n), key=lambda m: hidden_size[m] / input_dims[m])
    return list(min(itertools.permutations(range(n)), key=cost))
