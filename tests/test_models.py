"""GPT-2 / NdGPT-2 models: parameter counts, presets, HF interop, init, optimizer groups, generation."""

from __future__ import annotations

import contextlib
import math

import ndlinear as pypi_ndlinear
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import models
from models import GPT, MODEL_NAMES, build_model, model_config
from models.gpt2 import KVCache
from models.gpt_kernels import cross_entropy, use_cpu_kernels
from models.ndlinear import NdLinear, literal_path

TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=512)

# The parameter counts the issue fixes (tied head counted once).
EXPECTED_PARAMS = {
    "gpt2": 124_475_904,
    "ndgpt2": 96_146_004,
    "ndgpt2-82m": 81_980_976,
    "gpt2-mlp1536": 96_145_920,
    "ndgpt2-84m": 84_340_452,
}


def tokens(batch, length, vocab, seed=0):
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def perturb_(model: nn.Module, scale=0.05, seed=0):
    """Random noise on every parameter, so biases and LayerNorms are not at their trivial init."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return model


# ----- presets and parameter counts -----

@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_builds_with_its_documented_parameter_count(name):
    """Every name of models.MODELS builds at full size (on the meta device: nothing allocated) with the
    parameter count the issue fixes and the models docstring states."""
    assert name in EXPECTED_PARAMS, f"model {name!r} has no expected parameter count"
    with torch.device("meta"):
        model = build_model(name)
    unique = {id(p): p.numel() for p in model.parameters()}
    assert sum(unique.values()) == EXPECTED_PARAMS[name]
    assert model.num_params() == EXPECTED_PARAMS[name]
    assert model.lm_head.weight is model.transformer.wte.weight
    if name != "gpt2":
        assert f"``{name}`` ({EXPECTED_PARAMS[name]:,}" in models.__doc__


def test_ndgpt2_mlp_parameter_arithmetic():
    """Per block: NdLinear((768,1)->(1536,2)) + NdLinear((1536,2)->(768,1)) = 2,361,607 params."""
    with torch.device("meta"):
        model = build_model("ndgpt2", n_layer=1)
    mlp = model.transformer.h[0].mlp
    assert sum(p.numel() for p in mlp.parameters()) == 2_361_607
    assert sum(p.numel() for p in mlp.c_fc.parameters()) == 768 * 1536 + 1536 + 1 * 2 + 2


def test_overrides_scale_presets_down():
    model = build_model("ndgpt2", n_layer=3, n_head=4, n_embd=64, block_size=32, vocab_size=256)
    assert len(model.transformer.h) == 3
    mlp = model.transformer.h[0].mlp
    assert isinstance(mlp.c_fc, NdLinear) and isinstance(mlp.c_proj, NdLinear)
    assert (mlp.c_fc.input_dims, mlp.c_fc.hidden_size) == ((64, 1), (128, 2))
    assert (mlp.c_proj.input_dims, mlp.c_proj.hidden_size) == ((128, 2), (64, 1))
    assert model.transformer.wpe.weight.shape == (32, 64)
    assert model.transformer.wte.weight.shape == (256, 64)

    c82 = build_model("ndgpt2-82m", n_layer=1, n_head=4, n_embd=64, vocab_size=256).transformer.h[0].mlp.c_fc
    assert (c82.input_dims, c82.hidden_size) == ((1, 64), (1, 64))
    cfg84 = model_config("ndgpt2-84m", n_embd=64, n_head=4)
    assert (cfg84.nd_in, cfg84.nd_hidden, cfg84.block_size) == ((64, 1), (64, 6), 4096)
    control = build_model("gpt2-mlp1536", n_layer=1, n_head=4, n_embd=64, vocab_size=256).transformer.h[0].mlp
    assert isinstance(control.c_fc, nn.Linear) and control.c_fc.out_features == 128


def test_bad_model_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        build_model("gpt3")
    for name in MODEL_NAMES:
        assert name in str(err.value)


def test_bad_override_field_raises():
    with pytest.raises(ValueError, match="n_layers"):
        build_model("gpt2", n_layers=2)
    with pytest.raises(ValueError):
        build_model("gpt2", n_embd=30, n_head=4)  # not divisible


# ----- Hugging Face interop -----

@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def hf_logits(hf_model, idx):
    with torch.no_grad():
        return hf_model(idx).logits


def our_logits(model, idx):
    with torch.no_grad():
        return model(idx)[0]


@pytest.mark.parametrize("activation", ["gelu_new", "gelu"])
def test_from_pretrained_matches_transformers(tmp_path, offline, activation):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=64, vocab_size=1000,
                        activation_function=activation, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    hf = perturb_(GPT2LMHeadModel(config)).eval()
    hf.save_pretrained(tmp_path)

    model = GPT.from_pretrained(str(tmp_path)).eval()
    assert model.config.n_layer == 2 and model.config.n_embd == 64 and model.config.vocab_size == 1000
    idx = tokens(2, 48, 1000)
    diff = (our_logits(model, idx) - hf_logits(hf, idx)).abs().max().item()
    assert diff < 1e-4, f"max |logit diff| {diff}"


@pytest.mark.parametrize("gelu,activation", [("tanh", "gelu_new"), ("none", "gelu")])
def test_save_hf_loads_in_transformers(tmp_path, offline, gelu, activation):
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    model = perturb_(build_model("gpt2", **TINY, gelu=gelu)).eval()
    model.save_hf(str(tmp_path))
    hf = GPT2LMHeadModel.from_pretrained(str(tmp_path)).eval()
    assert hf.config.activation_function == activation
    idx = tokens(2, 40, TINY["vocab_size"])
    diff = (our_logits(model, idx) - hf_logits(hf, idx)).abs().max().item()
    assert diff < 1e-4, f"max |logit diff| {diff}"
    # and back again: the round trip keeps the activation and the logits
    again = GPT.from_pretrained(str(tmp_path)).eval()
    assert again.config.gelu == gelu
    torch.testing.assert_close(our_logits(again, idx), our_logits(model, idx), atol=1e-5, rtol=0)


def test_save_hf_keeps_custom_mlp_width(tmp_path, offline):
    from transformers import GPT2LMHeadModel

    model = perturb_(build_model("gpt2-mlp1536", **TINY)).eval()
    model.save_hf(str(tmp_path))
    hf = GPT2LMHeadModel.from_pretrained(str(tmp_path)).eval()
    assert hf.config.n_inner == 2 * TINY["n_embd"]
    idx = tokens(1, 16, TINY["vocab_size"])
    assert (our_logits(model, idx) - hf_logits(hf, idx)).abs().max() < 1e-4


# ----- NdGPT-2 block = package NdLinear MLP -----

def package_mlp(mlp, gelu):
    """The same MLP built from the package's NdLinear layers (the literal algorithm)."""
    fc1 = pypi_ndlinear.NdLinear(mlp.c_fc.input_dims, mlp.c_fc.hidden_size).double()
    fc2 = pypi_ndlinear.NdLinear(mlp.c_proj.input_dims, mlp.c_proj.hidden_size).double()
    fc1.load_state_dict(mlp.c_fc.state_dict())
    fc2.load_state_dict(mlp.c_proj.state_dict())
    nd_in = mlp.c_fc.input_dims

    def forward(x):
        B, T, C = x.shape
        return fc2(F.gelu(fc1(x.reshape(B * T, *nd_in)), approximate=gelu)).view(B, T, C)
    return forward, fc1, fc2


