"""Identity by content (issue 21): reuse, resume, comparison and --hf decide "the same model / data / run"
from fingerprints, never from a path or a name; and the fault cases found beside them (tests/RELIABILITY.md)."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from models import build_model
from tests.conftest import run_cli
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.cli import UserError
from utils.identity import data_fingerprint, weights_fingerprint

TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=256)
FAST = ("--calib-samples", 4, "--val-batches", 2, "--val-batch-size", 2, "--no-hellaswag", "--device", "cpu")
SWEEP_FAST = ("--calib-samples", 4, "--val-batches", 2, "--val-batch-size", 2, "--device", "cpu")
EVAL = ("--batches", 2, "--micro-batch", 2, "--seq-len", 32, "--no-hellaswag", "--device", "cpu")


def save_tiny(path, name="gpt2", seed=0, **extra):
    torch.manual_seed(seed)
    save_checkpoint(path, build_model(name, **TINY), kind="gpt", model_name=name, step=7, **extra)
    return path


def shards(directory, seed=0, n=4000):
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in ("x_val_000000.npy", "x_train_000001.npy"):
        np.save(directory / name, rng.integers(0, TINY["vocab_size"], n).astype(np.uint16))
    return directory


def wanda(capsys, *args):
    from pruning.wanda import main
    return run_cli(capsys, main, "wanda.py", *args)


def sweep(capsys, *args):
    from pruning.sweep import main
    return run_cli(capsys, main, "sweep.py", *args)


def test_gpt(capsys, *args):
    from experiment.test_gpt import main
    return run_cli(capsys, main, "test_gpt.py", *args)


test_gpt.__test__ = False  # a helper, not a test


def test_fingerprints_follow_content_not_path(tmp_path):
    a, b = build_model("gpt2", **TINY), build_model("gpt2", **TINY)
    assert weights_fingerprint(a.state_dict()) != weights_fingerprint(b.state_dict())
    b.load_state_dict(a.state_dict())
    assert weights_fingerprint(a.state_dict()) == weights_fingerprint(b.state_dict())
    data = shards(tmp_path / "d")
    shutil.copytree(data, tmp_path / "copy")
    assert data_fingerprint(data) == data_fingerprint(tmp_path / "copy")
    assert data_fingerprint(shards(tmp_path / "other", seed=1)) != data_fingerprint(data)


def test_fineweb_records_shard_hashes_equal_to_hashing_the_files(tmp_path):
    """A manifest's sha256 per shard gives the fingerprint that hashing the files gives (older builds)."""
    from utils.shards import MANIFEST, write_shards

    docs = [("val", ["one two three"] * 4), ("train", ["four five"] * 8)]
    write_shards(tmp_path / "a", {"corpus": "x", "prefix": "t", "shard_size": 1000}, docs)
    manifest = json.loads((tmp_path / "a" / MANIFEST).read_text())
    assert all(len(s["sha256"]) == 64 for s in manifest["shards"])
    shutil.copytree(tmp_path / "a", tmp_path / "old")
    for s in manifest["shards"]:
        del s["sha256"]
    (tmp_path / "old" / MANIFEST).write_text(json.dumps(manifest))
    assert data_fingerprint(tmp_path / "old") == data_fingerprint(tmp_path / "a")


# ---- 1. reuse needs the same weights, whatever the path

def test_sweep_refuses_reports_of_a_retrained_model_at_the_same_path(tmp_path, capsys):
    data, ckpt, out = shards(tmp_path / "d"), save_tiny(tmp_path / "model_00004.pt"), tmp_path / "sweep"
    args = ("--ckpt", ckpt, "--data", data, "--out-dir", out, "--methods", "wanda", "--sparsities", 0.5, "--nm",
            *SWEEP_FAST)
    code, _, err = sweep(capsys, *args)
    assert code == 0, err
    reports = {p.name: p.read_text() for p in out.glob("*.json")}
    save_tiny(ckpt, seed=2)  # retrained with another seed (--overwrite): same path, other weights
    code, _, err = sweep(capsys, *args)
    assert code == 2 and "measured another model" in err and "use another --out-dir" in err, err
    assert {p.name: p.read_text() for p in out.glob("*.json")} == reports  # nothing overwritten


