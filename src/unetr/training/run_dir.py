"""The run directory: everything a training run writes, and the resume state it reads back.

A run directory holds::

    config.json        model config + plan + train config (what `predict` needs with the weights)
    model.safetensors  the weights of the best validation mean Dice
    last.pt            resume state (weights, optimizer, scaler, iteration, RNG states), atomic
    metrics.csv        iteration, train_loss, lr, val_dice_<class>..., val_mean_dice, seconds
    curves.png         the curves, redrawn at each validation
    tensorboard/       the same scalars for TensorBoard (when asked for and installed)

Only rank 0 writes; every write is atomic (:mod:`unetr.fsutil`), so a killed run leaves either the old or
the new file. ``last.pt`` is one :class:`ResumeState`, written by :func:`save_resume` and read back by
:func:`restore_resume`: a plain dict of tensors and plain values, loaded with ``weights_only=True``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import pickle
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from unetr.config import ModelConfig, Plan, TrainConfig, load_json
from unetr.errors import UnetrError
from unetr.fsutil import atomic_write, atomic_write_text
from unetr.training.batches import derive_seed

log = logging.getLogger(__name__)

RUN_FORMAT = "unetr-run"
LAST_FORMAT = "unetr-last"
LAST_VERSION = 1


# ------------------------------------------------------------------------------------------- config and weights


def run_config(model_cfg: ModelConfig, plan: Plan, cfg: TrainConfig, train_ids: Optional[Sequence[str]] = None,
               val_ids: Optional[Sequence[str]] = None) -> dict:
    """The ``config.json`` of a run directory; with the case ids, a ``data`` section names what it trains on."""
    config = {"format": RUN_FORMAT, "version": 1, "model": model_cfg.to_dict(), "plan": plan.to_dict(),
              "train": cfg.to_dict()}
    if train_ids is not None:
        config["data"] = {"train": list(train_ids), "validation": list(val_ids or ())}
    return config


# Settings a rerun may change: how long, how often it validates and checkpoints, and where and how fast it
# computes. Any other change (model, plan, data, loss, optimizer, augmentation, seed) trains something else.
RESUMABLE_TRAIN_KEYS = frozenset({
    "iterations", "val_every", "checkpoint_every", "checkpoint_minutes", "log_every", "tensorboard", "num_workers",
    "device", "precision", "val_overlap", "val_sw_batch", "checkpointing", "channels_last", "compile"})
RESUMABLE_MODEL_KEYS = frozenset({"checkpointing"})  # recomputation in the backward pass: memory, not the model


class RunSettingsError(UnetrError):
    """A rerun whose settings would change what the run directory's run trains."""


def settings_differences(old: dict, new: dict) -> List[str]:
    """``section.key old -> new`` for each setting of ``new`` that differs from ``old`` (two :func:`run_config`
    dicts) and changes what is trained. A section or key missing from either is skipped: older runs have no
    ``data`` section, and a setting added since keeps its earlier behaviour by default.
    """
    changed = []
    for section, free in (("model", RESUMABLE_MODEL_KEYS), ("plan", frozenset()), ("train", RESUMABLE_TRAIN_KEYS),
                          ("data", frozenset())):
        a, b = old.get(section), new.get(section)
        if not isinstance(a, dict) or not isinstance(b, dict):
            continue
        for key in sorted(set(a) & set(b)):
            if key in free or a[key] == b[key]:
                continue
            if section == "data":
                was, now = set(a[key] or ()), set(b[key] or ())
                changed.append(f"data.{key}: {len(was - now)} case(s) left out, {len(now - was)} added")
            else:
                changed.append(f"{section}.{key} {_short(a[key])} -> {_short(b[key])}")
    return changed


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def check_same_settings(old: dict, new: dict, where: Path) -> None:
    """Refuse to continue the run recorded in ``where`` (its ``last.pt`` or ``config.json``) with settings
    that change what it trains.

    Raises:
        RunSettingsError: naming the differing keys.
    """
    changed = settings_differences(old, new)
    if changed:
        raise RunSettingsError(
            f"{where.parent}: the run there was trained with other settings ({'; '.join(changed)}); rerun with "
            "its settings to continue it, add --restart to move it aside and start anew, or choose another --out")


