"""Batches from uint16 token shards: memory-mapped, rank-strided, resumable, shuffled per epoch.

Rank r of W reads its B*T+1 tokens at ``pos + r*B*T`` and all ranks advance ``pos`` by B*T*W, so one
process doing k micro-steps sees the same tokens as k processes doing one (within a shard).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from utils.cli import UserError


def find_shards(data_dir: str | Path, split: str) -> list[Path]:
    """The split's shards ``*_{split}_*.npy`` in ``data_dir``, sorted by name."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"data directory {data_dir} does not exist (build it with data/fineweb.py)")
    shards = sorted(data_dir.glob(f"*_{split}_*.npy"))
    if not shards:
        raise UserError(f"no '{split}' shards (*_{split}_*.npy) in {data_dir}")
    return shards


def open_shard(path: Path) -> np.ndarray:
    """A read-only memory map of one shard (nothing is read until it is sliced)."""
    try:
        tokens = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable .npy token shard ({e})") from e
    if tokens.ndim != 1 or tokens.dtype != np.uint16:
        raise UserError(f"{path}: expected a 1-D uint16 token array, got {tokens.dtype} {tokens.shape}")
    return tokens


def num_tokens(data_dir: str | Path, split: str) -> int:
    return sum(len(open_shard(p)) for p in find_shards(data_dir, split))


class ShardLoader:
    """``next_batch() -> (x, y)``, int64 CPU tensors of shape (B, T) with y = x shifted by one."""

    def __init__(self, data_dir: str | Path, split: str, batch_size: int, seq_len: int, rank: int = 0,
                 world_size: int = 1, seed: int = 0, shuffle: bool | None = None):
        if batch_size < 1 or seq_len < 1:
            raise UserError(f"batch size and sequence length must be >= 1, got {batch_size} and {seq_len}")
        if not 0 <= rank < world_size:
            raise UserError(f"rank {rank} is not in a world of size {world_size}")
        self.B, self.T, self.rank, self.world_size, self.seed = batch_size, seq_len, rank, world_size, seed
        self.shuffle = (split == "train") if shuffle is None else shuffle
        self.step_tokens = batch_size * seq_len * world_size
        paths = find_shards(data_dir, split)
        # every rank must skip the same shards, so "fits" means one step of the whole world fits
        self.shards = [p for p in paths if len(open_shard(p)) >= self.step_tokens + 1]
        if not self.shards:
            longest = max(len(open_shard(p)) for p in paths)
            need = self.step_tokens + 1
            raise UserError(f"no '{split}' shard in {data_dir} holds one step of {need} tokens "
                            f"(B={batch_size} x T={seq_len} x world {world_size} + 1); "
                            f"the longest has {longest}")
        self.reset()

    def shard_order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(len(self.shards)))
        return np.random.default_rng(self.seed + epoch).permutation(len(self.shards)).tolist()

    def _load(self, epoch: int, shard: int, pos: int) -> None:
        self.epoch, self.shard, self.pos = epoch, shard, pos
        self.order = self.shard_order(epoch)
        self.tokens = open_shard(self.shards[self.order[shard]])

    def reset(self) -> None:
        """Back to the first batch of epoch 0 (the val loader does this before every evaluation)."""
        self._load(0, 0, 0)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        B, T = self.B, self.T
        start = self.pos + self.rank * B * T
        chunk = torch.from_numpy(self.tokens[start:start + B * T + 1].astype(np.int64))
        x, y = chunk[:-1].view(B, T), chunk[1:].view(B, T)
        self.pos += self.step_tokens
        if self.pos + self.step_tokens + 1 > len(self.tokens):
            if self.shard + 1 < len(self.shards):
                self._load(self.epoch, self.shard + 1, 0)
            else:
                self._load(self.epoch + 1, 0, 0)
        return x, y

    def state_dict(self) -> dict:
        return {"epoch": int(self.epoch), "shard": int(self.shard), "pos": int(self.pos)}

    def load_state_dict(self, state: dict) -> None:
        try:
            epoch, shard, pos = int(state["epoch"]), int(state["shard"]), int(state["pos"])
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"bad data loader state {state!r}") from e
        if epoch < 0 or not 0 <= shard < len(self.shards) or pos < 0:
            raise UserError(f"data loader state {state} does not match the {len(self.shards)} shards here")
        self._load(epoch, shard, pos)
        if pos + self.step_tokens + 1 > len(self.tokens):
            raise UserError(f"data loader state {state} is past the end of its shard (different data?)")


def sample_windows(data_dir: str | Path, split: str, n: int, seq_len: int, seed: int) -> torch.Tensor:
    """``n`` windows of ``seq_len`` tokens, starts uniform over the split's shards (Wanda calibration)."""
    if n < 1 or seq_len < 1:
        raise UserError(f"need n >= 1 windows of seq_len >= 1, got {n} x {seq_len}")
    shards = [open_shard(p) for p in find_shards(data_dir, split)]
    starts_per_shard = np.array([max(0, len(s) - seq_len + 1) for s in shards])
    if starts_per_shard.sum() == 0:
        raise UserError(f"no '{split}' shard in {data_dir} holds {seq_len} tokens")
    bounds = np.cumsum(starts_per_shard)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, bounds[-1], size=n)
    windows = np.empty((n, seq_len), dtype=np.int64)
    for row, g in enumerate(picks):
        i = int(np.searchsorted(bounds, g, side="right"))
        offset = int(g - (bounds[i - 1] if i else 0))
        windows[row] = shards[i][offset:offset + seq_len]
    return torch.from_numpy(windows)
