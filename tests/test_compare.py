"""experiment/compare.py and utils/runlog.py: log parsing, summaries over seeds, figures, and tables built
from reports that the real scripts (test_gpt.py, wanda.py, sweep.py) wrote."""

from __future__ import annotations

import json
import math
import random
import statistics
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg
import pytest
from matplotlib.axes import Axes

from evaluation.report import read_report
from experiment import compare
from experiment.figures import DPI, FIGSIZE
from experiment.tables import default_labels, ema, summarize
from utils.cli import UserError
from utils.runlog import parse_log, read_log

SCRIPT = "experiment/compare.py"


def synthetic_events(seed=0, n_train=300, every=25, hella=(0.22, 0.31)):
    """A plausible run as (step, kind, value) tuples, values chosen at random."""
    rng = random.Random(seed)
    events = []
    for step in range(n_train):
        if step % every == 0 or step == n_train - 1:
            events.append((step, "val", round(rng.uniform(3.0, 9.0), 4)))
            events.append((step, "hella", round(rng.uniform(*hella), 4)))
        events.append((step, "train", round(rng.uniform(2.5, 11.0), 6)))
    return events


def write_log(path: Path, events) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{s} {k} {v}\n" for s, k, v in events))
    return path


# ----------------------------------------------------------------------------- reports of the real scripts

@pytest.fixture(scope="session")
def real_reports(nd_ckpt, corpus, shared_data, tmp_path_factory):
    """test_gpt.py, wanda.py (fresh and reusing test_gpt.py's numbers) and a 2-sparsity sweep, run on
    one tiny checkpoint with the same evaluation settings."""
    from experiment.test_gpt import main as test_gpt
    from pruning.sweep import main as sweep
    from pruning.wanda import main as wanda

    out = tmp_path_factory.mktemp("reports")
    hellaswag = shared_data / "hellaswag" / "hellaswag_val_llamacpp_derived.jsonl"
    common = ["--ckpt", nd_ckpt, "--data", corpus, "--hellaswag", hellaswag, "--limit", 4,
              "--hellaswag-convention", "seed", "--device", "cpu"]  # default precision: the one rule for both
    pruning = ["--calib-samples", 4, "--calib-len", 32, "--val-batches", 2, "--val-batch-size", 2]
    paths = {name: out / f"{name}.json" for name in ("eval", "wanda", "magnitude")}
    test_gpt([str(a) for a in [*common, "--batches", 2, "--micro-batch", 2, "--seq-len", 32,
                               "--json", paths["eval"]]])
    wanda([str(a) for a in [*common, *pruning, "--json", paths["wanda"]]])
    wanda([str(a) for a in [*common, *pruning, "--method", "magnitude-layer", "--nm", "2:4",
                            "--before-json", paths["eval"], "--json", paths["magnitude"]]])
    paths["sweep"] = out / "sweep"
    sweep([str(a) for a in [*common[:4], *pruning, "--device", "cpu", "--methods", "wanda",
                            "magnitude-layer", "--sparsities", 0.3, 0.6, "--nm", "--out-dir", paths["sweep"]]])
    return paths


def test_pruning_before_equals_test_gpt_for_the_same_checkpoint_and_settings(real_reports):
    evaluation, pruned = read_report(real_reports["eval"], "eval"), read_report(real_reports["wanda"], "pruning")
    assert pruned["settings"]["eval"] == evaluation["settings"]["eval"]
    assert pruned["timings"]["eval_before_s"] > 0  # measured by wanda.py itself, not reused
    assert pruned["before"] == evaluation["metrics"]
    assert evaluation["metrics"]["hellaswag"]["seed"]["n"] == 4 and evaluation["metrics"]["val_tokens"] == 128
    reused = read_report(real_reports["magnitude"], "pruning")
    assert reused["before"] == evaluation["metrics"] and reused["timings"]["eval_before_s"] == 0
    assert reused["pruning"]["mask_groups"].startswith("N:M") and reused["settings"]["method"] == "magnitude-layer"


