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
Rank 0 plans and preprocesses first while the others wait on a marker file rather than in a collective
(:func:`main_first`), so preparation may take longer than the process group's timeout. The run directory
and the cache must be on a file system every node sees: the waiting ranks read rank 0's marker, plan and
cache there, and a resume reads ``last.pt`` from it.
"""

from __future__ import annotations

import datetime
import gc
import json
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Mapping, Optional, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from unetr.device import resolve_device
from unetr.errors import UnetrError
from unetr.fsutil import atomic_write_text

T = TypeVar("T")

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
    """Leave the process group (no-op with one process), and leave nothing of it to the interpreter's exit.

    Objects that hold the group (a DDP wrapper kept in a reference cycle, as an exception's frames can leave
    one) are collected before it is destroyed, and what the destruction leaves is collected after. Without
    this, with gloo, a rank that left the group and exited while its peer was still running aborted during
    its exit now and then ("terminate called without an active exception", SIGABRT), which torchrun reports
    as the rank's failure: 7 of 40 two-process runs of a DDP step then destroy_process_group (torch 2.13,
    2-core CPU), against 0 of 40 through this function (``benchmarks/teardown_abort.py``); and 3 of 10 with a
    DDP wrapper alive in a cycle at exit, against 0 of 10 with the collection before destroying.
    """
    if env.distributed and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
        gc.collect()


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


def gather_object(obj: Any, env: DistEnv, dst: int = 0) -> Optional[List[Any]]:
    """Every rank's ``obj`` in rank order on rank ``dst``, None on the others (``[obj]`` with one process)."""
    if not env.distributed:
        return [obj]
    out: Optional[List[Any]] = [None] * env.world_size if env.rank == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out


def data_parallel(model: nn.Module, env: DistEnv) -> nn.Module:
    """``model`` wrapped in DDP with several processes (gradients averaged at each step), else itself."""
    if not env.distributed:
        return model
    device = env.device
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def main_first(work: Callable[[], T], env: DistEnv, marker: Path, *, describe_wait: Callable[[], str] = str,
               poll_s: float = 2.0, report_s: float = 60.0, visible_s: float = 120.0) -> T:
    """Run ``work`` on rank 0 while the other ranks wait for it outside every collective, however long it takes.

    A rank waiting in a collective (a broadcast, a barrier) is aborted by the process group's timeout
    (30 minutes), and planning and preprocessing a large dataset take longer. So the waiting ranks watch the
    file ``marker`` instead, which rank 0 writes as it starts, and again with ``work``'s result (or its
    error) when it ends; they log what they are waiting for every ``report_s`` seconds. The only collective
    is one quick broadcast of a token naming this launch, so a marker left by an earlier launch is never
    taken for this one's, and one barrier once every rank has the result, after which rank 0 removes the
    marker (a failed ``work`` leaves it, with the error). ``marker`` must be on a file system every node sees
    (as the run directory must).

    Args:
        work: what rank 0 does; its result must be JSON-serialisable (every rank gets it).
        env: the distributed environment (with one process, ``work()`` is simply called).
        marker: the file rank 0 writes (JSON).
        describe_wait: a phrase on the progress so far, for the waiting ranks' log (``"12 of 40 cases
            cached"``).
        poll_s / report_s: how often the waiting ranks look at the marker / log.
        visible_s: how long a waiting rank gives rank 0's first marker to appear before it concludes that
            ``marker`` is not on a shared file system.

    Returns:
        ``work()``'s result, on every rank.

    Raises:
        UnetrError: on the waiting ranks, when rank 0's ``work`` failed, or when its marker never shows up.
    """
    if not env.distributed:
        return work()
    marker = Path(marker)
    token = None
    if env.is_main:
        token = uuid.uuid4().hex
        _write_marker(marker, {"token": token, "state": "running", "host": socket.gethostname()})
    token = broadcast_object(token, env)
    if env.is_main:
        try:
            result = work()
        except BaseException as e:
            _write_marker(marker, {"token": token, "state": "failed", "error": f"{type(e).__name__}: {e}"})
            raise
        _write_marker(marker, {"token": token, "state": "done", "result": result})
    else:
        result = _wait_for_marker(marker, token, env.rank, describe_wait, poll_s, report_s, visible_s)
    barrier(env)  # quick: every rank has seen "done" within poll_s
    if env.is_main:
        marker.unlink(missing_ok=True)
    return result


def _write_marker(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(doc) + "\n")


def _read_marker(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # not there yet (atomic writes never leave half a file)
        return None


def _wait_for_marker(marker: Path, token: str, rank: int, describe_wait: Callable[[], str], poll_s: float,
                     report_s: float, visible_s: float) -> Any:
    t0 = time.monotonic()
    last_report = t0
    seen = False
    while True:
        doc = _read_marker(marker)
        if doc is not None and doc.get("token") == token:
            seen = True
            if doc.get("state") == "done":
                return doc.get("result")
            if doc.get("state") == "failed":
                raise UnetrError(f"rank 0 failed to prepare the data ({doc.get('error')}); rank {rank} stops too")
        now = time.monotonic()
        if not seen and now - t0 > visible_s:
            raise UnetrError(f"rank {rank} cannot see {marker}, which rank 0 wrote {visible_s:.0f} s ago: the run "
                             "directory must be on a file system every node shares")
        if now - last_report >= report_s:
            what = describe_wait()
            log.info("rank %d: waiting for rank 0 to prepare the data%s (%.0f min so far)", rank,
                     f": {what}" if what else "", (now - t0) / 60)
            last_report = now
        time.sleep(poll_s)
