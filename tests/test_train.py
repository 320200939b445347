"""experiment/train_gpt.py end to end on a tiny model: loss falls, exact resume after SIGKILL,
2-process gloo DDP == 1 process, checkpoints readable by generate.py / test_gpt.py, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.training import cosine_lr, read_log, truncate_log

SCRIPT = "experiment/train_gpt.py"
TINY = ["--micro-batch", "2", "--seq-len", "32", "--n-layer", "1", "--n-head", "2", "--n-embd", "32",
        "--max-steps", "12", "--eval-every", "4", "--warmup-steps", "2", "--val-batches", "4",
        "--lr", "1e-2", "--min-lr", "1e-3", "--threads", "1", "--seed", "7"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from utils.shards import prepare_builtin_corpus

    return prepare_builtin_corpus(tmp_path_factory.mktemp("data") / "builtin")


def train(repo_root, out_dir, *extra, env=None, data=None):
    args = [sys.executable, SCRIPT, *TINY, "--out-dir", str(out_dir), "--no-hellaswag", *extra]
    if data is not None:
        args += ["--data", str(data)]
    return subprocess.run(args, cwd=repo_root, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def reference_run(repo_root, corpus, tmp_path_factory):
    """One uninterrupted tiny run: out-dir with log.txt, checkpoints 0,4,8,12."""
    out = tmp_path_factory.mktemp("ref")
    result = train(repo_root, out, data=corpus)
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def test_lr_schedule():
    lrs = [cosine_lr(s, 1.0, 0.1, 10, 100) for s in range(120)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:100], lrs[11:101]))  # monotone decay after warmup
    assert lrs[100] == lrs[119] == 0.1


def test_truncate_log_keeps_the_evaluations_of_the_checkpoint_step(tmp_path):
    log = tmp_path / "log.txt"
    log.write_text("0 val 10.0\n0 train 9.0\n1 train 8.0\n2 val 7.0\n2 hella 0.25\n2 train 6.5\n3 tra")
    truncate_log(log, 2)
    assert read_log(log) == [(0, "val", 10.0), (0, "train", 9.0), (1, "train", 8.0), (2, "val", 7.0),
                             (2, "hella", 0.25)]


def test_loss_falls_and_outputs(reference_run):
    events = read_log(reference_run / "log.txt")
    val = [v for _, k, v in events if k == "val"]
    train_steps = [s for s, k, _ in events if k == "train"]
    assert train_steps == list(range(12))
    assert len(val) == 4 and all(b < a for a, b in zip(val, val[1:])) and val[-1] < val[0] - 0.5
    ckpts = sorted(p.name for p in reference_run.glob("model_*.pt"))
    assert ckpts == ["model_00000.pt", "model_00004.pt", "model_00008.pt", "model_00012.pt"]
    ckpt = load_checkpoint(reference_run / "model_00012.pt", expect_kind="gpt")
    assert ckpt["step"] == 12 and ckpt["model_name"] == "gpt2"
    assert ckpt["val_loss"] == pytest.approx(val[-1], abs=1e-4)
    assert {"optimizer", "data_state", "rng", "train_args"} <= set(ckpt)
    samples = (reference_run / "samples.txt").read_text()
    assert samples.count("=== step") == 4 and samples.count("Hello, I'm a language model,") == 16
    summary = json.loads((reference_run / "summary.json").read_text())
    assert summary["final_val_loss"] == pytest.approx(val[-1], abs=1e-4)
    assert summary["tokens_seen"] == 12 * 2 * 2 * 32


def test_resume_after_sigkill_is_bit_identical(repo_root, corpus, reference_run, tmp_path):
    out = tmp_path / "run"
    killed = train(repo_root, out, data=corpus, env={"NDGPT2_KILL_AFTER_STEP": "10"})
    assert killed.returncode == -signal.SIGKILL
    # the newest checkpoint is corrupt (as if the disk filled up) and a torn temp file lies next to it:
    # resume must fall back to model_00004.pt and still reproduce the uninterrupted run exactly
    newest = out / "model_00008.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    (out / ".model_00012.pt.999.tmp").write_bytes(b"partial")
    # only --resume: every other option continues as the run was started (data, sizes, schedule, seed)
    resumed = subprocess.run([sys.executable, SCRIPT, "--out-dir", str(out), "--resume", "--no-hellaswag",
                              "--threads", "1"], cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "skipping unreadable checkpoint" in resumed.stderr
    assert (out / "log.txt").read_text() == (reference_run / "log.txt").read_text()
    assert (out / "samples.txt").read_text() == (reference_run / "samples.txt").read_text()
    a = load_checkpoint(out / "model_00012.pt")["model"]
    b = load_checkpoint(reference_run / "model_00012.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ddp_two_processes_match_one(repo_root, corpus, reference_run, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", SCRIPT, *TINY,
           "--max-steps", "6", "--eval-every", "100", "--out-dir", str(out), "--no-hellaswag",
           "--data", str(corpus)]
    result = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    ddp = {s: v for s, k, v in read_log(out / "log.txt") if k == "train"}
    # 6 steps of a 12-step schedule differ only in the cosine part; compare the warmup steps 0-1 exactly
    # and the rest to the 1-process run of the same 6-step schedule
    single = tmp_path / "single"
    one = train(repo_root, single, "--max-steps", "6", "--eval-every", "100", data=corpus)
    assert one.returncode == 0, one.stderr[-2000:]
    ref = {s: v for s, k, v in read_log(single / "log.txt") if k == "train"}
    assert sorted(ddp) == sorted(ref) == list(range(6))
    assert max(abs(ddp[s] - ref[s]) for s in ref) <= 1e-5


def test_checkpoint_round_trip_with_generate_and_test_gpt(repo_root, corpus, reference_run, tmp_path):
    ckpt = reference_run / "model_00012.pt"
    gen = subprocess.run([sys.executable, "experiment/generate.py", "--ckpt", str(ckpt), "--num-samples", "2",
                          "--max-new-tokens", "5", "--prompt", "The cat"], cwd=repo_root, capture_output=True,
                         text=True, timeout=120)
    assert gen.returncode == 0, gen.stderr
    assert gen.stdout.count("The cat") == 2
    out_json = tmp_path / "eval.json"
    # the same val batches as the training run's evaluation -> the same loss
    test = subprocess.run([sys.executable, "experiment/test_gpt.py", "--ckpt", str(ckpt),
                           "--data", str(corpus), "--micro-batch", "2", "--seq-len", "32", "--batches", "4",
                           "--no-hellaswag", "--json", str(out_json)],
                          cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert test.returncode == 0, test.stderr
    result = json.loads(out_json.read_text())
    logged = [v for s, k, v in read_log(reference_run / "log.txt") if k == "val" and s == 12][0]
    assert result["val_loss"] == pytest.approx(logged, abs=1e-4)
    assert result["perplexity"] == pytest.approx(2.718281828 ** result["val_loss"], rel=1e-4)


def test_non_finite_loss_stops_without_checkpoint(repo_root, corpus, tmp_path):
    out = tmp_path / "nan"
    result = train(repo_root, out, "--lr", "1e30", "--min-lr", "0", "--warmup-steps", "0",
                   "--eval-every", "100", data=corpus)
    assert result.returncode not in (0, 2)
    assert "non-finite" in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in out.glob("model_*.pt")) == ["model_00000.pt"]


def _error(result) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train_gpt.py: error: "), result.stderr
    return lines[0]


def test_bad_input_is_one_line_exit_2(repo_root, corpus, reference_run, tmp_path):
    """Through the CLI: exit code 2 and one line on stderr; the out-dir of another run is left alone."""
    log_before = (reference_run / "log.txt").read_text()
    assert "unknown model" in _error(train(repo_root, tmp_path / "a", "--model", "gpt5", data=corpus))
    bad_hella = tmp_path / "hella.jsonl"
    bad_hella.write_text('{"ctx": "a", "endings": ["b"], "label": 0}\n')
    assert "hella.jsonl:1" in _error(subprocess.run(
        [sys.executable, SCRIPT, *TINY, "--out-dir", str(tmp_path / "f"), "--data", str(corpus),
         "--hellaswag", str(bad_hella)], cwd=repo_root, capture_output=True, text=True, timeout=120))
    assert "already holds" in _error(train(repo_root, reference_run, "--model", "ndgpt2", data=corpus))
    assert (reference_run / "log.txt").read_text() == log_before
    assert not (tmp_path / "a").exists() and not (tmp_path / "f").exists()


def _user_error(*argv) -> str:
    """In-process (one torch import for all cases): main() must raise UserError before any training."""
    from experiment.train_gpt import main
    from utils.cli import UserError

    with pytest.raises(UserError) as info:
        main([*TINY, "--no-hellaswag", *map(str, argv)])
    return str(info.value)


def test_bad_input_in_process(corpus, reference_run, tmp_path):
    log_before = (reference_run / "log.txt").read_text()
    ok = ["--data", corpus]
    assert "not found" in _user_error("--out-dir", tmp_path / "b", "--data", tmp_path / "missing")
    assert "--seq-len" in _user_error("--out-dir", tmp_path / "c", "--seq-len", "0", *ok)
    assert "--micro-batch" in _user_error("--out-dir", tmp_path / "c", "--micro-batch", "-2", *ok)
    assert "--max-steps" in _user_error("--out-dir", tmp_path / "c", "--max-steps", "0", *ok)
    assert "no checkpoint" in _user_error("--out-dir", tmp_path / "d", "--resume", *ok)
    assert "not found" in _user_error("--out-dir", tmp_path / "d", "--resume", tmp_path / "x.pt", *ok)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00" * 100)
    assert "corrupt" in _user_error("--out-dir", tmp_path / "e", "--resume", corrupt, *ok)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    assert "not a checkpoint" in _user_error("--out-dir", tmp_path / "e", "--resume", foreign, *ok)
    vit = tmp_path / "vit.pt"
    not_a_gpt = torch.nn.Linear(2, 2)
    not_a_gpt.config = SimpleNamespace(dim=2)
    save_checkpoint(vit, not_a_gpt, kind="vit", model_name="vit-s16")
    assert "expected a 'gpt'" in _user_error("--out-dir", tmp_path / "e", "--resume", vit, *ok)
    # another config in a used out-dir: refused with and without --resume
    assert "already holds" in _user_error("--out-dir", reference_run, "--n-embd", "64", *ok)
    assert "another config" in _user_error("--out-dir", reference_run, "--n-embd", "64", "--resume", *ok)
    # the same run again without --resume or --overwrite: refused too
    assert "already holds" in _user_error("--out-dir", reference_run, *ok)
    assert (reference_run / "log.txt").read_text() == log_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt.pt", "foreign.pt", "vit.pt"]


def test_help(repo_root):
    result = subprocess.run([sys.executable, SCRIPT, "--help"], cwd=repo_root, capture_output=True, text=True)
    assert result.returncode == 0 and "--resume" in result.stdout and "--preset" in result.stdout
