"""Val loss: the mean cross-entropy over a loader's first batches, averaged over processes."""

from __future__ import annotations

import torch
import torch.distributed as dist

from utils.precision import autocast


def all_reduce_mean(value: torch.Tensor, world_size: int) -> torch.Tensor:
    """Mean over processes (SUM / world: gloo has no AVG)."""
    if world_size > 1:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value = value / world_size
    return value


@torch.no_grad()
def evaluate_loss(model, loader, batches: int, device: str, amp: bool = False, world_size: int = 1) -> float:
    """Mean cross-entropy over ``batches`` micro-batches of ``loader`` (reset first), averaged over ranks."""
    model.eval()
    loader.reset()
    total = torch.zeros((), device=device)
    for _ in range(batches):
        x, y = loader.next_batch()
        x, y = x.to(device), y.to(device)
        with autocast(device, amp):
            _, loss = model(x, y)
        total += loss.detach().float()
    model.train()
    return all_reduce_mean(total / batches, world_size).item()
