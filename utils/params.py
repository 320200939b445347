"""Parameter counting: total, trainable, nonzero (pruned zeros are not parameters)."""

from __future__ import annotations

from torch import nn


def count_params(model: nn.Module) -> dict[str, int]:
    total = trainable = nonzero = 0
    for p in model.parameters():  # yields a tied weight once
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
        nonzero += int(p.count_nonzero())
    return {"total": total, "trainable": trainable, "nonzero": nonzero}