def test_compare_tables_and_sweep_figure_from_real_reports(real_reports, tmp_path, capsys):
    log = write_log(tmp_path / "run" / "log.txt", synthetic_events(n_train=30))
    out = tmp_path / "plots"
    compare.main([str(log), "--out-dir", str(out), "--pruning", str(real_reports["wanda"]),
                  str(real_reports["magnitude"]), str(real_reports["sweep"]), "--evals", str(real_reports["eval"])])
    stdout = capsys.readouterr().out
    image = mpimg.imread(out / "sparsity.png")
    assert image.shape[0] == round(FIGSIZE[1] * DPI) and image.std() > 0.05
    summary = (out / "summary.md").read_text()
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in summary.splitlines()
            if line.startswith("| ndgpt2 ")]
    pruning_rows = [r for r in rows if len(r) == 10]
    assert len(pruning_rows) == 2 + 4  # wanda.py x 2 + sweep (2 methods x 2 sparsities)
    reports = [read_report(real_reports[k]) for k in ("wanda", "magnitude")]
    reports += [read_report(p) for p in sorted(real_reports["sweep"].glob("*-*.json"))]
    for report, row in zip(reports, pruning_rows):
        before, after = report["before"]["val_loss"], report["after"]["val_loss"]
        assert row[1] == report["settings"]["method"]
        assert row[4:7] == [f"{before:.4f}", f"{after:.4f}", f"{after - before:+.4f}"]
        assert row[8] == f"{math.exp(after) / math.exp(before):.3f}"
    evaluation = read_report(real_reports["eval"])["metrics"]
    eval_row = next(r for r in rows if len(r) == 9)
    assert eval_row[:4] == ["ndgpt2 step 0", f"{evaluation['params_total']:,}", f"{evaluation['params_nonzero']:,}",
                            f"{evaluation['val_loss']:.4f}"]
    assert eval_row[6].startswith(f"{evaluation['hellaswag']['seed']['acc_norm']:.4f}")
    assert "(at chance)" in eval_row[6] and eval_row[7] == "-"  # 4 examples: nothing is above chance
    assert "Δ val loss" in stdout


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


# ----------------------------------------------------------------------------- figures

def plotted_points(monkeypatch) -> list[tuple[list, list]]:
    """Every (x, y) that compare's figures hand to Axes.plot."""
    points = []
    original = Axes.plot

    def spy(self, *args, **kwargs):
        if len(args) >= 2:
            points.append((list(args[0]) if hasattr(args[0], "__iter__") else [args[0]],
                           list(args[1]) if hasattr(args[1], "__iter__") else [args[1]]))
        return original(self, *args, **kwargs)
    monkeypatch.setattr(Axes, "plot", spy)
    return points


def test_invalid_log_values_are_counted_and_never_drawn(tmp_path, capsys, monkeypatch):
    events = synthetic_events(n_train=40, hella=(0.3, 0.35))
    bad = ["5 val -3", "6 hella 1.7", "7 val nan", "8 train inf", "100000000000000000000 val 3.0",
           "9 hella -0.1"]
    log = tmp_path / "bad.txt"
    log.write_text("".join(f"{s} {k} {v}\n" for s, k, v in events) + "\n".join(bad) + "\n")
    points = plotted_points(monkeypatch)
    compare.main([str(log), "--out-dir", str(tmp_path / "plots")])
    assert f"{len(bad)} malformed lines skipped" in capsys.readouterr().out
    xs = [x for px, _ in points for x in px]
    ys = [y for _, py in points for y in py]
    assert ys and all(math.isfinite(y) for y in ys) and -3 not in ys and 1.7 not in ys and -0.1 not in ys
    assert max(xs) < 1e9


