"""Where and how one training process runs: its device, bf16 autocast, its rank in the world of processes
(torchrun), and who speaks (rank 0).

    rt = start(args.device, "train_gpt.py")   # torchrun's RANK/LOCAL_RANK/WORLD_SIZE start a process group
    ...; stop(rt)
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist
from tqdm import tqdm

from utils.cli import pick_device
from utils.precision import resolve_amp


@dataclass(frozen=True)
class Runtime:
    """One process of a training run; ``say`` and ``warn`` print on rank 0 only."""
    device: str  # cpu, cuda:N, mps
    rank: int = 0
    world: int = 1  # processes
    amp: bool = False  # bf16 autocast
    prog: str = ""  # the script, which names itself in warnings

    @property
    def master(self) -> bool:
        """Rank 0: the process that writes files and speaks."""
        return self.rank == 0

    @property
    def ddp(self) -> bool:
        return self.world > 1

    @property
    def device_type(self) -> str:
        return torch.device(self.device).type

    def say(self, msg: str) -> None:
        if self.master:
            tqdm.write(msg)

    def warn(self, msg: str) -> None:
        if self.master:
            print(f"{self.prog}: {msg}", file=sys.stderr)

    def barrier(self) -> None:
        if self.ddp:
            dist.barrier()

    def with_amp(self, requested: bool | None) -> Runtime:
        """This runtime with bf16 autocast as ``requested`` (None: utils/precision.py's rule for the device)."""
        return replace(self, amp=resolve_amp(self.device, requested))


def start(device: str | None, prog: str) -> Runtime:
    """This process's Runtime. Under torchrun (WORLD_SIZE > 1) it joins the process group: nccl on its own
    GPU (cuda:LOCAL_RANK) where CUDA is available and ``device`` allows it, else gloo on the CPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        rank, local_rank, world = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
        if torch.cuda.is_available() and (device is None or device.startswith("cuda")):
            torch.cuda.set_device(f"cuda:{local_rank}")
            dist.init_process_group(backend="nccl")
            return Runtime(f"cuda:{local_rank}", rank, world, prog=prog)
        dist.init_process_group(backend="gloo")
        return Runtime("cpu", rank, world, prog=prog)
    return Runtime(pick_device(device), prog=prog)


def stop(rt: Runtime) -> None:
    if rt.ddp and dist.is_initialized():
        dist.destroy_process_group()
