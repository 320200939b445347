"""experiment/compare.py and utils/runlog.py: log parsing, summaries, figures, pruning tables, CLI errors."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg
import pytest

from experiment import compare
from experiment.compare import DPI, FIGSIZE
from experiment.tables import default_labels, ema, pruning_rows, summarize
from utils.cli import UserError
from utils.runlog import parse_log, read_log

SCRIPT = "experiment/compare.py"


def synthetic_events(seed=0, n_train=300, every=25):
    """A plausible run as (step, kind, value) tuples, values chosen at random."""
    rng = random.Random(seed)
    events = []
    for step in range(n_train):
        if step % every == 0 or step == n_train - 1:
            events.append((step, "val", round(rng.uniform(3.0, 9.0), 4)))
            events.append((step, "hella", round(rng.uniform(0.22, 0.31), 4)))
        events.append((step, "train", round(rng.uniform(2.5, 11.0), 6)))
    return events


def write_log(path: Path, events) -> Path:
    path.write_text("".join(f"{s} {k} {v}\n" for s, k, v in events))
    return path


def write_report(path: Path, **overrides) -> Path:
    def stage(nonzero, val_loss, hella):
        return {"params_total": 1000, "params_nonzero": nonzero, "val_loss": val_loss,
                "perplexity": 2.718281828 ** val_loss, "hellaswag_acc_norm": hella, "hellaswag_n": 100}
    report = {"model_name": "gpt2", "method": "wanda", "sparsity": 0.5, "nm": None,
              "before": stage(1000, 3.2, 0.29), "after": stage(520, 3.9, 0.27), "layers": []}
    report.update(overrides)
    path.write_text(json.dumps(report))
    return path


# ----------------------------------------------------------------------------- parsing

def test_parse_skips_and_counts_malformed_lines_and_last_repeat_wins():
    lines = [
        "0 train 10.5\n",
        "0 val 10.4\n",
        "garbage\n",
        "1 train\n",            # too few fields
        "2 loss 3.0\n",         # unknown kind
        "x train 3.0\n",        # step not an int
        "3 train abc\n",        # value not a number
        "-4 train 3.0\n",       # negative step
        "5 train 3.0 extra\n",  # too many fields
        "\n",                   # blank: ignored, not malformed
        "1 train 9.0\n",
        "1 train 8.0\n",        # resumed run logged step 1 again: the later value wins
        "1 hella 0.25\n",
    ]
    run = parse_log(lines, "demo")
    assert run.n_malformed == 7
    assert run.n_lines == 12
    assert run.series["train"] == {0: 10.5, 1: 8.0}
    assert run.series["val"] == {0: 10.4}
    assert run.series["hella"] == {1: 0.25}
    assert run.steps_values("train") == ([0, 1], [10.5, 8.0])


def test_steps_come_back_sorted_even_when_logged_out_of_order():
    run = parse_log(["5 val 3.0", "2 val 4.0", "9 val 2.5", "2 val 3.5"])
    assert run.steps_values("val") == ([2, 5, 9], [3.5, 3.0, 2.5])


def test_summary_matches_an_independent_computation(tmp_path):
    events = synthetic_events(seed=1)
    events += [(100, "val", 1.2345), (40, "train", 99.0)]  # overrides: last value per step wins
    run = read_log(write_log(tmp_path / "synth.txt", events))

    last = {}
    for step, kind, value in events:
        last[(step, kind)] = value
    by_kind = {k: sorted((s, v) for (s, kk), v in last.items() if kk == k) for k in ("train", "val", "hella")}
    min_val_step, min_val = min(by_kind["val"], key=lambda sv: (sv[1], sv[0]))
    max_hella_step, max_hella = min(by_kind["hella"], key=lambda sv: (-sv[1], sv[0]))

    s = summarize(run)
    assert s["label"] == "synth"
    assert s["min_train"] == min(v for _, v in by_kind["train"])
    assert (s["min_val"], s["min_val_step"]) == (min_val, min_val_step) == (1.2345, 100)
    assert (s["max_hella"], s["max_hella_step"]) == (max_hella, max_hella_step)
    assert s["last_step"] == max(step for step, _ in last)
    assert s["last_train"] == by_kind["train"][-1][1]
    assert s["last_val"] == by_kind["val"][-1][1]
    assert s["last_hella"] == by_kind["hella"][-1][1]


def test_summary_of_a_log_without_val_or_hella_has_gaps():
    s = summarize(parse_log(["0 train 5.0", "7 train 4.0"]))
    assert s["min_train"] == 4.0 and s["last_step"] == 7
    assert s["min_val"] is s["min_val_step"] is s["max_hella"] is s["last_val"] is None


def test_ema_matches_the_recurrence():
    values = [4.0, 2.0, 6.0, 1.0]
    expected, s = [], values[0]
    for x in values:
        s = 0.75 * s + 0.25 * x
        expected.append(s)
    assert ema(values, 0.75) == pytest.approx(expected)
    assert ema(values, 0.0) == values


def test_default_labels_disambiguate_equal_stems():
    assert default_labels([Path("a/x.txt"), Path("b/y.txt")]) == ["x", "y"]
    assert default_labels([Path("runs/gpt2/log.txt"), Path("runs/nd/log.txt")]) == ["gpt2/log", "nd/log"]


def test_read_log_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_log(tmp_path / "missing.txt")
    (tmp_path / "junk.txt").write_text("hello\nworld\n")
    with pytest.raises(UserError, match="2 malformed"):
        read_log(tmp_path / "junk.txt")


def test_seed_logs_parse_and_agree_with_a_plain_reading(shared_data):
    logs = sorted((shared_data / "seed_logs").glob("*.txt"))
    assert len(logs) == 4
    for path in logs:
        vals, trains, hellas = {}, {}, {}
        for line in path.read_text().splitlines():
            step, kind, value = line.split()
            {"val": vals, "train": trains, "hella": hellas}[kind][int(step)] = float(value)
        run = read_log(path)
        s = summarize(run)
        assert run.n_malformed == 0
        assert len(run.series["train"]) == len(trains) and len(run.series["hella"]) == len(hellas)
        assert s["min_train"] == min(trains.values())
        assert s["last_step"] == max(trains) == max(run.series["train"])
        if vals:
            best = min(vals.values())
            assert s["min_val"] == best and vals[s["min_val_step"]] == best
        else:
            assert s["min_val"] is None
    gpt2 = summarize(read_log(shared_data / "seed_logs" / "GPT2-124M-log.txt"))
    assert gpt2["last_step"] == 34053  # SOURCES.md: steps 0-34053
    nd96 = read_log(shared_data / "seed_logs" / "ndgpt2-96M-log.txt")
    assert min(nd96.series["train"]) == 3087  # the resumed run starts at step 3087


# ----------------------------------------------------------------------------- pruning reports

def test_pruning_rows_tolerate_missing_optional_keys(tmp_path):
    full = json.loads(write_report(tmp_path / "a.json").read_text())
    partial = json.loads(write_report(tmp_path / "b.json", label="Nd 2:4", nm=[2, 4], method="magnitude",
                                      after={"params_nonzero": 600, "val_loss": 4.5}).read_text())
    headers, rows = pruning_rows([full, partial])
    assert len(rows) == 2 and all(len(r) == len(headers) for r in rows)
    col = {h: i for i, h in enumerate(headers)}
    assert rows[0][col["model"]] == "gpt2" and rows[1][col["model"]] == "Nd 2:4"
    assert rows[0][col["sparsity"]] == "50%" and rows[1][col["sparsity"]] == "2:4"
    assert rows[0][col["nonzero after"]] == "520" and rows[1][col["nonzero after"]] == "600"
    assert float(rows[0][col["val loss after"]]) == pytest.approx(3.9)
    assert rows[1][col["hella after"]] == "-" and rows[1][col["ppl after"]] == "-"


def test_pruning_rows_accept_short_metric_names():
    report = {"model_name": "m", "method": "wanda", "sparsity": 0.25,
              "before": {"nonzero": 1000, "total": 1000, "val_loss": 3.0, "ppl": 20.0},
              "after": {"nonzero": 760, "total": 1000, "val_loss": 3.5, "ppl": 33.0}}
    headers, [row] = pruning_rows([report])
    col = {h: i for i, h in enumerate(headers)}
    assert row[col["sparsity"]] == "25%"
    assert (row[col["nonzero before"]], row[col["nonzero after"]]) == ("1,000", "760")
    assert (row[col["ppl before"]], row[col["ppl after"]]) == ("20.00", "33.00")


# ----------------------------------------------------------------------------- CLI

def test_compare_writes_figures_and_summary(tmp_path, capsys):
    events_a, events_b = synthetic_events(seed=2), synthetic_events(seed=3, n_train=200)
    log_a = write_log(tmp_path / "a.txt", events_a + [(7, "oops", 1.0)])
    log_b = write_log(tmp_path / "b.txt", events_b)
    reports = [write_report(tmp_path / "r1.json"),
               write_report(tmp_path / "r2.json", method="magnitude", nm=[2, 4],
                            after={"params_nonzero": 500, "val_loss": 5.0, "hellaswag_acc_norm": None})]
    out = tmp_path / "plots"
    # in-process (the figures are the point here); the CLI wrapper is exercised by the error test
    compare.main([str(log_a), str(log_b), "--out-dir", str(out), "--labels", "dense", "nd",
                  "--smooth", "0.9", "--pruning", *map(str, reports)])
    stdout = capsys.readouterr().out

    height, width = round(FIGSIZE[1] * DPI), round(FIGSIZE[0] * DPI)
    for name in ("loss.png", "hellaswag.png", "pruning.png"):
        png = out / name
        assert png.stat().st_size > 20_000, name  # a real figure, not an empty canvas
        image = mpimg.imread(png)
        assert image.shape[0] == height, name
        assert image.shape[1] == width if name != "pruning.png" else image.shape[1] >= width
        assert image.std() > 0.05, name  # not a blank image

    assert "1 malformed" in stdout  # the 'oops' line of a.txt
    summary = (out / "summary.md").read_text()
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in summary.splitlines() if line.startswith("| dense") or line.startswith("| nd")}
    for label, events in (("dense", events_a), ("nd", events_b)):
        min_val, min_step = min((v, s) for s, k, v in events if k == "val")
        assert rows[label][0] == f"{min(v for _, k, v in events if k == 'train'):.4f}"
        assert rows[label][1] == f"{min_val:.4f}" and rows[label][2] == str(min_step)
        assert rows[label][5] == str(events[-1][0])
        assert f"{min_val:.4f}" in stdout  # the printed table carries the same numbers
    assert "## Pruning" in summary and "magnitude" in summary and "2:4" in summary


def test_compare_tabulates_test_gpt_evaluations(tmp_path, capsys):
    log = write_log(tmp_path / "a.txt", synthetic_events(n_train=30))
    result = {"model": "ndgpt2 step 160 from x.pt", "params": 1234567, "val_loss": 6.12345, "perplexity": 456.78,
              "hellaswag_acc": 0.26, "hellaswag_acc_norm": 0.251234, "hellaswag_n": 10042}
    (tmp_path / "eval.json").write_text(json.dumps(result))
    out = tmp_path / "plots"
    compare.main([str(log), "--out-dir", str(out), "--evals", str(tmp_path / "eval.json")])
    summary = (out / "summary.md").read_text()
    row = next(line for line in summary.splitlines() if line.startswith("| ndgpt2 step 160"))
    assert [c.strip() for c in row.split("|")[2:-1]] == ["1,234,567", "6.1235", "456.8", "0.2600", "0.2512",
                                                         "10042"]
    assert "0.2512" in capsys.readouterr().out
    (tmp_path / "bad.json").write_text(json.dumps({"model": "x"}))
    with pytest.raises(UserError, match="not a test_gpt.py --json result"):
        compare.main([str(log), "--out-dir", str(tmp_path / "o2"), "--evals", str(tmp_path / "bad.json")])


def test_compare_rejects_bad_options_before_writing(tmp_path):
    good = write_log(tmp_path / "good.txt", synthetic_events(n_train=30))
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    out = tmp_path / "out"
    with pytest.raises(UserError, match="not a readable JSON"):
        compare.main([str(good), "--out-dir", str(out), "--pruning", str(bad_json)])
    not_a_report = tmp_path / "list.json"
    not_a_report.write_text("[1, 2]")
    with pytest.raises(UserError, match="not a pruning report"):
        compare.main([str(good), "--out-dir", str(out), "--pruning", str(not_a_report)])
    with pytest.raises(UserError, match="--smooth"):
        compare.main([str(good), "--out-dir", str(out), "--smooth", "1.5"])
    assert not out.exists()


def test_cli_errors_exit_2_with_one_line(tmp_path, repo_root):
    good = write_log(tmp_path / "good.txt", synthetic_events(n_train=30))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    out = tmp_path / "out"
    cases = {
        "no train/val/hella events": [empty, "--out-dir", out],
        "not found": [tmp_path / "nope.txt", "--out-dir", out],
        "--labels has 1 entries but 2 logs": [good, good, "--labels", "one", "--out-dir", out],
    }
    # started together: each one pays the interpreter and import start-up
    procs = {msg: subprocess.Popen([sys.executable, SCRIPT, *map(str, args)], cwd=repo_root, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for msg, args in cases.items()}
    for msg, proc in procs.items():
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 2, (msg, stderr)
        assert "Traceback" not in stderr
        assert stderr.strip().startswith("compare.py: error:") and msg in stderr
        assert len(stderr.strip().splitlines()) == 1
    assert not out.exists()  # nothing is written when the input is bad
