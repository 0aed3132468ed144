"""Training: Dice + CE loss, AdamW with warm-up + cosine, the resumable loop, and the torchrun helpers.

Modules: ``loss``, ``optim``, ``batches`` (seeds, crops, loader), ``validation``, ``run_dir`` (the run
directory's files), ``resume`` (the resume state, ``last.pt``), ``trainer`` (:func:`fit`), ``prepare``
(dataset -> plan -> cache -> checks -> fit) and ``distributed``.
"""

from unetr.device import resolve_precision
from unetr.training.batches import CachedCases, PatchSource
from unetr.training.loss import DiceCELoss, dice_ce_loss
from unetr.training.optim import build_optimizer, lr_at, param_groups
from unetr.training.trainer import NonFiniteLossError, TrainResult, fit
from unetr.training.validation import validate

__all__ = [
    "DiceCELoss", "dice_ce_loss", "build_optimizer", "lr_at", "param_groups", "CachedCases", "NonFiniteLossError",
    "PatchSource", "TrainResult", "fit", "resolve_precision", "validate",
]
