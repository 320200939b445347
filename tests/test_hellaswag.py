"""HellaSwag: file parsing (both formats), the two conventions against independent per-example loops,
lm-eval's truncation, batched scorer == per-example reference, the precision rule, sharding, CLI."""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from evaluation.hellaswag import (
    HELLASWAG_CONVENTIONS,
    default_hellaswag_path,
    download_hellaswag,
    evaluate_hellaswag,
    load_hellaswag,
    predictions,
    score_examples,
)
from models import build_model
from utils.cli import UserError
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


def counts(sums, n_tokens, examples, convention="seed"):
    labels = torch.tensor([ex["label"] for ex in examples])
    pred, pred_norm = predictions(examples, sums, n_tokens, convention)
    return int((pred == labels).sum()), int((pred_norm == labels).sum())


def seed_brute_force(model, example, block_size):
    """Summed and mean loss of each ending, one unpadded row per forward, written independently:
    context without label, " " + ending, lm-eval's window of the last block_size + 1 tokens."""
    enc = get_encoding()
    ctx = enc.encode_ordinary(example["ctx"])
    sums, means = [], []
    for ending in example["endings"]:
        end = enc.encode_ordinary(" " + ending)
        window = torch.tensor(ctx + end)[-(block_size + 1):]
        with torch.no_grad():
            logits, _ = model(window[None, :-1])
        logp = F.log_softmax(logits[0].float(), dim=-1)
        n_end = min(len(end), len(window) - 1)
        nll = -logp[-n_end:].gather(1, window[-n_end:, None]).squeeze(1)
        sums.append(nll.sum().item())
        means.append(nll.mean().item())
    return torch.tensor(sums), torch.tensor(means)


def lm_eval_brute_force(model, example, block_size):
    """(prediction by acc, prediction by acc_norm) the way lm-eval's HFLM + multiple_choice task compute
    them: whole string encoded and split at the context's length, window [-(L+1):][:-1], logits of the
    last len(continuation) positions, acc_norm = argmax(loglikelihood / len(choice))."""
    enc = get_encoding()
    context = example["query"]
    lls = []
    for choice in example["choices"]:
        whole = enc.encode_ordinary(context + " " + choice)
        cont = whole[len(enc.encode_ordinary(context)):]
        inp = torch.tensor(whole[-(block_size + 1):][:-1])
        with torch.no_grad():
            logits, _ = model(inp[None])
        logp = F.log_softmax(logits[0].float(), dim=-1)[len(inp) - len(cont):]
        lls.append(logp.gather(1, torch.tensor(cont)[:, None]).sum().item())
    lls = torch.tensor(lls)
    lengths = torch.tensor([float(len(c)) for c in example["choices"]])
    return int(lls.argmax()), int((lls / lengths).argmax())


# ----------------------------------------------------------------------------- files

def test_derived_file_keeps_both_views(derived_file, examples):
    raw = [json.loads(line) for line in derived_file.read_text().splitlines()[:N]]
    assert len(examples) == N
    for ex, rec in zip(examples, raw):
        prefix, rest = rec["ctx"].split(": ", 1)
        assert ex["ctx"] == rest and not ex["ctx"].startswith(prefix + ":")  # seed: no label
        assert ex["query"] == rec["ctx"] and ex["choices"] == rec["endings"]  # lm-eval: label kept
        assert ex["endings"] == rec["endings"] and ex["label"] == rec["label"]


def test_rowanz_format_matches_lm_eval_process_docs(tmp_path):
    """rowanz's fields go through our copy of lm-eval's preprocessing; compare with lm-eval's own."""
    datasets = pytest.importorskip("datasets")
    lm_eval = pytest.importorskip("lm_eval")
    spec = importlib.util.spec_from_file_location(
        "lm_eval_hellaswag_utils", f"{lm_eval.__path__[0]}/tasks/hellaswag/utils.py")
    lm_utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lm_utils)
    recs = [{"ind": 1, "activity_label": "Cooking", "ctx_a": "Step: one  [title] two.", "ctx_b": "then THE",
             "ctx": "Step: one  [title] two. then THE", "label": 2, "split": "val",
             "endings": [" a [header] b ", "b  c", "[step] c", "d"]},
            {"ind": 2, "activity_label": "Ski", "ctx_a": "A man skis.", "ctx_b": "", "ctx": "A man skis. ",
             "label": "1", "split": "val", "endings": ["x", "y", "z", "w"]}]
    path = tmp_path / "hellaswag_val.jsonl"
    path.write_text("\n\n".join(json.dumps(r) for r in recs) + "\n")
    loaded = load_hellaswag(path)
    theirs = lm_utils.process_docs(datasets.Dataset.from_list([{**r, "label": str(r["label"])} for r in recs]))
    assert [ex["ctx"] for ex in loaded] == [r["ctx"] for r in recs]  # seed: rowanz's ctx as is
    assert [ex["label"] for ex in loaded] == [2, 1]
    assert [ex["query"] for ex in loaded] == theirs["query"]
    assert [ex["choices"] for ex in loaded] == theirs["choices"]


