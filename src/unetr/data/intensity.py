"""Intensities: the body rule (which voxels the crop keeps) and the normalisation schemes.

The body rule is one for planning and preprocessing, so that the fingerprint's crop sizes (from which the
plan's ROI is derived) are the crops that preprocessing makes: a voxel belongs to the body when any channel
is above the CT window's lower bound (``ct_window``, ``ct_zscore``: air is out), or non-zero (``zscore``,
MRI). :func:`body_threshold` turns an intensity scheme into that rule, :func:`crop_box` applies it.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

from unetr.config import Plan

Box = Tuple[Tuple[int, int], ...]
"""``((x0, x1), (y0, y1), (z0, z1))``: a half-open box of voxel indices."""


def body_threshold(intensity: str, window: Sequence[float]) -> Optional[float]:
    """The body rule of an intensity scheme: the window's lower bound ``a_min`` for the CT schemes, ``None``
    (non-zero voxels) for ``zscore``."""
    return None if intensity == "zscore" else float(window[0])


def body_mask(image: np.ndarray, threshold: Optional[float]) -> np.ndarray:
    """Voxels of ``image`` ``(C, X, Y, Z)`` that belong to the body, ``(X, Y, Z)`` bool: any channel above
    ``threshold``, or any channel non-zero when ``threshold`` is ``None``."""
    inside, value = (np.not_equal, 0) if threshold is None else (np.greater, threshold)
    mask = inside(image[0], value)
    for c in range(1, image.shape[0]):  # one channel at a time: no (C, X, Y, Z) temporary
        mask |= inside(image[c], value)
    return mask


def bounding_box(mask: np.ndarray) -> Box:
    """The half-open box of the True voxels of ``mask`` ``(X, Y, Z)``; the whole array when none are."""
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        box.append((int(hit[0]), int(hit[-1]) + 1) if hit.size else (0, mask.shape[axis]))
    return tuple(box)


def crop_box(image: np.ndarray, threshold: Optional[float], crop: bool = True) -> Box:
    """The crop of ``image`` ``(C, X, Y, Z)``: the body's bounding box (:func:`body_mask` with ``threshold``),
    or the whole volume when ``crop`` is off."""
    if crop:
        return bounding_box(body_mask(image, threshold))
    return tuple((0, int(s)) for s in image.shape[1:])


def plan_crop_box(image: np.ndarray, plan: Plan) -> Box:
    """:func:`crop_box` with the plan's body rule and crop switch."""
    return crop_box(image, body_threshold(plan.intensity, plan.window), plan.crop_foreground)


def normalize(image: np.ndarray, plan: Plan) -> np.ndarray:
    """Normalise ``(C, X, Y, Z)`` float32 in place by the plan's intensity scheme; returns it.

    ``ct_window``: clip to ``[a_min, a_max]``, scale to ``[b_min, b_max]``. ``ct_zscore``: clip to the
    dataset's foreground percentiles, then z-score with its foreground mean and std (``plan.ct_stats``).
    ``zscore``: per channel and case over the non-zero voxels; the outside stays 0.
    """
    if plan.intensity == "ct_window":
        a_min, a_max, b_min, b_max = plan.window
        np.clip(image, a_min, a_max, out=image)
        image -= np.float32(a_min)
        image *= np.float32((b_max - b_min) / (a_max - a_min))
        image += np.float32(b_min)
    elif plan.intensity == "ct_zscore":
        for c, (lo, hi, mean, std) in enumerate(plan.ct_stats):
            np.clip(image[c], lo, hi, out=image[c])
            image[c] -= np.float32(mean)
            image[c] /= np.float32(max(std, 1e-8))
    else:
        for c in range(image.shape[0]):
            mask = image[c] != 0
            values = image[c][mask] if mask.any() else image[c].ravel()
            mean, std = float(values.mean()), float(values.std())
            image[c] -= np.float32(mean)
            image[c] /= np.float32(max(std, 1e-8))
            if mask.any():
                image[c][~mask] = 0.0
    return image


__all__ = ["Box", "body_threshold", "body_mask", "bounding_box", "crop_box", "plan_crop_box", "normalize"]
