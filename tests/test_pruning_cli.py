"""pruning/wanda.py and pruning/sweep.py on the command line: reports, reuse, bad input (one line, exit 2)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from models import build_model
from pruning import sweep
from pruning.wanda import main as wanda_main
from tests.conftest import run_cli as run_cli_in_process
from utils.checkpoint import load_gpt, save_checkpoint
from utils.params import count_params
from utils.precision import machine

TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=256)


def tiny_model(name: str = "gpt2"):
    torch.manual_seed(0)
    return build_model(name, **TINY).eval()


@pytest.fixture
def workspace(tmp_path):
    """Tiny shards (uint16) and a tiny checkpoint."""
    data = tmp_path / "shards"
    data.mkdir()
    rng = np.random.default_rng(0)
    np.save(data / "x_val_000000.npy", rng.integers(0, TINY["vocab_size"], 4000).astype(np.uint16))
    np.save(data / "x_train_000001.npy", rng.integers(0, TINY["vocab_size"], 4000).astype(np.uint16))
    ckpt = tmp_path / "model.pt"
    save_checkpoint(ckpt, tiny_model(), kind="gpt", model_name="gpt2", step=7)
    return tmp_path, data, ckpt


def run_cli(repo_root, *args):
    return subprocess.run([sys.executable, "pruning/wanda.py", *map(str, args)], cwd=repo_root,
                          capture_output=True, text=True, timeout=120)


def run_in_process(capsys, *args) -> tuple[int, str, str]:
    return run_cli_in_process(capsys, wanda_main, "wanda.py", *args)


FAST = ("--calib-samples", 8, "--val-batches", 2, "--val-batch-size", 2, "--no-hellaswag", "--device", "cpu")


@pytest.mark.slow
def test_cli_prunes_writes_checkpoint_and_report(repo_root, workspace):
    tmp, data, ckpt = workspace
    out, report = tmp / "pruned.pt", tmp / "report.json"
    r = run_cli(repo_root, "--ckpt", ckpt, "--data", data, "--out", out, "--json", report, *FAST)
    assert r.returncode == 0, r.stderr
    assert "nonzero params" in r.stdout and "val loss" in r.stdout
    model, loaded = load_gpt(out)
    dense, _ = load_gpt(ckpt)
    assert loaded["pruning"]["method"] == "wanda" and loaded["step"] == 7
    counts = count_params(model)
    assert counts["total"] == count_params(dense)["total"] > counts["nonzero"]
    rep = json.loads(report.read_text())
    assert rep["kind"] == "pruning" and rep["settings"]["method"] == "wanda"
    assert rep["before"]["params_nonzero"] == count_params(dense)["nonzero"]
    assert rep["after"]["params_nonzero"] == counts["nonzero"]
    assert rep["after"]["val_loss"] > 0 and rep["before"]["perplexity"] == pytest.approx(
        math.exp(rep["before"]["val_loss"]))
    assert len(rep["layers"]) == 4 * TINY["n_layer"]
    assert all(e["sparsity"] == pytest.approx(0.5) for e in rep["layers"])


def test_cli_magnitude_nm_without_output(workspace, capsys):
    tmp, data, ckpt = workspace
    code, out, err = run_in_process(capsys, "--ckpt", ckpt, "--data", data, "--method", "magnitude",
                                    "--nm", "2:4", *FAST)
    assert code == 0, err
    assert "magnitude-row pruning (N:M" in out and ", 2:4," in out
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and err.startswith("wanda.py: warning: --method magnitude is deprecated, "
                                                 "it means magnitude-row")
    assert sorted(p.name for p in tmp.iterdir()) == ["model.pt", "shards"]


def test_cli_before_json_reuses_dense_metrics_only_when_settings_match(workspace, capsys):
    tmp, data, ckpt = workspace
    first, second = tmp / "first.json", tmp / "second.json"
    code, _, err = run_in_process(capsys, "--ckpt", ckpt, "--data", data, "--json", first, *FAST)
    assert code == 0, err
    code, out, err = run_in_process(capsys, "--ckpt", ckpt, "--data", data, "--method", "magnitude-layer",
                                    "--json", second, "--before-json", first, *FAST)
    assert code == 0, err
    a, b = json.loads(first.read_text()), json.loads(second.read_text())
    assert b["before"] == a["before"] and b["settings"]["method"] == "magnitude-layer"
    assert b["timings"]["eval_before_s"] == 0  # reused, not measured
    other = list(FAST)
    other[other.index("--val-batches") + 1] = 3  # another evaluation: the old 'before' must not be used
    code, _, err = run_in_process(capsys, "--ckpt", ckpt, "--data", data, "--before-json", first, *other)
    assert code == 2 and "other settings (eval.val_batches)" in err
    report = first.read_text()
    code, _, err = run_in_process(capsys, "--ckpt", ckpt, "--data", data, "--before-json", first, "--json", first,
                                  "--force", *FAST)
    assert code == 2 and "is also an input" in err and first.read_text() == report
    other[other.index("--val-batches") + 1] = 100000  # more than the val split holds: would repeat batches
    code, _, err = run_in_process(capsys, "--ckpt", ckpt, "--data", data, *other, "--json", second, "--force")
    assert code == 2 and "100000 val batches" in err and "holds" in err, err


# (arguments, expected message, run as a real subprocess too: a few cases cover the process boundary)
@pytest.mark.parametrize("args,message,subproc", [
    (["--sparsity", "1.0"], "sparsity must be in [0, 1)", False),
    (["--sparsity", "-0.1"], "sparsity must be in [0, 1)", False),
    (["--nm", "2-4"], "N:M must look like", False),
    pytest.param(["--nm", "4:2"], "0 < N < M", True, marks=pytest.mark.slow),
    (["--nm", "0:4"], "0 < N < M", False),
    (["--nm", "2:2"], "0 < N < M", False),
    pytest.param(["--out", "{ckpt}"], "is also an input", True, marks=pytest.mark.slow),
    pytest.param(["--ckpt", "{tmp}/corrupt.pt"], "corrupt", True, marks=pytest.mark.slow),
    (["--ckpt", "{tmp}/missing.pt"], "checkpoint not found", False),
    (["--out", "{tmp}/existing.pt"], "exists; pass --force", False),
    (["--data", "{tmp}/empty"], "no 'train' shards", False),
])
def test_cli_bad_input(repo_root, workspace, capsys, args, message, subproc):
    tmp, data, ckpt = workspace
    (tmp / "corrupt.pt").write_bytes(b"not a checkpoint")
    (tmp / "existing.pt").write_bytes(b"user file")
    (tmp / "empty").mkdir()
    ckpt_bytes = ckpt.read_bytes()
    base = {"--ckpt": str(ckpt), "--data": str(data)}
    args = [a.format(tmp=tmp, ckpt=ckpt) for a in args]
    for flag, value in base.items():
        if flag not in args:
            args += [flag, value]
    if subproc:
        r = run_cli(repo_root, *args, *FAST)
        code, err = r.returncode, r.stderr
    else:
        code, _, err = run_in_process(capsys, *args, *FAST)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert err.startswith("wanda.py: error:") and len(err.strip().splitlines()) == 1
    assert ckpt.read_bytes() == ckpt_bytes
    assert (tmp / "existing.pt").read_bytes() == b"user file"


def test_cli_nm_that_prunes_no_layer_is_refused_before_work(workspace, capsys):
    tmp, data, ckpt = workspace  # widths 32 and 128: none divisible by 3
    code, out, err = run_in_process(capsys, "--ckpt", ckpt, "--data", data, "--nm", "2:3", "--json",
                                    tmp / "r.json", *FAST)
    assert code == 2 and "2:3 prunes no layer of this model (input widths [32, 128])" in err
    assert len(err.strip().splitlines()) == 1 and "val loss" not in out and not (tmp / "r.json").exists()


def output_cases(tmp):
    """(path, expected message) for an output path that cannot be written; each before any work."""
    (tmp / "a_file").write_text("keep me")
    (tmp / "a_dir").mkdir()
    cases = [(tmp / "a_dir", "is a directory"), (tmp / "a_file" / "r.json", "is a file, not a directory"),
             (tmp / "a_file" / "sub" / "r.json", "is a file, not a directory")]
    if os.geteuid() != 0:  # root writes anywhere: a read-only directory cannot be tested as root
        (tmp / "ro").mkdir(mode=0o555)
        cases.append((tmp / "ro" / "r.json", "is not writable"))
    return cases


@pytest.mark.parametrize("flag", ["--json", "--out"])
def test_cli_unwritable_output_fails_before_loading_anything(workspace, capsys, flag):
    tmp, data, _ = workspace
    corrupt = tmp / "corrupt.pt"  # the output is checked first: its error, not the checkpoint's
    corrupt.write_bytes(b"not a checkpoint")
    for path, message in output_cases(tmp):
        code, _, err = run_in_process(capsys, "--ckpt", corrupt, "--data", data, flag, path, *FAST)
        assert code == 2 and message in err and flag in err, (path, err)
        assert len(err.strip().splitlines()) == 1
    assert (tmp / "a_file").read_text() == "keep me"


# ----------------------------------------------------------------------------- sweep

SWEEP_FAST = ("--calib-samples", 4, "--val-batches", 2, "--val-batch-size", 2, "--device", "cpu")


def run_sweep(capsys, *args) -> tuple[int, str, str]:
    return run_cli_in_process(capsys, sweep.main, "sweep.py", *args)


def test_sweep_writes_one_report_per_setting_and_reuses_them(workspace, capsys, monkeypatch):
    tmp, data, ckpt = workspace
    out = tmp / "sweep"
    args = ("--ckpt", ckpt, "--data", data, "--out-dir", out, "--sparsities", 0.25, 0.5, "--nm", "2:4", *SWEEP_FAST)
    code, stdout, err = run_sweep(capsys, *args)
    assert code == 0, err
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))  # .lock: the sweep's lock
    methods = ("magnitude-layer", "magnitude-row", "wanda")
    assert names == sorted(["dense.json", "sweep.md"] + [f"{m}-{t}.json" for m in methods
                                                          for t in ("25pct", "50pct", "2of4")])
    dense = json.loads((out / "dense.json").read_text())
    assert dense["kind"] == "eval" and dense["metrics"]["hellaswag"] == {}  # no HellaSwag by default
    assert dense["machine"] == machine("cpu")  # what its timings were measured on
    dense_model, _ = load_gpt(ckpt)
    for name in names:
        if name.endswith("pct.json") or name.endswith("2of4.json"):
            r = json.loads((out / name).read_text())
            assert r["kind"] == "pruning" and r["before"] == dense["metrics"]
            assert r["settings"]["eval"] == dense["settings"]["eval"]
            expected = 0.5 if "2of4" in name or "50pct" in name else 0.25
            assert r["pruning"]["sparsity"] == expected and r["pruning"]["pruned_layers_sparsity"] == pytest.approx(
                expected, abs=0.01)
            assert r["after"]["params_nonzero"] < count_params(dense_model)["nonzero"]
            assert r["after"]["perplexity"] == pytest.approx(math.exp(r["after"]["val_loss"]))
    table = (out / "sweep.md").read_text()
    assert table.count("| gpt2 |") == 9 and "magnitude-layer | 2:4" in table
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")}

    # a rerun evaluates nothing and rewrites no report
    import evaluation.evaluator

    def no_eval(*a, **k):
        raise AssertionError("a rerun must not evaluate")
    monkeypatch.setattr(evaluation.evaluator.Evaluation, "evaluate", no_eval)
    code, stdout, err = run_sweep(capsys, *args)
    assert code == 0, err
    assert "9 settings (9 reused)" in stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")} == stamps

    # other settings into the same directory: refused, nothing overwritten
    code, _, err = run_sweep(capsys, *args, "--val-batches", 3)  # the last --val-batches wins
    assert code == 2 and "other settings (eval.val_batches); use another --out-dir" in err
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")} == stamps


def test_sweep_bad_input(workspace, capsys):
    tmp, data, ckpt = workspace
    (tmp / "a_file").write_text("x")
    base = ("--ckpt", ckpt, "--data", data, *SWEEP_FAST)
    for extra, message in [(("--out-dir", tmp / "a_file"), "is a file, not a directory"),
                           (("--out-dir", tmp / "a_file" / "sub"), "is a file, not a directory"),
                           (("--out-dir", tmp / "s", "--sparsities", "1.5"), "sparsity must be in [0, 1)"),
                           (("--out-dir", tmp / "s", "--sparsities", "0"), "0 is the dense model"),
                           (("--out-dir", tmp / "s", "--nm", "2:3", "--sparsities"), "2:3 prunes no layer"),
                           (("--out-dir", tmp / "s", "--nm", "4:2"), "0 < N < M"),
                           (("--out-dir", tmp / "s", "--sparsities", "0.1", "0.104"), "share the report name 10pct"),
                           (("--out-dir", tmp / "s", "--seed", "-1"), "--seed: must be >= 0")]:
        code, _, err = run_sweep(capsys, *base, *extra)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (extra, err)
    assert not (tmp / "s").exists() or not any((tmp / "s").glob("*.json"))


def test_pruned_checkpoint_is_evaluated_on_its_parents_data_and_keeps_every_pass(workspace, capsys):
    """test_gpt.py without --data evaluates a pruned checkpoint on the data its dense parent trained on (not
    a default corpus), and pruning a pruned checkpoint again keeps the record of the first pass."""
    from experiment import test_gpt

    tmp, data, _ = workspace
    parent = tmp / "trained.pt"
    save_checkpoint(parent, tiny_model(), kind="gpt", model_name="gpt2", step=0, train_config={"data": str(data)})
    once, twice = tmp / "once.pt", tmp / "twice.pt"
    code, _, err = run_in_process(capsys, "--ckpt", parent, "--data", data, "--sparsity", "0.3", "--out", once, *FAST)
    assert code == 0, err
    code, _, err = run_in_process(capsys, "--ckpt", once, "--data", data, "--nm", "2:4", "--out", twice, *FAST)
    assert code == 0, err
    ckpt = torch.load(twice, weights_only=True)
    assert ckpt["trained_on"] == str(data) and ckpt["step"] == 0
    assert [p["sparsity"] for p in ckpt["earlier_pruning"]] == [pytest.approx(0.3)] and ckpt["pruning"]["nm"] == [2, 4]
    flags = ("--micro-batch", 8, "--seq-len", 32, "--no-hellaswag", "--device", "cpu", "--json", tmp / "eval.json")
    code, out, err = run_cli_in_process(capsys, test_gpt.main, "test_gpt.py", "--ckpt", twice, *flags)
    assert code == 0, err
    evaluation = json.loads((tmp / "eval.json").read_text())["settings"]["eval"]
    assert evaluation["data"] == str(data)
    # no --batches: the default 20, cut to the 15 batches of 8 x 32 the 4,000 val tokens hold (a note says so)
    assert evaluation["val_batches"] == 15 and "using them all (default 20)" in out + err


def test_pruned_output_never_passes_for_a_training_checkpoint(workspace, capsys):
    tmp, data, ckpt = workspace
    run_dir = tmp / "run"
    run_dir.mkdir()
    (run_dir / "log.txt").write_text("0 val 5.0\n")
    code, _, err = run_in_process(capsys, "--ckpt", ckpt, "--data", data, "--out", run_dir / "model_00250.pt", *FAST)
    assert code == 2 and "would pass for a training checkpoint" in err and not (run_dir / "model_00250.pt").exists()
    code, _, err = run_in_process(capsys, "--ckpt", ckpt, "--data", data, "--out", run_dir / "pruned_00250.pt", *FAST)
    assert code == 0, err
