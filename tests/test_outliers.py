"""pruning/outliers.py: the statistics against a direct computation on known inputs, the layers Wanda prunes,
and the command line (report, identity, one-line errors)."""

from __future__ import annotations

import copy
import json
from functools import partial

import numpy as np
import pytest
import torch
from torch import nn

from models import build_model
from models.ndlinear import literal_path
from pruning.outliers import FeatureStats, main, measure_outliers
from pruning.wanda import prune_wanda
from tests.conftest import run_cli
from utils.checkpoint import save_checkpoint
from utils.identity import data_fingerprint, weights_fingerprint
from utils.loader import sample_windows

TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=256)


def direct(x: torch.Tensor) -> dict:
    """The statistics of one layer's inputs x (rows x features), computed at once in float64 with numpy."""
    x = x.double().numpy()
    sd, max_abs, norms = x.std(), np.abs(x).max(0), np.linalg.norm(x, axis=0)
    return {"rows": x.shape[0], "sd": sd, "max_abs": max_abs.max(), "share_abs_gt_6": (max_abs > 6).mean(),
            "share_sd_gt_6": (max_abs > 6 * sd).mean(), "norm_max": norms.max(), "norm_median": np.median(norms),
            "norm_max_over_median": norms.max() / np.median(norms)}


def assert_matches(got: dict, want: dict) -> None:
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-9), key


def test_feature_stats_on_known_inputs():
    """Planted values: one feature past 6, one past 6 sd only; fed in two chunks of another shape."""
    x = 0.5 * torch.randn(40, 16, generator=torch.Generator().manual_seed(0))
    x[:, :] = x.clamp(-1.5, 1.5)  # no feature reaches 6 sd (about 3) by chance
    x[3, 2], x[10, 5] = 7.0, -4.0
    stats = FeatureStats(16, "cpu")
    stats.add(x[:24].reshape(2, 12, 16))
    stats.add(x[24:])
    got = stats.result()
    assert got["inputs"] == 16 and got["share_abs_gt_6"] == 1 / 16 and got["share_sd_gt_6"] == 2 / 16
    assert_matches(got, direct(x))


def tiny_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, **TINY).eval()


