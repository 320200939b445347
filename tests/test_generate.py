"""experiment/generate.py and evaluation.sampling.sample_texts on checkpoints of any model (dense, NdGPT-2,
pruned) and on exported HF directories; special tokens in prompts, memory-bounded batches, the KV
cache switch; bad input -> one line, exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from evaluation.sampling import encode_prompt, sample_bytes, sample_texts
from models import GPTConfig, build_model
from tests.conftest import TINY
from utils.cli import UserError
from utils.tokenizer import get_encoding


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


def test_no_cache_gives_the_same_greedy_tokens(nd_ckpt, capsys):
    args = ["--ckpt", nd_ckpt, "--num-samples", "2", "--max-new-tokens", "8", "--top-k", "1", "--no-amp"]
    assert run_generate(*args, capsys=capsys) == run_generate(*args, "--no-cache", capsys=capsys)


@pytest.mark.parametrize("name", ["gpt2", "ndgpt2"])
def test_generate_from_exported_hf_dir(tmp_path, capsys, name):
    from utils.hf_export import export_hf

    torch.manual_seed(0)
    export_hf(build_model(name, **TINY), tmp_path / "hf")
    out = run_generate("--hf", tmp_path / "hf", "--num-samples", "1", "--max-new-tokens", "4", capsys=capsys)
    assert out.count("--- sample") == 1 and "Hello, I'm a language model," in out and "HF" in out


def test_prompt_with_end_of_text_token(nd_ckpt, capsys):
    enc = get_encoding()
    assert encode_prompt(enc, "a<|endoftext|>b") == [*enc.encode_ordinary("a"), enc.eot_token,
                                                      *enc.encode_ordinary("b")]
    assert encode_prompt(enc, "") == [enc.eot_token]
    out = run_generate("--ckpt", nd_ckpt, "--prompt", "The end.<|endoftext|>A new", "--num-samples", "2",
                       "--max-new-tokens", "3", capsys=capsys)
    assert out.count("The end.<|endoftext|>A new") == 2


def test_samples_run_in_batches_that_fit_the_budget(monkeypatch):
    torch.manual_seed(0)
    model = build_model("gpt2", **TINY).eval()
    enc = get_encoding()
    per_sample = sample_bytes(model.config, len(encode_prompt(enc, "Hi")), 2)
    assert per_sample > 4 * 4 * model.config.vocab_size  # at least the logits rows
    sizes = []
    real = model.generate
    monkeypatch.setattr(model, "generate", lambda idx, *a, **k: sizes.append(len(idx)) or real(idx, *a, **k))
    texts = sample_texts(model, enc, "Hi", 7, 2, memory_budget=3 * per_sample)
    assert sizes == [3, 3, 1] and len(texts) == 7 and all(t.startswith("Hi") for t in texts)
    sizes.clear()
    assert sample_texts(model, enc, "Hi", 7, 2) == sample_texts(model, enc, "Hi", 7, 2)  # seeded
    assert sizes == [7, 7]  # the default budget holds 7 tiny samples in one batch
    big = GPTConfig()  # GPT-2 124M
    assert 100_000 * sample_bytes(big, 10, 1000) > 2 << 30 > 10 * sample_bytes(big, 10, 1000)


def test_bad_input_exit_2(nd_ckpt, tmp_path, capsys):
    from experiment import generate

    for flag, value in [("--temperature", "nan"), ("--temperature", "inf"), ("--temperature", "0"),
                        ("--temperature", "-1"), ("--top-k", "0"), ("--max-new-tokens", "-5"),
                        ("--num-samples", "0"), ("--num-samples", "1e9")]:
        with pytest.raises(UserError, match=f"argument {flag}"):  # one line, exit 2 through run_main
            generate.parse_args(["--ckpt", str(nd_ckpt), flag, value])

    def error(*argv) -> str:
        with pytest.raises(UserError) as info:
            generate.main([str(a) for a in argv])
        return str(info.value)

    assert "not found" in error("--ckpt", tmp_path / "missing.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    assert "not a checkpoint" in error("--ckpt", foreign)
    assert "cannot load Hugging Face" in error("--hf", tmp_path / "no_such_dir")


@pytest.mark.slow
def test_cli_bad_checkpoint_exit_2(repo_root, tmp_path):
    corrupt = tmp_path / "bad.pt"
    corrupt.write_bytes(b"not a checkpoint")
    result = subprocess.run([sys.executable, "experiment/generate.py", "--ckpt", str(corrupt)], cwd=repo_root,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("generate.py: error: ") and "corrupt" in lines[0]


def test_a_tiny_temperature_samples_the_argmax():
    """T -> 0 is greedy decoding: logits / 1e-40 overflow unless the max is taken out first."""
    torch.manual_seed(0)
    model = build_model("gpt2", **TINY).eval()
    idx = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        greedy = model.generate(idx, 8, top_k=1)
        cold = model.generate(idx, 8, temperature=1e-40, generator=torch.Generator().manual_seed(0))
    assert torch.equal(cold, greedy)
