"""The decoder's memory layout: channels-last volumes and their ``(B, X·Y·Z, C)`` view.

``UNETR(channels_last=True)`` keeps the decoder's activations in ``torch.channels_last_3d`` strides, where
oneDNN and cuDNN convolutions need no layout reorders. Channels-last ``(B, C, X, Y, Z)`` holds its values in
``(B, X, Y, Z, C)`` order, so per-voxel channel vectors are contiguous rows of :func:`voxels`.
"""

from __future__ import annotations

from typing import Callable

import torch


def is_channels_last(x: torch.Tensor) -> bool:
    """Channels-last strides (for one channel too, where both layouts are 'contiguous')."""
    return x.is_contiguous(memory_format=torch.channels_last_3d) and (x.stride(1) == 1 or x.numel() <= 1)


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, X, Y, Z)`` with channels-last strides, also for ``C == 1`` (where ``.contiguous(format)`` is a no-op)."""
    if x.shape[1] == 1:  # both layouts hold the voxels in the same order: only the channel stride differs
        x = x.contiguous()
        return x.as_strided(x.shape, (x.stride(0), 1, *x.stride()[2:]))
    return x.contiguous(memory_format=torch.channels_last_3d)


def voxels(x: torch.Tensor) -> torch.Tensor:
    """The ``(B, X·Y·Z, C)`` view of a channels-last ``(B, C, X, Y, Z)`` tensor (a copy for other layouts)."""
    return x.permute(0, 2, 3, 4, 1).reshape(x.shape[0], -1, x.shape[1])


def from_voxels(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``(B, X·Y·Z, C)`` back to a channels-last ``(B, C, X, Y, Z)`` view shaped like ``like``."""
    b, c = like.shape[:2]
    return v.view(b, *like.shape[2:], c).permute(0, 4, 1, 2, 3)


def norm_channels_last(x: torch.Tensor, eps: float, inplace: bool, norm_into: Callable, function: type) -> torch.Tensor:
    """Run a channels-last instance norm the way its caller can afford: into ``x`` itself (``inplace``, for
    tensors autograd does not track), through its autograd ``function`` when gradients are wanted, or into
    a new channels-last tensor. ``norm_into(x, eps, out)`` writes the result; ``function.apply(x, eps)``."""
    if inplace:
        norm_into(x, eps, x)
        return x
    if torch.is_grad_enabled() and x.requires_grad:
        return function.apply(x, eps)
    out = torch.empty_like(x, memory_format=torch.channels_last_3d)
    norm_into(x, eps, out)
    return out
