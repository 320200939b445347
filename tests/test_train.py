"""experiment/train_gpt.py end to end on a tiny model: loss falls, exact resume after SIGKILL, 2-process
gloo DDP (HellaSwag's all-reduce included) == 1 process, ndgpt2 and a compiled gpt2 trained and resumed,
checkpoints readable by generate.py / test_gpt.py, the run config's arithmetic, bad input -> one line.
Run-directory ownership (lock, lineage, checkpoint policy) is in tests/test_rundir.py."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from utils.checkpoint import load_checkpoint
from utils.cli import UserError
from utils.runlog import parse_log, read_log, truncate_log
from utils.shards import write_shards
from utils.train_config import TRAIN_PRESETS, cosine_lr, for_resume, grad_accum_steps, val_steps

SCRIPT = "experiment/train_gpt.py"
TINY = ["--micro-batch", "2", "--seq-len", "32", "--n-layer", "1", "--n-head", "2", "--n-embd", "32",
        "--max-steps", "12", "--eval-every", "4", "--warmup-steps", "2", "--val-batches", "4",
        "--lr", "1e-2", "--min-lr", "1e-3", "--threads", "1", "--seed", "7", "--no-amp"]


def train(repo_root, out_dir, *extra, env=None, data=None, tiny=TINY, hellaswag=False):
    args = [sys.executable, SCRIPT, *tiny, *(["--out-dir", str(out_dir)] if out_dir else []), *extra]
    args += [] if hellaswag else ["--no-hellaswag"]
    args += ["--data", str(data)] if data is not None else []
    return subprocess.run(args, cwd=repo_root, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def series(out_dir, kind: str) -> dict[int, float]:
    return read_log(out_dir / "log.txt").series[kind]


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


def build_nanogpt_get_lr(it, max_lr, min_lr, warmup_steps, max_steps):
    """build-nanogpt's get_lr (train_gpt2.py), written out: the schedule cosine_lr must keep."""
    if it < warmup_steps:
        return max_lr * (it + 1) / warmup_steps
    if it > max_steps:
        return min_lr
    decay_ratio = (it - warmup_steps) / (max_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * decay_ratio)) * (max_lr - min_lr)


@pytest.mark.parametrize("step", [0, 7, 10, 13, 25, 40, 61, 75, 90, 99, 100, 119])
def test_lr_schedule_is_build_nanogpts_cosine(step):
    """Warmup, the interior of the decay (where a linear decay differs by up to ~0.1 of max_lr here) and
    the tail, against build-nanogpt's formula."""
    args = (1.0, 0.1, 10, 100)  # max_lr, min_lr, warmup_steps, max_steps
    assert cosine_lr(step, *args) == pytest.approx(build_nanogpt_get_lr(step, *args), rel=1e-12)


def test_gpt2_124m_batch_arithmetic_for_1_2_8_processes():
    """524,288 tokens per step and 10,485,760 val tokens per evaluation, whatever the number of GPUs."""
    cfg = TRAIN_PRESETS["gpt2-124m"]
    for world, accum, val in ((1, 8, 160), (2, 4, 80), (8, 1, 20)):
        assert grad_accum_steps(cfg, world) == accum
        assert accum * cfg.micro_batch * cfg.seq_len * world == cfg.total_batch == 524_288
        assert val_steps(cfg, world) == val and val * cfg.micro_batch * cfg.seq_len * world == 10_485_760
    with pytest.raises(UserError, match="not a multiple"):
        grad_accum_steps(cfg, 3)


def test_resume_config_rules(tmp_path):
    saved = replace(TRAIN_PRESETS["smoke"], data=str(tmp_path / "a"), order="shards", total_batch=512)
    flags = {"max_steps": 400, "lr": 1e-3, "data": str(tmp_path / "b")}
    warnings = []
    cfg = for_resume(saved, flags, allow_data_change=True, warn=warnings.append)
    assert (cfg.max_steps, cfg.lr, cfg.data, cfg.seq_len) == (400, 1e-3, str(tmp_path / "b"), 64)
    assert len(warnings) == 1 and "continuing on other data" in warnings[0]
    with pytest.raises(UserError, match="--allow-data-change"):
        for_resume(saved, flags, allow_data_change=False, warn=warnings.append)
    for name, value in (("order", "windows"), ("micro_batch", 8), ("total_batch", 1024), ("model", "ndgpt2")):
        with pytest.raises(UserError, match=f"--{name.replace('_', '-')} cannot change on resume"):
            for_resume(saved, {name: value}, allow_data_change=False, warn=warnings.append)
    assert for_resume(saved, {"order": "shards", "data": str(tmp_path / "a")}, False, warnings.append) == saved


