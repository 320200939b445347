"""utils/checkpoint.py and utils/train_config.py: headers validated field by field, any unreadable file is
"not a checkpoint", and checkpoints written before TrainConfig (train_args) still load and resume."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import asdict, replace

import pytest
import torch

from models import build_model
from tests.conftest import TINY
from utils.checkpoint import load_checkpoint, load_gpt, save_checkpoint
from utils.cli import UserError
from utils.train_config import TRAIN_PRESETS, from_checkpoint, from_train_args


@pytest.fixture
def ckpt_path(tmp_path):
    path = tmp_path / "model_00000.pt"
    save_checkpoint(path, build_model("gpt2", **TINY), kind="gpt", model_name="gpt2", step=0)
    return path


def _with_config(tmp_path, ckpt_path, **change):
    ckpt = torch.load(ckpt_path, weights_only=True)
    ckpt["config"] = {k: v for k, v in {**ckpt["config"], **change}.items() if v is not None}
    path = tmp_path / "edited.pt"
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize("change, message", [
    (dict(n_lay=2), "unknown model config field(s) ['n_lay']"),
    (dict(n_head=None), "model config field(s) missing: n_head"),
    (dict(n_embd="32"), "malformed model config field(s) n_embd='32' (should be int)"),
    (dict(nd_in=[1.5]), "malformed model config field(s) nd_in=[1.5] (should be tuple[int, ...])"),
    (dict(bias=1), "malformed model config field(s) bias=1 (should be bool)"),
])
def test_config_header_is_validated_field_by_field(tmp_path, ckpt_path, change, message):
    with pytest.raises(UserError, match=re.escape(message)) as info:
        load_gpt(_with_config(tmp_path, ckpt_path, **change))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("content", [b"a small text file\n", b"", b"\x00" * 100, b"PK\x03\x04 truncated zip"])
def test_any_unreadable_file_is_not_a_checkpoint(tmp_path, content):
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(UserError, match="is not a checkpoint: corrupt or not a PyTorch file"):
        load_checkpoint(path)


def test_missing_header_fields(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"format": "ndgpt2-checkpoint", "version": 1, "kind": "gpt", "model_name": "gpt2"}, path)
    with pytest.raises(UserError, match="header field 'config' is missing"):
        load_checkpoint(path)


def test_train_config_is_validated_by_the_same_rules():
    """from_checkpoint reads a train_config with the validator of the model config; a field added since
    takes its default, an unknown field or a wrong type (a bool for an int) is one line."""
    saved = asdict(TRAIN_PRESETS["smoke"])
    del saved["full_checkpoints"]
    assert from_checkpoint({"train_config": {**saved, "lr": 1}}, "x.pt") == replace(TRAIN_PRESETS["smoke"], lr=1)
    for change, message in ((dict(n_layer=True), "malformed train_config field(s) n_layer=True (should be int | None)"),
                            (dict(lr="fast"), "lr='fast' (should be float)"),
                            (dict(steps=3), "x.pt: unknown train_config field(s) ['steps']")):
        with pytest.raises(UserError, match=re.escape(message)):
            from_checkpoint({"train_config": {**saved, **change}}, "x.pt")


def old_train_args(**change) -> dict:
    """vars(argparse.Namespace) as train_gpt.py stored it before TrainConfig (after resolving the preset)."""
    args = dict(model="gpt2", preset="smoke", data="/data/builtin", out_dir="logs/gpt2-smoke", seed=1337,
                resume=None, overwrite=False, max_steps=200, warmup_steps=20, eval_every=50, micro_batch=4,
                seq_len=64, total_batch=512, lr=3e-3, min_lr=3e-4, weight_decay=0.1, grad_clip=1.0,
                val_batches=20, n_layer=None, n_head=None, n_embd=None, keep_checkpoints=0, hellaswag=None,
                hellaswag_limit=50, no_hellaswag=False, prompt="Hello, I'm a language model,", device=None,
                amp=False, compile=False, threads=None)
    return {**args, **change}


def test_old_train_args_convert_to_the_same_config_as_the_preset():
    model_config = build_model("gpt2", n_layer=2, n_head=2, n_embd=64, block_size=64).config.to_dict()
    cfg = from_train_args(old_train_args(), model_config)
    smoke = TRAIN_PRESETS["smoke"]
    expected = {**asdict(smoke), "data": "/data/builtin", "order": "shards", "total_batch": 512, "amp": False,
                "compile": False}
    assert asdict(cfg) == expected and cfg.val_tokens == 20 * 4 * 64
    with pytest.raises(UserError, match="cannot convert its train_args to a TrainConfig"):
        from_checkpoint({"train_args": old_train_args(val_batches=None), "config": model_config}, "old.pt")
    with pytest.raises(UserError, match="no train_config"):
        from_checkpoint({"config": model_config}, "x.pt")


@pytest.mark.slow
def test_old_format_checkpoint_loads_and_resumes(repo_root, corpus, tmp_path):
    """A checkpoint of the format before TrainConfig (train_args, history; no train_config) is evaluated by
    load_gpt and continued by --resume."""
    from tests.test_train import series, train

    out = tmp_path / "new"
    assert train(repo_root, out, "--max-steps", "4", "--eval-every", "4", data=corpus).returncode == 0
    ckpt = torch.load(out / "model_00004.pt", weights_only=True)
    cfg = ckpt.pop("train_config")
    ckpt["train_args"] = old_train_args(**{k: cfg[k] for k in ("data", "seed", "max_steps", "warmup_steps",
                                        "eval_every", "micro_batch", "seq_len", "total_batch", "lr", "min_lr")},
                                        val_batches=4, no_hellaswag=True, hellaswag_limit=None)
    ckpt["history"] = {"val": [(4, ckpt["val_loss"])], "hella": []}
    old = tmp_path / "old"
    old.mkdir()
    torch.save(ckpt, old / "model_00004.pt")
    model, _ = load_gpt(old / "model_00004.pt")
    assert model.config.n_embd == 32
    resumed = subprocess.run([sys.executable, "experiment/train_gpt.py", "--resume", str(old / "model_00004.pt"),
                              "--max-steps", "6", "--threads", "1"], cwd=repo_root, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert sorted(series(old, "train")) == [4, 5] and sorted(series(old, "val")) == [6]
    assert load_checkpoint(old / "model_00006.pt")["train_config"]["order"] == "shards"
