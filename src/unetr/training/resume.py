"""What ``last.pt`` holds: a run's typed resume state, written at each checkpoint, read back on resume.

``last.pt`` is one :class:`ResumeState`, written by :func:`save_resume` and read back by
:func:`restore_resume`: a plain dict of tensors and plain values (``format`` ``unetr-last`` version 1),
loaded with ``weights_only=True``. It holds the weights, the optimizer and gradient scaler states, the
:class:`Progress` (iteration, best validation, running training loss), the training seconds, the number of
processes, rank 0's generators (:class:`RngState`) under ``rng`` and, for a run of several processes, every
rank's under ``rng_ranks``, and the run's ``config.json`` (:func:`unetr.training.run_dir.run_config`). Only
rank 0 writes it, atomically (:mod:`unetr.fsutil`), so a killed run leaves either the old or the new file.
The rest of the run directory is :mod:`unetr.training.run_dir`'s.
"""

from __future__ import annotations

import logging
import math
import pickle
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from torch import nn

from unetr.config import load_json
from unetr.errors import UnetrError
from unetr.fsutil import atomic_write
from unetr.training import distributed as D
from unetr.training.batches import derive_seed
from unetr.training.run_dir import check_same_settings

log = logging.getLogger(__name__)

LAST_FORMAT = "unetr-last"
LAST_VERSION = 1


@dataclass(frozen=True)
class RngState:
    """The global generators of this process: Python's, NumPy's, torch's CPU one and the CUDA device's.

    NumPy's Mersenne Twister keys are stored as an int64 tensor so that the file loads with
    ``weights_only=True``.
    """

    python: tuple
    numpy: Dict[str, Any]
    torch: torch.Tensor
    cuda: Optional[torch.Tensor] = None

    @classmethod
    def capture(cls, device: torch.device) -> RngState:
        """The generators' states now (the CUDA one only on a CUDA device)."""
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        numpy_state = {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)}
        cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        return cls(random.getstate(), numpy_state, torch.get_rng_state(), cuda)

    def restore(self, device: torch.device) -> None:
        """Set the generators back to this state (the CUDA one when both the state and the device have it)."""
        py = self.python
        random.setstate((py[0], tuple(py[1]), py[2]))
        n = self.numpy
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
        torch.set_rng_state(self.torch)
        if device.type == "cuda" and self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, device)

    def to_dict(self) -> dict:
        out = {"python": self.python, "numpy": self.numpy, "torch": self.torch}
        if self.cuda is not None:
            out["cuda"] = self.cuda
        return out

    @classmethod
    def from_dict(cls, data: dict) -> RngState:
        return cls(tuple(data["python"]), dict(data["numpy"]), data["torch"], data.get("cuda"))


