"""Parameter counting, for the scripts: the counter lives in models/params.py (GPT.num_params uses it)."""

from models.params import count_params

__all__ = ["count_params"]
