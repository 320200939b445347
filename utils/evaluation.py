"""Evaluation pieces the scripts share: mean val loss over a loader, text samples."""

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


@torch.no_grad()
def sample_texts(model, enc, prompt: str, num_samples: int, max_new_tokens: int, *,
                 top_k: int | None = 50, temperature: float = 1.0, seed: int = 42, device: str = "cpu",
                 amp: bool = False) -> list[str]:
    """Decode ``num_samples`` continuations of ``prompt``; a private generator seeded ``seed`` leaves the
    global RNG (and so an exact resume) untouched. ``model`` must be the plain module (not compiled/DDP)."""
    tokens = enc.encode(prompt) if prompt else []
    if not tokens:
        tokens = [enc.eot_token]
    idx = torch.tensor(tokens, dtype=torch.long, device=device).unsqueeze(0).repeat(num_samples, 1)
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    was_training = model.training
    model.eval()
    with autocast(device, amp):
        out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, generator=generator)
    model.train(was_training)
    # an undertrained model may pick the padding ids (50257..vocab_size-1) that have no text: drop them
    return [enc.decode([t for t in row.tolist() if t < enc.n_vocab]) for row in out]
