"""experiment/generate.py on checkpoints of any model (dense, NdGPT-2,
pruned) and on a local Hugging Face directory; bad input -> one line, exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from models import build_model
from tests.conftest import TINY
from utils.cli import UserError


def run_generate(*argv, capsys):
    from experiment.generate import main

    main([str(a) for a in argv])
    return capsys.readouterr().out


def test_generate_is_seeded_and_reads_any_model(nd_ckpt, capsys):
    args = ["--ckpt", nd_ckpt, "--prompt", "Once upon a time", "--num-samples", "3", "--max-new-tokens", "6"]
    first = run_generate(*args, "--seed", "1", capsys=capsys)
    assert first.count("--- sample") == 3 and first.count("Once upon a time") == 3 and "ndgpt2" in first
    assert run_generate(*args, "--seed", "1", capsys=capsys) == first
    assert run_generate(*args, "--seed", "2", capsys=capsys) != first


def test_generate_from_local_hf_dir(tmp_path, capsys):
    torch.manual_seed(0)
    build_model("gpt2", **TINY, vocab_size=50304).save_hf(str(tmp_path / "hf"))
    out = run_generate("--hf", tmp_path / "hf", "--num-samples", "1", "--max-new-tokens", "4", capsys=capsys)
    assert out.count("--- sample") == 1 and "Hello, I'm a language model," in out


@pytest.mark.parametrize("script", ["generate.py"])
def test_cli_bad_checkpoint_exit_2(repo_root, tmp_path, script):
    corrupt = tmp_path / "bad.pt"
    corrupt.write_bytes(b"not a checkpoint")
    result = subprocess.run([sys.executable, f"experiment/{script}", "--ckpt", str(corrupt)], cwd=repo_root,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{script}: error: ") and "corrupt" in lines[0]


def test_bad_input_in_process(nd_ckpt, tmp_path):
    from experiment import generate

    def error(main, *argv) -> str:
        with pytest.raises(UserError) as info:
            main([str(a) for a in argv])
        return str(info.value)

    assert "--top-k" in error(generate.main, "--ckpt", nd_ckpt, "--top-k", "0")
    assert "--temperature" in error(generate.main, "--ckpt", nd_ckpt, "--temperature", "0")
    assert "--temperature" in error(generate.main, "--ckpt", nd_ckpt, "--temperature", "-1")
    assert "--max-new-tokens" in error(generate.main, "--ckpt", nd_ckpt, "--max-new-tokens", "-5")
    assert "--num-samples" in error(generate.main, "--ckpt", nd_ckpt, "--num-samples", "0")
    assert "not found" in error(generate.main, "--ckpt", tmp_path / "missing.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    assert "not a checkpoint" in error(generate.main, "--ckpt", foreign)
    assert "cannot load Hugging Face" in error(generate.main, "--hf", tmp_path / "no_such_dir")
