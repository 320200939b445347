"""utils/params.py and utils/seed.py."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from models import build_model
from utils.cli import UserError
from utils.params import count_params
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


# ----- utils.malloc: freed memory stays in the process -----

TRAINING_LIKE_STEPS = """
import json, resource, sys
sys.path.insert(0, {repo!r})
import torch
from utils.malloc import keep_freed_memory
applied = keep_freed_memory() if {tune} else False

def usage():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_minflt, r.ru_maxrss

def step():  # a big buffer, a small one and a conversion, all freed at the end: one training step
    big = torch.empty(64 << 20, dtype=torch.uint8).fill_(1)
    small = torch.randn(1000, 1000)
    return int(big[: 8 << 20].float().sum()) + int(small.sum() > 0)

faults, rss = [], []
for _ in range(12):
    before = usage()[0]
    step()
    faults.append(usage()[0] - before)
    rss.append(usage()[1])
print(json.dumps(dict(applied=applied, faults=faults, rss_kb=rss)))
"""


def _training_like_steps(tune: bool) -> dict:
    code = TRAINING_LIKE_STEPS.format(repo=str(Path(__file__).resolve().parents[1]), tune=tune)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings: a no-op off Linux")
def test_keep_freed_memory_stops_per_step_page_faults():
    pages = (64 << 20) // 4096
    tuned, plain = _training_like_steps(True), _training_like_steps(False)
    assert tuned["applied"] is True and plain["applied"] is False
    assert min(plain["faults"][-3:]) >= 0.9 * pages  # glibc's default: fresh mmaps, one fault per page
    assert max(tuned["faults"][-3:]) < 0.01 * pages  # the previous step's memory is reused
    # the price is bounded: the heap settles at about a step's worth more than glibc's default
    assert tuned["rss_kb"][-1] == tuned["rss_kb"][-3]
    assert tuned["rss_kb"][-1] - plain["rss_kb"][-1] < 3 * (64 << 10)


def test_atomic_write_replaces_whole_and_clears_what_killed_writers_left(tmp_path):
    import os

    from utils.io import atomic_write, atomic_write_json

    target = tmp_path / "report.json"
    hour_ago = os.path.getmtime(tmp_path) - 3600
    dead = tmp_path / ".report.json.999999999.tmp"  # a writer killed before its rename (no such PID)
    huge = tmp_path / ".report.json.99999999999999999999.tmp"  # not a PID at all: left alone, no crash
    live = tmp_path / f".report.json.{os.getppid()}.tmp"  # a writer still running: left alone
    fresh = tmp_path / ".report.json.999999998.tmp"  # no such PID here, but written to just now (another host?)
    for path in (dead, huge, live, fresh):
        path.write_text("half a rep")
        if path is not fresh:
            os.utime(path, (hour_ago, hour_ago))
    atomic_write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert not dead.exists() and huge.exists() and live.exists() and fresh.exists()
    for path in (huge, live, fresh):
        path.unlink()

    def full_disk(f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")
    with pytest.raises(UserError, match=r"cannot write .*report.json: No space left on device \(.* MB free"):
        atomic_write(target, full_disk)  # one line for the user, naming the path and the free space
    assert json.loads(target.read_text()) == {"a": 1}  # the old file whole, and no temp file of ours
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


@pytest.mark.parametrize("flags, bf16", [("fpu avx2 amx_bf16 avx512_bf16", "AMX"), ("fpu avx512_bf16", "AVX-512 BF16"),
                                         ("fpu avx2", None)])
def test_machine_names_the_cpu_and_its_native_bf16(monkeypatch, flags, bf16):
    from utils import precision

    fields = {"model name": "Some CPU 9000", "flags": flags}
    monkeypatch.setattr(precision, "cpuinfo", lambda field: fields[field])
    found = precision.machine("cpu")
    assert found == {"cpu": "Some CPU 9000", "cpu_bf16": bf16, "threads": torch.get_num_threads(),
                     "torch": torch.__version__}