def mlp_forward_backward(forward, params, x, upstream):
    x = x.detach().clone().requires_grad_(True)
    out = forward(x)
    grads = torch.autograd.grad(out, [x, *params], upstream)
    return out.detach(), grads


@pytest.mark.parametrize("gelu", ["tanh", "none"])
@pytest.mark.parametrize("name", ["ndgpt2", "ndgpt2-84m", "ndgpt2-82m"])
def test_ndgpt2_mlp_equals_package_layers_with_gradients(name, gelu):
    """ndgpt2 / ndgpt2-84m take the branch-major fast path (models.ndlinear_kernels.branch_mlp), ndgpt2-82m
    the generic one: values and every gradient equal the package's layers in float64."""
    torch.manual_seed(0)
    model = perturb_(build_model(name, **TINY, gelu=gelu), scale=0.3).double()
    mlp = model.transformer.h[0].mlp
    assert mlp.branched == (name != "ndgpt2-82m")
    reference, fc1, fc2 = package_mlp(mlp, gelu)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 5, TINY["n_embd"], dtype=torch.float64, generator=gen)
    upstream = torch.randn(3, 5, TINY["n_embd"], dtype=torch.float64, generator=gen)
    out, grads = mlp_forward_backward(mlp, list(mlp.parameters()), x, upstream)
    ref_out, ref_grads = mlp_forward_backward(reference, [*fc1.parameters(), *fc2.parameters()], x, upstream)
    torch.testing.assert_close(out, ref_out, atol=1e-10, rtol=0)
    names = ["x"] + [n for n, _ in mlp.named_parameters()]
    for n, g, ref in zip(names, grads, ref_grads, strict=True):
        torch.testing.assert_close(g, ref, atol=1e-10, rtol=0, msg=f"gradient of {n}")