def test_before_json_from_another_working_directory_is_refused(tmp_path, capsys, monkeypatch):
    """The same relative --ckpt model.pt in two directories holding different models."""
    data = shards(tmp_path / "d")
    for i, name in enumerate(("one", "two")):
        (tmp_path / name).mkdir()
        save_tiny(tmp_path / name / "model.pt", seed=i)
    monkeypatch.chdir(tmp_path / "one")
    code, _, err = test_gpt(capsys, "--ckpt", "model.pt", "--data", data, *EVAL, "--json", tmp_path / "dense.json")
    assert code == 0, err
    monkeypatch.chdir(tmp_path / "two")
    code, _, err = wanda(capsys, "--ckpt", "model.pt", "--data", data, "--before-json", tmp_path / "dense.json",
                         "--calib-samples", 4, "--val-batches", 2, "--val-batch-size", 2, "--calib-len", 32,
                         "--no-hellaswag", "--device", "cpu")
    assert code == 2 and "measured another model" in err, err


def test_reports_without_fingerprints_are_never_reused(tmp_path, capsys):
    data, ckpt = shards(tmp_path / "d"), save_tiny(tmp_path / "m.pt")
    report = tmp_path / "dense.json"
    code, _, err = test_gpt(capsys, "--ckpt", ckpt, "--data", data, *EVAL, "--json", report)
    assert code == 0, err
    old = json.loads(report.read_text())
    del old["fingerprint"], old["settings"]["eval"]["data_id"]  # as written before this change
    report.write_text(json.dumps(old))
    code, _, err = wanda(capsys, "--ckpt", ckpt, "--data", data, "--before-json", report, "--calib-len", 32, *FAST)
    assert code == 2 and "written before reports carried fingerprints" in err, err


def test_reuse_ignores_where_the_data_lies(tmp_path, capsys):
    """A copied data directory is the same data: the dense report is reused."""
    data, ckpt = shards(tmp_path / "d"), save_tiny(tmp_path / "m.pt")
    report = tmp_path / "dense.json"
    code, _, err = wanda(capsys, "--ckpt", ckpt, "--data", data, "--calib-len", 32, *FAST, "--json", report)
    assert code == 0, err
    shutil.copytree(data, tmp_path / "moved")
    code, _, err = wanda(capsys, "--ckpt", ckpt, "--data", tmp_path / "moved", "--calib-len", 32, *FAST,
                         "--before-json", report)
    assert code == 0, err


# ---- 2. resume checks the data by content

