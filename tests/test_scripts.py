"""scripts/gpu_study.sh end to end on the CPU with TINY=1: every stage runs and writes what the README reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys


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