def tokens(n: int = 6, t: int = 16) -> torch.Tensor:
    return torch.randint(0, TINY["vocab_size"], (n, t), generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def recorded_inputs(model: nn.Module, idx: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every block Linear's whole input (rows x features) from one forward of all of ``idx``."""
    seen, handles = {}, []

    def record(name, module, inputs, output):
        seen[name] = inputs[0].reshape(-1, module.in_features)

    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and name.startswith("transformer.h."):
            handles.append(m.register_forward_hook(partial(record, name)))
    with literal_path(model):
        x = model.embed(idx)
        for block in model.transformer.h:
            x = block(x)
    for h in handles:
        h.remove()
    return seen


@pytest.mark.parametrize("name", ["gpt2", "ndgpt2"])
def test_every_layer_wanda_prunes_matches_its_recorded_inputs(name):
    model = tiny_model(name)
    with torch.no_grad():  # a planted outlier feature: LayerNorm gain 10 on feature 3 of block 0's first LN
        model.transformer.h[0].ln_1.weight[3] = 10.0
    idx = tokens()
    layers = measure_outliers(model, idx, batch_size=4)  # two batches, one of 4 and one of 2 windows
    pruned = prune_wanda(copy.deepcopy(model), idx, 0.5, progress=False)["layers"]
    assert [e["name"] for e in layers] == [e["name"] for e in pruned if e["pruned"]]
    inputs = recorded_inputs(model, idx)
    for entry in layers:
        assert entry["inputs"] == inputs[entry["name"]].size(1)
        assert_matches(entry, direct(inputs[entry["name"]]))
    first = layers[0]  # transformer.h.0.attn.c_attn: a LayerNorm output of width 32 stays below sqrt(31) < 6
    assert first["name"] == "transformer.h.0.attn.c_attn" and first["share_abs_gt_6"] == 1 / 32
    assert first["norm_max_over_median"] > 5


@pytest.fixture
def workspace(tmp_path):
    data = tmp_path / "shards"
    data.mkdir()
    rng = np.random.default_rng(0)
    for split in ("val", "train"):
        np.save(data / f"x_{split}_000000.npy", rng.integers(0, TINY["vocab_size"], 4000).astype(np.uint16))
    ckpt = tmp_path / "model_00007.pt"
    save_checkpoint(ckpt, tiny_model("ndgpt2"), kind="gpt", model_name="ndgpt2", step=7)
    return tmp_path, data, ckpt


def test_cli_report_names_what_it_measured(workspace, capsys):
    tmp, data, ckpt = workspace
    out, md = tmp / "o.json", tmp / "o.md"
    code, stdout, err = run_cli(capsys, main, "outliers.py", "--ckpt", ckpt, "--data", data, "--calib-samples", 5,
                                "--calib-batch", 2, "--seed", 3, "--device", "cpu", "--json", out, "--md", md)
    assert code == 0, err
    report = json.loads(out.read_text())
    c, s = report["checkpoint"], report["settings"]
    assert (c["model"], c["source"], c["step"]) == ("ndgpt2", str(ckpt), 7)
    assert c["fingerprint"] == weights_fingerprint(tiny_model("ndgpt2").state_dict())
    assert (s["calib_samples"], s["calib_len"], s["seed"], s["dtype"]) == (5, 32, 3, "float32")
    # the windows are wanda.py's: the same draw gives the same numbers
    want = measure_outliers(tiny_model("ndgpt2"), sample_windows(data, "train", 5, 32, 3), batch_size=5)
    assert [e["name"] for e in report["layers"]] == [e["name"] for e in want]
    for got, expected in zip(report["layers"], want):
        assert_matches(got, {k: v for k, v in expected.items() if k != "name"})
    assert report["summary"]["layers"] == len(want) == 8  # 2 blocks x: c_attn, attn.c_proj, two NdLinear factors
    table = md.read_text()
    assert "| h.0.attn.c_attn | 32 |" in table and "all 8 layers" in table and c["fingerprint"] in table
    assert "share abs > 6 sd" in stdout


def test_cli_bad_input_is_one_line(workspace, capsys):
    tmp, data, ckpt = workspace
    taken = tmp / "taken.json"
    taken.write_text("{}")
    cases = [
        (["--calib-len", 33], "--calib-len 33 exceeds the model's block size 32"),
        (["--json", taken], "exists; pass --force"),
        (["--json", tmp / "same", "--md", tmp / "same"], "--json and --md must be different files"),
        (["--calib-samples", 0], "argument --calib-samples: must be >= 1"),
        (["--data", tmp / "nowhere"], "does not exist"),
        (["--ckpt", tmp / "missing.pt"], "checkpoint not found"),
    ]
    for extra, message in cases:
        args = ["--ckpt", ckpt, "--data", data, "--device", "cpu", *extra]
        code, _, err = run_cli(capsys, main, "outliers.py", *args)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (extra, err)
    assert taken.read_text() == "{}"


def test_cli_calibrates_on_the_training_data_by_default(workspace, capsys):
    """Without --data, the windows come from the data the checkpoint was trained on (as wanda.py's do)."""
    tmp, data, _ = workspace
    ckpt = tmp / "trained.pt"
    save_checkpoint(ckpt, tiny_model("ndgpt2"), kind="gpt", model_name="ndgpt2", step=7,
                    train_config={"data": str(data), "seed": 4})
    out = tmp / "o.json"
    code, _, err = run_cli(capsys, main, "outliers.py", "--ckpt", ckpt, "--calib-samples", 5, "--seed", 3,
                           "--device", "cpu", "--json", out)
    assert code == 0, err
    report = json.loads(out.read_text())
    assert report["settings"]["data"] == str(data) and report["settings"]["data_id"] == data_fingerprint(data)
    assert (report["checkpoint"]["trained_on"], report["checkpoint"]["train_seed"]) == (str(data), 4)
