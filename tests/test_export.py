"""experiment/export_hf.py: every model kind loads with transformers (tokenizer too) and gives our logits,
pruned zeros survive, --hf reads the export back, bad input is one line, and lm-evaluation-harness's
HellaSwag on an export equals our lm-eval convention."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

import pytest
import torch

from models import build_model
from models.hf import remote_code_files
from tests.conftest import TINY
from utils.checkpoint import load_any_gpt, save_checkpoint
from utils.cli import UserError
from utils.hf_export import save_tokenizer
from utils.tokenizer import get_encoding

TEXTS = ["Hello world", "  three   spaces\n\n\ttab  and trailing   ", "héllo wörld 日本語 🤖 Ω≈ç",
         "<|endoftext|>after the end", "'s 're  don't I'll 123 4567 3.14", "", "a<|endoftext|> b\r\n",
         "\u00a0non-breaking\u2003em space", "x" * 300]


def export(tmp_path, name, *, prune=False, block_size=TINY["block_size"], seed=0, out="hf", **overrides):
    """(our model, its checkpoint, the exported directory)."""
    from experiment.export_hf import main

    torch.manual_seed(seed)
    model = build_model(name, **{**TINY, "block_size": block_size, **overrides}).eval()
    if prune:
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() >= 2:
                    p.mul_(torch.rand_like(p) > 0.5)
    ckpt = tmp_path / f"{name}.pt"
    save_checkpoint(ckpt, model, kind="gpt", model_name=name, step=7)
    main(["--ckpt", str(ckpt), "--out", str(tmp_path / out)])
    return model, ckpt, tmp_path / out


def zeros(tensors) -> int:
    return sum(int((t == 0).sum()) for t in tensors)


def test_tokenizer_ids_equal_tiktoken(tmp_path):
    from transformers import AutoTokenizer

    save_tokenizer(tmp_path, 64)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    enc = get_encoding()
    assert len(tok) == 50257 and tok.model_max_length == 64
    assert tok.eos_token_id == tok.bos_token_id == tok.pad_token_id == tok.unk_token_id == 50256
    for text in TEXTS:
        ids = tok(text)["input_ids"]
        assert ids == enc.encode(text, allowed_special="all"), text
        assert tok.decode(ids) == text
    assert tok("<|endoftext|>")["input_ids"] == [50256]


@pytest.mark.parametrize("name,overrides", [("gpt2", {}), ("gpt2-mlp1536", {}), ("ndgpt2", {}), ("ndgpt2-82m", {}),
                                            ("ndgpt2-84m", {}), ("gpt2", {"bias": False, "gelu": "none"})])
def test_export_loads_with_transformers_and_back(tmp_path, name, overrides):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel

    model, _, out = export(tmp_path, name, prune=True, **overrides)
    dense = not overrides and model.config.mlp == "dense"  # bias=False: not a GPT2LMHeadModel
    hf = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=not dense).eval()
    config = json.loads((out / "config.json").read_text())
    if dense:
        assert type(hf) is GPT2LMHeadModel and config["vocab_size"] == 50304
    else:
        assert config["model_type"] == "ndgpt2" and "AutoModelForCausalLM" in config["auto_map"]
    idx = torch.tensor([AutoTokenizer.from_pretrained(out)("The cat sat on the mat. " * 3)["input_ids"]])
    with torch.no_grad():
        ours = model(idx)[0]
        theirs = hf(idx).logits
        torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)
        assert theirs.shape[-1] == 50304
        assert zeros(hf.state_dict().values()) == zeros(model.state_dict().values()) > 0
        back, description = load_any_gpt(None, str(out))  # what --hf DIR does in every script
        assert "HF" in description and back.config == model.config
        for (k, a), b in zip(model.state_dict().items(), back.state_dict().values()):
            assert torch.equal(a, b), k
        torch.testing.assert_close(back(idx)[0], ours, rtol=0, atol=0)


def test_export_ships_the_modules_the_model_imports():
    """remote_code_files follows module-level imports only: modeling_ndgpt2.py and what it needs, not hf.py
    (the export code), whose imports inside GPT.from_pretrained / GPT.save_hf become raise ImportError."""
    files = remote_code_files()
    assert sorted(files) == ["gpt2.py", "modeling_ndgpt2.py", "ndlinear.py", "ndlinear_kernels.py", "params.py"]
    for name, source in files.items():
        assert "from models" not in source and "import models" not in source, name
    assert files["gpt2.py"].count("raise ImportError('models/hf.py is not in this export") == 2


@pytest.mark.slow
def test_remote_code_is_self_contained(tmp_path):
    """The exported .py files are those of remote_code_files and import nothing of this repository, and a
    fresh interpreter outside it (no repo on sys.path) loads the directory and reproduces our logits."""
    model, _, out = export(tmp_path, "ndgpt2")
    assert sorted(path.name for path in out.glob("*.py")) == sorted(remote_code_files())
    allowed = set(sys.stdlib_module_names) | {"torch", "transformers", "safetensors"}
    for path in out.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                assert node.module.split(".")[0] in allowed, (path.name, node.module)
            elif isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] in allowed for a in node.names), path.name
    idx = torch.randint(0, 50257, (2, 17))
    torch.save(idx, tmp_path / "idx.pt")
    code = ("import sys, torch\nfrom transformers import AutoModelForCausalLM\n"
            "assert not any(m == 'models' or m.startswith('models.') for m in sys.modules)\n"
            f"m = AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=True)\n"
            f"torch.save(m(torch.load({str(tmp_path / 'idx.pt')!r})).logits, 'logits.pt')\n"
            "assert 'models' not in sys.modules\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    with torch.no_grad():
        torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), model(idx)[0], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_bad_input_one_line(tmp_path, repo_root):
    from experiment.export_hf import main

    def error(*argv) -> str:
        with pytest.raises(UserError) as info:
            main([str(a) for a in argv])
        return str(info.value)

    _, ckpt, out = export(tmp_path, "gpt2")
    assert "not found" in error("--ckpt", tmp_path / "missing.pt", "--out", tmp_path / "new")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    assert "not a checkpoint" in error("--ckpt", corrupt, "--out", tmp_path / "new")
    assert not (tmp_path / "new").exists()
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert "exists; pass --force" in error("--ckpt", ckpt, "--out", out)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # untouched
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert "is a file" in error("--ckpt", ckpt, "--out", a_file)
    assert "is a file" in error("--ckpt", ckpt, "--out", a_file / "sub")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    assert "not an HF export" in error("--ckpt", ckpt, "--out", foreign, "--force")
    assert (foreign / "notes.txt").read_text() == "keep"
    assert "holds the input" in error("--ckpt", ckpt, "--out", tmp_path, "--force")
    killed = tmp_path / f".{out.name}.999999999.tmp"  # what an export killed mid-write leaves, an hour ago
    killed.mkdir()
    os.utime(killed, (os.path.getmtime(out) - 3600,) * 2)
    (tmp_path / f".{out.name}.{os.getpid()}.tmp").mkdir()  # ours: a killed process that had this PID
    main(["--ckpt", str(ckpt), "--out", str(out), "--force"])  # replacing an export works
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp dirs left
    link = tmp_path / "link"
    link.symlink_to(out)
    main(["--ckpt", str(ckpt), "--out", str(link), "--force"])  # through a link: its target is replaced
    assert link.is_symlink() and (link / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    cwd = os.getcwd()
    try:
        os.chdir(out)
        assert "is or holds the current directory" in error("--ckpt", ckpt, "--out", ".", "--force")
    finally:
        os.chdir(cwd)
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert "not writable" in error("--ckpt", ckpt, "--out", locked / "hf")
    result = subprocess.run([sys.executable, "experiment/export_hf.py", "--ckpt", str(corrupt), "--out",
                             str(tmp_path / "x")], cwd=repo_root, capture_output=True, text=True, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("export_hf.py: error: ")


@pytest.mark.slow
def test_lm_eval_hellaswag_equals_ours(tmp_path, shared_data, repo_root, monkeypatch):
    """lm-eval's own HFLM + our local task on ~20 examples, dense and NdGPT-2, with a block size of 48
    so that some rows are truncated: per-example acc and acc_norm equal our "lm-eval" convention."""
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    from evaluation.hellaswag import evaluate_hellaswag, load_hellaswag, predictions, score_examples

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    path = shared_data / "hellaswag" / "hellaswag_val_llamacpp_derived.jsonl"
    n = 20
    examples = load_hellaswag(path, limit=n)
    tasks = TaskManager(include_path=str(repo_root / "experiment" / "lm_eval_tasks"),
                        metadata={"hellaswag_path": str(path)})
    for name in ("gpt2", "ndgpt2"):
        model, _, out = export(tmp_path, name, block_size=48, seed=3, out=name)
        result = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={out},trust_remote_code=True",
                                         tasks=["hellaswag_local"], task_manager=tasks, limit=n, batch_size=8,
                                         device="cpu", log_samples=True)
        samples = sorted(result["samples"]["hellaswag_local"], key=lambda s: s["doc_id"])
        ours = evaluate_hellaswag(model, examples, amp=False, progress=False, convention="lm-eval")
        assert result["results"]["hellaswag_local"]["acc,none"] == pytest.approx(ours["acc"])
        assert result["results"]["hellaswag_local"]["acc_norm,none"] == pytest.approx(ours["acc_norm"])
        labels = torch.tensor([ex["label"] for ex in examples])
        pred, pred_norm = predictions(examples, *score_examples(model, examples, convention="lm-eval"), "lm-eval")
        assert [s["acc"] for s in samples] == (pred == labels).float().tolist()
        assert [s["acc_norm"] for s in samples] == (pred_norm == labels).float().tolist()


def test_reports_name_an_exported_model_by_its_family(tmp_path, corpus, capsys):
    """test_gpt.py --hf DIR: an NdLinear export is reported as ndgpt2, a dense one as gpt2."""
    from experiment import test_gpt
    from tests.conftest import run_cli

    for name, family in (("ndgpt2", "ndgpt2"), ("gpt2", "gpt2")):
        _, _, out = export(tmp_path / name, name)
        code, _, err = run_cli(capsys, test_gpt.main, "test_gpt.py", "--hf", out, "--data", corpus, "--batches", 2,
                               "--micro-batch", 2, "--seq-len", 32, "--no-hellaswag", "--device", "cpu",
                               "--json", tmp_path / f"{name}.json")
        assert code == 0, err
        assert json.loads((tmp_path / f"{name}.json").read_text())["model"] == family
