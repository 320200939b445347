"""Shared test fixtures: the read-only data in ../shared/data (override with NDGPT2_SHARED_DATA)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("NDGPT2_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared data not found at {SHARED_DATA} (set NDGPT2_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


TINY = dict(n_layer=1, n_head=2, n_embd=32, block_size=64)


@pytest.fixture(scope="session")
def nd_ckpt(tmp_path_factory):
    from models import build_model
    from utils.checkpoint import save_checkpoint

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "model_00000.pt"
    save_checkpoint(path, build_model("ndgpt2", **TINY), kind="gpt", model_name="ndgpt2", step=0)
    return path


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    from utils.shards import prepare_builtin_corpus

    return prepare_builtin_corpus(tmp_path_factory.mktemp("data") / "builtin")


def run_cli(capsys, main, prog: str, *args) -> tuple[int, str, str]:
    """A script's ``main`` behind ``run_main``, in this process: (exit code, stdout, stderr). Saves a torch
    import per case; subprocess tests cover the real process boundary."""
    from utils.cli import run_main

    capsys.readouterr()
    try:
        run_main(lambda: main([str(a) for a in args]), prog)
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err
