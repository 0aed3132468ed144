"""Optimizer and learning-rate schedule.

The learning rate is a pure function of the step (:func:`lr_at`): the trainer sets it before every
optimizer step, so resuming needs only the step number and no scheduler object can drift.
"""

from __future__ import annotations

import math
from typing import Iterable, List

import torch
from torch import nn

_NO_DECAY_NAMES = ("pos_emb", "position_embed", "cls_token")


def param_groups(model: nn.Module, weight_decay: float, decay_all: bool = False) -> List[dict]:
    """Split the trainable parameters into a decayed and a non-decayed group.

    Weights of convolutions and linear layers are decayed; biases, normalisation parameters (every tensor
    with fewer than two dimensions) and position embeddings are not, unless ``decay_all`` (as
    ``AdamW(model.parameters())`` does, the BTCV script's).

    Args:
        model: the network.
        weight_decay: decoupled weight decay of the first group.
        decay_all: decay every parameter (one group).

    Returns:
        Two parameter groups for a ``torch.optim`` optimizer (an empty group is left out).
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be non-negative, got {weight_decay}")
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if not decay_all and (p.dim() < 2 or any(s in name for s in _NO_DECAY_NAMES)):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, *, lr: float, weight_decay: float, device: torch.device,
                    decay_all: bool = False) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` (``decay_all``: see there), with the fused kernel where the device
    supports it."""
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    groups = param_groups(model, weight_decay, decay_all)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    fused = device.type in ("cuda", "cpu")
    try:
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, fused=fused)
    except (RuntimeError, TypeError):  # an older torch without the fused kernel on this device
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, foreach=True)


def lr_at(step: int, *, base_lr: float, total: int, warmup: int = 0, min_lr: float = 0.0) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up, then cosine decay.

    During warm-up the rate climbs linearly from ``base_lr / warmup`` to ``base_lr``; it then follows half
    a cosine from ``base_lr`` at step ``warmup`` to ``min_lr`` at step ``total``.

    Example:
        >>> [round(lr_at(s, base_lr=1.0, total=10, warmup=2), 3) for s in (0, 1, 2, 6, 10)]
        [0.5, 1.0, 1.0, 0.5, 0.0]
    """
    if total < 1 or warmup < 0 or step < 0:
        raise ValueError(f"need total >= 1, warmup >= 0 and step >= 0, got total={total} warmup={warmup} step={step}")
    if step < warmup:
        return base_lr * (step + 1) / warmup
    span = max(total - warmup, 1)
    progress = min((step - warmup) / span, 1.0)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def grad_norm(parameters: Iterable[torch.Tensor]) -> float:
    """The global L2 norm of the gradients (for logging)."""
    norms = [p.grad.detach().float().norm() for p in parameters if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0
