"""experiment/trend.py: the paired gap of ndgpt2 to its control, per study and along the val curves, with runs
and reports paired by the model and seed they record (never by file names)."""

from __future__ import annotations

import json

import pytest

from experiment.tables import train_seed
from experiment.trend import agreement_rows, curve_gaps, final_gaps, mechanism_rows, plot_trend, trend_rows
from utils.cli import UserError

TRAIN = {"max_steps": 4, "total_batch": 100, "data": "/somewhere/prose", "order": "windows"}


def write_run(run, model, seed, curve, data_id="d1", **train):
    run.mkdir(parents=True)
    run.joinpath("log.txt").write_text("".join(f"{s} val {v:.4f}\n" for s, v in curve.items()))
    run.joinpath("run.json").write_text(json.dumps({
        "model": model, "config": {"n_layer": 4, "n_embd": 192}, "data_id": data_id,
        "train_config": {**TRAIN, "model": model, "seed": seed, **train}}))
    run.joinpath("summary.json").write_text("{}")


def eval_report(model, source, loss, seed=None, data_id="v1"):
    return {"kind": "eval", "version": 1, "model": model, "source": str(source), "step": 4, "train_seed": seed,
            "settings": {"seed": 0, "eval": {"data_id": data_id}},
            "metrics": {"params_total": 1, "params_nonzero": 1, "val_loss": loss, "perplexity": 1.0,
                        "val_tokens": 8, "hellaswag": {}}}


def fake_study(root, losses: dict[tuple[str, int], float], curve: dict[tuple[str, int], dict[int, float]]):
    """Runs and reports under names that say nothing (run0, run1, ...): only their contents pair them."""
    (root / "eval").mkdir(parents=True)
    for i, ((model, seed), loss) in enumerate(losses.items()):
        run = root / "runs" / f"run{i}"
        write_run(run, model, seed, curve[model, seed])
        (root / "eval" / f"report{i}.json").write_text(json.dumps(eval_report(model, run / "model.pt", loss, seed)))
    return root


def test_gaps_are_paired_by_recorded_seed_at_the_end_and_along_the_curve(tmp_path):
    curve = {("ndgpt2", 1): {0: 10.0, 2: 7.0, 4: 6.5}, ("gpt2-mlp1536", 1): {0: 10.0, 2: 6.8, 4: 6.2},
             ("ndgpt2", 2): {0: 10.0, 2: 7.1, 4: 6.6}, ("gpt2-mlp1536", 2): {0: 10.0, 2: 7.0, 4: 6.5},
             ("ndgpt2", 3): {0: 10.0, 2: 9.0}}  # seed 3 has no control: not a pair
    losses = {("gpt2-mlp1536", 2): 6.4, ("ndgpt2", 1): 6.4, ("ndgpt2", 2): 6.5, ("gpt2-mlp1536", 1): 6.1,
              ("ndgpt2", 3): 7.0}
    study = fake_study(tmp_path / "mini", losses, curve)
    assert final_gaps(study) == pytest.approx({1: 0.3, 2: 0.1})
    curves = curve_gaps(study)
    assert sorted(curves) == [0, 2, 4]
    for step, expected in ((0, [0.0, 0.0]), (2, [0.2, 0.1]), (4, [0.3, 0.1])):
        assert curves[step] == pytest.approx(expected)
    rows = trend_rows([("mini", study), ("missing", tmp_path / "nothing")])
    assert rows == [["mini", "4 x 192", "400", "2", "+0.3000, +0.1000", "+0.2000", "+0.1000 to +0.3000"]]
    assert plot_trend([("mini", study)], tmp_path / "trend.png") and (tmp_path / "trend.png").stat().st_size > 0
    assert not plot_trend([("missing", tmp_path / "nothing")], tmp_path / "none.png")


def test_a_report_without_train_seed_takes_it_from_its_checkpoints_run(tmp_path):
    run = tmp_path / "runs" / "ndgpt2-s9"  # the name says 9; run.json says 2, and run.json wins
    write_run(run, "ndgpt2", 2, {0: 1.0})
    assert train_seed(eval_report("ndgpt2", run / "model.pt", 6.0), "r.json") == 2
    assert train_seed(eval_report("ndgpt2", tmp_path / "nowhere" / "model.pt", 6.0, seed=5), "r.json") == 5
    with pytest.raises(UserError, match="a run of ndgpt2 with seed 2, not of gpt2"):
        train_seed(eval_report("gpt2", run / "model.pt", 6.0), "r.json")
    with pytest.raises(UserError, match="names no training seed"):
        train_seed(eval_report("gpt2", tmp_path / "nowhere" / "model.pt", 6.0), "r.json")


@pytest.mark.parametrize("change, message", [
    ({"data_id": "d2"}, "different data"),
    ({"max_steps": 8}, "different max_steps"),
])
def test_runs_that_did_not_train_alike_are_not_a_pair(tmp_path, change, message):
    study = tmp_path / "s"
    write_run(study / "runs" / "a", "ndgpt2", 1, {0: 1.0})
    write_run(study / "runs" / "b", "gpt2-mlp1536", 1, {0: 1.0}, **change)
    with pytest.raises(UserError, match=message):
        curve_gaps(study)


