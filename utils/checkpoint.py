"""One checkpoint format for every script: atomic writes, versioned, self-describing.

A checkpoint is a dict saved with ``torch.save``::

    {"format": "ndgpt2-checkpoint", "version": 1,
     "kind": "gpt" | "vit", "model_name": str, "config": dict,   # enough to rebuild the model
     "model": state_dict, "fingerprint": str (utils/identity.py), "step": int,
     ...anything else (run_id, data_id, train_config, val_loss, pruning report and its parent)
     ...and, in a resumable training checkpoint, RESUME_KEYS (optimizer, data position, RNG)}

Loading never needs the flags a model was trained with, and works on CPU for a GPU-saved file.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path

import torch

from utils.cli import UserError
from utils.identity import weights_fingerprint
from utils.io import atomic_write

FORMAT = "ndgpt2-checkpoint"
VERSION = 1
RESUME_KEYS = ("optimizer", "data_state", "rng")  # what --resume needs beyond the model


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP and/or torch.compile wrappers."""
    ddp = torch.nn.parallel.DistributedDataParallel
    while isinstance(model, ddp) or hasattr(model, "_orig_mod"):
        model = model.module if isinstance(model, ddp) else model._orig_mod
    return model


def save_checkpoint(path, model, *, kind: str, model_name: str, **extra) -> None:
    """Save ``model`` (unwrapped) with its config, its weights' fingerprint and any extra fields, atomically."""
    model = unwrap(model)
    state = model.state_dict()
    ckpt = {"format": FORMAT, "version": VERSION, "kind": kind, "model_name": model_name,
            "config": model.config.to_dict(), "model": state, "fingerprint": weights_fingerprint(state), **extra}
    atomic_write(path, lambda f: torch.save(ckpt, f))


def load_checkpoint(path, map_location="cpu", expect_kind: str | None = None) -> dict:
    """Read and validate a checkpoint; any problem becomes a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # the unpickler fails on foreign bytes in many ways (KeyError: 101, IndexError...)
        first = str(e).splitlines()[0][:120] if str(e) else ""
        raise UserError(f"{path} is not a checkpoint: corrupt or not a PyTorch file "
                        f"({type(e).__name__}: {first})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is not a checkpoint of this repository (no '{FORMAT}' header)")
    if not isinstance(ckpt.get("version"), int) or ckpt["version"] > VERSION:
        raise UserError(f"{path} has checkpoint version {ckpt.get('version')!r}; this code reads up to {VERSION}")
    for key, kind in (("kind", str), ("model_name", str), ("config", dict), ("model", dict)):
        if not isinstance(ckpt.get(key), kind):
            raise UserError(f"{path}: header field {key!r} is missing or not a {kind.__name__}")
    if expect_kind is not None and ckpt["kind"] != expect_kind:
        raise UserError(f"{path} holds a {ckpt['kind']!r} model ({ckpt['model_name']}), "
                        f"expected a {expect_kind!r} model")
    return ckpt


def is_resumable(ckpt: dict) -> bool:
    return all(key in ckpt for key in (*RESUME_KEYS, "step"))


def strip_to_model(path) -> None:
    """Rewrite a training checkpoint without its RESUME_KEYS (~1/3 of the size for AdamW): it stays
    loadable for evaluation, generation and pruning, and can no longer be resumed."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if any(key in ckpt for key in RESUME_KEYS):
        model_only = {k: v for k, v in ckpt.items() if k not in RESUME_KEYS}
        atomic_write(path, lambda f: torch.save(model_only, f))


def config_from_dict(cls, values: dict, where, what: str, *, defaults: bool = False):
    """``cls(**values)`` for a config dataclass read from a file (``what`` names it in errors), every field
    checked against its annotation: exact types, an int for a float, a list for a tuple (JSON has none).
    ``defaults``: a missing field takes its default (else it is an error). Any problem is a one-line UserError."""
    hints = typing.get_type_hints(cls)  # every field, in order
    unknown = [key for key in values if key not in hints]
    if unknown:
        raise UserError(f"{where}: unknown {what} field(s) {unknown} (written by a newer version? "
                        f"valid: {', '.join(hints)})")
    missing = [] if defaults else [key for key in hints if key not in values]
    if missing:
        raise UserError(f"{where}: {what} field(s) missing: {', '.join(missing)}")
    bad = [f"{key}={value!r} (should be {_type_name(hints[key])})" for key, value in values.items()
           if not _fits(value, hints[key])]
    if bad:
        raise UserError(f"{where}: malformed {what} field(s) {', '.join(bad)}")
    try:
        return cls(**values)
    except ValueError as e:
        raise UserError(f"{where}: {e}") from e


def _fits(value, hint) -> bool:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # int | None
        return any(_fits(value, option) for option in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:  # tuple[int, ...]
        return isinstance(value, (tuple, list)) and all(_fits(v, typing.get_args(hint)[0]) for v in value)
    return type(value) is hint or (hint is float and type(value) is int)


def _type_name(hint) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint)


def gpt_config_from_dict(config: dict, where):
    """GPTConfig from a checkpoint's config dict, validated field by field (one-line errors)."""
    from models import GPTConfig

    return config_from_dict(GPTConfig, config, where, "model config")


def training_of(ckpt: dict) -> dict:
    """{"trained_on", "train_seed"}: the data and seed of the training run that made a checkpoint's weights,
    from its train config, or as a pruned checkpoint carries them forward (None where unknown)."""
    train = ckpt.get("train_config") or ckpt.get("train_args") or {}  # the latter: checkpoints before TrainConfig
    train = train if isinstance(train, dict) else {}
    return {"trained_on": ckpt.get("trained_on") or train.get("data"),
            "train_seed": ckpt.get("train_seed", train.get("seed"))}


def load_gpt(path, device: str = "cpu"):
    """(model on ``device`` in eval mode, checkpoint dict) for any GPT checkpoint of this repo (any
    preset, dense or pruned)."""
    from models import GPT

    ckpt = load_checkpoint(path, expect_kind="gpt")
    model = GPT(gpt_config_from_dict(ckpt["config"], path))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise UserError(f"{path}: weights do not match its config: {str(e).splitlines()[0]}") from e
    return model.to(device).eval(), ckpt


def load_any_gpt(ckpt_path: str | None, hf: str | None, device: str = "cpu"):
    """(model in eval mode on ``device``, description) from a checkpoint of this repo or an HF GPT-2."""
    if ckpt_path is not None:
        model, ckpt = load_gpt(ckpt_path, device)
        return model, f"{ckpt.get('model_name')} step {ckpt.get('step', '?')} from {ckpt_path}"
    from models.gpt2 import GPT

    try:
        model = GPT.from_pretrained(hf)
    except Exception as e:  # hub / network / file errors come in many types
        raise UserError(f"cannot load Hugging Face GPT-2 {hf!r}: {type(e).__name__}: "
                        f"{str(e).splitlines()[0][:160] if str(e) else ''}") from e
    return model.to(device).eval(), f"HF {hf}"
