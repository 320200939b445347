"""NdGPT-2 presets: GPT-2 whose MLPs are NdLinear (``GPTConfig(mlp="ndlinear", ...)``).

The shapes follow ``n_embd`` so that any preset scales down with the model width (C = n_embd):

* ``ndgpt2`` (96,146,004 params at C=768): NdLinear((C, 1) -> (2C, 2)) and back. Equivalent to a
  2C-wide dense MLP with a learned two-branch activation (see models/gpt2.py).
* ``ndgpt2-82m`` (81,980,976): NdLinear((1, C) -> (1, C)) twice: a C-wide MLP.
* ``ndgpt2-84m`` (84,340,452): NdLinear((C, 1) -> (C, 6)) and back, with a 4096-position table.
"""

from __future__ import annotations


def ndgpt2(n_embd: int) -> dict:
    return dict(mlp="ndlinear", nd_in=(n_embd, 1), nd_hidden=(2 * n_embd, 2))


def ndgpt2_82m(n_embd: int) -> dict:
    return dict(mlp="ndlinear", nd_in=(1, n_embd), nd_hidden=(1, n_embd))


def ndgpt2_84m(n_embd: int) -> dict:
    return dict(mlp="ndlinear", nd_in=(n_embd, 1), nd_hidden=(n_embd, 6), block_size=4096)