def test_resume_accepts_a_moved_copy_of_the_data(tmp_path):
    """A shard directory copied elsewhere (same manifest) is the same data; another build is not."""
    docs = [("val", ["one two three"] * 4), ("train", ["four five"] * 8)]
    write_shards(tmp_path / "a", {"corpus": "x", "prefix": "t", "shard_size": 1000}, docs)
    shutil.copytree(tmp_path / "a", tmp_path / "copy")
    write_shards(tmp_path / "b", {"corpus": "y", "prefix": "t", "shard_size": 1000}, docs)
    saved = replace(TRAIN_PRESETS["smoke"], data=str(tmp_path / "a"))
    assert for_resume(saved, {"data": str(tmp_path / "copy")}, False, print).data == str(tmp_path / "copy")
    with pytest.raises(UserError, match="--allow-data-change"):
        for_resume(saved, {"data": str(tmp_path / "b")}, False, print)


def test_truncate_log_keeps_the_evaluations_of_the_checkpoint_step(tmp_path):
    log = tmp_path / "log.txt"
    log.write_text("0 val 10.0\n0 train 9.0\n1 train 8.0\n2 val 7.0\n2 hella 0.25\n2 train 6.5\n3 tra")
    truncate_log(log, 2)
    assert log.read_text() == "0 val 10.0\n0 train 9.0\n1 train 8.0\n2 val 7.0\n2 hella 0.25\n"


@pytest.mark.slow
def test_loss_falls_and_outputs(reference_run):
    val = series(reference_run, "val")
    assert sorted(series(reference_run, "train")) == list(range(12))
    assert sorted(val) == [0, 4, 8, 12] and val[12] < val[8] < val[4] < val[0] - 0.5
    ckpts = sorted(p.name for p in reference_run.glob("model_*.pt"))
    assert ckpts == ["model_00000.pt", "model_00004.pt", "model_00008.pt", "model_00012.pt"]
    ckpt = load_checkpoint(reference_run / "model_00012.pt", expect_kind="gpt")
    assert ckpt["step"] == 12 and ckpt["model_name"] == "gpt2"
    assert ckpt["val_loss"] == pytest.approx(val[12], abs=1e-4)
    assert ckpt["train_config"]["seq_len"] == 32 and ckpt["train_config"]["val_tokens"] == 4 * 2 * 32
    # default checkpoint policy: the newest 2 keep the optimizer state, older ones only the model
    for step, resumable in ((0, False), (4, False), (8, True), (12, True)):
        assert ("optimizer" in load_checkpoint(reference_run / f"model_{step:05d}.pt")) == resumable
    samples = (reference_run / "samples.txt").read_text()
    assert samples.count("=== step") == 4 and samples.count("Hello, I'm a language model,") == 16
    summary = json.loads((reference_run / "summary.json").read_text())
    best = min(val, key=val.get)
    assert summary["val_loss"] == {"final": val[12], "final_step": 12, "best": val[best], "best_step": best}
    assert summary["tokens_seen"] == 12 * 2 * 2 * 32 and summary["final_checkpoint"] == "model_00012.pt"