def test_seeds_are_averaged_with_a_band_in_tokens(tmp_path, capsys, monkeypatch):
    runs = {}
    for model in ("dense", "nd"):
        for seed in range(3):
            events = synthetic_events(seed=10 * seed + len(model), n_train=50, every=10, hella=(0.2, 0.26))
            path = write_log(tmp_path / f"{model}-s{seed}" / "log.txt", events)
            (path.parent / "run.json").write_text(json.dumps({"train_config": {"total_batch": 4096,
                                                                               "hellaswag_limit": 200}}))
            runs.setdefault(model, []).append((path, {s: v for s, k, v in events if k == "val"}))
    points = plotted_points(monkeypatch)
    fills, original_fill = [], Axes.fill_between

    def fill_spy(self, x, low, high, **kwargs):
        fills.append((list(x), list(low), list(high)))
        return original_fill(self, x, low, high, **kwargs)
    monkeypatch.setattr(Axes, "fill_between", fill_spy)
    paths = [p for model in runs.values() for p, _ in model]
    out = tmp_path / "plots"
    compare.main([*map(str, paths), "--labels", *["dense"] * 3, *["nd"] * 3, "--out-dir", str(out)])
    stdout = capsys.readouterr().out
    assert not (out / "hellaswag.png").exists() and "every run ends at chance" in stdout
    assert (out / "val_tokens.png").stat().st_size > 20_000
    for model, seeds in runs.items():
        steps = sorted(seeds[0][1])
        mean = [statistics.fmean(vals[s] for _, vals in seeds) for s in steps]
        assert ([4096 * s for s in steps], pytest.approx(mean)) in points
        assert ([4096 * s for s in steps], [min(v[s] for _, v in seeds) for s in steps],
                [max(v[s] for _, v in seeds) for s in steps]) in fills
        finals = [vals[max(vals)] for _, vals in seeds]
        row = next(line for line in (out / "summary.md").read_text().splitlines()
                   if line.startswith(f"| {model} | 3 |"))
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert cells[2:6] == [f"{statistics.fmean(finals):.4f}", f"{statistics.stdev(finals):.4f}",
                              f"{min(finals):.4f}", f"{max(finals):.4f}"]
        assert cells[7] == f"{49 * 4096:,}"


def test_compare_draws_original_style_figures(tmp_path, capsys):
    log_a = write_log(tmp_path / "a.txt", synthetic_events(seed=2) + [(7, "oops", 1.0)])
    log_b = write_log(tmp_path / "b.txt", synthetic_events(seed=3, n_train=200, hella=(0.3, 0.34)))
    out = tmp_path / "plots"
    compare.main([str(log_a), str(log_b), "--out-dir", str(out), "--labels", "dense", "nd", "--smooth", "0.9",
                  "--tokens-per-step", "524288"])
    stdout = capsys.readouterr().out
    for name in ("loss.png", "val_tokens.png", "hellaswag.png"):  # b ends above chance: hellaswag.png is drawn
        image = mpimg.imread(out / name)
        assert image.shape[:2] == (round(FIGSIZE[1] * DPI), round(FIGSIZE[0] * DPI)), name
        assert (out / name).stat().st_size > 20_000 and image.std() > 0.05, name
    assert "1 malformed" in stdout
    summary = (out / "summary.md").read_text()
    for label, events in (("dense", synthetic_events(seed=2)), ("nd", synthetic_events(seed=3, n_train=200))):
        row = next(line for line in summary.splitlines() if line.startswith(f"| {label} |"))
        cells = [c.strip() for c in row.split("|")[1:-1]]
        min_val, min_step = min((v, s) for s, k, v in events if k == "val")
        assert cells[1] == f"{min(v for _, k, v in events if k == 'train'):.4f}"
        assert cells[2:4] == [f"{min_val:.4f}", str(min_step)] and cells[6] == str(events[-1][0])


def test_an_earlier_comparison_is_replaced_only_with_force(tmp_path):
    with_hella = write_log(tmp_path / "b.txt", synthetic_events(seed=3, hella=(0.3, 0.34)))
    without = write_log(tmp_path / "a.txt", synthetic_events(seed=2, hella=(0.2, 0.24)))  # at chance: no figure
    out = tmp_path / "plots"
    compare.main([str(with_hella), "--out-dir", str(out)])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert "hellaswag.png" in before
    with pytest.raises(UserError, match="already holds loss.png, val_tokens.png, hellaswag.png, summary.md; "
                                        "pass --force"):
        compare.main([str(without), "--out-dir", str(out)])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    compare.main([str(without), "--out-dir", str(out), "--force"])
    assert sorted(p.name for p in out.iterdir()) == ["loss.png", "summary.md", "val_tokens.png"]  # no stale figure
    assert "| a |" in (out / "summary.md").read_text() and "| b |" not in (out / "summary.md").read_text()


