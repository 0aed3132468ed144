"""Resampling of images and label maps on the last three axes.

Two grids are used. The half-voxel ("grid") convention keeps a block's physical extent: output voxel ``i``
of ``n_out`` samples input coordinate ``(i + 0.5) * n_in / n_out - 0.5`` (torch's ``align_corners=False``;
:func:`target_shape`, :func:`linear_taps`). MONAI's ``Spacingd`` keeps the first voxel's centre instead:
output voxel ``i`` samples ``i * target / spacing``, border clamped (:func:`monai_shape`, :func:`monai_taps`).

Images are resampled linearly (torch trilinear), by a scipy spline, or by nearest neighbour; label maps
through their one-hot masks (linear, then argmax) or by nearest neighbour, so they stay integer maps.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

Taps = Tuple[np.ndarray, np.ndarray, np.ndarray]
"""Per axis, the linear interpolation ``(i0, i1, w)``: ``out[i] = (1 - w[i]) * in[i0[i]] + w[i] * in[i1[i]]``."""

_VOTE_VOXELS = 1 << 21  # output voxels per slab of the boundary vote
_DENSE_FRACTION = 0.3  # above this fraction of input voxels on a boundary, vote densely per class


def target_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> Tuple[int, int, int]:
    """Voxel counts after resampling ``shape`` at ``spacing`` to ``target`` spacing (at least 1)."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target))  # type: ignore[return-value]


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Input index sampled by output voxel ``i`` (half-voxel convention, nearest neighbour)."""
    idx = np.floor((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64)
    return np.clip(idx, 0, n_in - 1)


def resample_nearest(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resampling of the last three axes to ``shape`` (keeps the dtype)."""
    lead = array.ndim - 3
    if tuple(array.shape[lead:]) == tuple(shape):
        return np.ascontiguousarray(array)
    ix, iy, iz = (_nearest_index(a, b) for a, b in zip(array.shape[lead:], shape))
    out = array[(Ellipsis, ix[:, None, None], iy[None, :, None], iz[None, None, :])]
    return np.ascontiguousarray(out)


