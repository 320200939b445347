"""Conventions shared by every command-line script: repo on sys.path, one-line errors, devices."""

from __future__ import annotations

import sys


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
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"device {requested!r} requested but CUDA is not available")
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"
