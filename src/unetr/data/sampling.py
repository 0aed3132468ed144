"""Patch sampling (positive/negative centres) and augmentation on batched tensors.

:func:`sample_crops` has the semantics of MONAI's ``RandCropByPosNegLabeld``: each of ``num_samples`` crops
is centred on a foreground voxel (label > 0) with probability ``pos_fraction``, else on a background voxel;
the centre is then moved just enough for the ROI to fit inside the volume. Volumes smaller than the ROI are
padded first (symmetrically, with zeros). With ``class_balanced=True`` a foreground centre first picks a
class uniformly among those present, so rare classes get their share.

:func:`augment` applies the paper's recipe to a batch on any device: flips along each axis, 90-degree
rotations in the (X, Y) plane, intensity scaling and shifting; with ``extra=True`` also nnU-Net's rotation
and scaling (resampled with ``grid_sample``) and Gaussian noise. Every random choice comes from the given
generator, so the same generator state gives the same batch. Where the crops have X != Y, the rotation is by
180 degrees only (a quarter turn would change their shape; MONAI's ``RandRotate90d`` would fail to collate).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import numpy as np

_TRIES = 64  # rejection-sampling attempts before listing the candidate voxels


# ---------------------------------------------------------------------------------------------- crops


def pad_to_roi(image: np.ndarray, label: Optional[np.ndarray], roi: Sequence[int]):
    """Pad ``(C, X, Y, Z)`` and ``(X, Y, Z)`` symmetrically with zeros up to ``roi`` where smaller."""
    shape = image.shape[1:]
    if all(s >= r for s, r in zip(shape, roi)):
        return image, label
    pads = [((max(r - s, 0)) // 2, max(r - s, 0) - (max(r - s, 0)) // 2) for s, r in zip(shape, roi)]
    image = np.pad(image, [(0, 0)] + pads)
    if label is not None:
        label = np.pad(label, pads)
    return image, label


def _uniform_where(flat_test, size: int, rng: np.random.Generator, listing) -> Optional[int]:
    """A uniform draw among the flat indices where ``flat_test(idx)`` holds: rejection first, then exact."""
    for _ in range(_TRIES):
        i = int(rng.integers(size))
        if flat_test(i):
            return i
    candidates = listing()
    if candidates.size == 0:
        return None
    return int(candidates[rng.integers(candidates.size)])


def sample_centres(
    label: np.ndarray, roi: Sequence[int], num_samples: int, pos_fraction: float, generator: np.random.Generator,
    class_balanced: bool = False, image: Optional[np.ndarray] = None, image_threshold: Optional[float] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """Draw crop centres as ``RandCropByPosNegLabeld`` does.

    Args:
        label: ``(X, Y, Z)`` integer map (already padded to at least ``roi``).
        roi: crop size.
        pos_fraction: probability that a centre is a foreground voxel (pos / (pos + neg)).
        class_balanced: foreground centres pick a class uniformly first.
        image / image_threshold: when given, background centres are restricted to voxels where some channel
            of ``image`` exceeds the threshold (MONAI's ``image_key`` / ``image_threshold``).

    Returns:
        ``(centres (N, 3) int64 after fitting the ROI inside the volume, positive (N,) bool)``.
    """
    if not 0.0 <= pos_fraction <= 1.0:
        raise ValueError(f"pos_fraction must be in [0, 1], got {pos_fraction}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    shape = np.array(label.shape)
    roi_a = np.array(roi)
    if np.any(shape < roi_a):
        raise ValueError(f"label {tuple(shape)} is smaller than the ROI {tuple(roi)}; pad it first")
    flat = np.asarray(label).reshape(-1)
    image_flat = None
    if image is not None and image_threshold is not None:
        image_flat = image.reshape(image.shape[0], -1)  # a view (memory maps stay lazy)
    size = flat.size

    fg_cache: dict = {}

    def fg_list(k: Optional[int]) -> np.ndarray:
        if k not in fg_cache:
            fg_cache[k] = np.flatnonzero(flat > 0) if k is None else np.flatnonzero(flat == k)
        return fg_cache[k]

    def bg_test(i: int) -> bool:
        return flat[i] == 0 and (image_flat is None or bool((image_flat[:, i] > image_threshold).any()))

    def bg_list() -> np.ndarray:
        if image_flat is None:
            return np.flatnonzero(flat == 0)
        return np.flatnonzero((flat == 0) & (np.asarray(image_flat) > image_threshold).any(axis=0))

    classes = None
    if class_balanced:
        present = np.unique(flat)
        classes = present[present > 0]
    centres = np.zeros((num_samples, 3), dtype=np.int64)
    positive = np.zeros(num_samples, dtype=bool)
    for n in range(num_samples):
        want_pos = generator.random() < pos_fraction
        idx = None
        if want_pos:
            if classes is not None and classes.size:
                k = int(classes[generator.integers(classes.size)])
                cand = fg_list(k)
                idx = int(cand[generator.integers(cand.size)])
            else:
                idx = _uniform_where(lambda i: flat[i] > 0, size, generator, lambda: fg_list(None))
            if idx is None:  # no foreground: MONAI falls back to background
                want_pos = False
        if not want_pos:
            idx = _uniform_where(bg_test, size, generator, bg_list)
            if idx is None:  # no background: foreground then
                idx = _uniform_where(lambda i: flat[i] > 0, size, generator, lambda: fg_list(None))
                want_pos = True
        assert idx is not None
        c = np.array(np.unravel_index(idx, label.shape))
        lo = roi_a // 2
        hi = shape - roi_a + roi_a // 2
        centres[n] = np.clip(c, lo, hi)
        positive[n] = want_pos
    return centres, positive


def crop_at(array: np.ndarray, centre: Sequence[int], roi: Sequence[int]) -> np.ndarray:
    """The ROI of the last three axes whose voxel ``roi // 2`` is ``centre`` (MONAI's centre convention)."""
    sl = tuple(slice(int(c) - r // 2, int(c) - r // 2 + r) for c, r in zip(centre, roi))
    return array[(Ellipsis, *sl)]


def sample_crops(
    image: np.ndarray, label: np.ndarray, roi: Sequence[int], num_samples: int, pos_fraction: float,
    generator: np.random.Generator, class_balanced: bool = False, image_threshold: Optional[float] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """Random ROI crops centred on foreground/background voxels.

    Args:
        image: ``(C, X, Y, Z)`` float32 (a memory map is fine: only the crops are read).
        label: ``(X, Y, Z)`` integer map.
        roi: crop size ``(x, y, z)``; smaller volumes are padded with zeros.
        num_samples: crops per volume (the paper: 4).
        pos_fraction: share of foreground-centred crops (the paper: pos=1, neg=1 -> 0.5).
        generator: the only source of randomness.
        class_balanced: pick foreground classes uniformly (rare classes get picked).
        image_threshold: restrict background centres to voxels above it (MONAI's BTCV recipe uses 0).

    Returns:
        ``(images (N, C, *roi) float32, labels (N, 1, *roi) uint8)`` numpy arrays
        (``torch.from_numpy`` makes tensors without a copy).
    """
    if image.ndim != 4 or label.ndim != 3 or tuple(image.shape[1:]) != tuple(label.shape):
        raise ValueError(f"need image (C, X, Y, Z) and label (X, Y, Z) on one grid, got {image.shape} and {label.shape}")
    roi = tuple(int(r) for r in roi)
    if len(roi) != 3 or min(roi) < 1:
        raise ValueError(f"roi must be three positive sizes, got {roi}")
    image, label = pad_to_roi(image, label, roi)
    centres, _ = sample_centres(label, roi, num_samples, pos_fraction, generator, class_balanced,
                                image if image_threshold is not None else None, image_threshold)
    images = np.empty((num_samples, image.shape[0], *roi), dtype=np.float32)
    labels = np.empty((num_samples, 1, *roi), dtype=np.uint8)
    for n, c in enumerate(centres):
        images[n] = crop_at(image, c, roi)
        labels[n, 0] = crop_at(label, c, roi)
    return images, labels


# ------------------------------------------------------------------------------------------ augmentation


def _rotation_matrix(angles):
    """(3, 3) float32 rotation about x, then y, then z (radians)."""
    import torch

    ax, ay, az = (float(a) for a in angles)
    rx = torch.tensor([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = torch.tensor([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = torch.tensor([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return (rz @ ry @ rx).float()


def augment(
    images, labels, generator, *, flip_prob: float = 0.2, rot90_prob: float = 0.2, scale_prob: float = 0.1,
    shift_prob: float = 0.1, factor: float = 0.1, extra: bool = False, rotate_prob: float = 0.2,
    max_angle: float = math.radians(15), zoom_prob: float = 0.2, zoom_range: Tuple[float, float] = (0.85, 1.25),
    noise_prob: float = 0.1, noise_std: float = 0.1,
):
    """Augment a batch on its own device; new tensors are returned, the inputs stay untouched.

    Args:
        images: ``(B, C, X, Y, Z)`` float tensor.
        labels: ``(B, 1, X, Y, Z)`` integer tensor (or None).
        generator: ``torch.Generator``; every random number is drawn from it, on its own device.
        flip_prob: per sample and per axis, the probability of a flip (MONAI ``RandFlipd``, one per axis).
        rot90_prob: probability of a rotation by 90, 180 or 270 degrees (one drawn uniformly) in the (X, Y)
            plane (``RandRotate90d(max_k=3)``); when X != Y a quarter turn would change the crop's shape, so
            only the half turn (180 degrees) is applied, with the same probability (:func:`rot90_note`).
        scale_prob / shift_prob: probability of ``x * (1 + u)`` / ``x + u`` with ``u ~ U(-factor, factor)``
            (``RandScaleIntensityd`` / ``RandShiftIntensityd``).
        extra: also nnU-Net's rotation (``rotate_prob``, up to ``max_angle`` about each axis) and scaling
            (``zoom_prob``, ``zoom_range``) -- images linear, labels nearest -- and Gaussian noise
            (``noise_prob``, sigma ~ U(0, ``noise_std``)).

    Returns:
        ``(images, labels)`` of the input shapes, dtypes and device.
    """
    import torch

    if images.ndim != 5:
        raise ValueError(f"images must be (B, C, X, Y, Z), got shape {tuple(images.shape)}")
    if labels is not None and (labels.ndim != 5 or labels.shape[0] != images.shape[0]
                               or labels.shape[2:] != images.shape[2:]):
        raise ValueError(f"labels must be (B, 1, X, Y, Z) matching images, got {tuple(labels.shape)}")
    gdev = generator.device

    def rand(*shape):
        return torch.rand(shape, generator=generator, device=gdev).cpu()

    out_i = images.clone()
    out_l = labels.clone() if labels is not None else None
    b = images.shape[0]
    u = rand(b, 3 + 1 + 1 + 2 + 2)  # flips x3, rot90 k, rot90 gate, scale gate/value, shift gate/value
    k90 = torch.randint(1, 4, (b,), generator=generator, device=gdev).cpu()
    _flip_rotate_scale(out_i, out_l, u, k90, flip_prob, rot90_prob, scale_prob, shift_prob, factor)
    if extra:
        e = rand(b, 2 + 3 + 3 + 2)  # rotate gate, zoom gate, 3 angles, (unused x3), noise gate/sigma
        _rotate_zoom(out_i, out_l, e, rotate_prob, max_angle, zoom_prob, zoom_range)
        for n in range(b):
            if e[n, 8] < noise_prob:
                sigma = float(e[n, 9]) * noise_std
                noise = torch.randn(out_i[n].shape, generator=generator, device=gdev)
                out_i[n] += sigma * noise.to(out_i.device, out_i.dtype)
    return out_i, out_l


def _flip_rotate_scale(out_i, out_l, u, k90, flip_prob: float, rot90_prob: float, scale_prob: float,
                       shift_prob: float, factor: float) -> None:
    """The paper's recipe, in place, from the draws ``u`` ``(B, 9)`` and ``k90`` ``(B,)`` (see :func:`augment`)."""
    import torch

    square = out_i.shape[2] == out_i.shape[3]
    for n in range(out_i.shape[0]):
        dims = [2 + a for a in range(3) if u[n, a] < flip_prob]
        if dims:
            out_i[n] = torch.flip(out_i[n], [d - 1 for d in dims])
            if out_l is not None:
                out_l[n] = torch.flip(out_l[n], [d - 1 for d in dims])
        if u[n, 3] < rot90_prob:
            k = int(k90[n]) if square else 2  # a quarter turn of a non-square (X, Y) plane changes its shape
            out_i[n] = torch.rot90(out_i[n], k, dims=(1, 2))
            if out_l is not None:
                out_l[n] = torch.rot90(out_l[n], k, dims=(1, 2))
        if u[n, 5] < scale_prob:
            out_i[n] *= 1.0 + (2 * float(u[n, 6]) - 1) * factor
        if u[n, 7] < shift_prob:
            out_i[n] += (2 * float(u[n, 8]) - 1) * factor


def rot90_note(roi: Sequence[int], rot90_prob: float) -> Optional[str]:
    """What :func:`augment` does instead of MONAI's ``RandRotate90d`` for this crop size, or None when the
    same (X == Y, or no rotations)."""
    if rot90_prob <= 0 or roi[0] == roi[1]:
        return None
    return (f"crops of {tuple(roi)} have X != Y: 90 and 270 degree rotations would change their shape, so the "
            f"rotation augmentation (p = {rot90_prob:g}) turns the (X, Y) plane by 180 degrees only")


def _rotate_zoom(out_i, out_l, e, rotate_prob: float, max_angle: float, zoom_prob: float,
                 zoom_range: Tuple[float, float]) -> None:
    """nnU-Net's rotation and scaling, in place, from the draws ``e`` ``(B, 10)`` (see :func:`augment`):
    images linear, labels nearest, one ``grid_sample`` for the moved samples."""
    import torch
    import torch.nn.functional as F

    b = out_i.shape[0]
    thetas = []
    for n in range(b):
        m = torch.eye(3)
        if e[n, 0] < rotate_prob:
            m = _rotation_matrix((2 * e[n, 2:5] - 1) * max_angle) @ m
        if e[n, 1] < zoom_prob:
            z = zoom_range[0] + float(e[n, 5]) * (zoom_range[1] - zoom_range[0])
            m = m / z  # sampling grid shrinks -> content grows
        thetas.append(torch.cat([m, torch.zeros(3, 1)], dim=1))
    moved = [n for n in range(b) if e[n, 0] < rotate_prob or e[n, 1] < zoom_prob]
    if not moved:
        return
    theta = torch.stack([thetas[n] for n in moved]).to(out_i.device)  # (M, 3, 4)
    # affine_grid works in (x=W, y=H, z=D) order: our (X, Y, Z) are (D, H, W)
    perm = torch.tensor([2, 1, 0])
    rows = theta[:, perm]
    theta = torch.cat([rows[:, :, perm], rows[:, :, 3:]], dim=2)
    grid = F.affine_grid(theta, [len(moved), 1, *out_i.shape[2:]], align_corners=False)
    idx = torch.tensor(moved, device=out_i.device)
    warped = F.grid_sample(out_i[idx].float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    out_i[idx] = warped.to(out_i.dtype)
    if out_l is not None:
        warped_l = F.grid_sample(out_l[idx].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
        out_l[idx] = warped_l.round().to(out_l.dtype)


__all__ = ["sample_crops", "sample_centres", "crop_at", "pad_to_roi", "augment", "rot90_note"]