def seed_generators(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (CUDA's included) from one 63-bit seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class Progress:
    """The counters a run carries from step to step and through a resume."""

    iteration: int = 0
    best_dice: float = -1.0  # below any Dice, so the first validation is the best so far
    best_iteration: int = 0
    loss_sum: float = 0.0  # training losses since the last logged row
    loss_count: int = 0

    def step_done(self, loss: float) -> None:
        """One more iteration, of training loss ``loss``."""
        self.iteration += 1
        self.loss_sum += loss
        self.loss_count += 1

    def take_mean_loss(self) -> float:
        """The mean training loss since the last call (0 when no step was taken), and start a new mean."""
        mean = self.loss_sum / max(self.loss_count, 1)
        self.loss_sum, self.loss_count = 0.0, 0
        return mean

    def improves(self, mean_dice: float) -> bool:
        """Record ``mean_dice`` of this iteration; True when it is the best so far (NaN never is)."""
        if math.isnan(mean_dice) or not mean_dice > self.best_dice:
            return False
        self.best_dice, self.best_iteration = mean_dice, self.iteration
        return True


@dataclass
class ResumeState:
    """Everything ``last.pt`` holds: a run continued from it takes the steps an uninterrupted run would.

    Attributes:
        progress: iteration reached, best validation and the running training loss.
        seconds: training time so far.
        world_size: processes of the run that wrote it (the batches depend on it).
        model / optimizer / scaler: the ``state_dict`` of each (the model unwrapped from DDP).
        rng: the global generators of rank 0.
        config: the run's ``config.json`` (:func:`unetr.training.run_dir.run_config`).
        rank_rngs: the global generators of every rank, in rank order, for a run of several processes
            (each rank draws its own dropout masks, so each resumes its own generators); empty for one.
    """

    progress: Progress
    seconds: float
    world_size: int
    model: Dict[str, torch.Tensor]
    optimizer: Dict[str, Any]
    scaler: Dict[str, Any]
    rng: RngState
    config: Dict[str, Any] = field(default_factory=dict)
    rank_rngs: Tuple[RngState, ...] = ()

    def to_dict(self) -> dict:
        """The on-disk dict (``format`` ``unetr-last`` version 1). ``scheduler`` and ``sampler`` are written
        for readers of the file; a resume recomputes both from the iteration and the config. ``rng_ranks``
        (every rank's generators) is added after the keys of earlier versions, only by runs of several
        processes, so a one-process ``last.pt`` is what it always was."""
        p, train = self.progress, self.config["train"]
        out = {
            "format": LAST_FORMAT, "version": LAST_VERSION, "iteration": p.iteration, "world_size": self.world_size,
            "model": self.model, "optimizer": self.optimizer,
            "scheduler": {"kind": "warmup_cosine", "step": p.iteration, "total": train["iterations"],
                          "warmup": train["warmup_iterations"], "base_lr": train["lr"], "min_lr": train["min_lr"]},
            "scaler": self.scaler, "best_dice": p.best_dice, "best_iteration": p.best_iteration,
            "loss_sum": p.loss_sum, "loss_count": p.loss_count, "seconds": self.seconds, "rng": self.rng.to_dict(),
            "sampler": {"seed": train["seed"], "micro_step": p.iteration * train["accumulate"]},
            "config": self.config,
        }
        if len(self.rank_rngs) > 1:
            out["rng_ranks"] = [r.to_dict() for r in self.rank_rngs]
        return out

    @classmethod
    def from_dict(cls, data: dict) -> ResumeState:
        progress = Progress(int(data["iteration"]), float(data["best_dice"]), int(data["best_iteration"]),
                            float(data["loss_sum"]), int(data["loss_count"]))
        return cls(progress, float(data["seconds"]), int(data["world_size"]), data["model"], data["optimizer"],
                   data["scaler"], RngState.from_dict(data["rng"]), data["config"],
                   tuple(RngState.from_dict(r) for r in data.get("rng_ranks", ())))

    def rng_of(self, rank: int) -> Optional[RngState]:
        """The generators ``rank`` saved, or None when the run that wrote the file had no such rank (or saved
        rank 0's only, as versions before per-rank states did)."""
        if rank < len(self.rank_rngs):
            return self.rank_rngs[rank]
        return self.rng if rank == 0 else None


def save_resume(path: Path, state: ResumeState) -> None:
    """Write ``state`` to ``path`` (``last.pt``) atomically."""
    payload = state.to_dict()
    atomic_write(path, lambda f: torch.save(payload, f))


def _read_last(path: Path, mmap: bool = False) -> dict:
    """The dict of a ``last.pt`` (tensors and plain values only); ``mmap`` leaves the tensors on disk."""
    start_over = ("the run cannot continue from it; rerun with --restart to move the run aside and start "
                  "anew (its model.safetensors keeps the best weights so far)")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError):
        raise UnetrError(f"{path}: truncated or corrupt (not a readable resume checkpoint); {start_over}") from None
    if not isinstance(data, dict) or data.get("format") != LAST_FORMAT or not isinstance(data.get("config"), dict):
        raise UnetrError(f"{path}: not a unetr resume checkpoint; {start_over}")
    return data


def load_resume(path: Path) -> ResumeState:
    """Read a ``last.pt`` written by :func:`save_resume` (tensors and plain values only).

    Raises:
        UnetrError: the file is truncated, corrupt or not a unetr resume checkpoint (the message says how to
            start over).
    """
    data = _read_last(path)
    try:
        return ResumeState.from_dict(data)
    except (KeyError, TypeError, ValueError) as e:
        raise UnetrError(f"{path}: incomplete resume checkpoint (no {e}); rerun with --restart to move the run "
                         "aside and start anew") from None


def stored_config(run_dir: Path) -> Optional[Tuple[dict, Path]]:
    """The settings of the run in ``run_dir`` and the file they come from: ``last.pt``'s (read without its
    tensors), else ``config.json``'s (a run stopped before its first checkpoint); None for a new run.

    Raises:
        UnetrError: a truncated or corrupt ``last.pt`` (naming it, and how to start over).
    """
    last, config = run_dir / "last.pt", run_dir / "config.json"
    if last.is_file():
        return _read_last(last, mmap=True)["config"], last
    if config.is_file():
        return load_json(config), config
    return None


def restore_resume(path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                   config: dict, world_size: int, device: torch.device, rank: int = 0) -> ResumeState:
    """Continue a run from its ``last.pt``: load the weights, optimizer and scaler states and the generators.

    Args:
        path: the ``last.pt``.
        model: the unwrapped model, built from ``config``.
        optimizer / scaler: built for ``model``.
        config: this run's :func:`unetr.training.run_dir.run_config`; it may differ from the checkpoint's
            only in how long and how the run computes (:func:`unetr.training.run_dir.settings_differences`).
        world_size: processes of this run (a different number is allowed, with a warning).
        device: where the generators' CUDA state goes.
        rank: this process's rank: it takes back the generators it saved. A rank the file has none for (more
            processes than the run that wrote it) seeds them from ``(seed, rank, iteration)``, so that no two
            ranks draw the same dropout masks.

    Returns:
        The state read (its ``progress`` and ``seconds`` are where the run goes on from).

    Raises:
        UnetrError: not a resume checkpoint (truncated, corrupt, another file).
        RunSettingsError: the checkpoint's run was trained with settings that differ.
    """
    state = load_resume(path)
    check_same_settings(state.config, config, path)
    if state.world_size != world_size:
        log.warning("resuming a %d-process run with %d processes: the batches differ from an uninterrupted run",
                    state.world_size, world_size)
    model.load_state_dict(state.model)
    optimizer.load_state_dict(state.optimizer)
    scaler.load_state_dict(state.scaler)
    own = state.rng_of(rank)
    if own is not None:
        own.restore(device)
    else:
        seed_generators(derive_seed(int(config["train"]["seed"]), rank, state.progress.iteration, 3))
    return state


def resume_run(run_dir: Path, config: dict, *, model: nn.Module, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, env: D.DistEnv) -> Optional[ResumeState]:
    """The state of ``run_dir/last.pt``, restored into ``model``, ``optimizer``, ``scaler`` and this rank's
    generators (:func:`restore_resume`), or None for a fresh start; a run stopped before its first checkpoint
    must have been started with the settings of ``config`` too.

    Raises:
        UnetrError: ``last.pt`` is not a resume checkpoint (truncated, corrupt, another file).
        RunSettingsError: the run there was trained with settings that differ.
    """
    last = run_dir / "last.pt"
    if not last.exists():
        earlier = stored_config(run_dir)  # a run stopped before its first checkpoint
        if earlier is not None:
            check_same_settings(earlier[0], config, earlier[1])
        return None
    return restore_resume(last, model=model, optimizer=optimizer, scaler=scaler, config=config,
                          world_size=env.world_size, device=env.device, rank=env.rank)


def save_checkpoint(path: Path, progress: Progress, seconds: float, *, env: D.DistEnv, model: nn.Module,
                    optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, config: dict) -> None:
    """Rank 0 writes ``last.pt`` at ``path``: the resume state after this iteration, with every rank's
    generators (a collective: every rank calls this at the same iterations)."""
    rngs = D.gather_object(RngState.capture(env.device), env)
    if not env.is_main:
        return
    save_resume(path, ResumeState(
        progress=progress, seconds=seconds, world_size=env.world_size, model=model.state_dict(),
        optimizer=optimizer.state_dict(), scaler=scaler.state_dict(), rng=rngs[0], config=config,
        rank_rngs=tuple(rngs) if env.distributed else ()))


def describe_last(path: Path) -> str:
    """``last.pt`` and its iteration, for messages (never raises; the tensors stay on disk)."""
    if not path.exists():
        return "none written yet"
    try:
        iteration: Any = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["iteration"]
    except Exception:  # noqa: BLE001 - only for the message
        iteration = "?"
    return f"{path} (iteration {iteration})"


__all__ = ["LAST_FORMAT", "Progress", "ResumeState", "RngState", "describe_last", "load_resume",
           "restore_resume", "resume_run", "save_checkpoint", "save_resume", "seed_generators", "stored_config"]