def test_compare_rejects_bad_reports_before_writing(tmp_path, real_reports):
    good = write_log(tmp_path / "good.txt", synthetic_events(n_train=30))
    out = tmp_path / "out"
    bad = {"{not json": "not a readable JSON", "[1, 2]": "not a report of",
           json.dumps({"before": {"nonzero": 1, "ppl": 2.0}, "after": {}}): "written by an older"}
    for i, (text, message) in enumerate(bad.items()):
        (tmp_path / f"bad{i}.json").write_text(text)
        with pytest.raises(UserError, match=message):
            compare.main([str(good), "--out-dir", str(out), "--pruning", str(tmp_path / f"bad{i}.json")])
    broken = json.loads(real_reports["wanda"].read_text())
    broken["after"]["val_loss"] = -3.0
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(UserError, match=r"\[after\]: val_loss must be a finite number"):
        compare.main([str(good), "--out-dir", str(out), "--pruning", str(tmp_path / "broken.json")])
    with pytest.raises(UserError, match="a 'eval' report, expected a 'pruning' report"):
        compare.main([str(good), "--out-dir", str(out), "--pruning", str(real_reports["eval"])])
    with pytest.raises(UserError, match="--smooth"):
        compare.main([str(good), "--out-dir", str(out), "--smooth", "1.5"])
    with pytest.raises(UserError, match="--tokens-per-step has 2 entries but 1 logs"):
        compare.main([str(good), "--out-dir", str(out), "--tokens-per-step", "1", "2"])
    assert not out.exists()


@pytest.mark.slow
def test_cli_errors_exit_2_with_one_line(tmp_path, repo_root):
    good = write_log(tmp_path / "good.txt", synthetic_events(n_train=30))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    (tmp_path / "a_file").write_text("x")
    out = tmp_path / "out"
    cases = {
        "no train/val/hella events": [empty, "--out-dir", out],
        "not found": [tmp_path / "nope.txt", "--out-dir", out],
        "--labels has 1 entries but 2 logs": [good, good, "--labels", "one", "--out-dir", out],
        "exists and is not a directory": [good, "--out-dir", tmp_path / "a_file"],
        "is a file, not a directory": [good, "--out-dir", tmp_path / "a_file" / "plots"],
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


def test_eval_seed_rows_mean_std_and_gap_with_its_standard_error():
    from experiment.tables import eval_seed_rows

    def report(model, loss):
        return {"model": model, "metrics": {"val_loss": loss}, "run_id": f"{model}-{loss}",
                "settings": {"eval": {"val_batches": 4}}}

    evals = [report("a", 6.0), report("a", 6.2), report("gpt2-mlp1536", 5.9), report("gpt2-mlp1536", 6.1)]
    headers, rows = eval_seed_rows(evals)
    a, ref = rows
    assert a[:6] == ["a", "2", "6.1000", f"{0.02 ** 0.5:.4f}", "6.0000", "6.2000"]  # sample std of 6.0, 6.2
    # gap of the means 6.1 - 6.0; standard error sqrt(var_a/2 + var_ref/2) = sqrt(0.01 + 0.01)
    assert a[6] == "+0.1000" and a[7] == f"{(0.02 / 2 + 0.02 / 2) ** 0.5:.4f}"
    assert ref[6] == "-" and headers[6] == "gap to gpt2-mlp1536"


def test_sparsity_deltas_average_the_runs_of_a_model():
    """Sweeps of two seeds of one model: one key per (model, method, sparsity, N:M), one Δ per run."""
    from experiment.tables import sparsity_deltas

    def report(model, method, sparsity, nm, before, after):
        return {"model": model, "pruning": {"method": method, "sparsity": sparsity, "nm": nm},
                "before": {"val_loss": before}, "after": {"val_loss": after}, "fingerprint": f"{model}-{before}"}

    reports = [report("gpt2", "wanda", 0.5, None, 6.0, 6.1), report("gpt2", "wanda", 0.5, None, 5.0, 5.3),
               report("gpt2", "wanda", 0.5, [2, 4], 6.0, 6.4), report("ndgpt2", "wanda", 0.5, None, 7.0, 7.5),
               report("gpt2", "magnitude-layer", 0.5, None, 6.0, None)]
    deltas = sparsity_deltas(reports)
    assert deltas.keys() == {("gpt2", "wanda", 0.5, None), ("gpt2", "wanda", 0.5, "2:4"),
                             ("ndgpt2", "wanda", 0.5, None)}
    assert deltas["gpt2", "wanda", 0.5, None] == pytest.approx([0.1, 0.3])
