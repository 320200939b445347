"""One checkpoint format for every script: atomic writes, versioned, self-describing.

A checkpoint is a dict saved with ``torch.save``::

    {"format": "ndgpt2-checkpoint", "version": 1,
     "kind": "gpt" | "vit", "model_name": str, "config": dict,   # enough to rebuild the model
     "model": state_dict, "step": int, ...anything else (optimizer, val_loss, data_state, rng,
     pruning report)}

Loading never needs the flags a model was trained with, and works on CPU for a GPU-saved file.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch

from utils.cli import UserError

FORMAT = "ndgpt2-checkpoint"
VERSION = 1


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """Write to a temp file in the same directory, fsync, then rename: a crash never leaves a
    half-written file under ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP and/or torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def save_checkpoint(path, model, *, kind: str, model_name: str, **extra) -> None:
    """Save ``model`` (unwrapped) with its config and any extra fields, atomically."""
    model = unwrap(model)
    config = model.config.to_dict() if hasattr(model.config, "to_dict") else dict(vars(model.config))
    payload = {"format": FORMAT, "version": VERSION, "kind": kind, "model_name": model_name,
               "config": config, "model": model.state_dict(), **extra}
    atomic_torch_save(payload, path)


def load_checkpoint(path, map_location="cpu", expect_kind: str | None = None) -> dict:
    """Read and validate a checkpoint; any problem becomes a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError,
            IndexError) as e:  # IndexError: the weights-only unpickler on some non-pickle bytes
        raise UserError(f"cannot read checkpoint {path}: corrupt or not a PyTorch file "
                        f"({str(e).splitlines()[0][:120]})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is not a checkpoint of this repository (no '{FORMAT}' header)")
    if ckpt.get("version", 0) > VERSION:
        raise UserError(f"{path} has checkpoint version {ckpt['version']}; this code reads up to {VERSION}")
    if expect_kind is not None and ckpt.get("kind") != expect_kind:
        raise UserError(f"{path} holds a {ckpt.get('kind')!r} model ({ckpt.get('model_name')}), "
                        f"expected a {expect_kind!r} model")
    return ckpt


def build_gpt_from_checkpoint(ckpt: dict):
    """Rebuild a GPT (any preset, dense or pruned) from a loaded checkpoint dict."""
    from models import GPT, GPTConfig

    config = GPTConfig(**ckpt["config"])
    model = GPT(config)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise UserError(f"checkpoint weights do not match its config: {str(e).splitlines()[0]}") from e
    return model


def load_gpt(path, device: str = "cpu"):
    """(model on ``device`` in eval mode, checkpoint dict) for any GPT checkpoint of this repo."""
    ckpt = load_checkpoint(path, expect_kind="gpt")
    model = build_gpt_from_checkpoint(ckpt).to(device).eval()
    return model, ckpt


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