def test_ndgpt2_branch_path_under_bf16_autocast_matches_literal_path():
    """Same maths in bf16: close to the literal path run under the same autocast, with fp32 parameter
    gradients."""
    torch.manual_seed(0)
    mlp = perturb_(build_model("ndgpt2", **TINY), scale=0.3).transformer.h[0].mlp
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 8, TINY["n_embd"], generator=gen)
    upstream = torch.randn(4, 8, TINY["n_embd"], generator=gen)
    results = []
    for literal in (False, True):
        with literal_path(mlp) if literal else contextlib.nullcontext(), torch.autocast("cpu", dtype=torch.bfloat16):
            results.append(mlp_forward_backward(mlp, list(mlp.parameters()), x, upstream))
    (fast_out, fast_grads), (literal_out, literal_grads) = results
    assert fast_out.dtype == torch.bfloat16
    torch.testing.assert_close(fast_out.float(), literal_out.float(), atol=0.05, rtol=0.05)
    for (n, p), g, ref in zip(mlp.named_parameters(), fast_grads[1:], literal_grads[1:], strict=True):
        assert g.dtype == p.dtype == torch.float32, n
        scale = ref.abs().max().item()
        assert (g - ref).abs().max().item() <= 0.05 * scale, f"gradient of {n}"


def test_literal_path_runs_each_factor_module_of_the_ndgpt2_mlp():
    """Wanda hooks the factor Linears inside literal_path: every hook fires with the factor's literal
    input and the output is unchanged; outside it the fused path runs (no factor module is called)."""
    torch.manual_seed(0)
    model = perturb_(build_model("ndgpt2", **TINY))
    mlp = model.transformer.h[0].mlp
    seen = []
    layers = [*mlp.c_fc.align_layers, *mlp.c_proj.align_layers]
    handles = [layer.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[-1])) for layer in layers]
    x = torch.randn(2, 3, TINY["n_embd"])
    fast = mlp(x)
    assert seen == []
    with literal_path(model):
        literal = mlp(x)
    for handle in handles:
        handle.remove()
    assert sorted(seen) == sorted(layer.in_features for layer in layers)
    torch.testing.assert_close(literal, fast, atol=1e-6, rtol=1e-5)
    assert not any(m.literal for m in model.modules() if isinstance(m, NdLinear))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gpt2", "ndgpt2"])
