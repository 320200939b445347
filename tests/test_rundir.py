"""A run directory belongs to one run (utils/rundir.py through experiment/train_gpt.py): the resume rules, the
RunDir object both trainers use (restore, save), the lock against a second writer, the lineage after a rewind,
the checkpoint policy, --keep-checkpoints and --overwrite. train_vit.py's use of it: tests/test_vit.py."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch

from tests.test_train import SCRIPT, TINY, series, train
from utils import rundir
from utils.checkpoint import is_resumable, load_checkpoint, save_checkpoint
from utils.cli import UserError


def _tiny_checkpoints(out, steps):
    model = torch.nn.Linear(2, 2)
    model.config = type("C", (), {"to_dict": lambda self: {"n": 2}})()
    for step in steps:
        save_checkpoint(rundir.checkpoint_path(out, step), model, kind="gpt", model_name="x", step=step,
                        optimizer={"state": {}}, data_state={"pos": step}, rng={"torch": torch.zeros(1)})


def test_policy_keeps_newest_and_strips_older_to_the_model(tmp_path):
    _tiny_checkpoints(tmp_path, [0, 4, 8, 12, 16])
    rundir.apply_policy(tmp_path, keep=4, full=2)
    kept = {rundir.checkpoint_step(p): load_checkpoint(p) for p in rundir.run_checkpoints(tmp_path)}
    assert sorted(kept) == [4, 8, 12, 16]  # --keep-checkpoints 4 deleted model_00000.pt
    assert [s for s in sorted(kept) if is_resumable(kept[s])] == [12, 16]
    assert kept[4]["step"] == 4 and set(kept[4]["model"]) == {"weight", "bias"}  # still a model checkpoint
    assert rundir.newest_resumable(tmp_path)[0].name == "model_00016.pt"


def test_resume_rules(tmp_path):
    """A new run writes into --out-dir or the default; --resume PATH continues in PATH's directory unless
    --out-dir names another; a plain --resume takes the newest resumable checkpoint there."""
    _tiny_checkpoints(tmp_path / "a", [0, 4])
    default = tmp_path / "default"
    assert rundir.locate(rundir.GPT, None, None, default) == (default, None, None)
    assert rundir.locate(rundir.GPT, None, str(tmp_path / "b"), default)[0] == tmp_path / "b"
    out, path, ckpt = rundir.locate(rundir.GPT, str(tmp_path / "a" / "model_00000.pt"), None, default)
    assert (out, path, ckpt["step"]) == (tmp_path / "a", tmp_path / "a" / "model_00000.pt", 0)
    assert rundir.locate(rundir.GPT, str(path), str(tmp_path / "c"), default)[0] == tmp_path / "c"
    out, path, ckpt = rundir.locate(rundir.GPT, "latest", str(tmp_path / "a"), default)
    assert (path.name, ckpt["step"]) == ("model_00004.pt", 4)
    with pytest.raises(UserError, match="no checkpoint model_NNNNN.pt in"):
        rundir.locate(rundir.GPT, "latest", None, default)
    with pytest.raises(UserError, match="cannot be combined with --resume"):
        rundir.locate(rundir.GPT, "latest", None, default, overwrite=True)
    rundir.apply_policy(tmp_path / "a", keep=0, full=1)
    with pytest.raises(UserError, match="model_00000.pt is a model-only checkpoint"):
        rundir.locate(rundir.GPT, str(tmp_path / "a" / "model_00000.pt"), None, default)


def test_run_dir_saves_what_it_restores(tmp_path):
    """save() writes the live model, optimizer, data position and RNGs with the run id; restore() puts them
    back into fresh objects, keeps the run id and returns the other fields."""
    from utils.loader import ShardLoader
    from utils.shards import write_shards

    write_shards(tmp_path / "d", {"corpus": "x", "prefix": "t", "shard_size": 1000},
                 [("val", ["one two three"] * 4), ("train", ["four five six seven"] * 40)])

    def live():
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        model.config = type("C", (), {"to_dict": lambda self: {"n": 3}})()
        return model, torch.optim.AdamW(model.parameters(), lr=0.1), ShardLoader(tmp_path / "d", "train", 2, 4)

    model, optimizer, loader = live()
    first = rundir.RunDir(tmp_path / "run", keep=0, full=1)
    assert first.restore(model, optimizer, loader) == {}
    model(torch.ones(3)).sum().backward()
    optimizer.step()
    loader.next_batch()
    first.claim({"model": "x", "preset": "p", "config": {"n": 3}}, say=print)
    first.save(4, model_name="x", val_loss=1.5)
    first.release()
    expected_next = torch.rand(1)  # what the global RNG draws next after checkpoint 4
    assert json.loads((tmp_path / "run" / "run.json").read_text())["run_id"] == first.run_id

    path, ckpt = rundir.newest_resumable(tmp_path / "run")
    again = rundir.RunDir(tmp_path / "run", rundir.GPT, path, ckpt)
    model2, optimizer2, loader2 = live()
    assert again.restore(model2, optimizer2, loader2)["val_loss"] == 1.5 and again.run_id == first.run_id
    assert torch.equal(model2.weight, model.weight) and torch.equal(torch.rand(1), expected_next)
    assert optimizer2.state_dict()["state"][0]["step"] == 1 and loader2.state_dict() == loader.state_dict()
    broken = rundir.RunDir(tmp_path / "run", rundir.GPT, path, {**ckpt, "optimizer": {"state": {}}})
    with pytest.raises(UserError, match="cannot be resumed: its saved state is malformed"):
        broken.restore(*live())


@pytest.mark.slow
def test_lock_is_exclusive_across_processes(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from utils import rundir; "
                               f"f = rundir.lock({str(tmp_path)!r}); print('locked', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=f"in use by another training process \\(PID {holder.pid}\\)"):
            rundir.lock(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    rundir.lock(tmp_path).close()  # released with its process


@pytest.mark.slow
def test_second_writer_fails_at_once_naming_the_pid(repo_root, corpus, tmp_path):
    """Two real training processes into one run directory: the second (new run or resume) stops at once."""
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, SCRIPT, *TINY, "--max-steps", "100000", "--eval-every", "100000",
                              "--no-hellaswag", "--data", str(corpus), "--out-dir", str(out)],
                             cwd=repo_root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not ((out / "log.txt").is_file() and "0 train" in (out / "log.txt").read_text()):
            assert first.poll() is None and time.time() < deadline, "the first run did not start"
            time.sleep(0.5)
        for extra in ([], ["--resume"], ["--overwrite"]):
            second = train(repo_root, out, *extra, data=corpus)
            assert second.returncode == 2, second.stderr[-2000:]
            assert second.stderr.strip() == (f"train_gpt.py: error: {out} is in use by another training process "
                                              f"(PID {first.pid}); wait for it to finish or choose another --out-dir")
        assert first.poll() is None and (out / "model_00000.pt").is_file()
    finally:
        first.kill()
        first.wait()


@pytest.mark.slow
def test_rewind_then_plain_resume_follows_the_new_lineage(repo_root, corpus, tmp_path):
    out = tmp_path / "run"
    assert train(repo_root, out, data=corpus).returncode == 0  # checkpoints 0, 4, 8, 12; summary at 12
    rewind = train(repo_root, None, "--resume", str(out / "model_00008.pt"), "--max-steps", "10")
    assert rewind.returncode == 0, rewind.stderr[-2000:]
    [aside] = (out / "abandoned").iterdir()
    assert sorted(p.name for p in aside.iterdir()) == ["log.txt", "model_00012.pt", "samples.txt", "summary.json"]
    assert max(series(aside, "train")) == 11 and max(series(out, "train")) == 9
    # a plain --resume picks the newest checkpoint of the current lineage (10), never the abandoned 12
    plain = train(repo_root, out, "--resume", "--max-steps", "11")
    assert plain.returncode == 0, plain.stderr[-2000:]
    assert "resumed from" in plain.stdout and "model_00010.pt at step 10" in plain.stdout
    assert sorted(p.name for p in out.glob("model_*.pt"))[-2:] == ["model_00010.pt", "model_00011.pt"]
    assert sorted(series(out, "train")) == list(range(11)) and sorted(series(out, "val")) == [0, 4, 8, 10, 11]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["val_loss"]["final_step"] == 11 and summary["final_checkpoint"] == "model_00011.pt"
    assert load_checkpoint(out / "model_00011.pt")["step"] == 11


@pytest.mark.slow
def test_keep_checkpoints_then_overwrite(repo_root, corpus, tmp_path):
    out = tmp_path / "run"
    kept = train(repo_root, out, "--max-steps", "8", "--eval-every", "2", "--keep-checkpoints", "2",
                 "--full-checkpoints", "1", data=corpus)
    assert kept.returncode == 0, kept.stderr[-2000:]
    assert sorted(p.name for p in out.glob("model_*.pt")) == ["model_00006.pt", "model_00008.pt"]
    assert not is_resumable(load_checkpoint(out / "model_00006.pt"))
    assert is_resumable(load_checkpoint(out / "model_00008.pt"))
    (out / "abandoned" / "old").mkdir(parents=True)
    fresh = train(repo_root, out, "--max-steps", "2", "--eval-every", "2", "--overwrite", data=corpus)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert sorted(p.name for p in out.glob("model_*.pt")) == ["model_00000.pt", "model_00002.pt"]
    assert sorted(series(out, "train")) == [0, 1] and not (out / "abandoned").exists()