@pytest.mark.slow
def test_resume_refuses_data_rebuilt_in_place(repo_root, tmp_path):
    def build(text):
        docs = tmp_path / f"{text}.txt"
        docs.write_text(" ".join([text] * 4000))
        return subprocess.run([sys.executable, "data/fineweb.py", "--input", docs, docs.with_suffix(".b.txt"),
                               "--val-docs", "1", "--out-dir", tmp_path / "D", "--shard-size", "100000",
                               "--overwrite"], cwd=repo_root, capture_output=True, text=True, timeout=300)

    for text in ("alpha", "beta"):
        (tmp_path / f"{text}.b.txt").write_text(" ".join([text + "s"] * 4000))
    assert build("alpha").returncode == 0
    tiny = ["--micro-batch", "2", "--seq-len", "16", "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
            "--max-steps", "8", "--eval-every", "4", "--val-batches", "2", "--threads", "1", "--no-amp",
            "--no-hellaswag", "--order", "shards"]
    run = tmp_path / "run"
    result = subprocess.run([sys.executable, "experiment/train_gpt.py", *tiny, "--data", tmp_path / "D",
                             "--out-dir", run, "--max-steps", "4"], cwd=repo_root, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert build("beta").returncode == 0  # text B into the same directory
    resume = [sys.executable, "experiment/train_gpt.py", "--resume", run / "model_00004.pt", "--max-steps", "8"]
    result = subprocess.run(resume, cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "is not what the run was trained on" in result.stderr, result.stderr[-2000:]
    assert not (run / "model_00008.pt").exists()
    result = subprocess.run([*resume, "--allow-data-change"], cwd=repo_root, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and "warning: continuing on other data" in result.stderr, result.stderr[-2000:]
    assert load_checkpoint(run / "model_00008.pt")["data_id"] == data_fingerprint(tmp_path / "D")


@pytest.mark.slow
def test_every_new_run_gets_a_new_run_id_and_a_resume_keeps_it(repo_root, corpus, tmp_path):
    tiny = ["--micro-batch", "2", "--seq-len", "16", "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
            "--eval-every", "2", "--val-batches", "2", "--threads", "1", "--no-amp", "--no-hellaswag",
            "--data", str(corpus), "--out-dir", str(tmp_path / "run")]
    ids = []
    for extra in (["--max-steps", "2"], ["--max-steps", "2", "--overwrite"], ["--max-steps", "4", "--resume"]):
        result = subprocess.run([sys.executable, "experiment/train_gpt.py", *tiny, *extra], cwd=repo_root,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        ids.append(json.loads((tmp_path / "run" / "run.json").read_text())["run_id"])
    assert ids[0] != ids[1] and ids[1] == ids[2]
    ckpt = load_checkpoint(tmp_path / "run" / "model_00004.pt")
    assert ckpt["run_id"] == ids[2] and ckpt["fingerprint"] == weights_fingerprint(ckpt["model"])
    run_json = json.loads((tmp_path / "run" / "run.json").read_text())  # what pairs runs of a study (trend.py)
    assert run_json["data_id"] == ckpt["data_id"] == data_fingerprint(corpus)


# ---- 3. compare.py groups seeds by run identity

def eval_report(tmp_path, name, ckpt, data, batches=2):
    code = run_cli_quiet(test_gpt, "--ckpt", ckpt, "--data", data, *EVAL[2:], "--batches", batches, "--json",
                         tmp_path / name)
    assert code == 0
    return tmp_path / name


def run_cli_quiet(fn, *args):
    from experiment.test_gpt import main
    from utils.cli import run_main
    try:
        run_main(lambda: main([str(a) for a in args]), "test_gpt.py")
    except SystemExit as e:
        return e.code
    return 0


def test_compare_counts_a_run_once_and_keeps_pruned_and_other_settings_apart(tmp_path, capsys):
    from experiment.compare import main

    data = shards(tmp_path / "d")
    a = eval_report(tmp_path, "a.json", save_tiny(tmp_path / "a.pt", seed=0), data)
    b = eval_report(tmp_path, "b.json", save_tiny(tmp_path / "b.pt", seed=1), data)
    small = eval_report(tmp_path, "small.json", tmp_path / "a.pt", data, batches=1)
    code, _, err = wanda(capsys, "--ckpt", tmp_path / "a.pt", "--data", data, "--calib-len", 32, *FAST,
                         "--sparsity", 0.9, "--out", tmp_path / "pruned.pt")
    assert code == 0, err
    pruned = eval_report(tmp_path, "pruned.json", tmp_path / "pruned.pt", data)
    capsys.readouterr()

    code, _, err = run_cli(capsys, main, "compare.py", "--evals", a, a, "--out-dir", tmp_path / "p1")
    assert code == 2 and "same run" in err and "each seed counts once" in err, err
    assert not (tmp_path / "p1").exists()

    code, out, err = run_cli(capsys, main, "compare.py", "--evals", a, b, pruned, small, "--out-dir", tmp_path / "p2")
    assert code == 0, err
    seeds = out[out.index("Held-out val loss over seeds"):]
    rows = {line.split("  ")[0]: line.split()[line.split().index("|") + 1] if "|" in line else line
            for line in seeds.splitlines()[3:] if line.strip()}
    assert "note: gpt2: evaluations with different settings (eval.val_batches)" in out
    dense = [line for line in seeds.splitlines() if line.startswith("gpt2 [val_batches 2]")]
    assert len(dense) == 1 and dense[0].split()[3] == "2"  # a and b: two seeds; pruned and small elsewhere
    assert any(line.startswith("gpt2 pruned: wanda 90%") for line in seeds.splitlines()), rows
    assert any(line.startswith("gpt2 [val_batches 1]") for line in seeds.splitlines())
    assert "gpt2 step 7 pruned: wanda 90%" in out  # the Evaluation table names the pruned model


# ---- 4. --hf keeps the model's name, step and identity

def test_hf_export_keeps_name_step_seed_and_fingerprint(tmp_path, capsys):
    from experiment.export_hf import main as export

    data = shards(tmp_path / "d")
    ckpt = save_tiny(tmp_path / "c.pt", name="gpt2-mlp1536", run_id="r1", train_config={"seed": 3})
    export(["--ckpt", str(ckpt), "--out", str(tmp_path / "exp")])
    code, _, err = test_gpt(capsys, "--hf", tmp_path / "exp", "--data", data, *EVAL, "--json", tmp_path / "e.json")
    assert code == 0, err
    report = json.loads((tmp_path / "e.json").read_text())
    original = load_checkpoint(ckpt)
    assert (report["model"], report["step"], report["run_id"], report["train_seed"]) == ("gpt2-mlp1536", 7, "r1", 3)
    assert report["fingerprint"] == original["fingerprint"] == weights_fingerprint(original["model"])
    code, _, err = wanda(capsys, "--hf", tmp_path / "exp", "--data", data, "--calib-len", 32, *FAST,
                         "--out", tmp_path / "p.pt")
    assert code == 0, err
    pruned = load_checkpoint(tmp_path / "p.pt")
    lineage = (pruned["model_name"], pruned["step"], pruned["run_id"], pruned["train_seed"])
    assert lineage == ("gpt2-mlp1536", 7, "r1", 3)
    assert pruned["parent"] == original["fingerprint"] != pruned["fingerprint"]
    export(["--ckpt", str(tmp_path / "p.pt"), "--out", str(tmp_path / "exp2")])
    provenance = json.loads((tmp_path / "exp2" / "config.json").read_text())["ndgpt2_provenance"]
    assert provenance["model_name"] == "gpt2-mlp1536" and provenance["parent"] == original["fingerprint"]
    code, _, err = test_gpt(capsys, "--hf", tmp_path / "exp2", "--data", data, *EVAL, "--json", tmp_path / "p.json")
    assert code == 0, err
    report = json.loads((tmp_path / "p.json").read_text())
    assert report["model"] == "gpt2-mlp1536" and report["pruning"][0]["method"] == "wanda"
    assert report["train_seed"] == 3  # a pruned export's report still pairs with its seed


# ---- 5. one sweep per directory at a time

def test_a_second_sweep_into_a_busy_directory_is_refused(tmp_path, capsys):
    from utils import rundir

    data, ckpt, out = shards(tmp_path / "d"), save_tiny(tmp_path / "m.pt"), tmp_path / "sweep"
    held = rundir.lock(out, "sweep")  # another sweep holds the directory
    try:
        code, _, err = sweep(capsys, "--ckpt", ckpt, "--data", data, "--out-dir", out, "--sparsities", 0.5,
                             "--nm", *SWEEP_FAST)
    finally:
        held.close()
    assert code == 2 and "in use by another sweep process" in err, err
    assert not list(out.glob("*.json"))


# ---- 6. a full disk is one line, before the work where the size is known

def limited(limit_bytes):
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))


@pytest.mark.slow
def test_file_size_limit_is_one_line_for_every_writer(repo_root, tmp_path, corpus):
    ckpt = save_tiny(tmp_path / "m.pt")
    (tmp_path / "doc.txt").write_text("word " * 200_000)
    (tmp_path / "doc2.txt").write_text("other " * 1000)
    cases = [
        ["experiment/train_gpt.py", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--micro-batch", "2",
         "--seq-len", "16", "--max-steps", "2", "--val-batches", "2", "--no-hellaswag", "--no-amp", "--data",
         corpus, "--out-dir", tmp_path / "run"],
        ["experiment/export_hf.py", "--ckpt", ckpt, "--out", tmp_path / "exp"],
        ["pruning/wanda.py", "--ckpt", ckpt, "--data", shards(tmp_path / "d"), "--calib-len", 32, *FAST, "--out",
         tmp_path / "p.pt"],
        ["data/fineweb.py", "--input", tmp_path / "doc.txt", tmp_path / "doc2.txt", "--val-docs", "1",
         "--out-dir", tmp_path / "shards", "--shard-size", "100000"],
    ]
    for args in cases:
        result = subprocess.run([sys.executable, *map(str, args)], cwd=repo_root, capture_output=True, text=True,
                                timeout=300, preexec_fn=limited(64 * 1024))
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and "Traceback" not in result.stderr, (args[0], result.stderr[-1500:])
        assert "ulimit -f" in lines[-1] and "MB free" in lines[-1], (args[0], lines[-1])
    assert not (tmp_path / "exp").exists() and not (tmp_path / "p.pt").exists()


# ---- 7. HellaSwag rows that cannot be scored

def test_hellaswag_empty_ending_is_refused_and_a_repeated_ind_warned(tmp_path, capsys):
    from evaluation.hellaswag import load_hellaswag

    row = {"ctx": "A man: he", "endings": ["runs.", "sits.", "eats.", "sleeps."], "label": 0, "ind": 5}
    path = tmp_path / "h.jsonl"
    path.write_text(json.dumps(row) + "\n" + json.dumps({**row, "endings": ["runs.", "", "eats.", " "]}) + "\n")
    with pytest.raises(UserError, match=r"h.jsonl:2: ending\(s\) 1, 3 are empty"):
        load_hellaswag(path)
    path.write_text((json.dumps(row) + "\n") * 2)
    assert len(load_hellaswag(path)) == 2
    assert "share an 'ind' and each is counted: 5 (lines 1 and 2)" in capsys.readouterr().err


# ---- 8. an unfinished shard build is not data

@pytest.mark.slow
def test_a_killed_build_is_refused_naming_the_rerun(tmp_path, corpus):
    from utils.loader import find_shards

    script = f"""
import os, signal, sys
sys.path.insert(0, {str(os.getcwd())!r})
from utils.shards import write_shards
def docs():
    yield "one two three " * 2000
    yield "four five six " * 2000
    os.kill(os.getpid(), signal.SIGKILL)
splits = [("val", ["a b c"] * 5), ("train", docs())]
write_shards({str(tmp_path / 'D')!r}, {{"prefix": "t", "shard_size": 1000}}, splits, workers=1, chunksize=1)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == -signal.SIGKILL
    assert list((tmp_path / "D").glob("*_train_*.npy"))  # shards on disk, no done.json
    with pytest.raises(UserError, match=r"unfinished build .* run python -c again to finish it"):
        find_shards(tmp_path / "D", "train")
    assert find_shards(corpus, "train")  # a finished build, and a directory of foreign shards, still read
    assert find_shards(shards(tmp_path / "foreign"), "train")


# ---- 9. an export killed between its two renames

def test_export_killed_between_renames_is_restored(tmp_path):
    from experiment.export_hf import main as export
    from utils.hf_export import check_export_dir

    ckpt = save_tiny(tmp_path / "m.pt")
    export(["--ckpt", str(ckpt), "--out", str(tmp_path / "exp")])
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    (tmp_path / "exp").rename(tmp_path / f".exp.{dead}.old")  # killed after the first rename
    with pytest.raises(UserError, match="exists; pass --force"):
        check_export_dir(tmp_path / "exp")
    assert (tmp_path / "exp" / "config.json").is_file() and not list(tmp_path.glob(".exp.*"))


# ---- 10. a run directory's claim keeps a live writer's temp file

def test_claim_removes_only_dead_writers_temp_files(tmp_path):
    from utils import rundir

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    tmp_path.joinpath("run").mkdir()
    live = tmp_path / "run" / f".x.pt.{os.getpid()}.tmp"  # wanda.py --out run/x.pt, in flight
    stale = tmp_path / "run" / f".model_00004.pt.{dead}.tmp"
    live.write_bytes(b"x")
    stale.write_bytes(b"x")
    handle = rundir.claim(tmp_path / "run", {"model": "gpt2", "config": {}}, None, 0, False, print)
    handle.close()
    assert live.exists() and not stale.exists()


# ---- small

def test_generate_shows_progress_and_a_dash_value_hint(capsys, tmp_path):
    from experiment.generate import main

    torch.manual_seed(0)
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, build_model("gpt2", n_layer=1, n_head=2, n_embd=16, block_size=32), kind="gpt",
                    model_name="gpt2")
    code, _, err = run_cli(capsys, main, "generate.py", "--ckpt", ckpt, "--num-samples", 1, "--max-new-tokens", 40,
                           "--device", "cpu")
    assert code == 0 and "40/40" in err, err  # a token-level bar: a huge --max-new-tokens shows its ETA
    code, _, err = run_cli(capsys, main, "generate.py", "--ckpt", "-lead.pt")
    assert code == 2 and "--ckpt=VALUE" in err


def test_compare_refuses_one_training_log_twice(tmp_path, capsys):
    from experiment.compare import main

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "log.txt").write_text("0 val 10.0\n0 train 10.0\n1 train 9.0\n")
        (tmp_path / name / "run.json").write_text(json.dumps({"run_id": "same", "train_config": {"total_batch": 8}}))
    code, _, err = run_cli(capsys, main, "compare.py", tmp_path / "a" / "log.txt", tmp_path / "a" / "log.txt",
                           "--out-dir", tmp_path / "p")
    assert code == 2 and "are the same run" in err, err
    code, _, err = run_cli(capsys, main, "compare.py", tmp_path / "a" / "log.txt", tmp_path / "b" / "log.txt",
                           "--out-dir", tmp_path / "p")  # a copied run directory: the same run_id
    assert code == 2 and "run_id same" in err, err
    assert not (tmp_path / "p").exists()
