"""Model zoo: ``build_model(name, **overrides)`` for every GPT variant, ``build_vit`` for the vision ones.

Overrides (n_layer, n_head, n_embd, block_size, vocab_size, gelu, ...) scale any model down. The
NdGPT-2 models (``GPTConfig(mlp="ndlinear", ...)``) follow ``n_embd`` (C):

* ``ndgpt2`` (96,146,004 params at C=768): NdLinear((C, 1) -> (2C, 2)) and back. Equivalent to a
  2C-wide dense MLP with a learned two-branch activation (see models/gpt2.py).
* ``ndgpt2-82m`` (81,980,976): NdLinear((1, C) -> (1, C)) twice: a C-wide MLP.
* ``ndgpt2-84m`` (84,340,452): NdLinear((C, 1) -> (C, 6)) and back, with a 4096-position table.
* ``gpt2-mlp1536`` (96,145,920): dense GPT-2 with a 2C-wide MLP, the equal-parameter control of ndgpt2.
"""

from __future__ import annotations

from dataclasses import fields

from models.gpt2 import GPT, GPTConfig
from models.ndvit import NdViT
from models.vit import ViT, ViTConfig

# name -> function(n_embd) giving the model's config fields on top of GPT-2 124M's.
MODELS = {
    "gpt2": lambda c: {},
    "ndgpt2": lambda c: dict(mlp="ndlinear", nd_in=(c, 1), nd_hidden=(2 * c, 2)),
    "ndgpt2-82m": lambda c: dict(mlp="ndlinear", nd_in=(1, c), nd_hidden=(1, c)),
    "ndgpt2-84m": lambda c: dict(mlp="ndlinear", nd_in=(c, 1), nd_hidden=(c, 6), block_size=4096),
    "gpt2-mlp1536": lambda c: dict(mlp_hidden=2 * c),
}
MODEL_NAMES = tuple(MODELS)
VISION_MODELS = {"vit": ViT, "ndvit": NdViT}
VIT_NAMES = tuple(VISION_MODELS)


def model_config(name: str, **overrides) -> GPTConfig:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")
    valid = {f.name for f in fields(GPTConfig)}
    bad = sorted(set(overrides) - valid)
    if bad:
        raise ValueError(f"unknown config field(s) {bad}; valid: {', '.join(sorted(valid))}")
    n_embd = overrides.get("n_embd", GPTConfig.n_embd)
    return GPTConfig(**{**MODELS[name](n_embd), **overrides})


def build_model(name: str, **overrides) -> GPT:
    """A freshly initialised GPT of model ``name`` (see MODELS)."""
    return GPT(model_config(name, **overrides))


def build_vit(name: str, **overrides) -> ViT:
    """A freshly initialised "vit" (ViT-S/16 by default) or "ndvit"; overrides are ViTConfig fields."""
    if name not in VISION_MODELS:
        raise ValueError(f"unknown vision model {name!r}; choose one of: {', '.join(VIT_NAMES)}")
    return VISION_MODELS[name](ViTConfig(**overrides))


__all__ = ["GPT", "GPTConfig", "MODELS", "MODEL_NAMES", "VIT_NAMES", "NdViT", "ViT", "ViTConfig", "build_model",
           "build_vit", "model_config"]
