"""NdLinear (models/ndlinear.py) against the PyPI ``ndlinear`` 1.0.0 package it must match exactly."""

from __future__ import annotations

import ndlinear as pypi_ndlinear
import pytest
import torch

from models.ndlinear import NdLinear, literal_path

# (input_dims, hidden_size, transform_outer, batch)
SHAPES = [
    ((768, 1), (1536, 2), True, 3),  # NdGPT-2 fc1
    ((1536, 2), (768, 1), True, 3),  # NdGPT-2 fc2
    ((1, 8), (1, 8), True, 5),  # NdGPT-2 82M at width 8
    ((4, 3, 2), (2, 5, 3), True, 6),
    ((16, 16, 3), (1, 1, 8), True, 4),  # NdViT patch embedding
    ((4, 3, 2), (2, 5, 3), False, 6),
    ((768, 1), (1536, 2), False, 2),
    ((5, 1, 3), (2, 4, 1), False, 7),
]
IDS = [f"{d}->{h}{'' if outer else '-inner'}" for d, h, outer, _ in SHAPES]


def make_pair(input_dims, hidden_size, transform_outer, seed=0):
    """Ours and the package's layer in float64 with the same (random, nonzero-bias) weights."""
    torch.manual_seed(seed)
    ref = pypi_ndlinear.NdLinear(input_dims, hidden_size, transform_outer=transform_outer).double()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0.0, 0.5)  # biases too: default init leaves bias folding barely exercised
    ours = NdLinear(input_dims, hidden_size, transform_outer=transform_outer).double()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours, ref


def forward_backward(layer, x, upstream, forward=None):
    """Output, input gradient and parameter gradients (by name) for a random upstream gradient."""
    layer.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    out = (forward or layer)(x)
    out.backward(upstream)
    return out.detach(), x.grad, {n: p.grad for n, p in layer.named_parameters()}


def test_state_dict_keys_match_package():
    for input_dims, hidden_size, outer, _ in SHAPES:
        ours = NdLinear(input_dims, hidden_size, transform_outer=outer)
        ref = pypi_ndlinear.NdLinear(input_dims, hidden_size, transform_outer=outer)
        assert list(ours.state_dict()) == list(ref.state_dict())
        for key, value in ref.state_dict().items():
            assert ours.state_dict()[key].shape == value.shape, key
        # and the package loads our weights
        ref.load_state_dict(ours.state_dict(), strict=True)


@pytest.mark.parametrize("path", ["fast", "literal"])
@pytest.mark.parametrize("input_dims,hidden_size,transform_outer,batch", SHAPES, ids=IDS)
def test_matches_package_outputs_and_gradients(input_dims, hidden_size, transform_outer, batch, path):
    ours, ref = make_pair(input_dims, hidden_size, transform_outer)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, *input_dims, dtype=torch.float64, generator=gen)
    upstream = torch.randn(batch, *hidden_size, dtype=torch.float64, generator=gen)

    forward = ours.forward_literal if path == "literal" else None
    out, gx, grads = forward_backward(ours, x, upstream, forward)
    ref_out, ref_gx, ref_grads = forward_backward(ref, x, upstream)

    assert out.shape == (batch, *hidden_size)
    torch.testing.assert_close(out, ref_out, atol=1e-10, rtol=0)
    torch.testing.assert_close(gx, ref_gx, atol=1e-10, rtol=0)
    assert set(grads) == set(ref_grads)
    for name, g in grads.items():
        assert g is not None, f"no gradient for {name}"
        torch.testing.assert_close(g, ref_grads[name], atol=1e-10, rtol=0, msg=f"gradient of {name}")


@pytest.mark.parametrize("input_dims,hidden_size", [((4, 3, 2), (2, 5, 3)), ((8, 1), (6, 2))])
def test_any_number_of_leading_batch_dims(input_dims, hidden_size):
    ours, ref = make_pair(input_dims, hidden_size, True)
    x = torch.randn(2, 3, *input_dims, dtype=torch.float64)
    out = ours(x)
    assert out.shape == (2, 3, *hidden_size)
    flat = x.reshape(6, *input_dims)
    torch.testing.assert_close(out.reshape(6, *hidden_size), ours(flat), atol=1e-12, rtol=0)
    torch.testing.assert_close(out.reshape(6, *hidden_size), ref(flat), atol=1e-10, rtol=0)
    # no batch dim at all is not a supported input of the package either; one sample is [1, *dims]
    torch.testing.assert_close(ours(x[:1, 0]), ref(flat[:1]), atol=1e-10, rtol=0)


