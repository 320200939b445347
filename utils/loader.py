"""Batches from uint16 token shards: memory-mapped, rank-strided, resumable, in one of two orders.

``order="shards"`` (build-nanogpt's, plus a shard shuffle): each epoch visits the shards in a permutation seeded by
``seed + epoch`` and reads each front to back. Rank r of W reads its B*T+1 tokens at
``pos + r*B*T`` and all ranks advance ``pos`` by B*T*W, so one process doing k micro-steps sees the
same tokens as k processes doing one (within a shard).

``order="windows"``: the split is cut into windows of B*T+1 tokens (one window = one micro-batch) at a
stride of B*T, so consecutive windows share one token (the last target) and every token is an input
once per epoch. A window never straddles two shards; the last < B*T+1 tokens of a shard are not read.
Each epoch reads all the split's windows in a permutation seeded by ``seed + epoch``. One window
counter g runs through the epochs: rank r reads window g + r and all ranks advance g by W, so k
processes x 1 micro-step read exactly what 1 process x k accumulation steps reads, epoch ends included.

Without shuffling (the val split's default) both orders read the split front to back: the same fixed
subset at every evaluation. ``default_order`` picks the order for a directory from its manifest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from utils.cli import UserError
from utils.shards import check_finished, read_manifest

ORDERS = ("shards", "windows")


def default_order(data_dir: str | Path) -> str:
    """The order to read ``data_dir``'s train split in when none is asked for, from its done.json source:
    "windows" for local files (documents in file order, e.g. whole books one after another); "shards" for
    FineWeb-EDU (its documents are already shuffled), the builtin corpus (so the smoke run stays as it
    was) and shards without a manifest."""
    settings = (read_manifest(data_dir) or {}).get("settings")
    return "windows" if isinstance(settings, dict) and settings.get("source") == "files" else "shards"


def find_shards(data_dir: str | Path, split: str) -> list[Path]:
    """The split's shards ``*_{split}_*.npy`` in ``data_dir``, sorted by name."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        problem = "is a file, not a directory of token shards" if data_dir.exists() else "does not exist"
        raise UserError(f"data directory {data_dir} {problem} (build one with data/fineweb.py)")
    check_finished(data_dir)
    shards = sorted(data_dir.glob(f"*_{split}_*.npy"))
    if not shards:
        raise UserError(f"no '{split}' shards (*_{split}_*.npy) in {data_dir}")
    return shards


def check_vocab(path: Path, tokens: np.ndarray, vocab_size: int | None) -> None:
    """A one-line error when ``tokens`` (from shard ``path``) hold an id the model has no embedding for."""
    if vocab_size is None or vocab_size >= 2**16 or not len(tokens):
        return  # uint16 ids are always < 65536
    top = int(tokens.max())
    if top >= vocab_size:
        raise UserError(f"{path}: token id {top} is outside the model's vocabulary of {vocab_size} "
                        "(shards made with another tokenizer?)")


def open_shard(path: Path, vocab_size: int | None = None) -> np.ndarray:
    """A read-only memory map of one shard (nothing is read until it is sliced, or checked against
    ``vocab_size``: one pass over the file)."""
    try:
        tokens = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable .npy token shard ({e})") from e
    if tokens.ndim != 1 or tokens.dtype != np.uint16:
        raise UserError(f"{path}: expected a 1-D uint16 token array, got {tokens.dtype} {tokens.shape}")
    check_vocab(path, tokens, vocab_size)
    return tokens


