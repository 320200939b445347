"""The pruning methods: Wanda (arXiv 2306.11695) and two magnitude baselines, for every GPT of this repository.

Wanda scores every weight of a Linear by S_ij = |W_ij| * ||X_j||_2, where X_j is the j-th input
feature of that layer over all calibration tokens, and zeros the lowest scores of each output row:
int(in * sparsity) of them, or with N:M the N lowest of every M consecutive inputs. It runs block by
block: the calibration activations go through the already pruned blocks 0..k-1, the input norms of
every Linear of block k are gathered with forward hooks in one pass of the dense block, the block is
pruned, and the pruned block produces the inputs of block k+1. Only the Linears inside the blocks
are pruned (never embeddings, LayerNorms, biases or the tied head); kept weights are unchanged.

NdLinear (NdGPT-2's MLP): each factor ``align_layers[i]`` is scored with the norms of its own input
(the tensor with mode i moved last). Factors too small to prune (1 -> 2, 2 -> 1, or fewer inputs
than M) stay dense and the report says so.

Magnitude baselines, no calibration, S_ij = |W_ij|:
  magnitude-layer  one threshold over the whole layer (the Wanda authors' prune_magnitude, the
                   paper's baseline);
  magnitude-row    the lowest of each output row (Wanda's groups; `--method magnitude`, deprecated).
With N:M both are the same mask (groups of M inputs). See pruning/masks.py.
"""

from __future__ import annotations

import time
from functools import partial

import torch
from torch import nn
from tqdm import tqdm

from models.ndlinear import literal_path
from pruning.masks import block_linears, check_pruning_args, layer_entry, prune_mask, skip_reason, summarize

__all__ = ["GROUPS", "PRUNERS", "prune_magnitude", "prune_wanda"]


def _attach_norm_hooks(layers: list[nn.Linear]):
    """Forward hooks accumulating the per-input-feature sum of squares of each layer's input."""
    sumsq = {layer: torch.zeros(layer.in_features, dtype=torch.float64, device=layer.weight.device)
             for layer in layers}

    def hook(module, inputs, output):
        x = inputs[0].detach().reshape(-1, module.in_features).float()
        sumsq[module].add_((x * x).sum(0))

    return sumsq, [layer.register_forward_hook(hook) for layer in layers]


@torch.no_grad()
def prune_wanda(model: nn.Module, calib_tokens: torch.Tensor, sparsity: float = 0.5,
                nm: tuple[int, int] | None = None, progress: bool = True, batch_size: int = 8) -> dict:
    """Prune ``model`` in place with Wanda on ``calib_tokens`` (LongTensor N x T); returns the report.

    Only one block's activations (N x T x C) are held at a time; they are processed ``batch_size``
    sequences at a time.
    """
    check_pruning_args(sparsity, nm)
    if calib_tokens.dim() != 2 or calib_tokens.numel() == 0:
        raise ValueError(f"calib_tokens must be a non-empty N x T tensor, got {tuple(calib_tokens.shape)}")
    if calib_tokens.size(1) > model.config.block_size:
        raise ValueError(f"calibration length {calib_tokens.size(1)} exceeds block_size "
                         f"{model.config.block_size}")
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    xs = [model.embed(idx.to(device)) for idx in calib_tokens.split(batch_size)]  # block 0 inputs
    layers = []
    for block, linears in zip(tqdm(model.transformer.h, desc="wanda", unit="block", disable=not progress),
                              block_linears(model)):
        reasons = {name: skip_reason(layer, sparsity, nm) for name, layer in linears}
        targets = [layer for name, layer in linears if reasons[name] is None]
        sumsq, handles = _attach_norm_hooks(targets)
        try:
            if targets:  # NdLinear's literal per-mode path: a hook on a factor sees what the factor multiplies
                with literal_path(block):
                    for x in xs:
                        block(x)
        finally:
            for h in handles:
                h.remove()
        for layer in targets:
            norm = sumsq[layer].sqrt().to(layer.weight.dtype)
            layer.weight.masked_fill_(prune_mask(layer.weight.abs() * norm, sparsity, nm), 0.0)
        layers += [layer_entry(name, layer, reasons[name]) for name, layer in linears]
        for i, x in enumerate(xs):  # inputs of the next block, through the pruned one
            xs[i] = block(x)
    model.train(was_training)
    return summarize("wanda", "row", sparsity, nm, layers, time.perf_counter() - t0,
                     calib_samples=calib_tokens.size(0), calib_len=calib_tokens.size(1))


@torch.no_grad()
def prune_magnitude(model: nn.Module, calib_tokens: torch.Tensor | None = None, sparsity: float = 0.5,
                    nm: tuple[int, int] | None = None, progress: bool = False, per: str = "row") -> dict:
    """Zero the smallest |W_ij| of each output row (``per="row"``) or of each whole layer
    (``per="layer"``, the paper's baseline). ``calib_tokens`` is accepted for a common interface."""
    check_pruning_args(sparsity, nm)
    if per not in ("row", "layer"):
        raise ValueError(f"per must be 'row' or 'layer', got {per!r}")
    t0 = time.perf_counter()
    layers = []
    for linears in tqdm(block_linears(model), desc=f"magnitude-{per}", unit="block", disable=not progress):
        for name, layer in linears:
            reason = skip_reason(layer, sparsity, nm, per)
            if reason is None:
                layer.weight.masked_fill_(prune_mask(layer.weight.abs(), sparsity, nm, per), 0.0)
            layers.append(layer_entry(name, layer, reason))
    return summarize(f"magnitude-{per}", per, sparsity, nm, layers, time.perf_counter() - t0)


PRUNERS = {"wanda": prune_wanda, "magnitude-layer": partial(prune_magnitude, per="layer"),
           "magnitude-row": partial(prune_magnitude, per="row")}
GROUPS = {"wanda": "row", "magnitude-layer": "layer", "magnitude-row": "row"}
