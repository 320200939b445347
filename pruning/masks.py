"""Which weights a pruning method zeros: comparison groups, the masks, and which layers stay dense.

Three comparison groups, all zeroing the lowest scores of their group:
- per output row ("row"): int(in * sparsity) weights of every row (Wanda; magnitude-row);
- per layer ("layer"): int(out * in * sparsity) weights of the whole matrix, one threshold
  (the Wanda authors' ``prune_magnitude`` in locuslab/wanda lib/prune.py; magnitude-layer);
- N:M ("nm"): N of every M consecutive inputs of each row. With N:M the groups are the same
  for every method, so magnitude-layer and magnitude-row give the same mask.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# Below this many inputs a Linear is one of NdLinear's mode-mixing factors (1 -> 2, 2 -> 1): zeroing
# one of its inputs would delete a whole branch of the layer, not a redundant weight.
MIN_PRUNABLE_INPUTS = 3
NM_NOTE = "N:M: N of every M consecutive inputs per row, the same groups for every method"


def check_pruning_args(sparsity: float, nm: tuple[int, int] | None) -> None:
    if nm is not None:
        n, m = nm
        if m <= 0 or n <= 0 or n >= m:
            raise ValueError(f"N:M must satisfy 0 < N < M, got {n}:{m}")
    elif not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")


def parse_nm(text: str) -> tuple[int, int]:
    """'2:4' -> (2, 4); ValueError for anything else, or unless 0 < N < M."""
    parts = text.split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"N:M must look like 2:4, got {text!r}")
    nm = (int(parts[0]), int(parts[1]))
    check_pruning_args(0.5, nm)
    return nm


def block_linears(model: nn.Module) -> list[list[tuple[str, nn.Linear]]]:
    """Per block, every nn.Linear inside it (NdLinear factors included) with its full name."""
    return [[(f"transformer.h.{i}.{name}", m) for name, m in block.named_modules()
             if isinstance(m, nn.Linear)] for i, block in enumerate(model.transformer.h)]


def skip_reason(layer: nn.Linear, sparsity: float, nm: tuple[int, int] | None, per: str = "row") -> str | None:
    """Why ``layer`` stays dense, or None when it is pruned."""
    d = layer.in_features
    if nm is not None:
        n, m = nm
        if d < m:
            return f"too small: {d} inputs < M={m}"
        if d % m:
            return f"{d} inputs not a multiple of M={m}"
    elif sparsity == 0:
        return "sparsity 0"
    elif per == "row" and int(d * sparsity) == 0:
        return f"too small: int({d} x {sparsity:g}) = 0 weights per row"
    elif per == "layer" and int(layer.weight.numel() * sparsity) == 0:
        return f"too small: int({layer.weight.numel()} x {sparsity:g}) = 0 weights"
    if d < MIN_PRUNABLE_INPUTS:
        return f"too small: {d} inputs (mode-mixing factor, pruning would remove a whole branch)"
    return None


def prune_mask(score: torch.Tensor, sparsity: float, nm: tuple[int, int] | None, per: str = "row") -> torch.Tensor:
    """Boolean mask (True = zero this weight) of the lowest scores of each group (see the docstring)."""
    out_dim, in_dim = score.shape
    if nm is not None:
        n, m = nm
        groups, k = score.view(out_dim, in_dim // m, m), n
    elif per == "layer":
        # exactly int(numel * sparsity) zeros; the authors' `W <= sorted[k]` also zeros the k-th and ties
        groups, k = score.flatten(), int(score.numel() * sparsity)
    else:
        groups, k = score, int(in_dim * sparsity)
    # topk is ~2x faster than a full sort; among exactly tied scores it picks any (the count is exact)
    lowest = torch.topk(groups, k, dim=-1, largest=False).indices
    return torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, lowest, True).view(out_dim, in_dim)


def layer_entry(name: str, layer: nn.Linear, reason: str | None) -> dict:
    w = layer.weight
    return {"name": name, "shape": list(w.shape), "pruned": reason is None, "reason": reason,
            "sparsity": 1.0 - int(w.count_nonzero()) / w.numel()}


def summarize(method: str, per: str, sparsity: float, nm, layers: list[dict], seconds: float, **extra) -> dict:
    """What a pruning function returns: settings, counts, per-layer entries."""
    pruned = [e for e in layers if e["pruned"]]
    zeros = sum(e["sparsity"] * math.prod(e["shape"]) for e in pruned)
    size = sum(math.prod(e["shape"]) for e in pruned)
    return {"method": method, "sparsity": nm[0] / nm[1] if nm else sparsity, "nm": list(nm) if nm else None,
            "mask_groups": NM_NOTE if nm else {"row": "per output row", "layer": "per layer"}[per],
            "pruned_layers": len(pruned), "skipped_layers": len(layers) - len(pruned),
            "pruned_layers_sparsity": zeros / size if size else 0.0, "seconds": seconds, **extra,
            "layers": layers}
