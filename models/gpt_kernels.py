"""GPT's CPU training kernels, kept beside the reference path (models/gpt2.py) and tested equal to it.

``use_cpu_kernels(gpt)`` is the training loop's switch (eager CPU only) for
  - ``cross_entropy``: the loss on cache-sized row chunks, its gradient made in the forward pass;
  - a sparse gradient for the tied embedding lookup (the head adds the dense part in the same backward).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def use_cpu_kernels(gpt: nn.Module, enabled: bool = True) -> None:
    """Switch the CPU training kernels on (or off) for ``gpt``, a models.gpt2.GPT (not a DDP or
    torch.compile wrapper: pass the module inside).

    Under torch.compile the plain loss is traced even when they are on (the chunked loss is a
    graph break that the logits cannot cross); compiled training does not need them.
    """
    if not callable(getattr(type(gpt), "loss", None)):
        raise TypeError(f"use_cpu_kernels takes a GPT (models.gpt2), got {type(gpt).__name__}")
    gpt.transformer.wte.sparse = enabled  # stays dense in .grad: the tied head adds a dense gradient
    if enabled:
        gpt.loss = cross_entropy  # shadows GPT.loss, the plain F.cross_entropy
    else:
        vars(gpt).pop("loss", None)


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
