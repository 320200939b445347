"""Model zoo: ``build_model(name, **overrides)`` for every GPT variant of this repository.

Overrides (n_layer, n_head, n_embd, block_size, vocab_size, gelu, ...) scale any preset down;
the NdLinear shapes of the NdGPT-2 presets follow the final ``n_embd``.
"""

from __future__ import annotations

from dataclasses import fields

from models import ndgpt2
from models.gpt2 import GPT, GPTConfig
from models.vit import VIT_NAMES, ViT, ViTConfig, build_vit

# name -> function(n_embd) giving the preset's config fields on top of GPT-2 124M.
PRESETS = {
    "gpt2": lambda c: {},
    "ndgpt2": ndgpt2.ndgpt2,
    "ndgpt2-82m": ndgpt2.ndgpt2_82m,
    "ndgpt2-84m": ndgpt2.ndgpt2_84m,
    "gpt2-mlp1536": lambda c: dict(mlp_hidden=2 * c),  # equal-parameter dense control of ndgpt2
}
MODEL_NAMES = tuple(PRESETS)


def model_config(name: str, **overrides) -> GPTConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")
    valid = {f.name for f in fields(GPTConfig)}
    bad = sorted(set(overrides) - valid)
    if bad:
        raise ValueError(f"unknown config field(s) {bad}; valid: {', '.join(sorted(valid))}")
    n_embd = overrides.get("n_embd", GPTConfig.n_embd)
    return GPTConfig(**{**PRESETS[name](n_embd), **overrides})


def build_model(name: str, **overrides) -> GPT:
    """A freshly initialised model of preset ``name`` (see PRESETS)."""
    return GPT(model_config(name, **overrides))


__all__ = ["GPT", "GPTConfig", "MODEL_NAMES", "PRESETS", "VIT_NAMES", "ViT", "ViTConfig", "build_model",
           "build_vit", "model_config"]
