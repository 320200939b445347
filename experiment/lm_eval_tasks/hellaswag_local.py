"""Dataset loader of the ``hellaswag_local`` lm-eval task: this repository's HellaSwag reader
(evaluation/hellaswag.py), which builds lm-eval's query ("activity_label: ctx", preprocessed) and choices."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from evaluation.hellaswag import default_hellaswag_path, load_hellaswag


def load(hellaswag_path: str | None = None, **_metadata):
    """DatasetDict {"validation": rows of query, choices, gold}; the other metadata lm-eval passes
    (model arguments, version) is ignored."""
    import datasets

    examples = load_hellaswag(default_hellaswag_path(hellaswag_path))
    rows = [{"query": ex["query"], "choices": ex["choices"], "gold": ex["label"]} for ex in examples]
    return datasets.DatasetDict({"validation": datasets.Dataset.from_list(rows)})
