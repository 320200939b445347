"""One flag vocabulary across the evaluating scripts (issue 22): one spelling each, the old ones as aliases,
and the same default data (the checkpoint's own) everywhere."""

from __future__ import annotations

import json

import pytest

from experiment import test_gpt
from pruning import sweep, wanda
from tests.conftest import run_cli
from tests.test_identity import FAST, save_tiny, shards

PARSERS = {"test_gpt.py": test_gpt.parse_args, "wanda.py": wanda.parse_args, "sweep.py": sweep.parse_args}
SOURCE = {"test_gpt.py": [], "wanda.py": [], "sweep.py": ["--out-dir", "x"]}


@pytest.mark.parametrize("prog", PARSERS)
def test_every_evaluating_script_takes_one_spelling_and_the_old_ones(prog):
    parse, extra = PARSERS[prog], ["--ckpt", "c.pt", *SOURCE[prog]]
    new = parse([*extra, "--val-batches", "3", "--micro-batch", "2", "--hellaswag-limit", "5", "--with-hellaswag"])
    old = parse([*extra, "--batches" if prog == "test_gpt.py" else "--val-batches", "3",
                 "--micro-batch" if prog == "test_gpt.py" else "--val-batch-size", "2", "--limit", "5"])
    assert (new.val_batches, new.micro_batch, new.limit, new.no_hellaswag) == (3, 2, 5, False)
    assert (old.val_batches, old.micro_batch, old.limit) == (3, 2, 5)
    assert parse([*extra, "--no-hellaswag"]).no_hellaswag is True


def test_wanda_defaults_to_the_checkpoints_own_data(tmp_path, capsys):
    data = shards(tmp_path / "d")
    ckpt = save_tiny(tmp_path / "m.pt", trained_on=str(data))
    code, _, err = run_cli(capsys, wanda.main, "wanda.py", "--ckpt", ckpt, "--calib-len", 32, *FAST,
                           "--json", tmp_path / "r.json")
    assert code == 0, err
    assert json.loads((tmp_path / "r.json").read_text())["settings"]["eval"]["data"] == str(data)
