"""The one parameter counter: total, trainable, nonzero (pruned zeros are not parameters)."""

from __future__ import annotations

from torch import nn


def count_params(model: nn.Module, nonzero: bool = True) -> dict[str, int]:
    """``{"total", "trainable", "nonzero"}`` parameter counts of ``model``, a tied weight counted once.
    ``nonzero=False`` leaves out the one count that reads the weights (a model on the meta device has none)."""
    counts = {"total": 0, "trainable": 0, **({"nonzero": 0} if nonzero else {})}
    for p in model.parameters():  # yields a tied weight once
        counts["total"] += p.numel()
        counts["trainable"] += p.numel() if p.requires_grad else 0
        if nonzero:
            counts["nonzero"] += int(p.count_nonzero())
    return counts
