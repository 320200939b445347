"""NdLinear's fast paths, kept beside its literal path (models/ndlinear.py) and tested equal to it.

* ``SmallFactor``: an NdLinear factor of a few weights (1 -> 2, 2 -> 1) as multiply-adds, not a K=1 GEMM.
* ``branch_mlp``: NdGPT-2's whole MLP (models/gpt2.py NdMLP) with its hidden copies as contiguous planes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# ----- NdLinear: small factors -----

class SmallFactor(torch.autograd.Function):
    """``x @ weight.T (+ bias)`` for x (M, R, D) and a factor of a few weights (H, D); bias (R, H) or None.

    Autograd through broadcast multiplies would make ~6 passes over the (large) output; this writes
    the output once and makes three reductions backward. Skinny GEMMs are fast in fp32 but slow for
    bf16 on the CPU, where the backward uses per-column multiply-adds instead."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.param_dtype, ctx.has_bias = weight.dtype, bias is not None
        rows = x.shape[1]
        weight = weight.to(x.dtype)  # under autocast x may be bf16 while the parameters are fp32
        bias = x.new_zeros(rows, weight.shape[0]) if bias is None else bias.to(x.dtype)
        ctx.save_for_backward(x, weight)
        out_dim, in_dim = weight.shape
        if x.element_size() >= 4:  # fp32: one broadcast multiply-add per input column
            out = torch.addcmul(bias.view(1, rows, out_dim), x[..., 0:1], weight[:, 0])
            for k in range(1, in_dim):
                out.addcmul_(x[..., k : k + 1], weight[:, k])
            return out
        out = x.new_empty(x.shape[0], rows, out_dim)
        for h in range(out_dim):  # bf16/fp16 CPU kernels broadcasting over a short last dim are slow
            col = out[..., h]
            torch.addcmul(bias[:, h], x[..., 0], weight[h, 0], out=col)
            for k in range(1, in_dim):
                col.addcmul_(x[..., k], weight[h, k])
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        rows = x.shape[1]
        x, grad = x.reshape(-1, x.shape[-1]), grad.to(x.dtype).reshape(-1, weight.shape[0])
        out_dim, in_dim = weight.shape
        low_precision = x.element_size() < 4
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            if low_precision:
                grad_x = torch.stack([_weighted_sum(grad.unbind(1), weight[:, k]) for k in range(in_dim)], dim=1)
            else:
                grad_x = grad @ weight
            grad_x = grad_x.view(-1, rows, in_dim)
        if ctx.needs_input_grad[1]:
            if low_precision:
                grad_w = torch.stack([torch.stack([(grad[:, h] * x[:, k]).sum() for k in range(in_dim)])
                                      for h in range(out_dim)])
            else:
                grad_w = grad.t() @ x
            grad_w = grad_w.to(ctx.param_dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.view(-1, rows * out_dim).sum(0)  # CPU/CUDA sums of bf16 accumulate in fp32
            grad_b = grad_b.view(rows, out_dim).to(ctx.param_dtype)
        return grad_x, grad_w, grad_b


def _weighted_sum(planes, coeffs: torch.Tensor) -> torch.Tensor:
    """``sum_i coeffs[i] * planes[i]`` over a few equal-shape tensors, as multiply-adds (not a K=few GEMM)."""
    out = planes[0] * coeffs[0]
    for i in range(1, len(planes)):
        out.addcmul_(planes[i], coeffs[i])
    return out


# ----- NdGPT-2's MLP -----

def is_branch_pair(fc, proj) -> bool:
    """True for NdLinear ``fc: (D, 1) -> (H, k)`` followed by ``proj: (H, k) -> (D, 1)``, NdGPT-2's MLP."""
    if fc.num_modes != 2 or not (fc.transform_outer and proj.transform_outer):
        return False
    (d, one), (h, k) = fc.input_dims, fc.hidden_size
    return one == 1 and k > 1 and proj.input_dims == (h, k) and proj.hidden_size == (d, 1)


def branch_mlp(x: torch.Tensor, fc, proj, approximate: str) -> torch.Tensor:
    """``proj(gelu(fc(x)))`` for x of shape (M, D) and an ``is_branch_pair`` (fc, proj); returns (M, D).

    fc's big factor maps x to y (M, H); its 1 -> k factor (weights w, biases folded into c) makes k
    affine copies ``w[b] * y + c[b]``; proj's k -> 1 factor (weights v) mixes them back before its
    big factor. Held as the package lays it out, the hidden tensor (M, H, k) interleaves the k copies
    in its last dimension, and every element-wise pass over it is strided (slow for bf16 on the CPU).
    Here the copies are k contiguous (M, H) planes, and the middle runs as one autograd Function.
    """
    y = F.linear(x, fc.align_layers[0].weight)
    z = _BranchGelu.apply(y, fc.align_layers[1].weight.view(-1), fc.folded_bias().t(),
                          proj.align_layers[1].weight.view(-1), approximate)
    return F.linear(z, proj.align_layers[0].weight, proj.folded_bias().reshape(-1))


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
        ctx.save_for_backward(y, w, v, pre, act)
        return _weighted_sum(act, v)

    @staticmethod
    def backward(ctx, grad):
        y, w, v, pre, act = ctx.saved_tensors
        grad = grad.to(y.dtype).contiguous()
        # e[b] = gelu'(pre[b]) * grad; the gradient at pre[b] is v[b] * e[b]
        e = torch.ops.aten.gelu_backward(grad.expand_as(pre), pre, approximate=ctx.approximate)
        grad_y = grad_w = grad_c = grad_v = None
        if ctx.needs_input_grad[0]:
            grad_y = _weighted_sum(e, v * w)
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