def resample_linear(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Trilinear resampling of ``(C, X, Y, Z)`` float32 to ``(C, *shape)`` (torch, multi-threaded)."""
    import torch
    import torch.nn.functional as F

    if tuple(array.shape[1:]) == tuple(shape):
        return np.ascontiguousarray(array, dtype=np.float32)
    x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None]  # (1, C, X, Y, Z)
    y = F.interpolate(x, size=tuple(int(s) for s in shape), mode="trilinear", align_corners=False)
    return y[0].numpy()  # (C, *shape)


def resample_spline(array: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """Spline resampling (order 2 or 3) of ``(C, X, Y, Z)`` with scipy, half-voxel convention."""
    from scipy import ndimage

    if tuple(array.shape[1:]) == tuple(shape):
        return np.ascontiguousarray(array, dtype=np.float32)
    zoom = [b / a for a, b in zip(array.shape[1:], shape)]
    out = np.empty((array.shape[0], *shape), dtype=np.float32)
    for c in range(array.shape[0]):
        out[c] = ndimage.zoom(np.asarray(array[c], dtype=np.float32), zoom, order=order, mode="nearest",
                              grid_mode=True, prefilter=True)
    return out


def resample_image(array: np.ndarray, shape: Sequence[int], order: int = 1) -> np.ndarray:
    """Resample ``(C, X, Y, Z)`` to ``(C, *shape)`` with spline ``order`` (0 nearest, 1 linear, 2-3 spline)."""
    if order == 0:
        return resample_nearest(array, shape).astype(np.float32, copy=False)
    if order == 1:
        return resample_linear(array, shape)
    return resample_spline(array, shape, order)


def _taps_at(src: np.ndarray, n_in: int) -> Taps:
    """Lower/upper input index and upper weight of linear interpolation at input coordinates ``src >= 0``."""
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (src - i0).astype(np.float32)


def linear_taps(n_in: int, n_out: int) -> Taps:
    """Taps of the half-voxel grid (torch's ``align_corners=False``)."""
    return _taps_at(np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0), n_in)


def monai_taps(n_in: int, n_out: int, ratio: float) -> Taps:
    """Taps of MONAI's grid: output voxel ``i`` samples input coordinate ``i * ratio`` (the first voxels'
    centres coincide), clamped to the input (``Spacingd``'s ``border`` padding)."""
    return _taps_at(np.clip(np.arange(n_out) * float(ratio), 0.0, n_in - 1.0), n_in)


def monai_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> Tuple[int, int, int]:
    """Voxel counts of MONAI's ``Spacingd`` grid: the distance from the first to the last voxel centre, at
    the target spacing, plus one (rounded as MONAI rounds it)."""
    return tuple(max(1, int(np.round((n - 1) * s / t + 1.0))) for n, s, t in zip(shape, spacing, target))  # type: ignore[return-value]


def resample_taps(array: np.ndarray, taps: Sequence[Taps]) -> np.ndarray:
    """Separable linear resampling of ``(C, X, Y, Z)`` by explicit taps ``(i0, i1, w)`` per spatial axis:
    ``out[..., i, ...] = (1 - w[i]) * in[..., i0[i], ...] + w[i] * in[..., i1[i], ...]`` (float32)."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    for axis, (i0, i1, w) in enumerate(taps, start=t.dim() - 3):
        view = [1] * t.dim()
        view[axis] = -1
        t = torch.lerp(t.index_select(axis, torch.from_numpy(i0)), t.index_select(axis, torch.from_numpy(i1)),
                       torch.from_numpy(w).view(view))
    return t.numpy()


def resample_label_onehot(label: np.ndarray, shape: Sequence[int], taps: Optional[Sequence[Taps]] = None) -> np.ndarray:
    """Resample a label map ``(X, Y, Z)`` through its one-hot masks: the result is the class whose mask,
    resampled linearly, is largest (smoother than nearest neighbour; every class present takes part, ties go
    to the lower class).

    Computed exactly but only where it matters: an output voxel whose 8 input neighbours share one class
    takes that class; the weighted vote runs only on the voxels whose neighbourhood is mixed (the class
    boundaries), so the cost does not grow with the number of classes.

    Args:
        taps: ``(i0, i1, w)`` per axis with ``i1`` equal to ``i0`` or ``i0 + 1`` (default: the half-voxel
            convention of :func:`linear_taps`; :func:`monai_taps` for MONAI's grid).
    """
    if taps is None and tuple(label.shape) == tuple(shape):
        return np.ascontiguousarray(label)
    lab = np.ascontiguousarray(label)
    given = taps
    if taps is None:
        taps = [linear_taps(a, b) for a, b in zip(lab.shape, shape)]
    (x0, x1, wx), (y0, y1, wy), (z0, z1, wz) = taps
    # cells (i..i+1, j..j+1, k..k+1) of the input grid whose corners disagree; the last plane pairs with itself
    X, Y, Z = lab.shape
    padded = np.pad(lab, ((0, 1), (0, 1), (0, 1)), mode="edge")
    mixed = np.zeros(lab.shape, dtype=bool)
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                if dx or dy or dz:
                    mixed |= padded[dx:dx + X, dy:dy + Y, dz:dz + Z] != lab
    if mixed.mean() > _DENSE_FRACTION:  # boundaries everywhere (an untrained network): per-class passes are faster
        return _dense_vote(lab, shape, given)
    grid = (x0[:, None, None], y0[None, :, None], z0[None, None, :])
    out = lab[grid]  # (X', Y', Z'): the class of uniform neighbourhoods
    # the vote in slabs of output planes, so that a fragmented map (every voxel on a boundary) needs memory
    # for ~2M voxels at a time, not ~60 bytes per output voxel
    step = max(1, _VOTE_VOXELS // max(1, shape[1] * shape[2]))
    for start in range(0, shape[0], step):
        sl = slice(start, min(start + step, shape[0]))
        ox, oy, oz = np.nonzero(mixed[x0[sl][:, None, None], y0[None, :, None], z0[None, None, :]])
        if ox.size:
            ox = ox + start
            out[ox, oy, oz] = _vote(lab, ox, oy, oz, (x0, x1, wx), (y0, y1, wy), (z0, z1, wz))
    return out


def _dense_vote(lab: np.ndarray, shape: Sequence[int], taps: Optional[Sequence[Taps]] = None) -> np.ndarray:
    """The same vote on every output voxel: each class's mask resampled by ``taps`` (default: one fused
    :func:`resample_linear` pass, the taps of :func:`linear_taps`), keeping the largest; ties go to the
    lower class. Memory: a few output volumes."""
    best = best_cls = None
    for k in np.unique(lab):
        mask = (lab == k)[None]
        score = (resample_linear(mask, shape) if taps is None else resample_taps(mask, taps))[0]
        if best is None:
            best, best_cls = score, np.full(tuple(shape), k, dtype=lab.dtype)
        else:
            best_cls[score > best] = k
            np.maximum(best, score, out=best)
    return best_cls


def _vote(lab: np.ndarray, ox: np.ndarray, oy: np.ndarray, oz: np.ndarray, tx: Taps, ty: Taps, tz: Taps) -> np.ndarray:
    """The class with the largest linearly interpolated one-hot value at output voxels ``(ox, oy, oz)``."""
    (x0, x1, wx), (y0, y1, wy), (z0, z1, wz) = tx, ty, tz
    corners = []
    for ax, wa in ((x0[ox], 1 - wx[ox]), (x1[ox], wx[ox])):
        for ay, wb in ((y0[oy], 1 - wy[oy]), (y1[oy], wy[oy])):
            for az, wc in ((z0[oz], 1 - wz[oz]), (z1[oz], wz[oz])):
                corners.append((lab[ax, ay, az], wa * wb * wc))
    classes = np.unique(np.concatenate([c for c, _ in corners]))
    score = np.zeros((classes.size, ox.size), dtype=np.float32)
    for values, weight in corners:
        score[np.searchsorted(classes, values), np.arange(ox.size)] += weight
    return classes[score.argmax(axis=0)]


def resample_label(
    label: np.ndarray, shape: Sequence[int], mode: str = "onehot", taps: Optional[Sequence[Taps]] = None
) -> np.ndarray:
    """Resample a label map by ``mode``: ``onehot`` (linear per class, then argmax) or ``nearest``, on the
    half-voxel grid or by explicit ``taps`` (nearest then takes the closer of each pair)."""
    if mode == "nearest":
        if taps is None:
            return resample_nearest(label, shape)
        ix, iy, iz = (np.where(w < 0.5, i0, i1) for i0, i1, w in taps)
        return np.ascontiguousarray(label[ix[:, None, None], iy[None, :, None], iz[None, None, :]])
    return resample_label_onehot(label, shape, taps=taps)


__all__ = [
    "Taps", "target_shape", "monai_shape", "linear_taps", "monai_taps", "resample_nearest", "resample_linear",
    "resample_spline", "resample_image", "resample_taps", "resample_label_onehot", "resample_label",
]
