"""Conventions shared by every command-line script: one-line errors, devices, checked flags and paths."""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class UserError(Exception):
    """Bad input from the user: printed as one line, exit code 2, no traceback."""


def run_main(main, prog: str) -> None:
    """Call ``main()``; turn UserError (and Ctrl-C) into a one-line message and a non-zero exit."""
    try:
        main()
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)


def pick_device(requested: str | None = None) -> str:
    """``requested`` if given (validated), else cuda > mps > cpu."""
    import torch  # lazily: scripts that never touch a device (compare.py) start faster

    if requested:
        try:
            device = torch.device(requested)
        except RuntimeError as e:
            raise UserError(f"unknown device {requested!r}") from e
        available = {"cpu": lambda: True, "cuda": torch.cuda.is_available, "mps": torch.backends.mps.is_available}
        if device.type not in available:
            raise UserError(f"device {requested!r} is not supported; use cpu, cuda, cuda:N or mps")
        if not available[device.type]():
            raise UserError(f"device {requested!r} requested but {device.type.upper()} is not available")
        if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
            raise UserError(f"device {requested!r} requested but there are {torch.cuda.device_count()} CUDA devices")
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


# ----------------------------------------------------------------------------- numeric flags

def _number(kind, text: str, *, low=None, low_open: bool = False):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                         f"got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise argparse.ArgumentTypeError(f"must be {'>' if low_open else '>='} {low}, got {text!r}")
    return value


def finite_float(text: str) -> float:
    """argparse type: any finite float (rejects nan and inf)."""
    return _number(float, text)


def positive_float(text: str) -> float:
    return _number(float, text, low=0, low_open=True)


def nonneg_float(text: str) -> float:
    return _number(float, text, low=0)


def positive_int(text: str) -> int:
    return _number(int, text, low=1)


def nonneg_int(text: str) -> int:
    return _number(int, text, low=0)


def seed_int(text: str) -> int:
    """argparse type: a seed torch.manual_seed takes (numpy's legacy seeding gets it modulo 2**32)."""
    value = _number(int, text, low=0)
    if value >= 2**64:
        raise argparse.ArgumentTypeError(f"must be < 2**64, got {text!r}")
    return value


# ----------------------------------------------------------------------------- paths

def check_output_path(path: str | os.PathLike | None, flag: str, *, force: bool = False,
                      inputs: tuple = ()) -> None:
    """Fail now, before any work, if ``path`` cannot be written as a file: an existing directory, a
    parent that is a file or not writable, an existing file without ``force``, or one of ``inputs``."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a directory; give a file path")
    for other in inputs:
        if other is not None and path.resolve() == Path(other).resolve():
            raise UserError(f"{flag} {path} is also an input; choose another path")
    if path.exists() and not force:
        raise UserError(f"{flag} {path} exists; pass --force to overwrite it")
    check_writable_dir(path.parent, flag, path)


def check_writable_dir(directory: str | os.PathLike, flag: str, shown: str | os.PathLike | None = None) -> None:
    """Fail if ``directory`` (which may not exist yet) cannot be created or written."""
    directory = Path(directory).absolute()
    shown = directory if shown is None else shown
    existing = directory
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{flag} {shown}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {shown}: {existing} is not writable")


# ----------------------------------------------------------------------------- shared argument groups

def add_model_source_args(ap, ckpt_help: str = "checkpoint written by train_gpt.py or pruning/wanda.py") -> None:
    """The --ckpt PATH | --hf NAME_OR_DIR choice of every script that reads a trained GPT."""
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", help=ckpt_help)
    src.add_argument("--hf", metavar="NAME_OR_DIR",
                     help="Hugging Face model: hub name (online) or a local directory (e.g. from export_hf.py)")


def add_runtime_args(ap, seed: int | None = None, seed_default: str | None = None) -> None:
    """--device, --amp/--no-amp (see utils.precision) and, when ``seed`` is given, --seed (``seed_default``:
    the help's words for a default that is not simply ``seed``)."""
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:N, mps (default: best available)")
    ap.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                    help="bf16 autocast (default: on with CUDA; on the CPU only where it multiplies bf16 "
                         "at least as fast as fp32, see utils/precision.py)")
    if seed is not None:
        ap.add_argument("--seed", type=seed_int, default=seed, help=f"random seed (default {seed_default or seed})")


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line and exit code 2 through run_main (no usage block), and where a
    value such as ``-1e-3`` or ``-inf`` reaches its type (which can reject it clearly) instead of being
    taken for an option ("expected one argument")."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$",
                                                   re.IGNORECASE)

    def error(self, message):
        if message.endswith("expected one argument"):  # e.g. --ckpt -lead.pt: the value looks like an option
            flag = message.split()[1].rstrip(":").split("/")[-1]
            message += f" (a value that starts with '-' is written {flag}=VALUE)"
        raise UserError(message)
