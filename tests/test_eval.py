"""experiment/test_gpt.py and evaluation/report.py: the report schema, pruned weights, HellaSwag in both
conventions against independent computations, the CPU subset default, bad input -> one line, exit 2."""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from evaluation.evaluator import load_hellaswag_examples
from evaluation.hellaswag import (
    CPU_HELLASWAG_LIMIT,
    HELLASWAG_CONVENTIONS,
    evaluate_hellaswag,
    find_examples,
    load_hellaswag,
)
from evaluation.report import CONVENTIONS, read_report
from models import build_model
from tests.conftest import run_cli
from utils.checkpoint import load_gpt, save_checkpoint
from utils.tokenizer import get_encoding


def run_test_gpt(capsys, *args) -> tuple[int, str, str]:
    from experiment.test_gpt import main

    return run_cli(capsys, main, "test_gpt.py", *args)


def test_test_gpt_counts_pruned_weights(nd_ckpt, corpus, tmp_path, capsys):
    model, _ = load_gpt(nd_ckpt)
    with torch.no_grad():
        fc = model.transformer.h[0].mlp.c_fc.align_layers[0].weight
        fc.view(-1)[: fc.numel() // 2] = 0  # "prune" half of the big factor
    pruned = tmp_path / "pruned.pt"
    save_checkpoint(pruned, model, kind="gpt", model_name="ndgpt2", pruning={"sparsity": 0.5})
    results = {}
    for name, path in (("dense", nd_ckpt), ("pruned", pruned)):
        out = tmp_path / f"{name}.json"
        code, _, err = run_test_gpt(capsys, "--ckpt", path, "--data", corpus, "--batches", 2, "--micro-batch", 2,
                                    "--seq-len", 32, "--no-hellaswag", "--json", out)
        assert code == 0, err
        results[name] = read_report(out, "eval")["metrics"]
    assert results["dense"]["params_total"] == results["pruned"]["params_total"]
    assert results["dense"]["params_nonzero"] - results["pruned"]["params_nonzero"] >= fc.numel() // 2 - 1
    for r in results.values():
        assert 5.0 < r["val_loss"] < 15.0 and r["val_tokens"] == 2 * 2 * 32 and r["hellaswag"] == {}
        assert r["perplexity"] == pytest.approx(math.exp(r["val_loss"]), rel=1e-6)
    assert results["dense"]["val_loss"] != results["pruned"]["val_loss"]


@torch.no_grad()
def seed_convention_by_hand(model, examples) -> tuple[int, int]:
    """(correct by summed loss, correct by mean loss per token): one ending per forward, full logits."""
    enc = get_encoding()
    correct = correct_norm = 0
    for ex in examples:
        ctx = enc.encode_ordinary(ex["ctx"])
        sums, means = [], []
        for ending in ex["endings"]:
            idx = torch.tensor([ctx + enc.encode_ordinary(" " + ending)])
            logits = model(idx)[0][0, :-1].float()
            nll = F.cross_entropy(logits, idx[0, 1:], reduction="none")[len(ctx) - 1:]
            sums.append(nll.sum().item())
            means.append(nll.mean().item())
        correct += min(range(4), key=sums.__getitem__) == ex["label"]
        correct_norm += min(range(4), key=means.__getitem__) == ex["label"]
    return correct, correct_norm


@pytest.mark.slow
def test_test_gpt_hellaswag_both_conventions_match_independent_counts(corpus, shared_data, tmp_path, capsys):
    torch.manual_seed(1)  # a block that holds every row: no truncation in the reference
    ckpt = tmp_path / "wide.pt"
    save_checkpoint(ckpt, build_model("gpt2", n_layer=1, n_head=2, n_embd=32, block_size=256), kind="gpt",
                    model_name="gpt2", step=3)
    hellaswag = shared_data / "hellaswag" / "hellaswag_val_llamacpp_derived.jsonl"
    out = tmp_path / "r.json"
    code, stdout, err = run_test_gpt(capsys, "--ckpt", ckpt, "--data", corpus, "--batches", 1, "--micro-batch", 1,
                                     "--seq-len", 16, "--hellaswag", hellaswag, "--limit", 12, "--no-amp",
                                     "--device", "cpu", "--json", out)
    assert code == 0, err
    report = read_report(out, "eval")
    assert report["settings"]["eval"]["conventions"] == ["seed", "lm-eval"]
    assert "HellaSwag: the first 12 examples" in stdout
    scores = report["metrics"]["hellaswag"]
    model, _ = load_gpt(ckpt)
    examples = load_hellaswag(hellaswag, 12)
    correct, correct_norm = seed_convention_by_hand(model, examples)
    assert scores["seed"] == {"acc": correct / 12, "acc_norm": correct_norm / 12, "n": 12}
    reference = evaluate_hellaswag(model, examples, convention="lm-eval", per_example=True, progress=False)
    assert scores["lm-eval"] == {k: reference[k] for k in ("acc", "acc_norm", "n")}


def test_hellaswag_subset_default_by_device(shared_data):
    """One locator, one limit rule: None = the device's default (all on CUDA, 1,000 elsewhere), 0 = all."""
    assert CONVENTIONS == HELLASWAG_CONVENTIONS
    path = shared_data / "hellaswag" / "hellaswag_val_llamacpp_derived.jsonl"
    lines = []
    for device, limit, n in (("cpu", None, CPU_HELLASWAG_LIMIT), ("mps", None, 1000), ("cuda", None, 10042),
                             ("cuda:1", None, 10042), ("cpu", 0, 10042), ("cuda", 7, 7)):
        examples, found, resolved = find_examples(path, limit, device, note=lines.append)
        assert len(examples) == n and resolved == (None if n == 10042 else n) and found.endswith(".jsonl")
    assert "the first 1,000 examples" in lines[0] and "--hellaswag-limit 0 for all" in lines[0]
    assert "HellaSwag: all examples" in lines[2]
    args = argparse.Namespace(no_hellaswag=False, limit=0, hellaswag_convention="both", hellaswag=str(path))
    assert len(load_hellaswag_examples(args, "cpu", note=lines.append)[0]) == 10042
    args.no_hellaswag = True
    assert load_hellaswag_examples(args, "cpu") == (None, None, None)


@pytest.mark.slow
def test_cli_bad_checkpoint_exit_2(repo_root, tmp_path):
    script = "test_gpt.py"
    corrupt = tmp_path / "bad.pt"
    corrupt.write_bytes(b"not a checkpoint")
    result = subprocess.run([sys.executable, f"experiment/{script}", "--ckpt", str(corrupt)], cwd=repo_root,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{script}: error: ") and "corrupt" in lines[0]


def test_test_gpt_bad_input_in_process(nd_ckpt, tmp_path, capsys):
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    (tmp_path / "a_file").write_text("keep me")
    (tmp_path / "a_dir").mkdir()
    corrupt = tmp_path / "corrupt.pt"  # outputs are checked before the checkpoint is read
    corrupt.write_bytes(b"not a checkpoint")
    cases = [(["--ckpt", foreign], "not a checkpoint"),
             (["--ckpt", nd_ckpt, "--batches", "-1"], "--batches: must be >= 0"),
             (["--ckpt", nd_ckpt, "--limit", "nan"], "--limit: expected an integer"),
             (["--ckpt", nd_ckpt, "--seq-len", "0"], "--seq-len: must be >= 1"),
             (["--ckpt", nd_ckpt, "--seq-len", "65", "--no-hellaswag"], "block size"),
             (["--ckpt", nd_ckpt, "--data", tmp_path / "nodata", "--no-hellaswag"], "does not exist"),
             (["--ckpt", corrupt, "--json", tmp_path / "a_dir"], "is a directory"),
             (["--ckpt", corrupt, "--json", tmp_path / "a_file" / "r.json"], "is a file, not a directory"),
             (["--ckpt", corrupt, "--json", tmp_path / "a_file" / "x" / "r.json"], "is a file, not a directory"),
             (["--ckpt", corrupt, "--json", corrupt], "is also an input"),
             (["--ckpt", corrupt, "--hellaswag", tmp_path / "a_file", "--json", tmp_path / "a_file", "--force"],
              "is also an input")]
    if os.geteuid() != 0:  # root writes anywhere
        (tmp_path / "ro").mkdir(mode=0o555)
        cases.append((["--ckpt", corrupt, "--json", tmp_path / "ro" / "r.json"], "is not writable"))
    for args, message in cases:
        code, _, err = run_test_gpt(capsys, *args)
        assert code == 2 and message in err, (args, err)
        assert len(err.strip().splitlines()) == 1 and err.startswith("test_gpt.py: error:"), err
    assert (tmp_path / "a_file").read_text() == "keep me"


def test_test_gpt_refuses_an_existing_json_unless_force(nd_ckpt, corpus, tmp_path, capsys):
    existing = tmp_path / "r.json"
    existing.write_text("keep me")
    corrupt = tmp_path / "corrupt.pt"  # refused before the checkpoint is read
    corrupt.write_bytes(b"not a checkpoint")
    code, out, err = run_test_gpt(capsys, "--ckpt", corrupt, "--json", existing)
    assert code == 2 and err.strip().splitlines() == [f"test_gpt.py: error: --json {existing} exists; "
                                                      f"pass --force to overwrite it"] and out == ""
    assert existing.read_text() == "keep me"
    code, _, err = run_test_gpt(capsys, "--ckpt", nd_ckpt, "--data", corpus, "--batches", 1, "--micro-batch", 1,
                                "--seq-len", 16, "--no-hellaswag", "--json", existing, "--force")
    assert code == 0, err
    assert read_report(existing, "eval")["metrics"]["val_tokens"] == 16
