"""CPU speed kernels, kept beside the reference path. Each is tested equal to the plain maths it replaces.

* ``use_cpu_kernels(model)``: the training loop's switch (eager CPU only) for
  - ``cross_entropy``: the loss on cache-sized row chunks, its gradient made in the forward pass;
  - a sparse gradient for the tied embedding lookup (the head adds the dense part in the same backward).
* ``SmallFactor``: an NdLinear factor of a few weights (1 -> 2, 2 -> 1) as multiply-adds, not a K=1 GEMM.
* ``branch_mlp``: NdGPT-2's whole MLP (models/gpt2.py NdMLP) with its hidden copies as contiguous planes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def use_cpu_kernels(model: nn.Module, enabled: bool = True) -> None:
    """Switch the CPU training kernels on (or off) for every GPT inside ``model``.

    Under torch.compile the plain loss is traced even when they are on (the chunked loss is a
    graph break that the logits cannot cross); compiled training does not need them.
    """
    from models.gpt2 import GPT  # gpt2 imports this module for the NdLinear kernels

    for gpt in (m for m in model.modules() if isinstance(m, GPT)):
        gpt.transformer.wte.sparse = enabled  # stays dense in .grad: the tied head adds a dense gradient
        if enabled:
            gpt.loss = cross_entropy  # shadows GPT.loss, the plain F.cross_entropy
        else:
            vars(gpt).pop("loss", None)


# ----- cross-entropy -----

def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``GPT.loss`` (mean fp32 cross-entropy of (B, T, V) logits, targets of -1 ignored), for the CPU.

    The fp32 copy of the logits and the log-softmax round trip are memory-bound and take a quarter
    of a small model's step. This works on cache-sized row chunks and, when a gradient is wanted,
    computes it in the same pass (softmax minus one-hot, over the count): the backward is one scaling.
    """
    logits, targets = logits.reshape(-1, logits.size(-1)), targets.reshape(-1)
    if logits.device.type != "cpu" or torch.compiler.is_compiling():
        return F.cross_entropy(logits.float(), targets, ignore_index=-1)
    if torch.is_grad_enabled() and logits.requires_grad:
        return _ChunkedCrossEntropy.apply(logits, targets)
    return _chunked_cross_entropy(logits, targets)[0]


def _chunked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, with_grad: bool = False):
    """(mean loss, d loss / d logits or None); the gradient has the logits' dtype."""
    n, vocab = logits.shape
    rows = max(1, (1 << 20) // vocab)  # ~4 MB of fp32 per chunk: stays in cache
    valid = targets != -1
    safe_targets = targets.clamp_min(0)
    count = valid.sum()
    weight = valid.float() / count.clamp_min(1)  # d loss / d (per-row loss)
    nll = torch.empty(n, dtype=torch.float32, device=logits.device)
    grad = torch.empty_like(logits) if with_grad else None
    for start in range(0, n, rows):
        end = min(start + rows, n)
        chunk, target = logits[start:end], safe_targets[start:end]
        probs = torch.softmax(chunk, dim=-1, dtype=torch.float32)  # one fused pass, fp32 maths
        at_target = (torch.arange(end - start, device=probs.device), target)
        log_p = probs[at_target].log()
        underflow = torch.isinf(log_p)
        if underflow.any():  # p(target) below fp32's range (a logit gap > ~87 nats): exact, slower
            exact = chunk[underflow].float()
            log_p[underflow] = exact.gather(1, target[underflow, None]).squeeze(1) - exact.logsumexp(dim=-1)
        nll[start:end] = -log_p
        if with_grad:  # softmax - one_hot(target), weighted per row
            probs.mul_(weight[start:end, None])
            probs[at_target] -= weight[start:end]
            grad[start:end] = probs
    return (nll * valid).sum() / count, grad


class _ChunkedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets):
        loss, grad = _chunked_cross_entropy(logits, targets, with_grad=True)
        ctx.grad = grad  # not save_for_backward: backward scales it in place and hands it on
        return loss

    @staticmethod
    def backward(ctx, upstream):
        grad, ctx.grad = ctx.grad, None
        if grad is None:
            raise RuntimeError("cross_entropy: backward through the same loss twice is not supported")
        return (grad if upstream.item() == 1.0 else grad.mul_(upstream)), None


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
