"""utils/params.py and utils/seed.py."""

from __future__ import annotations

import random

import numpy as np
import torch

from models import build_model
from utils.params import count_params, params_per_module
from utils.seed import get_rng_state, seed_everything, set_rng_state

TINY = dict(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=64)


def test_count_params_total_trainable_nonzero():
    model = build_model("gpt2", **TINY)
    expected_total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    assert model.lm_head.weight is model.transformer.wte.weight  # tied: counted once
    counts = count_params(model)
    assert counts["total"] == counts["trainable"] == expected_total
    assert counts["nonzero"] == sum(int((p != 0).sum()) for p in model.parameters())
    was_nonzero = int((model.transformer.h[0].mlp.c_fc.weight[:, ::2] != 0).sum())
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight[:, ::2] = 0
    model.transformer.wpe.weight.requires_grad_(False)
    after = count_params(model)
    assert was_nonzero > 0 and after["total"] == expected_total
    assert after["nonzero"] == counts["nonzero"] - was_nonzero
    assert after["trainable"] == expected_total - model.transformer.wpe.weight.numel()


def test_params_per_module_partitions_the_total():
    model = build_model("ndgpt2", **TINY)
    top = params_per_module(model, depth=1)
    assert set(top) == {"transformer"}  # the tied head adds no parameters of its own
    assert sum(top.values()) == count_params(model)["total"]
    blocks = params_per_module(model, depth=3)
    c = TINY["n_embd"]
    assert blocks["transformer.wte.weight"] == TINY["vocab_size"] * c
    assert blocks["transformer.h.0"] == blocks["transformer.h.1"]
    assert sum(blocks.values()) == count_params(model)["total"]


def test_rng_state_round_trip_restores_every_generator(tmp_path):
    seed_everything(123)
    state = get_rng_state()
    first = (random.random(), float(np.random.rand()), float(torch.rand(())))
    seed_everything(999)
    set_rng_state(state)
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == first
    torch.save(state, tmp_path / "rng.pt")  # checkpoints load with weights_only=True: plain types + tensors
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == first
