"""Dice + cross-entropy on softmax outputs.

The soft Dice term follows the usual definition (per sample and class, then averaged)::

    dice_bk = 1 - (2 * sum(p * g) + smooth_nr) / (sum(p) + sum(g) + smooth_dr)

with ``p`` the softmax probabilities and ``g`` the one-hot reference. The one-hot tensor is never built:
the intersection is the probability of the true class summed per class (``scatter_add``). Cross-entropy
reuses the same ``log_softmax``.

Forward and backward are one autograd function with the gradient written out (below), so that a batch of
``(B, K, 96, 96, 96)`` logits costs a few passes over one ``(B, N, K)`` float32 buffer instead of the dozen
temporaries autograd keeps for the composed operations. With ``D = P + R + smooth_dr`` per Dice entry (P the
summed probabilities, R the reference voxel count, I the intersection) and ``M`` the number of Dice entries::

    dL/dp_k  = a_k + c_k [t = k],   a = w_dice (2I + smooth_nr) / (M D²),  c = -2 w_dice / (M D)
    dL/dz_k  = p_k (a_k - S) + [t = k] (p_t c_t - w_ce (1 - ls) / BN) + w_ce (p_k - ls / K) / BN,
    S        = Σ_j p_j a_j + p_t c_t   (the softmax chain rule)

where ``t`` is the voxel's true class and ``ls`` the label smoothing. With ``squared_pred`` (MONAI's option,
which the BTCV recipe sets) the denominator sums ``p**2``: ``P = sum(p**2)``, and ``a`` gains the factor
``2 p_k`` of each voxel, so ``a`` becomes a ``(B, K, N)`` tensor in the two lines above.
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
    squared_pred: bool = False,
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
        squared_pred: the Dice denominator sums squared probabilities (MONAI's ``squared_pred``).

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
    opts = (include_background, float(dice_weight), float(ce_weight), float(smooth_nr), float(smooth_dr),
            bool(batch_dice), float(label_smoothing), bool(squared_pred))
    return _DiceCE.apply(logits, target, opts)


class _DiceCE(torch.autograd.Function):
    """Dice + cross-entropy with the gradient of the module docstring, on the ``(B, K, N)`` view."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor, opts) -> torch.Tensor:
        include_bg, w_dice, w_ce, s_nr, s_dr, batch_dice, ls, squared = opts
        b, k = logits.shape[:2]
        z = logits.reshape(b, k, -1)  # (B, K, N): a view of channels-first logits (the model's output)
        n = z.shape[2]
        t = target.reshape(b, 1, n).long()  # (B, 1, N)
        p = F.log_softmax(z, dim=1, dtype=torch.float32)  # log p for now, p after exp_
        logp_true = p.gather(1, t)  # (B, 1, N)
        loss = torch.zeros((), dtype=torch.float32, device=logits.device)
        if w_ce:
            ce = -logp_true.mean()
            if ls:
                ce = (1.0 - ls) * ce - ls * p.mean()
            loss = loss + w_ce * ce
        p.exp_()  # (B, K, N) probabilities, in place
        p_true = logp_true.exp_()  # (B, 1, N)
        a = c = None
        if w_dice:
            tt = t[:, 0]
            inter = torch.zeros(b, k, dtype=p.dtype, device=p.device).scatter_add_(1, tt, p_true[:, 0])
            ref = torch.zeros(b, k, dtype=p.dtype, device=p.device).scatter_add_(1, tt, torch.ones_like(p_true[:, 0]))
            pred = (p * p).sum(2) if squared else p.sum(2)  # (B, K)
            if batch_dice:
                inter, ref, pred = inter.sum(0, keepdim=True), ref.sum(0, keepdim=True), pred.sum(0, keepdim=True)
            keep = torch.ones(k, dtype=torch.bool, device=p.device)
            if not include_bg:
                keep[0] = False
            d = pred + ref + s_dr
            num = 2.0 * inter + s_nr
            dice = 1.0 - num / d
            m = dice[:, keep].numel()
            loss = loss + w_dice * dice[:, keep].mean()
            a = torch.where(keep, w_dice * num / (m * d * d), 0.0).expand(b, k).contiguous()  # dL/dp, all voxels
            c = torch.where(keep, -2.0 * w_dice / (m * d), 0.0).expand(b, k).contiguous()  # dL/dp, true class
        ctx.save_for_backward(p, p_true, t, a, c)
        ctx.opts = opts
        ctx.logits_meta = (logits.dtype, logits.shape, logits.stride())
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        p, p_true, t, a, c = ctx.saved_tensors
        b, k, n = p.shape
        _, w_dice, w_ce, _, _, _, ls, squared = ctx.opts
        ce = w_ce / (b * n)
        if a is None:  # cross-entropy only
            grad = p * ce
            true_term = torch.full_like(p_true, -ce * (1.0 - ls))
        else:
            ct = c.gather(1, t[:, 0])[:, None] * p_true  # (B, 1, N): p_t c_t
            if squared:  # a_k -> 2 p_k a_k, per voxel
                a_full = p * (2.0 * a)[:, :, None]  # (B, K, N)
                s = (a_full * p).sum(1, keepdim=True).add_(ct)  # (B, 1, N): S
                grad = a_full.add_(ce).mul_(p)  # p_k (w_ce/BN + a_k)
            else:
                s = torch.bmm(a[:, None, :], p).add_(ct)  # (B, 1, N): S = sum_j a_j p_j + p_t c_t
                grad = p * (a + ce)[:, :, None]  # p_k (w_ce/BN + a_k)
            grad.addcmul_(p, s, value=-1.0)  # - p_k S
            true_term = ct - ce * (1.0 - ls)
        grad.scatter_add_(1, t, true_term)  # + [t = k] (p_t c_t - w_ce (1 - ls) / BN)
        if ls:
            grad.sub_(ce * ls / k)
        grad.mul_(grad_loss)
        dtype, shape, stride = ctx.logits_meta
        out = grad.view(shape)
        if out.stride() != stride:  # e.g. channels-last logits: the gradient in their layout
            out = torch.empty_strided(shape, stride, dtype=dtype, device=grad.device).copy_(out)
        return out.to(dtype), None, None


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
        squared_pred: bool = False,
    ) -> None:
        super().__init__()
        if dice_weight < 0 or ce_weight < 0 or dice_weight + ce_weight == 0:
            raise ValueError(f"weights must be non-negative and not both zero, got dice={dice_weight} ce={ce_weight}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.kwargs = dict(
            include_background=include_background, dice_weight=dice_weight, ce_weight=ce_weight,
            smooth_nr=smooth_nr, smooth_dr=smooth_dr, batch_dice=batch_dice, label_smoothing=label_smoothing,
            squared_pred=squared_pred,
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``(B, K, X, Y, Z)`` logits and ``(B, 1, X, Y, Z)`` labels -> scalar loss."""
        return dice_ce_loss(logits, target, **self.kwargs)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.kwargs.items())