@pytest.mark.parametrize("bad_shape", [(2, 3, 4, 2), (2, 4, 3), (4, 3, 2), (2, 4, 3, 3)])
def test_wrong_input_shape_raises(bad_shape):
    layer = NdLinear((4, 3, 2), (2, 5, 3))
    with pytest.raises(ValueError, match="NdLinear expects"):
        layer(torch.randn(*bad_shape))


def test_bad_constructor_arguments_raise():
    with pytest.raises(ValueError):
        NdLinear((4, 3), (2,))
    with pytest.raises(ValueError):
        NdLinear((4, 0), (2, 2))


def expected_factor_inputs(layer: NdLinear, x: torch.Tensor) -> dict[int, torch.Tensor]:
    """The input of every factor, written independently of the layer: contract one mode at a time
    with einsum, in the package's order. Layout: [batch, other modes, D_i]."""
    n = layer.num_modes
    letters = "abcdefgh"[:n]
    inputs = {}
    for i in layer.mode_order():
        others = letters[:i] + letters[i + 1:]
        inputs[i] = torch.einsum(f"z{letters}->z{others}{letters[i]}", x).clone()
        factor = layer.align_layers[i]
        out_letters = letters[:i] + "y" + letters[i + 1:]
        x = torch.einsum(f"z{letters},y{letters[i]}->z{out_letters}", x, factor.weight)
        x = x + factor.bias.view([1] + [-1 if m == i else 1 for m in range(n)])
    return inputs


HOOK_CASES = [((4, 3, 2), (2, 5, 3), True), ((4, 3, 2), (2, 5, 3), False), ((6, 1), (8, 2), True)]


@pytest.mark.parametrize("input_dims,hidden_size,transform_outer", HOOK_CASES)
def test_literal_path_hook_on_factor_sees_its_exact_input(input_dims, hidden_size, transform_outer):
    ours, ref = make_pair(input_dims, hidden_size, transform_outer)
    x = torch.randn(5, *input_dims, dtype=torch.float64)
    expected = expected_factor_inputs(ours, x)
    unhooked = ours(x)

    seen, ref_seen = {}, {}
    handles = []
    for layer, store in ((ours, seen), (ref, ref_seen)):
        for i, factor in enumerate(layer.align_layers):
            def keep_input(module, inputs, output, i=i, store=store):
                store[i] = inputs[0]
            handles.append(factor.register_forward_hook(keep_input))
    with literal_path(ours) as layer:
        assert layer is ours and ours.literal
        out = ours(x)
    ref(x)
    for h in handles:
        h.remove()

    assert not ours.literal  # restored on exit
    torch.testing.assert_close(out, unhooked, atol=1e-10, rtol=0)  # the path changes, not the result
    assert sorted(seen) == list(range(ours.num_modes))
    for i, factor in enumerate(ours.align_layers):
        assert seen[i].shape[-1] == factor.in_features
        # the order of the rows (which other modes lead) is free; each column's values are not
        rows = seen[i].reshape(-1, factor.in_features)
        want = expected[i].reshape(-1, factor.in_features)
        assert rows.shape == want.shape
        torch.testing.assert_close(rows.sort(dim=0).values, want.sort(dim=0).values, atol=1e-10, rtol=0)
        # Wanda needs per-feature norms over all rows: they equal those of the package's own input
        torch.testing.assert_close(rows.norm(dim=0), ref_seen[i].norm(dim=0), atol=1e-10, rtol=0)


@pytest.mark.parametrize("input_dims,hidden_size",
                         [((64, 1), (128, 2)), ((128, 2), (64, 1)), ((4, 3, 2), (2, 5, 3))])
def test_bf16_autocast_close_to_fp32(input_dims, hidden_size):
    torch.manual_seed(0)
    layer = NdLinear(input_dims, hidden_size)
    x = torch.randn(16, *input_dims)
    exact = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = layer(x)
        low.float().square().mean().backward()
    assert low.shape == exact.shape
    assert torch.isfinite(low.float()).all()
    rel = (low.float() - exact).norm() / exact.norm()
    assert rel < 2e-2, f"bf16 relative error {rel:.3g}"
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32, name
        assert torch.isfinite(p.grad).all(), name
