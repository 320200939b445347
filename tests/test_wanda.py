"""Wanda / magnitude pruning: masks recomputed independently, NdLinear factors, checkpoints (CLI: test_pruning_cli)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from models import build_model
from models.ndlinear import literal_path
from pruning.wanda import parse_nm, prune_magnitude, prune_wanda
from utils.checkpoint import load_gpt, save_checkpoint
from utils.params import count_params

TINY = dict(n_layer=3, n_head=2, n_embd=32, block_size=32, vocab_size=256)


def tiny_model(name: str = "gpt2") -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, **TINY).eval()


def calib_tokens(n: int = 6, t: int = 16) -> torch.Tensor:
    return torch.randint(0, TINY["vocab_size"], (n, t), generator=torch.Generator().manual_seed(1))


def linears(block: nn.Module) -> dict[str, nn.Linear]:
    return {name: m for name, m in block.named_modules() if isinstance(m, nn.Linear)}


def expected_mask(score: torch.Tensor, sparsity: float, nm) -> torch.Tensor | None:
    """Weights to zero (lowest scores per row), or None for a layer too small to prune."""
    out_dim, in_dim = score.shape
    if nm:
        n, m = nm
        if in_dim < m or in_dim % m or in_dim < 3:
            return None
        low = score.view(out_dim, in_dim // m, m).topk(n, dim=-1, largest=False).indices
        mask = torch.zeros(out_dim, in_dim // m, m, dtype=torch.bool).scatter_(-1, low, True)
        return mask.view(out_dim, in_dim)
    k = int(in_dim * sparsity)
    if k == 0 or in_dim < 3:
        return None
    low = score.topk(k, dim=-1, largest=False).indices
    return torch.zeros(out_dim, in_dim, dtype=torch.bool).scatter_(-1, low, True)


@torch.no_grad()
def reference_wanda_masks(dense: nn.Module, tokens: torch.Tensor, sparsity: float, nm,
                          sequential: bool = True) -> dict[str, torch.Tensor | None]:
    """Wanda by hand on a copy: whole calibration set at once, norms from recorded layer inputs.
    ``sequential=False`` feeds every block the DENSE previous blocks (the wrong variant)."""
    model = copy.deepcopy(dense)
    x = model.transformer.wte(tokens) + model.transformer.wpe(torch.arange(tokens.size(1)))
    masks = {}
    for i, block in enumerate(model.transformer.h):
        seen: dict[nn.Module, torch.Tensor] = {}
        def record(mod, args, out, seen=seen):
            seen[mod] = args[0]
        hooks = [m.register_forward_hook(record) for m in linears(block).values()]
        with literal_path(block):
            dense_out = block(x)
        for h in hooks:
            h.remove()
        for name, m in linears(block).items():
            norm = seen[m].reshape(-1, m.in_features).norm(dim=0)
            mask = expected_mask(m.weight.abs() * norm, sparsity, nm)
            masks[f"transformer.h.{i}.{name}"] = mask
            if mask is not None:
                m.weight[mask] = 0.0
        x = block(x) if sequential else dense_out
    return masks


def check_masks(dense: nn.Module, pruned: nn.Module, masks: dict) -> None:
    """Pruned weights exactly where ``masks`` says, every other parameter bit-identical."""
    pruned_params = dict(pruned.named_parameters())
    checked = set()
    for name, mask in masks.items():
        before, after = dense.get_submodule(name).weight, pruned.get_submodule(name).weight
        if mask is None:
            assert torch.equal(before, after), f"{name} should be left dense"
        else:
            assert torch.equal(after == 0, mask), f"{name}: mask differs from the reference"
            assert torch.equal(after[~mask], before[~mask]), f"{name}: kept weights changed"
        checked.add(f"{name}.weight")
    for name, p in dense.named_parameters():
        if name not in checked:  # embeddings, LayerNorms, biases, tied head
            assert torch.equal(p, pruned_params[name]), f"{name} must not change"


@pytest.mark.parametrize("name", ["gpt2", "ndgpt2"])
@pytest.mark.parametrize("sparsity,nm", [(0.5, None), (0.5, (2, 4))])
def test_wanda_masks_match_independent_recomputation(name, sparsity, nm):
    dense, tokens = tiny_model(name), calib_tokens()
    pruned = copy.deepcopy(dense)
    report = prune_wanda(pruned, tokens, sparsity=sparsity, nm=nm, progress=False, batch_size=4)
    masks = reference_wanda_masks(dense, tokens, sparsity, nm)
    assert sum(m is not None for m in masks.values()) == report["pruned_layers"] > 0
    check_masks(dense, pruned, masks)
    for entry in report["layers"]:
        if entry["pruned"]:
            assert entry["sparsity"] == pytest.approx(0.5)


def test_block_norms_come_from_the_pruned_previous_blocks():
    dense, tokens = tiny_model(), calib_tokens()
    pruned = copy.deepcopy(dense)
    prune_wanda(pruned, tokens, progress=False)
    wrong = reference_wanda_masks(dense, tokens, 0.5, None, sequential=False)
    differs = {name for name, mask in wrong.items()
               if not torch.equal(pruned.get_submodule(name).weight == 0, mask)}
    assert differs and all(not name.startswith("transformer.h.0.") for name in differs)


@pytest.mark.parametrize("sparsity,nm", [(0.5, None), (0.25, None), (0.5, (2, 4))])
def test_ndgpt2_factors_pruned_per_row_small_ones_reported(sparsity, nm):
    model = tiny_model("ndgpt2")
    report = prune_wanda(model, calib_tokens(), sparsity=sparsity, nm=nm, progress=False)
    entries = {e["name"]: e for e in report["layers"]}
    for i in range(TINY["n_layer"]):
        for fc in ("c_fc", "c_proj"):
            big, small = (f"transformer.h.{i}.mlp.{fc}.align_layers.{j}" for j in (0, 1))
            w = model.get_submodule(big).weight
            per_group = w.view(w.size(0), -1, nm[1]) if nm else w.view(w.size(0), 1, -1)
            zeros = (per_group == 0).sum(-1)
            assert torch.all(zeros == (nm[0] if nm else int(w.size(1) * sparsity)))
            assert entries[big]["pruned"]
            assert not entries[small]["pruned"] and entries[small]["reason"].startswith("too small")
            small_weight = model.get_submodule(small).weight
            assert small_weight.count_nonzero() == small_weight.numel()


@pytest.mark.parametrize("prune", [prune_wanda, prune_magnitude])
def test_sparsity_zero_changes_nothing(prune):
    dense = tiny_model("ndgpt2")
    model = copy.deepcopy(dense)
    report = prune(model, calib_tokens(), sparsity=0.0, progress=False)
    assert report["pruned_layers"] == 0 and all(e["reason"] == "sparsity 0" for e in report["layers"])
    for (name, a), b in zip(dense.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("sparsity,nm", [(0.5, None), (0.75, None), (0.5, (4, 8))])
def test_magnitude_row_masks_match_independent_recomputation(sparsity, nm):
    dense = tiny_model()
    pruned = copy.deepcopy(dense)
    report = prune_magnitude(pruned, sparsity=sparsity, nm=nm)
    masks = {f"transformer.h.{i}.{name}": expected_mask(m.weight.abs(), sparsity, nm)
             for i, block in enumerate(dense.transformer.h) for name, m in linears(block).items()}
    assert report["pruned_layers"] == len(masks) == 4 * TINY["n_layer"]
    check_masks(dense, pruned, masks)


def test_wanda_and_magnitude_choose_different_weights():
    dense, tokens = tiny_model(), calib_tokens()
    a, b = copy.deepcopy(dense), copy.deepcopy(dense)
    prune_wanda(a, tokens, progress=False)
    prune_magnitude(b)
    assert count_params(a)["nonzero"] == count_params(b)["nonzero"] < count_params(dense)["nonzero"]
    wa, wb = a.transformer.h[0].attn.c_attn.weight, b.transformer.h[0].attn.c_attn.weight
    assert not torch.equal(wa == 0, wb == 0)


def test_bad_arguments_raise():
    model, tokens = tiny_model(), calib_tokens()
    for kwargs in (dict(sparsity=1.0), dict(sparsity=-0.1), dict(nm=(2, 2)), dict(nm=(0, 4)),
                   dict(nm=(4, 2))):
        with pytest.raises(ValueError):
            prune_wanda(model, tokens, progress=False, **kwargs)
        with pytest.raises(ValueError):
            prune_magnitude(model, **kwargs)
    with pytest.raises(ValueError, match="block_size"):
        prune_wanda(model, torch.zeros(2, TINY["block_size"] + 1, dtype=torch.long), progress=False)
    assert parse_nm("2:4") == (2, 4) and parse_nm("4:8") == (4, 8)
    for text in ("2-4", "4:2", "0:4", "2:2", "a:4", "2:4:8", ""):
        with pytest.raises(ValueError):
            parse_nm(text)


def test_pruned_checkpoint_round_trip_keeps_zeros(tmp_path):
    model = tiny_model("ndgpt2")
    report = prune_wanda(model, calib_tokens(), progress=False)
    path = tmp_path / "pruned.pt"
    save_checkpoint(path, model, kind="gpt", model_name="ndgpt2", pruning=report)
    loaded, ckpt = load_gpt(path)
    assert ckpt["pruning"]["pruned_layers"] == report["pruned_layers"]
    assert count_params(loaded) == count_params(model)
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    tokens = calib_tokens(2, 8)
    assert torch.allclose(model(tokens)[0], loaded(tokens)[0])


@pytest.mark.parametrize("sparsity", [0.3, 0.5])
def test_magnitude_layer_masks_match_a_sort_of_the_whole_layer(sparsity):
    dense = tiny_model("ndgpt2")
    pruned = copy.deepcopy(dense)
    report = prune_magnitude(pruned, sparsity=sparsity, per="layer")
    assert report["method"] == "magnitude-layer" and report["mask_groups"] == "per layer"
    masks, uneven_rows = {}, 0
    for i, block in enumerate(dense.transformer.h):
        for name, m in linears(block).items():
            w = m.weight.detach().abs().numpy()
            k = int(w.size * sparsity)
            if m.in_features < 3:  # NdLinear's mode-mixing factors stay dense
                masks[f"transformer.h.{i}.{name}"] = None
                continue
            threshold = np.sort(w.ravel())[k - 1]  # the k-th smallest |W| of the whole layer
            masks[f"transformer.h.{i}.{name}"] = torch.from_numpy(w <= threshold)
            zeros_per_row = (w <= threshold).sum(1)
            uneven_rows += int(zeros_per_row.min() != zeros_per_row.max())
    check_masks(dense, pruned, masks)
    assert uneven_rows > 0  # one threshold per layer, not per row: rows lose different counts
    assert report["pruned_layers"] == sum(m is not None for m in masks.values())


def test_magnitude_layer_and_row_agree_under_nm():
    a, b = tiny_model("ndgpt2"), tiny_model("ndgpt2")
    ra, rb = prune_magnitude(a, nm=(2, 4), per="layer"), prune_magnitude(b, nm=(2, 4), per="row")
    assert ra["mask_groups"] == rb["mask_groups"] and "same groups for every method" in ra["mask_groups"]
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
