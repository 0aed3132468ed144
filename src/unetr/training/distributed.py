"""The torchrun environment, rank-0 helpers and reductions.

``torchrun`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; this module is the only place in the
package that reads them. With one process (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) nothing is
initialised and every helper is a no-op, so the same training code runs both ways.

Commands::

    unetr train DATASET --out runs/NAME                                   # one process: CPU or one GPU
    torchrun --standalone --nproc_per_node=4 -m unetr train DATASET --out runs/NAME   # 4 GPUs, one node
    # two nodes of 8 GPUs; run on each node with its --node_rank (0 and 1):
    torchrun --nnodes=2 --nproc_per_node=8 --node_rank=0 --rdzv_backend=c10d \
        --rdzv_endpoint=HOST0:29500 -m unetr train DATASET --out runs/NAME

Each process trains on its own crops (``batch_size`` volumes per process and step), gradients are
averaged, validation cases are split over the processes and their counts summed, and only rank 0 writes.
The run directory must be on a file system every node sees (for resume).
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any, List, Mapping, Optional

import torch
import torch.distributed as dist

from unetr.device import resolve_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: its rank, the number of processes, its device."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto", environ: Optional[Mapping[str, str]] = None, timeout_s: float = 1800.0) -> DistEnv:
    """Read the torchrun environment and join the process group when there is more than one process.

    Args:
        device: ``auto``, ``cpu``, ``cuda`` (each process takes its ``LOCAL_RANK`` GPU) or an explicit device.
        environ: the environment to read (``os.environ`` when omitted).
        timeout_s: collective timeout.

    Returns:
        The :class:`DistEnv` of this process. NCCL is used on GPUs, gloo on CPUs.
    """
    env = os.environ if environ is None else environ
    world_size = int(env.get("WORLD_SIZE", "1"))
    rank = int(env.get("RANK", "0"))
    local_rank = int(env.get("LOCAL_RANK", str(rank)))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs: dict = dict(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
        if dev.type == "cuda":
            kwargs["device_id"] = dev
        try:
            dist.init_process_group(**kwargs)
        except TypeError:  # torch without device_id
            kwargs.pop("device_id", None)
            dist.init_process_group(**kwargs)
        log.debug("rank %d/%d joined the %s process group on %s", rank, world_size, backend, dev)
    return DistEnv(rank=rank, local_rank=local_rank, world_size=world_size, device=dev)


def teardown(env: DistEnv) -> None:
    """Leave the process group (no-op with one process)."""
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    """Wait for every process (no-op with one process)."""
    if env.distributed:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum ``tensor`` over the processes in place and return it (unchanged with one process)."""
    if env.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean(value: float, env: DistEnv) -> float:
    """The mean of a Python number over the processes."""
    if not env.distributed:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / env.world_size


def any_true(flag: bool, env: DistEnv) -> bool:
    """True on every process if ``flag`` is true on at least one (for a collective stop)."""
    if not env.distributed:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def broadcast_object(obj: Any, env: DistEnv, src: int = 0) -> Any:
    """Rank ``src``'s Python object on every process."""
    if not env.distributed:
        return obj
    box: List[Any] = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