def test_two_runs_or_reports_of_one_seed_are_refused(tmp_path):
    study = tmp_path / "s"
    write_run(study / "runs" / "a", "ndgpt2", 1, {0: 1.0})
    write_run(study / "runs" / "b", "ndgpt2", 1, {0: 1.0})
    with pytest.raises(UserError, match="both runs of ndgpt2 with seed 1"):
        curve_gaps(study)
    (study / "eval").mkdir()
    for name in ("x", "y"):
        (study / "eval" / f"{name}.json").write_text(json.dumps(eval_report("ndgpt2", "m.pt", 6.0, seed=1)))
    with pytest.raises(UserError, match="both evaluate ndgpt2 seed 1"):
        final_gaps(study)


def test_final_gaps_need_equal_eval_settings(tmp_path):
    study = tmp_path / "s"
    (study / "eval").mkdir(parents=True)
    (study / "eval" / "a.json").write_text(json.dumps(eval_report("ndgpt2", "m.pt", 6.0, seed=1)))
    (study / "eval" / "b.json").write_text(json.dumps(eval_report("gpt2-mlp1536", "m.pt", 5.9, seed=1,
                                                                  data_id="v2")))
    with pytest.raises(UserError, match="different settings"):
        final_gaps(study)


def test_mechanism_rows_put_outliers_beside_the_70_percent_deltas_of_the_same_weights(tmp_path):
    study = tmp_path / "width"
    (study / "outliers").mkdir(parents=True)
    summary = {"mean_share_abs_gt_6": 0.125, "mean_share_sd_gt_6": 0.5, "norm_max_over_median_median": 3.25}
    calib = {"calib_samples": 128, "calib_len": 256, "seed": 0}
    checkpoint = {"model": "ndgpt2", "source": "x", "fingerprint": "f1", "train_seed": 1}
    (study / "outliers" / "anything.json").write_text(json.dumps(
        {"checkpoint": checkpoint, "settings": calib, "summary": summary}))
    sweep = study / "sweep" / "other-name"
    sweep.mkdir(parents=True)
    block = {"params_total": 1, "params_nonzero": 1, "perplexity": 1.0, "val_tokens": 8, "hellaswag": {}}
    cases = (("wanda", 0.7, 6.5, "f1", 128), ("magnitude-layer", 0.7, 6.75, "f1", 128), ("wanda", 0.5, 9.0, "f1", 128),
             ("magnitude-row", 0.7, 7.0, "f2", 128),  # other weights
             ("magnitude-row", 0.7, 8.0, "f1", 64))  # other calibration
    for i, (method, sparsity, after, fingerprint, samples) in enumerate(cases):
        report = {"kind": "pruning", "version": 1, "model": "ndgpt2", "source": "x", "fingerprint": fingerprint,
                  "settings": {**calib, "calib_samples": samples, "eval": {}},
                  "pruning": {"method": method, "sparsity": sparsity, "nm": None},
                  "before": {**block, "val_loss": 6.25}, "after": {**block, "val_loss": after}}
        (sweep / f"r{i}.json").write_text(json.dumps(report))
    assert mechanism_rows([("wider", study)]) == [
        ["wider", "ndgpt2-s1", "12.50%", "50.00%", "3.25", "+0.2500", "+0.5000", "-"]]


def test_agreement_rows_compare_a_remade_run_with_the_committed_one_that_trained_alike(tmp_path):
    write_run(tmp_path / "mini" / "runs" / "x", "ndgpt2", 1, {0: 10.0, 4: 6.5})
    write_run(tmp_path / "remade" / "runs" / "y", "ndgpt2", 1, {0: 10.0, 4: 6.5002})
    write_run(tmp_path / "remade" / "runs" / "z", "gpt2", 1, {0: 10.0, 4: 6.0})  # nothing committed to compare
    for run in ("mini/runs/x", "remade/runs/y"):
        with open(tmp_path / run / "log.txt", "a") as log:
            log.write("3 train 7.0000\n" if run.startswith("mini") else "3 train 7.0010\n")
    rows = agreement_rows(tmp_path / "remade", tmp_path / "mini")
    assert rows == [["ndgpt2-s1", "1", "1.00e-03", "2.00e-04", "6.5000", "6.5002"]]
    write_run(tmp_path / "other" / "runs" / "y", "ndgpt2", 1, {0: 10.0, 4: 6.5}, lr=2e-3)
    with pytest.raises(UserError, match="not the same run: they trained with different lr"):
        agreement_rows(tmp_path / "other", tmp_path / "mini")


def test_a_legacy_run_is_compared_with_a_fingerprinted_one_by_its_data_directory(tmp_path):
    """A committed run from before run.json named its data (no data_id) against a re-made one that does: the data
    directory's name decides, so the same books agree and another directory is still refused."""
    write_run(tmp_path / "mini" / "runs" / "x", "ndgpt2", 1, {0: 10.0, 4: 6.5}, data_id=None)
    write_run(tmp_path / "remade" / "runs" / "y", "ndgpt2", 1, {0: 10.0, 4: 6.5}, data_id="d9")
    for run in ("mini/runs/x", "remade/runs/y"):
        with open(tmp_path / run / "log.txt", "a") as log:
            log.write("3 train 7.0000\n")
    assert [row[0] for row in agreement_rows(tmp_path / "remade", tmp_path / "mini")] == ["ndgpt2-s1"]
    write_run(tmp_path / "moved" / "runs" / "y", "ndgpt2", 1, {0: 10.0, 4: 6.5}, data_id="d9", data="/x/wiki")
    with pytest.raises(UserError, match="different data"):
        agreement_rows(tmp_path / "moved", tmp_path / "mini")