def test_compiled_training_on_cpu_equals_eager(name):
    """torch.compile on the CPU (gpt2 once crashed on its first compiled step: the logits crossed the
    chunked loss's graph break): two SGD steps compiled, with the CPU kernels switched on (so the
    plain loss must be traced), match eager. ndgpt2 traces the branch-major autograd Function. (SGD,
    not AdamW: Adam turns the rounding noise of a zero gradient, e.g. the key bias's, into lr-sized steps.)"""
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = perturb_(build_model(name, n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=128))
        use_cpu_kernels(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        run = torch.compile(model, fullgraph=True) if compiled else model  # no graph break
        losses = []
        for step in range(2):
            idx = tokens(2, 16, 128, seed=step)
            _, loss = run(idx, targets=idx.roll(-1, dims=1))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
        results.append((losses, [p.detach().clone() for p in model.parameters()]))
    (eager_losses, eager_params), (losses, params) = results
    assert losses == pytest.approx(eager_losses, rel=1e-5)
    for p, ref in zip(params, eager_params, strict=True):
        torch.testing.assert_close(p, ref, atol=1e-5, rtol=1e-4)


# ----- weight tying and optimizer -----

def test_weight_tying_survives_a_training_step():
    torch.manual_seed(0)
    model = build_model("gpt2", **TINY)
    assert model.lm_head.weight is model.transformer.wte.weight
    before = model.transformer.wte.weight.detach().clone()
    opt = model.configure_optimizers(weight_decay=0.1, learning_rate=1e-2, device_type="cpu")
    idx = tokens(2, 16, TINY["vocab_size"])
    _, loss = model(idx, targets=idx.roll(-1, dims=1))
    loss.backward()
    opt.step()
    assert not torch.equal(model.transformer.wte.weight, before)
    assert model.lm_head.weight is model.transformer.wte.weight
    torch.testing.assert_close(model.lm_head.weight, model.transformer.wte.weight, atol=0, rtol=0)
    # the state dict still stores both names with equal values, and a reload stays tied
    reloaded = build_model("gpt2", **TINY)
    reloaded.load_state_dict(model.state_dict())
    assert reloaded.lm_head.weight is reloaded.transformer.wte.weight
    assert torch.equal(reloaded.lm_head.weight, model.transformer.wte.weight)


@pytest.mark.parametrize("name", ["gpt2", "ndgpt2"])
def test_optimizer_groups(name):
    model = build_model(name, **TINY)
    opt = model.configure_optimizers(weight_decay=0.1, learning_rate=6e-4, betas=(0.9, 0.95), eps=1e-8,
                                     device_type="cpu")
    assert isinstance(opt, torch.optim.AdamW)
    named = dict(model.named_parameters())
    by_id = {id(p): n for n, p in named.items()}
    groups = {g["weight_decay"]: [by_id[id(p)] for p in g["params"]] for g in opt.param_groups}
    assert set(groups) == {0.1, 0.0}
    decay, no_decay = groups[0.1], groups[0.0]

    assert sorted(decay + no_decay) == sorted(named)  # every parameter, each in exactly one group
    assert len(set(decay)) == len(decay) and len(set(no_decay)) == len(no_decay)
    assert set(decay) == {n for n, p in named.items() if p.dim() >= 2}
    assert all(named[n].dim() < 2 for n in no_decay)
    assert any(n.endswith(".bias") for n in no_decay)
    assert {"transformer.ln_f.weight", "transformer.h.0.ln_1.weight", "transformer.h.1.ln_2.bias"} <= set(
        no_decay)
    assert "transformer.wte.weight" in decay and "transformer.h.0.mlp.c_fc" in " ".join(decay)
    for group in opt.param_groups:
        assert group["betas"] == (0.9, 0.95)
        assert group["eps"] == 1e-8
        assert group["lr"] == 6e-4


# ----- initialisation -----

def pooled_std(tensors):
    return torch.cat([t.detach().flatten() for t in tensors]).std().item()


def test_gpt2_init_statistics():
    torch.manual_seed(0)
    n_layer = 4
    model = build_model("gpt2", n_layer=n_layer, n_head=4, n_embd=256, block_size=256, vocab_size=4096)
    blocks = model.transformer.h
    residual_std = 0.02 / math.sqrt(2 * n_layer)

    plain = [b.attn.c_attn.weight for b in blocks] + [b.mlp.c_fc.weight for b in blocks]
    residual = [b.attn.c_proj.weight for b in blocks] + [b.mlp.c_proj.weight for b in blocks]
    assert pooled_std(plain) == pytest.approx(0.02, rel=0.03)
    assert pooled_std(residual) == pytest.approx(residual_std, rel=0.03)
    assert pooled_std([model.transformer.wte.weight]) == pytest.approx(0.02, rel=0.03)  # not shrunk
    assert pooled_std([model.transformer.wpe.weight]) == pytest.approx(0.02, rel=0.03)
    for name, p in model.named_parameters():
        if name.endswith(".bias"):
            assert torch.count_nonzero(p) == 0, name
        elif ".ln_" in name or "ln_f" in name:
            assert torch.all(p == 1), name


def test_ndgpt2_init_statistics():
    torch.manual_seed(0)
    n_layer = 4
    model = build_model("ndgpt2", n_layer=n_layer, n_head=4, n_embd=256, block_size=64, vocab_size=4096)
    blocks = model.transformer.h

    def big_and_small(layer):
        ordered = sorted(layer.align_layers, key=lambda m: m.weight.numel())
        return ordered[-1], ordered[:-1]

    fc_big = [big_and_small(b.mlp.c_fc)[0].weight for b in blocks]
    proj_big = [big_and_small(b.mlp.c_proj)[0].weight for b in blocks]
    assert fc_big[0].shape == (512, 256) and proj_big[0].shape == (256, 512)
    assert pooled_std(fc_big) == pytest.approx(0.02, rel=0.03)
    assert pooled_std(proj_big) == pytest.approx(0.02 / math.sqrt(2 * n_layer), rel=0.03)
    assert pooled_std([b.attn.c_attn.weight for b in blocks]) == pytest.approx(0.02, rel=0.03)
    assert pooled_std([model.transformer.wte.weight]) == pytest.approx(0.02, rel=0.03)
    for b in blocks:
        for layer in (b.mlp.c_fc, b.mlp.c_proj):
            _, small = big_and_small(layer)
            assert small, "ndgpt2 factors: one big, at least one small"
            for factor in small:
                assert torch.all(factor.weight != 0)
                assert factor.weight.abs().max() <= factor.in_features ** -0.5  # nn.Linear's U(+-1/sqrt(in))
            for factor in layer.align_layers:
                assert torch.count_nonzero(factor.bias) == 0
    # a 1 -> 2 / 2 -> 1 factor at std 0.02 would scale the whole signal down 50x
    layers = [layer for b in blocks for layer in (b.mlp.c_fc, b.mlp.c_proj)]
    small_weights = [f.weight.detach().flatten() for layer in layers for f in big_and_small(layer)[1]]
    assert torch.cat(small_weights).abs().mean() > 0.1


# ----- forward and generation -----

@pytest.mark.parametrize("name", ["gpt2", "ndgpt2", "ndgpt2-82m", "gpt2-mlp1536"])
def test_forward_shapes_and_initial_loss(name):
    torch.manual_seed(0)
    model = build_model(name, **TINY)
    vocab = TINY["vocab_size"]
    idx = tokens(3, 20, vocab)
    logits, loss = model(idx)
    assert logits.shape == (3, 20, vocab) and loss is None
    hidden = model.hidden_states(idx)
    assert hidden.shape == (3, 20, TINY["n_embd"])
    torch.testing.assert_close(model.lm_head(hidden), logits)

    logits, loss = model(idx, targets=tokens(3, 20, vocab, seed=1))
    assert loss.ndim == 0
    assert abs(loss.item() - math.log(vocab)) < 0.2  # near-uniform predictions at init
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_forward_rejects_too_long_sequence():
    model = build_model("gpt2", **{**TINY, "block_size": 8})
    with pytest.raises(ValueError, match="block_size"):
        model(tokens(1, 9, TINY["vocab_size"]))


@pytest.mark.parametrize("amp", [False, True])
def test_tied_embedding_gradient_is_dense_and_exact(amp):
    """use_cpu_kernels makes the lookup's gradient sparse (added into the head's dense one): .grad
    must stay a dense tensor, and every gradient equal to the plain path's, also when accumulated over
    micro-steps and under bf16 autocast; switching the kernels off restores the plain path."""
    torch.manual_seed(0)
    model = perturb_(build_model("gpt2", **TINY))
    idx, targets = tokens(2, 16, TINY["vocab_size"]), tokens(2, 16, TINY["vocab_size"], seed=1)
    grads = []
    for kernels in (True, False):
        use_cpu_kernels(model, kernels)
        assert model.transformer.wte.sparse is kernels and ("loss" in vars(model)) is kernels
        model.zero_grad(set_to_none=True)
        for _ in range(2):  # two micro-steps
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                _, loss = model(idx, targets=targets)
            loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    wte_grad = grads[0]["transformer.wte.weight"]
    assert wte_grad.layout == torch.strided and not wte_grad.is_sparse
    for name, grad in grads[0].items():  # the chunked loss's gradient too: every parameter's
        torch.testing.assert_close(grad, grads[1][name], atol=1e-6 if not amp else 1e-3, rtol=1e-3, msg=name)


def test_cpu_kernels_take_the_gpt_itself():
    """use_cpu_kernels switches the GPT it is given; a module around one (DDP, torch.compile) is refused."""
    with pytest.raises(TypeError, match="use_cpu_kernels takes a GPT"):
        use_cpu_kernels(torch.nn.Sequential(build_model("gpt2", **TINY)))


@pytest.mark.parametrize("kernels", [False, True])
def test_loss_ignores_minus_one_targets(kernels):
    torch.manual_seed(0)
    model = build_model("gpt2", **TINY)
    use_cpu_kernels(model, kernels)
    idx = tokens(1, 10, TINY["vocab_size"])
    targets = tokens(1, 10, TINY["vocab_size"], seed=2)
    masked = targets.clone()
    masked[0, 5:] = -1
    logits, loss = model(idx, targets=masked)
    expected = F.cross_entropy(logits[0, :5], targets[0, :5])
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_cross_entropy_matches_torch_with_gradients(dtype):
    """models.gpt_kernels.cross_entropy (row chunks, gradient made in the forward) against F.cross_entropy
    in fp32: 45 rows of a 50304 vocabulary are 3 chunks, the last one partial."""
    gen = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(45, 50304, generator=gen)).to(dtype)
    targets = torch.randint(0, 50304, (45,), generator=gen)
    targets[[3, 21, 44]] = -1
    ours_in = logits.clone().requires_grad_(True)
    ref_in = logits.float().requires_grad_(True)
    loss = cross_entropy(ours_in, targets)
    expected = F.cross_entropy(ref_in, targets, ignore_index=-1)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    (0.25 * loss).backward()  # a scaled loss, as under gradient accumulation
    (0.25 * expected).backward()
    assert ours_in.grad.dtype == dtype
    tol = 1e-7 if dtype == torch.float32 else 2e-5  # bf16: the gradient is rounded to bf16
    torch.testing.assert_close(ours_in.grad.float(), ref_in.grad, atol=tol, rtol=0.01)
    assert ours_in.grad[[3, 21, 44]].abs().max() == 0
    again = cross_entropy(logits.clone().requires_grad_(True), targets)
    again.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="twice"):  # the gradient buffer was handed on
        again.backward()
    with torch.no_grad():
        torch.testing.assert_close(cross_entropy(logits, targets), loss.detach(), atol=0, rtol=0)
    # a target far below the row's maximum (its fp32 probability underflows to 0): still finite, exact
    extreme = logits.float().clone()
    extreme[5, targets[5]] = extreme[5].max() - 300.0
    torch.testing.assert_close(cross_entropy(extreme.to(dtype), targets),
                               F.cross_entropy(extreme.to(dtype).float(), targets, ignore_index=-1),
                               atol=1e-4, rtol=1e-5)


