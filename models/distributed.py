"""DDP plumbing: where this process sits in the job, the process group, a few collectives.
The entry point ``torchrun`` and a PyTorchJob launch is ``models.worker``.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR for each worker and restarts the whole
group when one dies (``--max-restarts``); workers then resume from rank 0's last checkpoint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job. ``world == 1`` trains without a process group."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"
    local_world: int = 1  # ranks on this machine: they share its cores

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def backend(self) -> str:
        return "nccl" if self.device.startswith("cuda") else "gloo"


def pick_device(requested: str, local_rank: int) -> str:
    """``auto``: this worker's GPU when there is one, else the CPU."""
    if requested == "auto":
        return f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        return f"cuda:{local_rank}"
    return requested


def init(requested_device: str = "auto") -> DistContext:
    """Join the process group torchrun describes in the environment (gloo on CPU, nccl on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    ctx = DistContext(rank, world, local_rank, pick_device(requested_device, local_rank), local_world)
    if ctx.device.startswith("cuda"):
        torch.cuda.set_device(ctx.device)
    if ctx.distributed and not dist.is_initialized():
        dist.init_process_group(backend=ctx.backend, store=_attempt_store(ctx), rank=ctx.rank, world_size=ctx.world)
    return ctx


def _attempt_store(ctx: DistContext) -> dist.Store:
    """The rendezvous store under a prefix of torchrun's restart count.

    After a worker dies, torchrun restarts the group on the same store; with the default prefix the
    new ranks read the dead ranks' gloo addresses and hang or fail to connect.
    """
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        ctx.world,
        is_master=ctx.rank == 0 and not agent_store,  # under torchrun's c10d rendezvous the agent hosts it
    )
    return dist.PrefixStore(f"hap/attempt-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def shutdown(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def all_sum(ctx: DistContext, values: list[float]) -> list[float]:
    """Sum a few numbers over ranks (samples seen, for global throughput)."""
    if not ctx.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return t.tolist()