@pytest.mark.parametrize("bad", [
    "{not json",
    json.dumps({"ctx": "x", "label": 0}),
    json.dumps({"ctx": "x", "endings": ["a", "b", "c"], "label": 0}),
    json.dumps({"ctx": "x", "endings": ["a", "b", "c", "d"], "label": 4}),
    json.dumps({"ctx": "x", "endings": ["a", "b", "c", "d"], "label": True}),
    json.dumps({"ctx": "x", "endings": ["a", "b", "c", "d"], "label": "²"}),  # a digit int() cannot read
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
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(derived_file.read_bytes()[:5000].split(b"\n")[0] + b"\n" + "caf\xe9".encode("latin-1"))
    with pytest.raises(UserError, match=f"{latin1}:2: not UTF-8 text"):
        load_hellaswag(latin1)
    with pytest.raises(UserError, match="not found"):  # a directory
        load_hellaswag(tmp_path)


def test_unreadable_file_is_one_line(derived_file, monkeypatch):
    def denied(self):  # chmod 0 does not stop root, who runs CI
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(UserError, match=f"cannot read {derived_file}: Permission denied"):
        load_hellaswag(derived_file)


def test_limit_and_convention_names(derived_file, examples):
    assert load_hellaswag(derived_file, limit=7) == examples[:7]
    for convention in HELLASWAG_CONVENTIONS:
        result = evaluate_hellaswag(tiny_gpt(), derived_file, limit=5, amp=False, progress=False,
                                    convention=convention)
        assert result["n"] == 5 and result["convention"] == convention
    with pytest.raises(UserError, match="convention"):
        evaluate_hellaswag(tiny_gpt(), examples[:2], convention="leaderboard")


# ----------------------------------------------------------------------------- scoring

def test_batched_counts_equal_per_example_reference(model, examples, reference):
    # batch 16 does not divide N = 40
    result = evaluate_hellaswag(model, examples, batch_size=16, amp=False, progress=False)
    correct, correct_norm = counts(*reference, examples)
    assert result == {"acc": correct / N, "acc_norm": correct_norm / N, "n": N, "convention": "seed"}
    sums, n_tokens = score_examples(model, examples[:11], batch_size=3, amp=False)
    torch.testing.assert_close(sums, reference[0][:11], rtol=1e-5, atol=1e-4)
    assert torch.equal(n_tokens, reference[1][:11])


def test_seed_scores_match_brute_force(model, examples):
    sums, n_tokens = score_examples(model, examples[:4], batch_size=3, amp=False)
    for i, ex in enumerate(examples[:4]):
        bf_sums, bf_means = seed_brute_force(model, ex, 64)
        torch.testing.assert_close(sums[i], bf_sums, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(sums[i] / n_tokens[i], bf_means, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("block_size", [64, 16])  # 16: most rows are truncated
def test_lm_eval_convention_matches_independent_loop(examples, block_size):
    model = tiny_gpt(block_size=block_size, seed=2)
    enc = get_encoding()  # lm-eval refuses an ending longer than the block size
    subset = [ex for ex in examples if all(len(enc.encode_ordinary(" " + c)) <= block_size
                                           for c in ex["choices"])][:12]
    assert len(subset) == 12
    expected = [lm_eval_brute_force(model, ex, block_size) for ex in subset]
    labels = [ex["label"] for ex in subset]
    result = evaluate_hellaswag(model, subset, batch_size=7, amp=False, progress=False, convention="lm-eval")
    assert result["acc"] == sum(p == y for (p, _), y in zip(expected, labels)) / 12
    assert result["acc_norm"] == sum(p == y for (_, p), y in zip(expected, labels)) / 12
    sums, n_tokens = score_examples(model, subset, batch_size=7, convention="lm-eval")
    pred, pred_norm = predictions(subset, sums, n_tokens, "lm-eval")
    assert pred.tolist() == [p for p, _ in expected] and pred_norm.tolist() == [p for _, p in expected]


def test_truncation_keeps_last_block_size_plus_one_tokens(examples):
    short = tiny_gpt(block_size=16, seed=1)
    long_ones = [ex for ex in examples if len(get_encoding().encode_ordinary(ex["ctx"])) > 16][:3]
    assert long_ones
    sums, n_tokens = score_examples(short, long_ones, batch_size=2)
    ref_sums, _ = score_examples(short, long_ones, per_example=True)
    for i, ex in enumerate(long_ones):
        bf_sums, bf_means = seed_brute_force(short, ex, 16)
        torch.testing.assert_close(sums[i], bf_sums, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(sums[i] / n_tokens[i], bf_means, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ref_sums[i], bf_sums, rtol=1e-5, atol=1e-4)


def chosen_endings(model, endings: list[str], convention: str, tmp_path) -> tuple[list[int], list[int]]:
    """The endings that evaluate_hellaswag's acc and acc_norm choose for one example: the labels it scores
    as right."""
    chosen = {"acc": [], "acc_norm": []}
    for label in range(4):
        path = tmp_path / f"label{label}.jsonl"
        path.write_text(json.dumps({"ctx": "Pets: the animal in the garden is a", "endings": endings,
                                    "label": label}) + "\n")
        result = evaluate_hellaswag(model, path, convention=convention, amp=False, progress=False)
        for metric, labels in chosen.items():
            labels += [label] if result[metric] == 1 else []
    return chosen["acc"], chosen["acc_norm"]


@pytest.mark.parametrize("convention", HELLASWAG_CONVENTIONS)
def test_exact_ties_go_to_the_first_ending(convention, tmp_path):
    """With every logit 0, each ending token costs exactly log(vocab): acc ties the one-token endings 1 and 2,
    acc_norm ties 0 and 3 (seed: all four, per token; lm-eval: the 7-character ones, per character).
    lm-eval's argmax takes the first ending of a tie, and so must both conventions here."""
    model = tiny_gpt()
    with torch.no_grad():
        model.transformer.wte.weight.zero_()  # and the tied LM head: every logit is 0
    assert chosen_endings(model, ["dog cat", "dog", "cat", "sun cat"], convention, tmp_path) == ([1], [0])


def test_amp_follows_the_precision_rule(model, examples, reference, monkeypatch):
    import evaluation.hellaswag as hs
    import utils.precision as precision

    seen = []
    real = hs.autocast
    monkeypatch.setattr(hs, "autocast", lambda device, enabled: seen.append(enabled) or real(device, enabled))
    for fast in (False, True):
        monkeypatch.setattr(precision, "cpu_bf16_is_fast", lambda fast=fast: fast)
        evaluate_hellaswag(model, examples[:2], progress=False)  # amp=None: the rule
        evaluate_hellaswag(model, examples[:2], progress=False, amp=not fast)  # the flag wins
    assert seen == [False, True, True, False]
    sums, _ = score_examples(model, examples[:8], batch_size=8, amp=True)
    torch.testing.assert_close(sums, reference[0][:8], rtol=0.05, atol=0.5)


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
    assert result == {"acc": correct / 10, "acc_norm": correct_norm / 10, "n": 10, "convention": "seed"}
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
        download_hellaswag(out, url="https://example.invalid/hellaswag_val.jsonl", force=True, progress=False)
    assert path.read_text() == src.read_text()  # the cached file survives a failed re-download


class FakeResponse(io.BytesIO):
    """What urlopen returns: a readable body with headers; ``fail_after`` bytes then a dropped connection."""

    def __init__(self, body: bytes, fail_after: int | None = None):
        super().__init__(body)
        self.headers, self.fail_after = {"Content-Length": str(len(body))}, fail_after

    def read(self, size=-1):
        if self.fail_after is not None and self.tell() >= self.fail_after:
            raise ConnectionResetError("Connection reset by peer")
        return super().read(size if self.fail_after is None else min(size, self.fail_after - self.tell()))


@pytest.mark.parametrize("body, fail_after, message", [
    (b"<!DOCTYPE html><html>404: Not Found</html>\n", None, "not valid JSON"),  # an HTML error page
    (b"\xff\xfe garbage\n", None, ":1: not UTF-8 text"),
    (json.dumps({"ctx": "x", "endings": ["a", "b", "c", "d"], "label": 0}).encode() + b'\n{"ctx": "caf\xe9"}\n', None,
     ":2: not UTF-8 text"),  # latin-1 bytes: refused, not cached with replacement characters
    (b"", None, "holds no HellaSwag examples"),
    (json.dumps({"ctx": "x", "endings": ["a", "b", "c", "d"], "label": 0}).encode() + b'\n{"ctx": "cut of', None,
     ":2: not valid JSON"),  # a body cut off inside its second record
    (json.dumps({"ctx": "x", "endings": ["a", "b", "c", "d"], "label": 0}).encode() * 3, 10, "no network"),
])
def test_failed_download_leaves_nothing_behind(tmp_path, monkeypatch, body, fail_after, message):
    url = "https://example.invalid/hellaswag_val.jsonl"
    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: FakeResponse(body, fail_after))
    with pytest.raises(UserError, match=message):
        download_hellaswag(tmp_path / "new", url=url, progress=False)
    assert not (tmp_path / "new").exists()  # not even the directory
    cached = tmp_path / "hellaswag_val.jsonl"
    cached.write_text("the cached copy\n")
    with pytest.raises(UserError, match=message):
        download_hellaswag(tmp_path, url=url, force=True, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["hellaswag_val.jsonl"]  # no temp file left
    assert cached.read_text() == "the cached copy\n"


def test_download_write_failure_leaves_no_temp_file(tmp_path, monkeypatch):
    body = json.dumps({"ctx": "x", "endings": ["a", "b", "c", "d"], "label": 0}).encode() + b"\n"
    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: FakeResponse(body))

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.replace", full_disk)
    with pytest.raises(UserError, match="cannot write .*No space left on device"):
        download_hellaswag(tmp_path, url="https://example.invalid/hellaswag_val.jsonl", progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_cli(repo_root, tmp_path, capsys):
    from data.hellaswag import main

    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0 and "--out-dir" in capsys.readouterr().out
    src = tmp_path / "src" / "hellaswag_val.jsonl"
    src.parent.mkdir()
    src.write_text(json.dumps({"ctx": "A: b", "endings": ["a", "b", "c", "d"], "label": 0}) + "\n")
    main(["--out-dir", str(tmp_path / "out"), "--url", src.as_uri()])
    assert "1 examples" in capsys.readouterr().out
    assert (tmp_path / "out" / "hellaswag_val.jsonl").read_text() == src.read_text()
    main(["--check", str(src)])
    assert "1 valid" in capsys.readouterr().out
    existing = tmp_path / "hellaswag_val.jsonl"
    existing.write_text("keep me")
    with pytest.raises(UserError, match=f"{existing}:1"):
        main(["--check", str(existing)])
    with pytest.raises(UserError, match="is a file"):
        main(["--out-dir", str(existing / "sub"), "--url", src.as_uri()])
    missing_url = (tmp_path / "missing" / "hellaswag_val.jsonl").as_uri()
    failed = subprocess.run([sys.executable, "data/hellaswag.py", "--out-dir", str(tmp_path), "--force", "--url",
                             missing_url], cwd=repo_root, capture_output=True, text=True, timeout=60)
    assert failed.returncode == 2 and failed.stderr.startswith("hellaswag.py: error:")
    assert len(failed.stderr.strip().splitlines()) == 1 and existing.read_text() == "keep me"
    with pytest.raises(UserError, match="cannot download notaurl: unknown url type"):
        main(["--out-dir", str(tmp_path / "out2"), "--url", "notaurl"])
    with pytest.raises(UserError, match="cannot read file:.*No such file or directory"):
        main(["--out-dir", str(tmp_path / "out2"), "--url", missing_url])
    with pytest.raises(UserError, match=r"not found \(a directory\)"):
        main(["--check", str(tmp_path)])
    with pytest.raises(UserError, match="not found"):  # an empty path is no path, not a download
        main(["--check", ""])
    assert not (tmp_path / "out2").exists()
    other_name = tmp_path / "src" / "my_copy.jsonl"
    other_name.write_text(src.read_text())
    main(["--out-dir", str(tmp_path / "out3"), "--url", other_name.as_uri()])  # lands where evaluators look
    assert [p.name for p in (tmp_path / "out3").iterdir()] == ["hellaswag_val.jsonl"]
