"""experiment/trend.py: the paired gap of ndgpt2 to its control, per study and along the val curves."""

from __future__ import annotations

import json

import pytest

from experiment.trend import curve_gaps, final_gaps, mechanism_rows, plot_trend, trend_rows


def fake_study(root, losses: dict[tuple[str, int], float], curve: dict[tuple[str, int], dict[int, float]],
               n_embd=192, steps=4):
    """runs/<model>-s<seed>/{log.txt, run.json, summary.json} and eval/<model>-s<seed>.json, as mini_repro writes."""
    for (model, seed), loss in losses.items():
        run = root / "runs" / f"{model}-s{seed}"
        run.mkdir(parents=True)
        run.joinpath("log.txt").write_text("".join(f"{s} val {v:.4f}\n" for s, v in curve[model, seed].items()))
        run.joinpath("run.json").write_text(json.dumps({"config": {"n_layer": 4, "n_embd": n_embd},
                                                        "train_config": {"max_steps": steps, "total_batch": 100}}))
        run.joinpath("summary.json").write_text("{}")
        report = {"kind": "eval", "version": 1, "model": model, "source": str(run / "model.pt"), "step": steps,
                  "settings": {"seed": 0, "eval": {}},
                  "metrics": {"params_total": 1, "params_nonzero": 1, "val_loss": loss, "perplexity": 1.0,
                              "val_tokens": 8, "hellaswag": {}}}
        (root / "eval").mkdir(exist_ok=True)
        (root / "eval" / f"{model}-s{seed}.json").write_text(json.dumps(report))
    return root


def test_gaps_are_paired_by_seed_at_the_end_and_along_the_curve(tmp_path):
    curve = {("ndgpt2", 1): {0: 10.0, 2: 7.0, 4: 6.5}, ("gpt2-mlp1536", 1): {0: 10.0, 2: 6.8, 4: 6.2},
             ("ndgpt2", 2): {0: 10.0, 2: 7.1, 4: 6.6}, ("gpt2-mlp1536", 2): {0: 10.0, 2: 7.0, 4: 6.5},
             ("ndgpt2", 3): {0: 10.0, 2: 9.0}}  # seed 3 has no control: not a pair
    losses = {("ndgpt2", 1): 6.4, ("gpt2-mlp1536", 1): 6.1, ("ndgpt2", 2): 6.5, ("gpt2-mlp1536", 2): 6.4,
              ("ndgpt2", 3): 7.0}
    study = fake_study(tmp_path / "mini", losses, curve)
    assert final_gaps(study) == pytest.approx({"1": 0.3, "2": 0.1})
    curves = curve_gaps(study)
    assert sorted(curves) == [0, 2, 4]
    for step, expected in ((0, [0.0, 0.0]), (2, [0.2, 0.1]), (4, [0.3, 0.1])):
        assert curves[step] == pytest.approx(expected)
    rows = trend_rows([("mini", study), ("missing", tmp_path / "nothing")])
    assert rows == [["mini", "4 x 192", "400", "2", "+0.3000, +0.1000", "+0.2000", "+0.1000 to +0.3000"]]
    assert plot_trend([("mini", study)], tmp_path / "trend.png") and (tmp_path / "trend.png").stat().st_size > 0
    assert not plot_trend([("missing", tmp_path / "nothing")], tmp_path / "none.png")


def test_mechanism_rows_put_outliers_beside_the_70_percent_deltas(tmp_path):
    study = tmp_path / "width"
    (study / "outliers").mkdir(parents=True)
    summary = {"mean_share_abs_gt_6": 0.125, "mean_share_sd_gt_6": 0.5, "norm_max_over_median_median": 3.25}
    (study / "outliers" / "ndgpt2-s1.json").write_text(json.dumps({"summary": summary}))
    sweep = study / "sweep" / "ndgpt2-s1"
    sweep.mkdir(parents=True)
    block = {"params_total": 1, "params_nonzero": 1, "perplexity": 1.0, "val_tokens": 8, "hellaswag": {}}
    for method, sparsity, after in (("wanda", 0.7, 6.5), ("magnitude-layer", 0.7, 6.75), ("wanda", 0.5, 9.0)):
        report = {"kind": "pruning", "version": 1, "model": "ndgpt2", "source": "x", "settings": {"eval": {}},
                  "pruning": {"method": method, "sparsity": sparsity, "nm": None},
                  "before": {**block, "val_loss": 6.25}, "after": {**block, "val_loss": after}}
        (sweep / f"{method}-{sparsity}.json").write_text(json.dumps(report))
    assert mechanism_rows([("wider", study)]) == [
        ["wider", "ndgpt2-s1", "12.50%", "50.00%", "3.25", "+0.2500", "+0.5000", "-"]]