def save_best(run_dir: Path, model: nn.Module, config: dict) -> None:
    """Write ``model.safetensors`` and ``config.json`` (atomically) through :func:`unetr.model.save_run`."""
    from unetr.model import save_run

    extra = {k: config[k] for k in ("train", "data") if k in config}
    save_run(run_dir, model, ModelConfig.from_dict(config["model"]), plan=config["plan"], extra=extra)


def move_run_aside(run_dir: Path) -> Optional[Path]:
    """Rename the run in ``run_dir`` to the first free ``<run_dir>.old-N`` (never deleting it), under its
    lock, so that a new run can start there (``unetr train --restart``).

    Returns:
        Where the run went, or None when ``run_dir`` is missing or empty.

    Raises:
        RunLockedError: a live process trains there.
    """
    from unetr.training.lock import RunLock

    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return None
    n = 1
    while run_dir.with_name(f"{run_dir.name}.old-{n}").exists():
        n += 1
    target = run_dir.with_name(f"{run_dir.name}.old-{n}")
    with RunLock(run_dir) as lock:
        os.rename(run_dir, target)
        lock.follow(target)
    return target


# ------------------------------------------------------------------------------------------- resume state


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
        config: the run's ``config.json`` (:func:`run_config`).
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
        config: this run's :func:`run_config`; it may differ from the checkpoint's only in how long and how
            the run computes (:func:`settings_differences`).
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


def describe_last(path: Path) -> str:
    """``last.pt`` and its iteration, for messages (never raises)."""
    if not path.exists():
        return "none written yet"
    try:
        iteration: Any = torch.load(path, map_location="cpu", weights_only=True)["iteration"]
    except Exception:  # noqa: BLE001 - only for the message
        iteration = "?"
    return f"{path} (iteration {iteration})"


# ------------------------------------------------------------------------------------------- logs and curves


class MetricsLog:
    """``metrics.csv``: one row per logged iteration, rewritten atomically so it is never half written."""

    def __init__(self, path: Path, class_names: Sequence[str]) -> None:
        self.path = path
        self.columns = (["iteration", "train_loss", "lr"] + [f"val_dice_{c}" for c in class_names]
                        + ["val_mean_dice", "seconds"])
        self.rows: List[Dict[str, str]] = []

    def load(self, up_to: int) -> None:
        """Keep the rows already written up to iteration ``up_to`` (the resumed checkpoint)."""
        if not self.path.exists():
            return
        with self.path.open(newline="") as f:
            self.rows = [r for r in csv.DictReader(f) if int(r["iteration"]) <= up_to]

    def add(self, row: Dict[str, Any]) -> None:
        def fmt(v: Any) -> str:
            if v is None:
                return ""
            if isinstance(v, float):
                return "nan" if math.isnan(v) else f"{v:.6g}"
            return str(v)

        self.rows.append({c: fmt(row.get(c)) for c in self.columns})
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self.columns, lineterminator="\n")
        w.writeheader()
        w.writerows(self.rows)

        atomic_write_text(self.path, buf.getvalue())


def plot_curves(metrics_csv: Path, path: Path) -> None:
    """Redraw the curves PNG from ``metrics.csv`` (:func:`unetr.report.plot_training_curves`)."""
    from unetr.report import plot_training_curves

    try:
        plot_training_curves(metrics_csv, path)
    except (ValueError, OSError) as e:  # a picture must never stop training
        log.warning("could not draw %s: %s", path, e)


def open_tensorboard(run_dir: Path) -> Any:
    """A ``SummaryWriter`` on ``run_dir/tensorboard``, or None when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.debug("tensorboard not installed; skipping its logs")
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def log_scalars(tb: Any, row: Dict[str, Any], iteration: int) -> None:
    """The numbers of a metrics row to TensorBoard (NaN and missing values left out)."""
    for k, v in row.items():
        if k != "iteration" and v is not None and not (isinstance(v, float) and math.isnan(v)):
            tb.add_scalar(k, v, iteration)


__all__ = ["LAST_FORMAT", "RESUMABLE_MODEL_KEYS", "RESUMABLE_TRAIN_KEYS", "RUN_FORMAT", "MetricsLog", "Progress",
           "ResumeState", "RngState", "RunSettingsError", "check_same_settings", "describe_last", "load_resume",
           "log_scalars", "move_run_aside", "open_tensorboard", "plot_curves", "restore_resume", "run_config", "save_best", "save_resume",
           "seed_generators", "settings_differences", "stored_config"]