@pytest.fixture(scope="module")
def sampler():
    torch.manual_seed(0)
    return perturb_(build_model("gpt2", **{**TINY, "block_size": 16}), scale=0.3).eval()


def test_generate_seeded_is_deterministic(sampler):
    prompt = tokens(2, 4, TINY["vocab_size"])
    a = sampler.generate(prompt, 10, top_k=50, generator=torch.Generator().manual_seed(42))
    b = sampler.generate(prompt, 10, top_k=50, generator=torch.Generator().manual_seed(42))
    assert a.shape == (2, 14)
    assert torch.equal(a, b)
    assert torch.equal(a[:, :4], prompt)
    # past block_size the context is cropped rather than failing
    long = sampler.generate(prompt, 20, generator=torch.Generator().manual_seed(0))
    assert long.shape == (2, 24)
    assert torch.equal(sampler.generate(prompt, 0), prompt)


def test_generate_top_k_one_is_greedy(sampler):
    prompt = tokens(2, 3, TINY["vocab_size"], seed=5)
    out = sampler.generate(prompt, 8, temperature=0.7, top_k=1, generator=torch.Generator().manual_seed(1))
    greedy = prompt
    with torch.no_grad():
        for _ in range(8):
            logits, _ = sampler(greedy[:, -sampler.config.block_size:])
            greedy = torch.cat([greedy, logits[:, -1].argmax(dim=-1, keepdim=True)], dim=1)
    assert torch.equal(out, greedy)


