"""Identity by content: what a checkpoint holds and what a data directory holds, as short hashes.

* ``weights_fingerprint(state_dict)``: sha256 over every tensor's name, dtype, shape and bytes. Two models
  with the same fingerprint compute the same function; a retrained or pruned model gets another one.
* ``data_fingerprint(dir)``: sha256 over each shard's split and token bytes, in the manifest's order (the
  sha256 that data/fineweb.py records per shard, else hashed from the files). A moved or copied directory
  keeps its fingerprint; a rebuild from other text gets another one, whatever the path.
* ``new_run_id()``: a random id for every new training run (``--overwrite`` included), kept on resume.

Reuse, resume and comparison decide "the same" from these, never from a path or a model name.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import numpy as np
import torch

from utils.cli import UserError
from utils.shards import MANIFEST, check_finished, read_manifest, tokens_sha256

DIGITS = 16  # 64 bits: collisions are not a concern for the few thousand artifacts of a study


def new_run_id() -> str:
    return uuid.uuid4().hex[:DIGITS]


def weights_fingerprint(state_dict: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()[:DIGITS]


def examples_fingerprint(examples: list[dict] | None) -> str | None:
    """The fingerprint of the HellaSwag examples evaluated (None: none), wherever their file lies."""
    if not examples:
        return None
    return hashlib.sha256(json.dumps(examples, sort_keys=True).encode()).hexdigest()[:DIGITS]


_cache: dict[tuple, str] = {}


def data_fingerprint(data_dir: str | Path) -> str:
    """The fingerprint of a finished shard directory (a UserError for an unfinished build). Shards that a
    manifest lists without a sha256 (built before it was recorded), or a directory without a manifest
    (shards made elsewhere, e.g. by build-nanogpt), are hashed from their files once per process."""
    data_dir = Path(data_dir)
    check_finished(data_dir)
    manifest = read_manifest(data_dir)
    if manifest is not None:
        shards = [(s["split"], s["file"], s.get("sha256")) for s in manifest.get("shards", [])]
    else:
        shards = [(split, p.name, None) for split in ("val", "train")
                  for p in sorted(data_dir.glob(f"*_{split}_*.npy"))]
    if not shards:
        raise UserError(f"{data_dir}: no token shards to identify")
    stamp = tuple((p.stat().st_mtime_ns, p.stat().st_size) for p in map(data_dir.joinpath, (f for _, f, _ in shards))
                  if p.is_file())
    key = (str(data_dir.resolve()), stamp, (data_dir / MANIFEST).is_file())
    if key not in _cache:
        h = hashlib.sha256()
        for split, name, digest in shards:
            if digest is None:
                try:
                    digest = tokens_sha256(np.load(data_dir / name, mmap_mode="r"))
                except (OSError, ValueError) as e:
                    raise UserError(f"{data_dir / name}: not a readable token shard ({e})") from e
            h.update(f"{split} {digest}\n".encode())
        _cache[key] = h.hexdigest()[:DIGITS]
    return _cache[key]
