"""Training: Dice + CE loss, AdamW with warm-up + cosine, the resumable loop, and the torchrun helpers."""

from unetr.training.loss import DiceCELoss, dice_ce_loss
from unetr.training.optim import build_optimizer, lr_at, param_groups
from unetr.training.trainer import (
    CachedCases,
    NonFiniteLossError,
    PatchSource,
    TrainResult,
    fit,
    resolve_precision,
    validate,
)

__all__ = [
    "DiceCELoss", "dice_ce_loss", "build_optimizer", "lr_at", "param_groups", "CachedCases", "NonFiniteLossError",
    "PatchSource", "TrainResult", "fit", "resolve_precision", "validate",
]