def test_generate_top_k_restricts_choices(sampler):
    prompt = tokens(1, 4, TINY["vocab_size"], seed=3)
    with torch.no_grad():
        allowed = sampler(prompt)[0][0, -1].topk(3).indices.tolist()
    for seed in range(20):
        out = sampler.generate(prompt, 1, top_k=3, generator=torch.Generator().manual_seed(seed))
        assert out[0, -1].item() in allowed


@pytest.mark.parametrize("kwargs", [dict(top_k=0), dict(top_k=-3), dict(max_new_tokens=-1),
                                    dict(temperature=0.0)])
def test_generate_rejects_bad_arguments(sampler, kwargs):
    args = dict(max_new_tokens=2, top_k=50, temperature=1.0) | kwargs
    with pytest.raises(ValueError):
        sampler.generate(tokens(1, 2, TINY["vocab_size"]), **args)


def pruned_(model: nn.Module, sparsity: float = 0.5) -> nn.Module:
    """Zero the smallest weights of every matrix but the embeddings (unstructured magnitude pruning)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and ".wte." not in name and ".wpe." not in name:
                p.mul_(p.abs() > p.abs().flatten().kthvalue(max(1, int(sparsity * p.numel()))).values)
    return model


@pytest.mark.parametrize("name", ["gpt2", "ndgpt2", "pruned gpt2"])
def test_cached_greedy_generation_equals_no_cache(name):
    """KV-cache sampling: greedy tokens equal the no-cache path's, also past block_size (16), where
    both crop the context and recompute."""
    torch.manual_seed(0)
    model = perturb_(build_model(name.split()[-1], **{**TINY, "block_size": 16}), scale=0.3).eval()
    if name.startswith("pruned"):
        pruned_(model)
    prompt = tokens(2, 5, TINY["vocab_size"], seed=7)
    cached = model.generate(prompt, 20, top_k=1)
    assert torch.equal(cached, model.generate(prompt, 20, top_k=1, use_cache=False))
    assert cached.shape == (2, 25) and torch.equal(cached[:, :5], prompt)


@pytest.mark.slow
def test_cached_sampling_equals_no_cache_and_runs_one_token_per_step(sampler):
    """Temperature / top-k sampling with the same generator draws the same tokens with and without
    the cache; with it, each step after the prompt feeds one token until the context outgrows
    block_size (then the last block_size tokens are recomputed)."""
    prompt = tokens(3, 4, TINY["vocab_size"], seed=2)
    for kwargs in (dict(temperature=0.8, top_k=5), dict(temperature=1.3, top_k=None)):
        cached = sampler.generate(prompt, 16, generator=torch.Generator().manual_seed(3), **kwargs)
        plain = sampler.generate(prompt, 16, generator=torch.Generator().manual_seed(3), use_cache=False, **kwargs)
        assert torch.equal(cached, plain), kwargs
    lengths = []
    handle = sampler.transformer.h[0].register_forward_pre_hook(lambda m, args: lengths.append(args[0].shape[1]))
    sampler.generate(prompt, 16, top_k=1)
    handle.remove()
    assert lengths == [4] + [1] * 12 + [16] * 3  # block_size 16: positions 4..15 cached, then cropped


def test_kv_cache_refuses_what_it_cannot_hold():
    cache = KVCache()
    k = torch.randn(1, 2, 3, 4)
    cache.append(k, k, block_size=4)
    with pytest.raises(ValueError, match="one token at a time"):
        cache.append(k, k, block_size=4)  # a second multi-token chunk
    cache.append(k[:, :, :1], k[:, :, :1], block_size=4)
    with pytest.raises(ValueError, match="block_size"):
        cache.append(k[:, :, :1], k[:, :, :1], block_size=4)  # full


def test_from_pretrained_refuses_an_incomplete_or_foreign_checkpoint(tmp_path, offline):
    """transformers fills missing weights at random and warns; our loader refuses instead."""
    from safetensors.torch import load_file, save_file
    from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

    tiny = GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=32, vocab_size=100)
    GPT2LMHeadModel(tiny).save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    save_file({k: v for k, v in weights.items() if "wte" in k or "wpe" in k}, tmp_path / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"not a complete GPT-2 checkpoint .*missing weights \['transformer.h.0"):
        GPT.from_pretrained(str(tmp_path))
    bert = tmp_path / "bert"
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                         vocab_size=100)).save_pretrained(bert)
    with pytest.raises(ValueError, match="model_type 'bert'"):
        GPT.from_pretrained(str(bert))


def test_from_pretrained_refuses_an_untied_head(tmp_path, offline):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=32, vocab_size=100, tie_word_embeddings=False)
    GPT2LMHeadModel(config).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="untied LM head"):
        GPT.from_pretrained(str(tmp_path))
