"""The files of a run directory (its resume state, ``last.pt``, is :mod:`unetr.training.resume`'s).

A run directory holds::

    config.json        model config + plan + train config (what `predict` needs with the weights)
    model.safetensors  the weights of the best validation mean Dice
    last.pt            resume state (weights, optimizer, scaler, iteration, RNG states), atomic
    metrics.csv        iteration, train_loss, lr, val_dice_<class>..., val_mean_dice, seconds
    curves.png         the curves, redrawn at each validation
    tensorboard/       the same scalars for TensorBoard (when asked for and installed)

Only rank 0 writes; every write is atomic (:mod:`unetr.fsutil`), so a killed run leaves either the old or
the new file. Here: ``config.json`` and the settings a rerun may change, the best weights, moving a run
aside (``--restart``), ``metrics.csv``, the curves and TensorBoard. ``last.pt`` is one
:class:`unetr.training.resume.ResumeState` (:mod:`unetr.training.resume`).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from torch import nn

from unetr.config import ModelConfig, Plan, TrainConfig
from unetr.errors import UnetrError
from unetr.fsutil import atomic_write_text

log = logging.getLogger(__name__)

RUN_FORMAT = "unetr-run"


# ------------------------------------------------------------------------------------------- config and weights


def run_config(model_cfg: ModelConfig, plan: Plan, cfg: TrainConfig, train_ids: Optional[Sequence[str]] = None,
               val_ids: Optional[Sequence[str]] = None) -> dict:
    """The ``config.json`` of a run directory; with the case ids, a ``data`` section names what it trains on."""
    config = {"format": RUN_FORMAT, "version": 1, "model": model_cfg.to_dict(), "plan": plan.to_dict(),
              "train": cfg.to_dict()}
    if train_ids is not None:
        config["data"] = {"train": list(train_ids), "validation": list(val_ids or ())}
    return config


def effective_model_config(model_cfg: ModelConfig, plan: Plan, cfg: TrainConfig) -> ModelConfig:
    """The network a run trains: ``model_cfg`` built for the plan's ROI, with gradient checkpointing when the
    training settings ask for it (what ``config.json`` records)."""
    if cfg.checkpointing and not model_cfg.checkpointing:
        model_cfg = model_cfg.replace(checkpointing=True)
    roi = tuple(plan.roi)
    return model_cfg.replace(img_size=roi) if tuple(model_cfg.img_size) != roi else model_cfg


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


__all__ = ["RESUMABLE_MODEL_KEYS", "RESUMABLE_TRAIN_KEYS", "RUN_FORMAT", "MetricsLog", "RunSettingsError",
           "check_same_settings", "effective_model_config", "log_scalars", "move_run_aside", "open_tensorboard", "plot_curves", "run_config",
           "save_best", "settings_differences"]
