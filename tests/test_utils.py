"""utils/params.py and utils/seed.py."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

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


# ----- utils.malloc: CPU memory settings applied before torch is imported -----

FAULTS_FOR_64MB = """
import json, resource, sys
sys.path.insert(0, {repo!r})
from utils.malloc import tune_cpu_memory
applied = tune_cpu_memory() if {tune} else []
import torch
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.empty(64 << 20, dtype=torch.uint8).fill_(1)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
import os
print(json.dumps(dict(applied=applied, faults=faults, env=os.environ.get("THP_MEM_ALLOC_ENABLE"))))
"""


def _faults_for_64mb(tune: bool, env: dict | None = None) -> dict:
    code = FAULTS_FOR_64MB.format(repo=str(Path(__file__).resolve().parents[1]), tune=tune)
    environment = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"} | (env or {})
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=environment)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_tune_cpu_memory_backs_big_buffers_with_huge_pages():
    if not sys.platform.startswith("linux"):
        return  # a documented no-op elsewhere
    tuned, plain = _faults_for_64mb(True), _faults_for_64mb(False)
    assert tuned["applied"] == ["huge pages", "malloc keeps freed memory"]
    assert tuned["env"] == "1" and plain["env"] is None
    assert plain["faults"] >= (64 << 20) // 4096 * 0.9  # one fault per 4 KiB page
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if thp.exists() and "[never]" not in thp.read_text():
        assert tuned["faults"] < plain["faults"] / 20  # one per 2 MiB page
    # a user's explicit THP_MEM_ALLOC_ENABLE=0 wins
    kept = _faults_for_64mb(True, {"THP_MEM_ALLOC_ENABLE": "0"})
    assert kept["applied"] == ["malloc keeps freed memory"] and kept["env"] == "0"