def kill_during_run(repo_root, out, data, after_step: int, held_at: int) -> tuple[int, Path]:
    """Start the tiny run and SIGKILL it from here once log.txt holds its train step ``after_step``: (exit code,
    the gate). The gate, a FIFO where the run writes checkpoint ``held_at`` first (its temp file), holds the
    run there (opening a FIFO for writing waits for a reader), so the kill lands before that checkpoint
    exists however late this process sees the line; the FIFO is made while the run still imports torch."""
    out.mkdir()
    child = subprocess.Popen([sys.executable, SCRIPT, *TINY, "--out-dir", str(out), "--no-hellaswag", "--data",
                              str(data)], cwd=repo_root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    gate = out / f".model_{held_at:05d}.pt.{child.pid}.tmp"
    os.mkfifo(gate)
    try:
        deadline = time.time() + 300
        log = out / "log.txt"
        while not (log.is_file() and re.search(rf"^{after_step} train ", log.read_text(), re.MULTILINE)):
            assert child.poll() is None, f"the run ended before step {after_step} (exit {child.returncode})"
            assert time.time() < deadline, f"the run did not reach step {after_step}"
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    return child.returncode, gate


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical(repo_root, corpus, reference_run, tmp_path):
    out = tmp_path / "run"
    code, gate = kill_during_run(repo_root, out, corpus, after_step=10, held_at=12)
    assert code == -signal.SIGKILL
    assert sorted(p.name for p in out.glob("model_*.pt")) == ["model_00000.pt", "model_00004.pt", "model_00008.pt"]
    # the newest checkpoint is corrupt (as if the disk filled up) and the killed writer's temp file (the gate)
    # lies next to it: resume must fall back to model_00004.pt and still reproduce the uninterrupted run exactly
    newest = out / "model_00008.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    (out / ".model_00012.pt.999.tmp").write_bytes(b"partial")
    # only --resume: every other option continues as the run was started (data, sizes, schedule, seed)
    resumed = subprocess.run([sys.executable, SCRIPT, "--out-dir", str(out), "--resume", "--threads", "1"],
                             cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "skipping unreadable checkpoint" in resumed.stderr
    assert not (out / ".model_00012.pt.999.tmp").exists() and not gate.exists()
    assert (out / "log.txt").read_text() == (reference_run / "log.txt").read_text()
    assert (out / "samples.txt").read_text() == (reference_run / "samples.txt").read_text()
    a = load_checkpoint(out / "model_00012.pt")["model"]
    b = load_checkpoint(reference_run / "model_00012.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_ddp_two_processes_match_one(repo_root, corpus, shared_data, tmp_path):
    """2 gloo processes x 1 micro-step == 1 process x 2 accumulation steps: train losses, val loss (the
    same val tokens), and HellaSwag (each rank scores half the examples, the counts are all-reduced)."""
    hella = ["--hellaswag", str(shared_data / "hellaswag" / "hellaswag_val_llamacpp_derived.jsonl"),
             "--hellaswag-limit", "7", "--max-steps", "6", "--eval-every", "100"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", SCRIPT, *TINY,
           *hella, "--out-dir", str(tmp_path / "ddp"), "--data", str(corpus)]
    ddp = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one = train(repo_root, tmp_path / "one", *hella, data=corpus, hellaswag=True)
    assert one.returncode == 0, one.stderr[-2000:]
    a, b = read_log(tmp_path / "ddp" / "log.txt"), read_log(tmp_path / "one" / "log.txt")
    assert sorted(a.series["train"]) == sorted(b.series["train"]) == list(range(6))
    for kind in ("train", "val"):
        assert max(abs(a.series[kind][s] - b.series[kind][s]) for s in b.series[kind]) <= 1e-5
    assert a.series["hella"] == b.series["hella"] and sorted(a.series["hella"]) == [0, 6]
    assert json.loads((tmp_path / "ddp" / "summary.json").read_text())["hellaswag_n"] == 7


@pytest.mark.slow
def test_ndgpt2_trains_and_resumes_without_model_flag(repo_root, corpus, tmp_path):
    out = tmp_path / "nd"
    first = train(repo_root, out, "--model", "ndgpt2", "--max-steps", "6", data=corpus)
    assert first.returncode == 0, first.stderr[-2000:]
    ckpt = load_checkpoint(out / "model_00004.pt")
    assert ckpt["model_name"] == "ndgpt2" and ckpt["config"]["mlp"] == "ndlinear"
    # the README's rerun of the same command: the same config is recognised (tuples vs JSON lists)
    again = train(repo_root, out, "--model", "ndgpt2", "--max-steps", "6", data=corpus)
    assert again.returncode == 2 and "a run of ndgpt2 (smoke), the same config" in again.stderr
    # --resume PATH without --model or --out-dir: the model and the directory come from the checkpoint
    resumed = subprocess.run([sys.executable, SCRIPT, "--resume", str(out / "model_00006.pt"), "--max-steps", "8",
                              "--threads", "1"], cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    val = series(out, "val")
    assert sorted(series(out, "train")) == list(range(8)) and sorted(val) == [0, 4, 6, 8]
    assert val[8] < val[0] - 0.5
    assert series(out, "hella") == {}  # --no-hellaswag came with the checkpoint (a copy would be found)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["gpt2", "ndgpt2-82m"])
def test_compiled_cpu_run_and_resume(repo_root, corpus, tmp_path, model):
    """torch.compile (inductor) on the CPU trains and resumes (the plain loss is traced): a dense model, and
    an NdLinear MLP on the general fast path (NdGPT-2's fused MLP under compile: tests/test_models.py)."""
    out = tmp_path / "compiled"
    short = ["--model", model, "--max-steps", "2", "--eval-every", "1", "--compile", "--val-batches", "1"]
    first = train(repo_root, out, *short, data=corpus)
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = train(repo_root, None, "--resume", str(out / "model_00002.pt"), "--max-steps", "3")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert sorted(series(out, "train")) == [0, 1, 2] and (out / "model_00003.pt").is_file()


@pytest.mark.slow
def test_checkpoint_round_trip_with_generate_and_test_gpt(repo_root, corpus, reference_run, tmp_path):
    ckpt = reference_run / "model_00012.pt"
    gen = subprocess.run([sys.executable, "experiment/generate.py", "--ckpt", str(ckpt), "--num-samples", "2",
                          "--max-new-tokens", "5", "--prompt", "The cat"], cwd=repo_root, capture_output=True,
                         text=True, timeout=120)
    assert gen.returncode == 0, gen.stderr
    assert gen.stdout.count("The cat") == 2
    out_json = tmp_path / "eval.json"
    # the same val batches as the training run's evaluation -> the same loss
    test = subprocess.run([sys.executable, "experiment/test_gpt.py", "--ckpt", str(ckpt), "--no-amp",
                           "--data", str(corpus), "--micro-batch", "2", "--seq-len", "32", "--batches", "4",
                           "--no-hellaswag", "--json", str(out_json)],
                          cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert test.returncode == 0, test.stderr
    result = json.loads(out_json.read_text())
    assert result["metrics"]["val_loss"] == pytest.approx(series(reference_run, "val")[12], abs=1e-4)


@pytest.mark.slow
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


@pytest.mark.slow
def test_bad_input_is_one_line_exit_2(repo_root, corpus, reference_run, tmp_path):
    """Through the CLI: exit code 2 and one line on stderr; the out-dir of another run is left alone."""
    log_before = (reference_run / "log.txt").read_text()
    assert "unknown model" in _error(train(repo_root, tmp_path / "a", "--model", "gpt5", data=corpus))
    assert "argument --lr: must be > 0, got '-1e-3'" in _error(train(repo_root, tmp_path / "a", "--lr", "-1e-3"))
    bad_hella = tmp_path / "hella.jsonl"
    bad_hella.write_text('{"ctx": "a", "endings": ["b"], "label": 0}\n')
    assert "hella.jsonl:1" in _error(train(repo_root, tmp_path / "f", "--hellaswag", str(bad_hella), data=corpus,
                                           hellaswag=True))
    assert "already holds" in _error(train(repo_root, reference_run, "--model", "ndgpt2", data=corpus))
    assert (reference_run / "log.txt").read_text() == log_before
    assert not (tmp_path / "a").exists() and not (tmp_path / "f").exists()


def _user_error(*argv) -> str:
    """In-process (one torch import for all cases): main() must raise UserError before any training."""
    from experiment.train_gpt import main

    with pytest.raises(UserError) as info:
        main([*TINY, "--no-hellaswag", *map(str, argv)])
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.mark.slow
def test_bad_input_in_process(corpus, reference_run, tmp_path):
    log_before = (reference_run / "log.txt").read_text()
    ok, run, new = ["--data", corpus], ["--out-dir", reference_run], ["--out-dir", tmp_path / "new"]
    assert "not found" in _user_error(*new, "--data", tmp_path / "missing")
    assert "--seq-len: must be >= 1" in _user_error(*new, "--seq-len", "0", *ok)
    assert "val steps of 1 x 2 x 32, but" in _user_error(*new, "--val-batches", "100000", *ok)  # no batch twice
    assert "--micro-batch: must be >= 1" in _user_error(*new, "--micro-batch", "-2", *ok)
    assert "--lr: must be a finite number" in _user_error(*new, "--lr", "nan", *ok)
    assert "--grad-clip: must be a finite number" in _user_error(*new, "--grad-clip", "inf", *ok)
    assert "--min-lr (0.1) must not exceed --lr" in _user_error(*new, "--min-lr", "0.1", *ok)
    assert "pass --block-size 128" in _user_error(*new, "--seq-len", "128", *ok)
    assert "special token" in _user_error(*new, "--prompt", "Hi <|endoftext|>", *ok)
    assert "--val-tokens or --val-batches" in _user_error(*new, "--val-tokens", "64", *ok)
    assert "no checkpoint" in _user_error(*new, "--resume", *ok)
    assert "not found" in _user_error(*new, "--resume", tmp_path / "x.pt", *ok)
    text = tmp_path / "notes.txt"
    text.write_text("a small text file, not a checkpoint\n")
    assert "is not a checkpoint" in _user_error(*new, "--resume", text)
    assert "cannot be combined" in _user_error(*run, "--resume", "--overwrite")
    # resume: what defines the model and the token stream cannot change; other data needs a flag
    assert "--n-embd cannot change on resume" in _user_error(*run, "--resume", "--n-embd", "64", *ok)
    assert "--seed cannot change on resume" in _user_error(*run, "--resume", "--seed", "8")
    assert "before the checkpoint's step 12" in _user_error(*run, "--resume", "--max-steps", "10")
    other_data = tmp_path / "other_data"  # other text: another fingerprint
    write_shards(other_data, {"corpus": "y", "prefix": "t", "shard_size": 1000},
                 [("val", ["one two three"] * 4), ("train", ["four five"] * 8)])
    assert "--allow-data-change" in _user_error(*run, "--resume", "--data", other_data)
    assert "model-only" in _user_error("--resume", reference_run / "model_00000.pt")
    # another run's directory: refused for a new run and for a resume that names it as --out-dir
    assert "already holds a run of gpt2 (smoke), another config" in _user_error(*run, "--n-embd", "64", *ok)
    assert "the same config" in _user_error(*run, *ok)
    other = tmp_path / "other"
    other.mkdir()
    (other / "log.txt").write_text("0 val 1.0\n")
    assert "omit --out-dir" in _user_error("--resume", reference_run / "model_00012.pt", "--out-dir", other)
    assert "--seed: must be < 2**64" in _user_error(*new, "--seed", str(10**20), *ok)
    assert "device 'meta' is not supported" in _user_error(*new, "--device", "meta", *ok)
    # a damaged resumable checkpoint: one line naming what is wrong, and nothing written
    good = torch.load(reference_run / "model_00012.pt", weights_only=True)
    for i, (key, value, message) in enumerate((
            ("step", "12", "malformed step '12'"), ("train_config", {**good["train_config"], "lr": "fast"},
                                                    "malformed train_config field(s) lr='fast'"),
            ("optimizer", {"state": {}}, "saved state is malformed (KeyError"),
            ("rng", {"python": 1}, "saved state is malformed"), ("data_state", [], "bad data loader state"))):
        damaged = tmp_path / f"damaged{i}" / "model_00012.pt"
        damaged.parent.mkdir()
        torch.save({**good, key: value}, damaged)
        assert message in _user_error("--resume", damaged), key
        assert sorted(p.name for p in damaged.parent.iterdir()) == ["model_00012.pt"]
    assert (reference_run / "log.txt").read_text() == log_before
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_help_lists_every_flag(repo_root):
    result = subprocess.run([sys.executable, SCRIPT, "--help"], cwd=repo_root, capture_output=True, text=True)
    assert result.returncode == 0
    flags = ["--model", "--preset", "--data", "--allow-data-change", "--order", "--out-dir", "--seed", "--resume",
             "--overwrite", "--max-steps", "--warmup-steps", "--eval-every", "--micro-batch", "--seq-len",
             "--total-batch", "--lr", "--min-lr", "--weight-decay", "--grad-clip", "--val-tokens", "--val-batches",
             "--n-layer", "--n-head", "--n-embd", "--block-size", "--keep-checkpoints", "--full-checkpoints",
             "--hellaswag", "--hellaswag-limit", "--no-hellaswag", "--prompt", "--device", "--amp", "--no-amp",
             "--compile", "--no-compile", "--threads"]
    assert [f for f in flags if f not in re.findall(r"--[\w-]+", result.stdout)] == []
    assert "gpt2-124m" in result.stdout and "smoke" in result.stdout


def test_log_parse_reads_what_the_loop_writes():
    from utils.runlog import format_event

    lines = [format_event(3, "train", 2.5), format_event(4, "val", 2.25), format_event(4, "hella", 0.25)]
    assert lines == ["3 train 2.500000", "4 val 2.2500", "4 hella 0.2500"]
    assert parse_log(lines).series == {"train": {3: 2.5}, "val": {4: 2.25}, "hella": {4: 0.25}}
