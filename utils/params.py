"""Parameter counting: total, trainable, nonzero (pruned zeros are not parameters), per module."""

from __future__ import annotations

from torch import nn


def count_params(model: nn.Module) -> dict[str, int]:
    total = trainable = nonzero = 0
    for p in model.parameters():  # yields a tied weight once
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
        nonzero += int(p.count_nonzero())
    return {"total": total, "trainable": trainable, "nonzero": nonzero}


def params_per_module(model: nn.Module, depth: int = 1) -> dict[str, int]:
    """Parameter count per module prefix of ``depth`` dotted components (tied weights once)."""
    out: dict[str, int] = {}
    for name, p in model.named_parameters():
        key = ".".join(name.split(".")[:depth])
        out[key] = out.get(key, 0) + p.numel()
    return out