class ShardLoader:
    """``next_batch() -> (x, y)``, int64 CPU tensors of shape (B, T) with y = x shifted by one.

    ``shuffle`` (default: only the train split) permutes each epoch; ``order`` None means
    ``default_order(data_dir)``; ``vocab_size`` checks every shard's ids against the model's when opened.
    """

    def __init__(self, data_dir: str | Path, split: str, batch_size: int, seq_len: int, rank: int = 0,
                 world_size: int = 1, seed: int = 0, shuffle: bool | None = None, order: str | None = None,
                 vocab_size: int | None = None):
        if batch_size < 1 or seq_len < 1:
            raise UserError(f"batch size and sequence length must be >= 1, got {batch_size} and {seq_len}")
        if not 0 <= rank < world_size:
            raise UserError(f"rank {rank} is not in a world of size {world_size}")
        self.order = default_order(data_dir) if order is None else order
        if self.order not in ORDERS:
            raise UserError(f"unknown data order {self.order!r} (use {' or '.join(ORDERS)})")
        self.B, self.T, self.rank, self.world_size, self.seed = batch_size, seq_len, rank, world_size, seed
        self.shuffle = (split == "train") if shuffle is None else shuffle
        self.step_tokens = batch_size * seq_len * world_size
        tokens = [open_shard(p, vocab_size) for p in find_shards(data_dir, split)]
        # "shards": every rank must skip the same shards, so a shard must fit one step of the whole world
        need = (self.step_tokens if self.order == "shards" else batch_size * seq_len) + 1
        self.shard_tokens = [t for t in tokens if len(t) >= need]
        if not self.shard_tokens:
            world = f" x world {world_size}" if self.order == "shards" else ""
            raise UserError(f"no '{split}' shard in {data_dir} holds one step of {need} tokens "
                            f"(B={batch_size} x T={seq_len}{world} + 1); "
                            f"the longest has {max(map(len, tokens))}")
        self.window_ends = np.cumsum([(len(t) - 1) // (batch_size * seq_len) for t in self.shard_tokens])
        self.n_windows = int(self.window_ends[-1])
        # steps (of every rank) before an epoch wraps around: what an evaluation may ask for without repeats
        self.steps_per_epoch = (self.n_windows // world_size if self.order == "windows" else
                                sum((len(t) - 1) // self.step_tokens for t in self.shard_tokens))
        self._permutation = (-1, None)  # (epoch, its window permutation)
        self.reset()

    def reset(self) -> None:
        """Back to the first batch of epoch 0 (the val loader does this before every evaluation)."""
        self.window = 0
        self._load(0, 0, 0)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.order == "windows":
            chunk = self._read_window(self.window + self.rank)
            self.window += self.world_size
        else:
            chunk = self._read_shards_step()
        chunk = torch.from_numpy(chunk.astype(np.int64))
        return chunk[:-1].view(self.B, self.T), chunk[1:].view(self.B, self.T)

    # ---- order="windows"

    def _read_window(self, g: int) -> np.ndarray:
        epoch, i = divmod(g, self.n_windows)
        if self.shuffle:
            if self._permutation[0] != epoch:
                self._permutation = (epoch, np.random.default_rng(self.seed + epoch).permutation(self.n_windows))
            i = int(self._permutation[1][i])
        k = int(np.searchsorted(self.window_ends, i, side="right"))
        start = (i - int(self.window_ends[k - 1] if k else 0)) * self.B * self.T
        return self.shard_tokens[k][start:start + self.B * self.T + 1]

    # ---- order="shards"

    def shard_order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(len(self.shard_tokens)))
        return np.random.default_rng(self.seed + epoch).permutation(len(self.shard_tokens)).tolist()

    def _load(self, epoch: int, shard: int, pos: int) -> None:
        self.epoch, self.shard, self.pos = epoch, shard, pos
        self.tokens = self.shard_tokens[self.shard_order(epoch)[shard]]

    def _read_shards_step(self) -> np.ndarray:
        start = self.pos + self.rank * self.B * self.T
        chunk = self.tokens[start:start + self.B * self.T + 1]
        self.pos += self.step_tokens
        if self.pos + self.step_tokens + 1 > len(self.tokens):
            if self.shard + 1 < len(self.shard_tokens):
                self._load(self.epoch, self.shard + 1, 0)
            else:
                self._load(self.epoch + 1, 0, 0)
        return chunk

    # ---- resuming

    def state_dict(self) -> dict:
        state = {"order": self.order, "world_size": self.world_size}
        if self.order == "windows":
            return {**state, "window": int(self.window), "windows": self.n_windows,
                    "batch_tokens": self.B * self.T}
        return {**state, "epoch": int(self.epoch), "shard": int(self.shard), "pos": int(self.pos)}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict):
            raise UserError(f"bad data loader state {state!r}")
        order = state.get("order", "shards")  # states saved before there were orders
        world = state.get("world_size", self.world_size)
        if (order, world) != (self.order, self.world_size):
            raise UserError(f"the data loader state is for order '{order}' on {world} process(es), this run "
                            f"reads order '{self.order}' on {self.world_size} (resume with the same --order "
                            "and number of processes)")
        try:
            if order == "windows":
                window, windows, batch = int(state["window"]), int(state["windows"]), int(state["batch_tokens"])
            else:
                epoch, shard, pos = int(state["epoch"]), int(state["shard"]), int(state["pos"])
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"bad data loader state {state!r}") from e
        if order == "windows":
            if window < 0 or (windows, batch) != (self.n_windows, self.B * self.T):
                raise UserError(f"data loader state {state} does not match the {self.n_windows} windows of "
                                f"{self.B * self.T + 1} tokens here (different data or batch shape?)")
            self.window = window
            return
        if epoch < 0 or not 0 <= shard < len(self.shard_tokens) or pos < 0:
            raise UserError(f"data loader state {state} does not match the {len(self.shard_tokens)} shards here")
        self._load(epoch, shard, pos)
        if pos + self.step_tokens + 1 > len(self.tokens):
            raise UserError(f"data loader state {state} is past the end of its shard (different data?)")


def sample_windows(data_dir: str | Path, split: str, n: int, seq_len: int, seed: int,
                   vocab_size: int | None = None) -> torch.Tensor:
    """``n`` windows of ``seq_len`` tokens, starts uniform over the split's shards (Wanda calibration).
    With ``vocab_size``, the drawn tokens are checked against the model's vocabulary."""
    if n < 1 or seq_len < 1:
        raise UserError(f"need n >= 1 windows of seq_len >= 1, got {n} x {seq_len}")
    paths = find_shards(data_dir, split)
    shards = [open_shard(p) for p in paths]
    bounds = np.cumsum([max(0, len(s) - seq_len + 1) for s in shards])  # window starts up to each shard's end
    if bounds[-1] == 0:
        raise UserError(f"no '{split}' shard in {data_dir} holds {seq_len} tokens")
    picks = np.random.default_rng(seed).integers(0, bounds[-1], size=n)
    windows = np.empty((n, seq_len), dtype=np.int64)
    for row, g in enumerate(picks):
        i = int(np.searchsorted(bounds, g, side="right"))
        offset = int(g - (bounds[i - 1] if i else 0))
        windows[row] = shards[i][offset:offset + seq_len]
        check_vocab(paths[i], windows[row], vocab_size)
    return torch.from_numpy(windows)
