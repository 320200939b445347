"""experiment/test_gpt.py on checkpoints of any model (dense, NdGPT-2, pruned); bad input -> one line, exit 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from utils.checkpoint import save_checkpoint
from utils.cli import UserError


def test_test_gpt_counts_pruned_weights(nd_ckpt, corpus, tmp_path):
    from experiment.test_gpt import main
    from utils.checkpoint import load_gpt

    model, _ = load_gpt(nd_ckpt)
    with torch.no_grad():
        fc = model.transformer.h[0].mlp.c_fc.align_layers[0].weight
        fc.view(-1)[: fc.numel() // 2] = 0  # "prune" half of the big factor
    pruned = tmp_path / "pruned.pt"
    save_checkpoint(pruned, model, kind="gpt", model_name="ndgpt2", pruning={"sparsity": 0.5})
    results = {}
    for name, path in (("dense", nd_ckpt), ("pruned", pruned)):
        out = tmp_path / f"{name}.json"
        main(["--ckpt", str(path), "--data", str(corpus), "--batches", "2", "--micro-batch", "2",
              "--seq-len", "32", "--no-hellaswag", "--json", str(out)])
        results[name] = json.loads(out.read_text())
    assert results["dense"]["params"] == results["pruned"]["params"]
    assert results["dense"]["params_nonzero"] - results["pruned"]["params_nonzero"] >= fc.numel() // 2 - 1
    for r in results.values():
        assert 5.0 < r["val_loss"] < 15.0
        assert r["perplexity"] == pytest.approx(2.718281828 ** r["val_loss"], rel=1e-4)
    assert results["dense"]["val_loss"] != results["pruned"]["val_loss"]


def test_test_gpt_hellaswag_subset(nd_ckpt, corpus, shared_data, tmp_path):
    from experiment.test_gpt import main

    out = tmp_path / "r.json"
    hellaswag = shared_data / "hellaswag" / "hellaswag_val_llamacpp_derived.jsonl"
    main(["--ckpt", str(nd_ckpt), "--data", str(corpus), "--batches", "1", "--micro-batch", "1",
          "--seq-len", "16", "--hellaswag", str(hellaswag), "--limit", "8", "--json", str(out)])
    r = json.loads(out.read_text())
    assert r["hellaswag_n"] == 8 and 0.0 <= r["hellaswag_acc"] <= 1.0 and r["hellaswag_acc_norm"] * 8 % 1 == 0


def test_cli_bad_checkpoint_exit_2(repo_root, tmp_path):
    script = "test_gpt.py"
    corrupt = tmp_path / "bad.pt"
    corrupt.write_bytes(b"not a checkpoint")
    result = subprocess.run([sys.executable, f"experiment/{script}", "--ckpt", str(corrupt)], cwd=repo_root,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{script}: error: ") and "corrupt" in lines[0]


def test_test_gpt_bad_input_in_process(nd_ckpt, tmp_path):
    from experiment import test_gpt

    def error(main, *argv) -> str:
        with pytest.raises(UserError) as info:
            main([str(a) for a in argv])
        return str(info.value)

    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    assert "not a checkpoint" in error(test_gpt.main, "--ckpt", foreign)
    assert "--batches" in error(test_gpt.main, "--ckpt", nd_ckpt, "--batches", "-1")
    assert "--seq-len" in error(test_gpt.main, "--ckpt", nd_ckpt, "--seq-len", "0")
    assert "block size" in error(test_gpt.main, "--ckpt", nd_ckpt, "--seq-len", "65")
    assert "does not exist" in error(test_gpt.main, "--ckpt", nd_ckpt, "--data", tmp_path / "nodata",
                                     "--no-hellaswag")
