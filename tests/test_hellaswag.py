"""HellaSwag: file parsing, batched scorer == per-example reference == brute force, sharding, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error

import pytest
import torch
import torch.nn.functional as F

from models import build_model
from utils.cli import UserError
from utils.hellaswag import (
    default_hellaswag_path,
    download_hellaswag,
    evaluate_hellaswag,
    load_hellaswag,
    score_examples,
)
from utils.tokenizer import get_encoding

N = 40  # real examples for the count comparisons


def tiny_gpt(block_size=64, seed=0):
    torch.manual_seed(seed)
    return build_model("gpt2", n_layer=2, n_head=2, n_embd=16, block_size=block_size, vocab_size=50304).eval()


@pytest.fixture(scope="module")
def derived_file(shared_data):
    return shared_data / "hellaswag" / "hellaswag_val_llamacpp_derived.jsonl"


@pytest.fixture(scope="module")
def examples(derived_file):
    return load_hellaswag(derived_file, limit=N)


@pytest.fixture(scope="module")
def model():
    return tiny_gpt()


@pytest.fixture(scope="module")
def reference(model, examples):
    """Per-example fp32 scores, computed once (the slow path)."""
    return score_examples(model, examples, per_example=True)


def counts(sums, means, examples):
    labels = torch.tensor([ex["label"] for ex in examples])
    return int((sums.argmin(1) == labels).sum()), int((means.argmin(1) == labels).sum())


def brute_force(model, example, block_size):
    """Summed and mean loss of each ending, one unpadded row per forward, written independently."""
    enc = get_encoding()
    ctx = enc.encode_ordinary(example["ctx"])
    sums, means = [], []
    for ending in example["endings"]:
        end = enc.encode_ordinary(" " + ending)
        tokens = torch.tensor(ctx + end)[-block_size:]
        with torch.no_grad():
            logits, _ = model(tokens[None])
        logp = F.log_softmax(logits[0].float(), dim=-1)
        n_end = min(len(end), len(tokens) - 1)
        targets = tokens[-n_end:]
        nll = -logp[-n_end - 1:-1].gather(1, targets[:, None]).squeeze(1)
        sums.append(nll.sum().item())
        means.append(nll.mean().item())
    return torch.tensor(sums), torch.tensor(means)


# ----------------------------------------------------------------------------- files

def test_derived_file_drops_activity_prefix(derived_file, examples):
    raw = [json.loads(line) for line in derived_file.read_text().splitlines()[:N]]
    assert len(examples) == N
    for ex, rec in zip(examples, raw):
        prefix, rest = rec["ctx"].split(": ", 1)
        assert ex["ctx"] == rest and not ex["ctx"].startswith(prefix + ":")
        assert ex["endings"] == rec["endings"] and ex["label"] == rec["label"]


def test_rowanz_format_keeps_ctx(tmp_path):
    rec = {"ind": 1, "activity_label": "Cooking", "ctx_a": "Step: one.", "ctx_b": "then",
           "ctx": "Step: one. then", "endings": ["a", "b", "c", "d"], "label": 2, "split": "val"}
    path = tmp_path / "hellaswag_val.jsonl"
    path.write_text(json.dumps(rec) + "\n\n" + json.dumps({**rec, "label": "1"}) + "\n")
    loaded = load_hellaswag(path)
    assert [ex["ctx"] for ex in loaded] == ["Step: one. then"] * 2
    assert [ex["label"] for ex in loaded] == [2, 1]


@pytest.mark.parametrize("bad", [
    "{not json",
    json.dumps({"ctx": "x", "label": 0}),
    json.dumps({"ctx": "x", "endings": ["a", "b", "c"], "label": 0}),
    json.dumps({"ctx": "x", "endings": ["a", "b", "c", "d"], "label": 4}),
    json.dumps({"ctx": "x", "endings": ["a", "b", "c", "d"], "label": True}),
    json.dumps(["ctx", "endings"]),
])
def test_malformed_line_names_file_and_line(tmp_path, bad):
    good = json.dumps({"ctx": "A: b", "endings": ["a", "b", "c", "d"], "label": 0})
    path = tmp_path / "h.jsonl"
    path.write_text(f"{good}\n{good}\n{bad}\n")
    with pytest.raises(UserError, match=f"{path}:3"):
        load_hellaswag(path)
    assert len(load_hellaswag(path, limit=2)) == 2  # the bad line is never reached


def test_missing_file_and_bad_limit(tmp_path, derived_file):
    with pytest.raises(UserError, match="not found"):
        load_hellaswag(tmp_path / "nope.jsonl")
    with pytest.raises(UserError, match="not found"):
        default_hellaswag_path(tmp_path / "nope.jsonl")
    with pytest.raises(UserError, match="limit"):
        load_hellaswag(derived_file, limit=0)
    assert default_hellaswag_path(derived_file) == derived_file
    assert default_hellaswag_path().is_file()


def test_limit(derived_file, examples):
    assert load_hellaswag(derived_file, limit=7) == examples[:7]
    result = evaluate_hellaswag(tiny_gpt(), derived_file, limit=5, amp=False, progress=False)
    assert result["n"] == 5


# ----------------------------------------------------------------------------- scoring

def test_batched_counts_equal_per_example_reference(model, examples, reference):
    # batch 16 does not divide N = 40
    result = evaluate_hellaswag(model, examples, batch_size=16, amp=False, progress=False)
    correct, correct_norm = counts(*reference, examples)
    assert result == {"acc": correct / N, "acc_norm": correct_norm / N, "n": N}
    sums, means = score_examples(model, examples[:11], batch_size=3, amp=False)
    torch.testing.assert_close(sums, reference[0][:11], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(means, reference[1][:11], rtol=1e-5, atol=1e-5)


def test_scores_match_brute_force(model, examples):
    sums, means = score_examples(model, examples[:4], batch_size=3, amp=False)
    for i, ex in enumerate(examples[:4]):
        bf_sums, bf_means = brute_force(model, ex, 64)
        torch.testing.assert_close(sums[i], bf_sums, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(means[i], bf_means, rtol=1e-5, atol=1e-5)


def test_left_truncation_to_block_size(examples):
    short = tiny_gpt(block_size=16, seed=1)
    long_ones = [ex for ex in examples if len(get_encoding().encode_ordinary(ex["ctx"])) > 16][:3]
    assert long_ones
    sums, means = score_examples(short, long_ones, batch_size=2, amp=False)
    for i, ex in enumerate(long_ones):
        bf_sums, bf_means = brute_force(short, ex, 16)
        torch.testing.assert_close(sums[i], bf_sums, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(means[i], bf_means, rtol=1e-5, atol=1e-5)


def test_amp_close_to_fp32(model, examples, reference):
    sums, means = score_examples(model, examples[:8], batch_size=8, amp=True)
    torch.testing.assert_close(means, reference[1][:8], rtol=0.05, atol=0.05)


def test_rank_sharding_adds_up(model, examples, reference):
    correct, correct_norm = counts(*reference, examples)
    parts = [evaluate_hellaswag(model, examples, rank=r, world_size=3, amp=False, progress=False)
             for r in range(3)]
    assert [p["n"] for p in parts] == [14, 13, 13]
    assert round(sum(p["acc"] * p["n"] for p in parts)) == correct
    assert round(sum(p["acc_norm"] * p["n"] for p in parts)) == correct_norm
    with pytest.raises(UserError, match="rank"):
        evaluate_hellaswag(model, examples, rank=3, world_size=3)


def test_wrapped_model_and_mode_restored(examples, reference):
    class Wrapper(torch.nn.Module):  # what torch.compile returns: the module under _orig_mod
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = inner

        def forward(self, *args):
            raise AssertionError("the evaluator must call the unwrapped model")

    model = tiny_gpt()
    model.train()
    result = evaluate_hellaswag(Wrapper(model), examples[:10], amp=False, progress=False)
    correct, correct_norm = counts(reference[0][:10], reference[1][:10], examples[:10])
    assert result == {"acc": correct / 10, "acc_norm": correct_norm / 10, "n": 10}
    assert model.training
    model.eval()
    evaluate_hellaswag(model, examples[:2], amp=False, progress=False)
    assert not model.training


# ----------------------------------------------------------------------------- download + CLI

def test_download_from_file_url_and_offline(tmp_path, monkeypatch):
    src = tmp_path / "src" / "hellaswag_val.jsonl"
    src.parent.mkdir()
    record = {"ctx": "c", "endings": ["a", "b", "c", "d"], "label": 1, "activity_label": "x"}
    src.write_text(json.dumps(record))
    out = tmp_path / "cache"
    path = download_hellaswag(out, url=src.as_uri(), progress=False)
    assert path == out / "hellaswag_val.jsonl" and path.read_text() == src.read_text()
    assert [p.name for p in out.iterdir()] == ["hellaswag_val.jsonl"]  # no temp file left

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(UserError, match="no network; pass --hellaswag PATH"):
        download_hellaswag(out, url=src.as_uri(), force=True, progress=False)
    assert path.read_text() == src.read_text()  # the cached file survives a failed re-download


def test_cli(repo_root, tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "data/hellaswag.py", *a], cwd=repo_root,  # noqa: E731
                                    capture_output=True, text=True, timeout=60)
    helped = run("--help")
    assert helped.returncode == 0 and "--out-dir" in helped.stdout
    existing = tmp_path / "hellaswag_val.jsonl"
    existing.write_text("keep me")
    missing_url = (tmp_path / "missing" / "hellaswag_val.jsonl").as_uri()
    failed = run("--out-dir", str(tmp_path), "--force", "--url", missing_url)
    assert failed.returncode == 2 and failed.stderr.startswith("hellaswag.py: error:")
    assert "Traceback" not in failed.stderr and existing.read_text() == "keep me"
