"""Dice + cross-entropy on softmax outputs.

The soft Dice term follows the usual definition (per sample and class, then averaged)::

    dice_bk = 1 - (2 * sum(p * g) + smooth_nr) / (sum(p) + sum(g) + smooth_dr)

with ``p`` the softmax probabilities and ``g`` the one-hot reference. The one-hot tensor is never built:
the intersection is the probability of the true class summed per class (``scatter_add``), which saves a
``(B, K, X, Y, Z)`` tensor and a multiplication. Cross-entropy reuses the same ``log_softmax``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def dice_ce_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    include_background: bool = True,
    dice_weight: float = 1.0,
    ce_weight: float = 1.0,
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    batch_dice: bool = False,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Weighted sum of soft Dice loss and cross-entropy.

    Args:
        logits: ``(B, K, X, Y, Z)`` raw network outputs (any float dtype; computed in float32).
        target: ``(B, 1, X, Y, Z)`` or ``(B, X, Y, Z)`` integer labels in ``[0, K)``.
        include_background: keep class 0 in the Dice term (cross-entropy always uses every class).
        dice_weight: weight of the Dice term.
        ce_weight: weight of the cross-entropy term.
        smooth_nr: added to the Dice numerator (keeps an empty class from giving 0/0).
        smooth_dr: added to the Dice denominator.
        batch_dice: sum the Dice statistics over the batch before dividing (one Dice per class) instead of
            one Dice per sample and class.
        label_smoothing: cross-entropy label smoothing in ``[0, 1)``.

    Returns:
        A scalar float32 tensor.

    Example:
        >>> logits = torch.zeros(1, 2, 4, 4, 4)
        >>> target = torch.zeros(1, 1, 4, 4, 4, dtype=torch.long)
        >>> round(float(dice_ce_loss(logits, target, ce_weight=0.0)), 4)  # p = 0.5 everywhere
        0.5
    """
    if logits.dim() < 3:
        raise ValueError(f"logits must be (B, K, *spatial), got shape {tuple(logits.shape)}")
    if target.dim() == logits.dim():
        if target.shape[1] != 1:
            raise ValueError(f"target must have one channel, got shape {tuple(target.shape)}")
        target = target[:, 0]
    if target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    b, k = logits.shape[:2]
    if k < 2 and not include_background:
        raise ValueError("include_background=False needs at least two classes")
    logp = F.log_softmax(logits.float(), dim=1).reshape(b, k, -1)  # (B, K, N)
    t = target.reshape(b, 1, -1).long()  # (B, 1, N)
    loss = logits.new_zeros((), dtype=torch.float32)

    if ce_weight:
        logp_true = logp.gather(1, t)  # (B, 1, N)
        ce = -logp_true.mean()
        if label_smoothing:
            ce = (1.0 - label_smoothing) * ce - label_smoothing * logp.mean(1).mean()
        loss = loss + ce_weight * ce

    if dice_weight:
        p = logp.exp()  # (B, K, N)
        p_true = p.gather(1, t)[:, 0]  # (B, N)
        tt = t[:, 0]
        inter = torch.zeros(b, k, dtype=p.dtype, device=p.device).scatter_add_(1, tt, p_true)  # (B, K)
        ref = torch.zeros(b, k, dtype=p.dtype, device=p.device).scatter_add_(1, tt, torch.ones_like(p_true))
        pred = p.sum(-1)  # (B, K)
        if batch_dice:
            inter, ref, pred = inter.sum(0, keepdim=True), ref.sum(0, keepdim=True), pred.sum(0, keepdim=True)
        if not include_background:
            inter, ref, pred = inter[:, 1:], ref[:, 1:], pred[:, 1:]
        dice = 1.0 - (2.0 * inter + smooth_nr) / (pred + ref + smooth_dr)
        loss = loss + dice_weight * dice.mean()
    return loss


class DiceCELoss(nn.Module):
    """:func:`dice_ce_loss` as a module; keyword arguments are those of the function.

    Example:
        >>> loss = DiceCELoss(include_background=False)
        >>> loss(torch.randn(2, 3, 8, 8, 8), torch.randint(0, 3, (2, 1, 8, 8, 8))).shape
        torch.Size([])
    """

    def __init__(
        self,
        *,
        include_background: bool = True,
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch_dice: bool = False,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if dice_weight < 0 or ce_weight < 0 or dice_weight + ce_weight == 0:
            raise ValueError(f"weights must be non-negative and not both zero, got dice={dice_weight} ce={ce_weight}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.kwargs = dict(
            include_background=include_background, dice_weight=dice_weight, ce_weight=ce_weight,
            smooth_nr=smooth_nr, smooth_dr=smooth_dr, batch_dice=batch_dice, label_smoothing=label_smoothing,
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``(B, K, X, Y, Z)`` logits and ``(B, 1, X, Y, Z)`` labels -> scalar loss."""
        return dice_ce_loss(logits, target, **self.kwargs)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.kwargs.items())
