"""scripts/: gpu_study.sh end to end on the CPU with TINY=1, study_readme.py against the committed logs and on
bad input, and the study scripts' usage."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest


def test_gpu_study_logic_runs_tiny_on_cpu(repo_root, shared_data, corpus, tmp_path):
    out = tmp_path / "gpu"
    env = {**os.environ, "TINY": "1", "DATA": str(corpus), "OUT": str(out), "ONLY": "gpt2 ndgpt2",
           "HELLASWAG": str(shared_data / "hellaswag" / "hellaswag_val_llamacpp_derived.jsonl")}
    result = subprocess.run(["bash", "scripts/gpu_study.sh"], cwd=repo_root, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    for model in ("gpt2", "ndgpt2"):
        summary = json.loads((out / "runs" / model / "summary.json").read_text())
        assert summary["val_loss"]["final_step"] == 4 and summary["tokens_per_sec"] > 0
        assert summary["final_checkpoint"] == "model_00004.pt"
        evaluation = json.loads((out / "eval" / f"{model}.json").read_text())
        assert set(evaluation["metrics"]["hellaswag"]) == {"seed", "lm-eval"}
        assert evaluation["metrics"]["hellaswag"]["seed"]["n"] == 8
        reports = sorted(p.name for p in (out / "sweep" / model).glob("*.json"))
        assert reports == ["dense.json", "magnitude-layer-2of4.json", "magnitude-layer-50pct.json",
                           "wanda-2of4.json", "wanda-50pct.json"]
    assert {p.name for p in (out / "plots").iterdir()} >= {"val_tokens.png", "sparsity.png", "summary.md"}
    # a second run finds every stage done and rewrites no report
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.json")}
    again = subprocess.run(["bash", "scripts/gpu_study.sh", "prune"], cwd=repo_root, env=env, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.json")} == before


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
    assert "not in a <model>-s<seed> run directory" in error()


@pytest.mark.parametrize("script", ["gpu_study.sh", "mini_repro.sh", "make_figures.sh"])
def test_study_scripts_usage(repo_root, script):
    """An argument the script does not know runs nothing: usage on stderr, exit 2; --help prints the header."""
    bogus = subprocess.run(["bash", f"scripts/{script}", "bogus"], cwd=repo_root, capture_output=True, text=True,
                           env={**os.environ, "DRY": "1"}, timeout=60)
    assert bogus.returncode == 2 and bogus.stderr.startswith("usage:") and bogus.stdout == ""
    help_ = subprocess.run(["bash", f"scripts/{script}", "--help"], cwd=repo_root, capture_output=True, text=True,
                           env={**os.environ, "DRY": "1"}, timeout=60)
    assert help_.returncode == 0 and help_.stderr == "" and ("figures" in help_.stdout), help_.stdout
