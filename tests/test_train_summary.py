"""experiment/train_summary.py: tokens/s and MFU leave the first (compiling) step out and report it apart."""

from __future__ import annotations

import json

import pytest

from experiment.train_summary import steady_throughput, write_summary
from utils.runlog import append_lines, format_event


def test_steady_throughput_times_the_first_step_apart():
    assert steady_throughput([30.0, 0.5, 1.5], 1000) == (1000.0, 30.0)  # 2 steps of 1,000 tokens in 2 s
    assert steady_throughput([2.0], 1000) == (500.0, 2.0)  # one step: the only one to count
    assert steady_throughput([], 1000) == (None, None)  # a finished run resumed: no step this session


def test_summary_tokens_per_sec_and_mfu_exclude_the_compile_step(tmp_path):
    append_lines(tmp_path / "log.txt", [format_event(0, "val", 5.0), format_event(0, "train", 5.1),
                                        format_event(1, "train", 4.9), format_event(2, "train", 4.8),
                                        format_event(3, "val", 4.5)])
    table = write_summary(tmp_path, model="gpt2", preset="smoke", params=10, tokens_per_step=4096, hellaswag_n=None,
                          step_seconds=[60.0, 0.25, 0.25], train_time=60.5, wall_time=70.0,
                          final_checkpoint="model_00003.pt", flops_per_token=100, peak=1e9,
                          machine={"cpu": "a CPU"})
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["machine"] == {"cpu": "a CPU"}
    assert summary["tokens_per_sec"] == 2 * 4096 / 0.5 and summary["first_step_s"] == 60.0
    assert summary["mfu"] == pytest.approx(2 * 4096 / 0.5 * 100 / 1e9)
    assert summary["tokens_seen"] == 3 * 4096 and summary["train_time_s"] == 60.5  # totals keep every step
    assert "16,384 tokens/s (the first step timed apart: 60.0 s" in table
