"""The deterministic per-case transform and its exact inverse.

``preprocess_case`` runs, in this order (cheapest first, so the expensive resampling sees the fewest voxels):

1. reorient to RAS by flips and transposes only (views, no interpolation);
2. crop to the bounding box of the body (CT: voxels above the window's lower bound; MRI: non-zero voxels);
3. resample to the plan's target spacing (image: linear via ``torch`` trilinear, cubic via scipy; label:
   through its one-hot masks (linear, then argmax) or by nearest neighbour, so it stays an integer map);
4. normalise intensities (CT window, CT percentile clipping + z-score, or per-channel z-score).

Sampling positions follow the half-voxel ("grid") convention: the cropped block keeps its physical extent,
and output voxel ``i`` samples input coordinate ``(i + 0.5) * n_in / n_out - 0.5``. The returned record
(JSON-able) holds everything :func:`invert_to_original` needs to put a prediction back on the input file's
grid: resample to the cropped shape, pad with background, undo the reorientation.

The plan's ``geometry="monai"`` follows MONAI's chain instead (``Spacingd``, ``ScaleIntensityRanged``,
``CropForegroundd``): the whole volume is resampled keeping the first voxel's centre at exactly the target
spacing (output voxel ``i`` samples ``i * target / spacing``, border clamped), then cropped on the new grid;
its inverse is ``Invertd``'s (zero padding around the crop, then the same linear map back). Both give the
same arrays as those MONAI transforms (tested). :class:`SoftInverse` takes the network's soft output back
to the input grid slab by slab and takes the argmax there.
"""

from __future__ import annotations

import logging
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from unetr.config import Plan
from unetr.data.io import Geometry, PathLike, read_image
from unetr.errors import DataError

log = logging.getLogger(__name__)

RECORD_VERSION = 1


# ----------------------------------------------------------------------------------------- orientation


def ras_ornt(affine: np.ndarray) -> np.ndarray:
    """(3, 2) nibabel orientation that takes the array axes of ``affine`` to RAS (closest axes)."""
    import nibabel as nib

    return nib.orientations.io_orientation(np.asarray(affine, dtype=np.float64))


def apply_ornt(array: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Flip and transpose the last three axes of ``array`` by ``ornt`` (a view; any leading axes kept).

    Row ``i`` of ``ornt`` is ``(output axis, flip)`` for input axis ``i`` (nibabel's convention).
    """
    lead = array.ndim - 3
    for ax, flip in enumerate(ornt[:, 1]):
        if flip == -1:
            array = np.flip(array, axis=lead + ax)
    order = list(range(lead)) + [lead + int(a) for a in np.argsort(ornt[:, 0])]
    return array.transpose(order)


def invert_ornt(ornt: np.ndarray) -> np.ndarray:
    """The orientation that undoes ``ornt``."""
    ornt = np.asarray(ornt)
    inv = np.zeros_like(ornt)
    for i, (out_ax, flip) in enumerate(ornt):
        inv[int(out_ax)] = (i, flip)
    return inv


def _ornt_affine(affine: np.ndarray, ornt: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    import nibabel as nib

    return np.asarray(affine, dtype=np.float64) @ nib.orientations.inv_ornt_aff(ornt, tuple(shape))


# ------------------------------------------------------------------------------------------ resampling


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


def _taps_at(src: np.ndarray, n_in: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower/upper input index and upper weight of linear interpolation at input coordinates ``src >= 0``."""
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (src - i0).astype(np.float32)


def _linear_taps(n_in: int, n_out: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Taps of the half-voxel grid (torch's ``align_corners=False``)."""
    return _taps_at(np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0), n_in)


def _monai_taps(n_in: int, n_out: int, ratio: float) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Taps of MONAI's grid: output voxel ``i`` samples input coordinate ``i * ratio`` (the first voxels'
    centres coincide), clamped to the input (``Spacingd``'s ``border`` padding)."""
    return _taps_at(np.clip(np.arange(n_out) * float(ratio), 0.0, n_in - 1.0), n_in)


def monai_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> Tuple[int, int, int]:
    """Voxel counts of MONAI's ``Spacingd`` grid: the distance from the first to the last voxel centre, at
    the target spacing, plus one (rounded as MONAI rounds it)."""
    return tuple(max(1, int(np.round((n - 1) * s / t + 1.0))) for n, s, t in zip(shape, spacing, target))  # type: ignore[return-value]


Taps = Tuple[np.ndarray, np.ndarray, np.ndarray]


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


_VOTE_VOXELS = 1 << 21  # output voxels per slab of the boundary vote
_DENSE_FRACTION = 0.3  # above this fraction of input voxels on a boundary, vote densely per class
_PAD_LABEL = 255  # SoftInverse: the label of the zero padding around a crop (no class has it)


def resample_label_onehot(
    label: np.ndarray, shape: Sequence[int], num_classes: Optional[int] = None, taps: Optional[Sequence[Taps]] = None
) -> np.ndarray:
    """Resample a label map ``(X, Y, Z)`` through its one-hot masks: the result is the class whose mask,
    resampled linearly, is largest (smoother than nearest neighbour; ties go to the lower class).

    Computed exactly but only where it matters: an output voxel whose 8 input neighbours share one class
    takes that class; the weighted vote runs only on the voxels whose neighbourhood is mixed (the class
    boundaries), so the cost does not grow with the number of classes.

    Args:
        num_classes: unused, kept for callers that pass it (every class present is considered).
        taps: ``(i0, i1, w)`` per axis with ``i1`` equal to ``i0`` or ``i0 + 1`` (default: the half-voxel
            convention of :func:`_linear_taps`; :func:`_monai_taps` for MONAI's grid).
    """
    if taps is None and tuple(label.shape) == tuple(shape):
        return np.ascontiguousarray(label)
    lab = np.ascontiguousarray(label)
    given = taps
    if taps is None:
        taps = [_linear_taps(a, b) for a, b in zip(lab.shape, shape)]
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
    :func:`resample_linear` pass, the taps of :func:`_linear_taps`), keeping the largest; ties go to the
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


def _vote(lab, ox, oy, oz, tx, ty, tz) -> np.ndarray:
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


# ----------------------------------------------------------------------------------------- intensities


def foreground_mask(image: np.ndarray, plan: Plan) -> np.ndarray:
    """Voxels that belong to the body, used for the crop: ``(X, Y, Z)`` bool.

    CT (``ct_window``/``ct_zscore``): any channel above the window's lower bound ``a_min`` (air is out);
    MRI (``zscore``): any channel non-zero.
    """
    if plan.intensity == "zscore":
        mask = image[0] != 0
        for c in range(1, image.shape[0]):
            mask |= image[c] != 0
    else:
        threshold = plan.window[0]
        mask = image[0] > threshold
        for c in range(1, image.shape[0]):
            mask |= image[c] > threshold
    return mask


def bounding_box(mask: np.ndarray) -> Tuple[Tuple[int, int], ...]:
    """``((x0, x1), (y0, y1), (z0, z1))`` half-open box of the True voxels; the whole array when none are."""
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        box.append((int(hit[0]), int(hit[-1]) + 1) if hit.size else (0, mask.shape[axis]))
    return tuple(box)


def normalize(image: np.ndarray, plan: Plan) -> np.ndarray:
    """Normalise ``(C, X, Y, Z)`` float32 in place by the plan's intensity scheme; returns it."""
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
    else:  # zscore over non-zero voxels, per channel and case; the outside stays 0
        for c in range(image.shape[0]):
            mask = image[c] != 0
            values = image[c][mask] if mask.any() else image[c].ravel()
            mean, std = float(values.mean()), float(values.std())
            image[c] -= np.float32(mean)
            image[c] /= np.float32(max(std, 1e-8))
            if mask.any():
                image[c][~mask] = 0.0
    return image


# ---------------------------------------------------------------------------------------------- public


def target_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> Tuple[int, int, int]:
    """Voxel counts after resampling ``shape`` at ``spacing`` to ``target`` spacing (at least 1)."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target))  # type: ignore[return-value]


def preprocess_case(
    image: np.ndarray, geometry: Geometry, plan: Plan, label: Optional[np.ndarray] = None
) -> Tuple[np.ndarray, Optional[np.ndarray], dict]:
    """Reorient, crop, resample and normalise one case.

    Args:
        image: ``(C, X, Y, Z)`` float32, as :func:`unetr.data.io.read_image` returns it.
        geometry: the image file's geometry.
        plan: target spacing, intensity scheme, crop switch and image spline order.
        label: optional ``(X, Y, Z)`` integer label map on the same grid.

    Returns:
        ``(image (C, X', Y', Z') float32, label (X', Y', Z') uint8 or None, record)``; the record is a
        JSON-able dict for :func:`invert_to_original`.
    """
    if image.ndim != 4:
        raise ValueError(f"image must be (C, X, Y, Z), got shape {image.shape}")
    if tuple(image.shape[1:]) != tuple(geometry.shape):
        raise ValueError(f"image shape {image.shape[1:]} does not match its geometry {geometry.shape}")
    if image.shape[0] != plan.in_channels:
        raise DataError(f"image has {image.shape[0]} channel(s), the plan expects {plan.in_channels}")
    if label is not None:
        if tuple(label.shape) != tuple(image.shape[1:]):
            raise DataError(f"label shape {label.shape} differs from image shape {image.shape[1:]}")
        if label.size and int(label.max()) > 255:
            raise DataError(f"label values up to {int(label.max())} do not fit uint8")

    # 1. reorient (views only)
    ornt = ras_ornt(geometry.affine)
    ras_image = apply_ornt(image, ornt)
    ras_affine = _ornt_affine(geometry.affine, ornt, geometry.shape)
    ras_shape = tuple(int(s) for s in ras_image.shape[1:])
    ras_spacing = tuple(float(s) for s in np.sqrt((ras_affine[:3, :3] ** 2).sum(axis=0)))

    if plan.geometry == "monai":
        return _preprocess_monai(ras_image, ras_affine, ras_spacing, ornt, geometry, plan,
                                 None if label is None else apply_ornt(label, ornt))

    # 2. crop to the body
    box = _body_box(ras_image, plan)
    sl = tuple(slice(a, b) for a, b in box)
    cropped = ras_image[(slice(None), *sl)]
    crop_shape = tuple(b - a for a, b in box)

    # 3. resample
    new_shape = target_shape(crop_shape, ras_spacing, plan.target_spacing)
    out = resample_image(cropped, new_shape, plan.image_order)
    if out is image or np.shares_memory(out, image):
        out = out.copy()  # normalisation is in place; never touch the caller's array

    # 4. normalise
    normalize(out, plan)

    out_label = None
    if label is not None:
        ras_label = apply_ornt(label, ornt)[sl]
        out_label = resample_label(ras_label, new_shape, plan.label_resample).astype(np.uint8, copy=False)

    scale = np.array(crop_shape, dtype=np.float64) / np.array(new_shape, dtype=np.float64)
    to_crop = np.eye(4)  # preprocessed voxel -> RAS voxel
    to_crop[:3, :3] = np.diag(scale)
    to_crop[:3, 3] = np.array([a for a, _ in box], dtype=np.float64) + (scale - 1) / 2
    record = _record(geometry, ornt, ras_shape, ras_spacing, box, crop_shape, new_shape,
                     np.array(ras_spacing) * scale, ras_affine @ to_crop, plan)
    return out, out_label, record


def _body_box(image: np.ndarray, plan: Plan) -> Tuple[Tuple[int, int], ...]:
    """The crop of the plan: the body's bounding box, or the whole volume when the plan does not crop."""
    if plan.crop_foreground:
        return bounding_box(foreground_mask(image, plan))
    return tuple((0, int(s)) for s in image.shape[1:])


def _record(geometry: Geometry, ornt: np.ndarray, ras_shape, ras_spacing, box, crop_shape, shape, spacing,
            affine: np.ndarray, plan: Plan, **extra) -> dict:
    """The JSON-able record :func:`invert_to_original` and :class:`SoftInverse` work from."""
    return {
        "version": RECORD_VERSION,
        **extra,
        "geometry": geometry.to_dict(),
        "ornt": np.asarray(ornt).tolist(),
        "ras_shape": [int(n) for n in ras_shape],
        "ras_spacing": [float(s) for s in ras_spacing],
        "bbox": [list(b) for b in box],
        "crop_shape": [int(n) for n in crop_shape],
        "shape": [int(n) for n in shape],
        "spacing": [float(s) for s in spacing],
        "affine": np.asarray(affine).tolist(),
        "target_spacing": list(plan.target_spacing),
    }


def _preprocess_monai(ras_image: np.ndarray, ras_affine: np.ndarray, ras_spacing: Sequence[float], ornt: np.ndarray,
                      geometry: Geometry, plan: Plan,
                      ras_label: Optional[np.ndarray]) -> Tuple[np.ndarray, Optional[np.ndarray], dict]:
    """MONAI's order and grid (``Spacingd``, ``ScaleIntensityRanged``, ``CropForegroundd``): resample the
    whole reoriented volume keeping the first voxel's centre, then crop to the body on the resampled grid."""
    ras_shape = ras_image.shape[1:]
    ratio = np.asarray(plan.target_spacing, dtype=np.float64) / np.asarray(ras_spacing)  # input voxels per output voxel
    full_shape = monai_shape(ras_shape, ras_spacing, plan.target_spacing)
    taps = [_monai_taps(n_in, n_out, r) for n_in, n_out, r in zip(ras_shape, full_shape, ratio)]
    resampled = resample_taps(ras_image, taps)
    box = _body_box(resampled, plan)
    sl = tuple(slice(a, b) for a, b in box)
    out = np.ascontiguousarray(resampled[(slice(None), *sl)])
    del resampled
    normalize(out, plan)
    out_label = None
    if ras_label is not None:
        out_label = resample_label(ras_label, full_shape, plan.label_resample, taps)[sl].astype(np.uint8, copy=False)
        out_label = np.ascontiguousarray(out_label)
    to_ras = np.eye(4)  # preprocessed voxel -> RAS voxel: (start + i) * ratio
    to_ras[:3, :3] = np.diag(ratio)
    to_ras[:3, 3] = np.array([a for a, _ in box], dtype=np.float64) * ratio
    shape = tuple(b - a for a, b in box)
    # bbox is on the resampled grid here; the crop is the preprocessed array itself
    record = _record(geometry, ornt, ras_shape, ras_spacing, box, shape, shape, plan.target_spacing,
                     ras_affine @ to_ras, plan, geometry_mode="monai", full_shape=list(full_shape),
                     ratio=[float(r) for r in ratio])
    return out, out_label, record


def _monai_inverse_taps(record: dict) -> List[Taps]:
    """Per RAS axis, the taps that take the preprocessed array, padded with one plane on each side, back to
    the reoriented input grid as MONAI's ``Invertd`` does: input voxel ``j`` samples resampled coordinate
    ``j / ratio`` (border clamped); resampled voxels outside the crop read the padding (index 0 or n + 1)."""
    taps = []
    for n_ras, n_full, r, (b0, b1) in zip(record["ras_shape"], record["full_shape"], record["ratio"], record["bbox"]):
        i0, i1, w = _monai_taps(n_full, n_ras, 1.0 / r)
        n = b1 - b0
        taps.append((np.clip(i0 - b0 + 1, 0, n + 1), np.clip(i1 - b0 + 1, 0, n + 1), w))
    return taps


def _padded(array: np.ndarray, value) -> np.ndarray:
    """``array`` with one plane of ``value`` before and after each of its last three axes."""
    pad = [(0, 0)] * (array.ndim - 3) + [(1, 1)] * 3
    if array.ndim == 3:
        return np.pad(array, pad, mode="constant", constant_values=value)
    out = np.empty(array.shape[:-3] + tuple(n + 2 for n in array.shape[-3:]), dtype=array.dtype)
    out[...] = np.asarray(value, dtype=array.dtype).reshape((-1, 1, 1, 1))
    out[(Ellipsis, slice(1, -1), slice(1, -1), slice(1, -1))] = array
    return out


def invert_to_original(array, record: dict, is_label: bool, num_classes: Optional[int] = None,
                       background: bool = True) -> np.ndarray:
    """Put a prediction on the preprocessed grid back on the original file's grid.

    Args:
        array: a label map ``(X', Y', Z')`` (``is_label=True``) or probabilities/logits ``(K, X', Y', Z')``
            on the preprocessed grid (numpy or torch).
        record: the record :func:`preprocess_case` returned for this case.
        is_label: label maps are resampled through their one-hot masks (linear, then argmax); probabilities
            are resampled linearly per channel.
        num_classes: optional class count for label maps (default: the classes present).
        background: outside the crop, soft outputs are background (1, 0, ...: probabilities); ``False`` fills
            zeros (logits, as MONAI's ``Invertd`` pads).

    Returns:
        ``(X, Y, Z)`` label map (same dtype) or ``(K, X, Y, Z)`` float32 probabilities with the shape of the
        input file; outside the crop the label is 0 and the probabilities are background (1, 0, ...).

    With the ``monai`` geometry the padded crop is resampled back as a whole (MONAI's ``Invertd``: linear,
    border clamped), so voxels next to the crop blend with the padding, as they do in a MONAI pipeline.
    """
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    shape = tuple(record["shape"])
    if is_label and (array.ndim != 3 or tuple(array.shape) != shape):
        raise ValueError(f"label map must have the preprocessed shape {shape}, got {array.shape}")
    if not is_label and (array.ndim != 4 or tuple(array.shape[1:]) != shape):
        raise ValueError(f"probabilities must be (K, *{shape}), got {array.shape}")
    if record.get("geometry_mode", "extent") == "monai":
        return _on_file_grid(_invert_monai(array, record, is_label, background), record)
    crop_shape = tuple(record["crop_shape"])
    ras_shape = tuple(record["ras_shape"])
    sl = tuple(slice(a, b) for a, b in record["bbox"])
    if is_label:
        full = np.zeros(ras_shape, dtype=array.dtype)
        full[sl] = resample_label_onehot(array, crop_shape, num_classes)
    else:
        full = np.zeros((array.shape[0], *ras_shape), dtype=np.float32)
        if background:
            full[0] = 1.0  # background outside the crop
        full[(slice(None), *sl)] = resample_linear(array.astype(np.float32, copy=False), crop_shape)
    return _on_file_grid(full, record)


def _on_file_grid(full: np.ndarray, record: dict) -> np.ndarray:
    """A map on the reoriented grid (``ras_shape``, any leading axes) back in the file's axis order."""
    out = apply_ornt(full, invert_ornt(np.asarray(record["ornt"], dtype=np.float64)))
    expected = tuple(record["geometry"]["shape"])
    assert tuple(out.shape[-3:]) == expected, (out.shape, expected)
    return np.ascontiguousarray(out)


def _invert_monai(array: np.ndarray, record: dict, is_label: bool, background: bool) -> np.ndarray:
    """The ``monai`` geometry's inverse on the reoriented grid (``Invertd``: the zero-padded crop, linear,
    border clamped)."""
    taps = _monai_inverse_taps(record)
    if is_label:
        return resample_label_onehot(_padded(array, 0), tuple(record["ras_shape"]), taps=taps)
    pad = np.zeros(array.shape[0], dtype=np.float32)
    if background:
        pad[0] = 1.0
    return resample_taps(_padded(array.astype(np.float32, copy=False), pad), taps)


def _extend_high(lab):
    """``lab`` (Y, Z) with its last row and column repeated once (the clamped neighbours of the edge)."""
    import torch

    lab = torch.cat([lab, lab[-1:]], 0)
    return torch.cat([lab, lab[:, -1:]], 1)


class SoftInverse:
    """Soft outputs on the preprocessed grid back to the input file's grid, with the argmax taken there
    (as MONAI and nnU-Net do), fed in order in slabs of planes along the first axis, so that neither grid
    ever holds a full float volume.

    With the ``extent`` geometry the softmax probabilities are resampled linearly on the crop (outside it
    the label is background); with ``monai`` the logits go back as MONAI's ``Invertd`` takes them (zero
    padding around the crop, border clamped). Memory: the label map, the slabs not yet used up and a few
    output planes at a time.

    Example:
        >>> inv = SoftInverse(record, num_classes=4)
        >>> for slab in slabs:  # (K, n, Y, Z) float32, first-axis order
        ...     inv.push(slab)
        >>> labels = inv.result()  # (X, Y, Z) uint8 on the input file's grid
    """

    _CHUNK = 1 << 22  # floats per working array of a chunk of output planes

    def __init__(self, record: dict, num_classes: int) -> None:
        import torch

        self.record = record
        self.k = int(num_classes)
        if not 1 <= self.k < _PAD_LABEL:
            raise ValueError(f"SoftInverse handles 1 to {_PAD_LABEL - 1} classes, got {self.k}")
        n = tuple(record["shape"])
        self.monai = record.get("geometry_mode", "extent") == "monai"
        self.grid = None
        if self.monai:  # indices into the array padded by one (zero) plane on each side
            self.region = tuple(slice(0, s) for s in record["ras_shape"])
            taps = _monai_inverse_taps(record)
            # the (y, z) taps as one grid_sample grid over the padded plane (align_corners=True)
            gy, gz = (np.where(i1 == i0, i0, i0 + w) / (size + 1) * 2 - 1
                      for (i0, i1, w), size in zip(taps[1:], n[1:]))
            grid = np.stack(np.broadcast_arrays(gz[None, :], gy[:, None]), -1)[None]
            self.grid = torch.from_numpy(grid.astype(np.float32))
        else:  # always inside the array; the same taps as resample_linear (torch's align_corners=False)
            self.region = tuple(slice(a, b) for a, b in record["bbox"])
            taps = [_linear_taps(a, b) for a, b in zip(n, record["crop_shape"])]
            taps[0] = (taps[0][0] + 1, taps[0][1] + 1, taps[0][2])  # first axis: padded plane numbers
        self.n = n
        self.taps = [tuple(torch.from_numpy(np.ascontiguousarray(t)) for t in tp) for tp in taps]
        self.zero = torch.zeros((self.k, n[1], n[2]))
        self.zero_label = torch.full((n[1] + 2 * self.monai, n[2] + 2 * self.monai), _PAD_LABEL, dtype=torch.uint8)
        self.labels: dict = {}  # padded first-axis index -> (Y, Z) argmax of that plane (padded for monai)
        self.cells: dict = {}  # padded first-axis index -> (Y, Z) bool: the 2x2x2 cell from there is mixed
        self.last = n[0] + 1 if self.monai else n[0]  # the last padded plane number the taps reach
        self.out = np.zeros(tuple(s.stop - s.start for s in self.region), dtype=np.uint8)
        size = self.out.shape[1:]  # output planes per chunk: working arrays of about _CHUNK floats
        self.step = max(1, self._CHUNK // (self.k * max(size[0], n[1] + 2) * max(size[1], n[2] + 2)))
        self.planes: dict = {}  # padded first-axis index -> (K, Y, Z)
        self.received = 0  # planes of the preprocessed grid received so far
        self.done = 0  # output planes written so far

    def _plane(self, p: int):
        return self.zero if p == 0 or p == self.n[0] + 1 else self.planes[p]

    def _label(self, p: int):
        return self.zero_label if p == 0 or p == self.n[0] + 1 else self.labels[p]

    def _cell(self, p: int):
        """Whether the labels of the cell ``{p, p+1} x {y, y+1} x {z, z+1}`` differ (indices clamped)."""
        import torch

        if p not in self.cells:
            here, there = self._label(p), self._label(min(p + 1, self.last))
            mixed = torch.zeros(here.shape, dtype=torch.bool)
            for lab in (here, there):
                ext = _extend_high(lab)
                for dy in (0, 1):
                    for dz in (0, 1):
                        mixed |= ext[dy:dy + here.shape[0], dz:dz + here.shape[1]] != here
            self.cells[p] = mixed
        return self.cells[p]

    def push(self, slab) -> None:
        """Add the next planes ``(K, m, Y, Z)`` (logits) of the preprocessed grid."""
        import torch

        slab = torch.as_tensor(slab, dtype=torch.float32)
        if slab.dim() != 4 or slab.shape[0] != self.k or tuple(slab.shape[2:]) != self.n[1:]:
            raise ValueError(f"slab must be ({self.k}, m, {self.n[1]}, {self.n[2]}), got {tuple(slab.shape)}")
        if self.received + slab.shape[1] > self.n[0]:
            raise ValueError(f"more than {self.n[0]} planes pushed")
        if not self.monai:
            slab = torch.softmax(slab, 0)
        labels = slab.max(0).indices.to(torch.uint8)  # (m, Y, Z) argmax (max's indices: 4-5x faster on CPUs)
        if self.monai:  # the zero padding around the crop is a label of its own: cells touching it are mixed
            labels = torch.nn.functional.pad(labels, (1, 1, 1, 1), value=_PAD_LABEL)
        for j in range(slab.shape[1]):
            self.planes[self.received + 1 + j] = slab[:, j]
            self.labels[self.received + 1 + j] = labels[j]
        self.received += slab.shape[1]
        self._flush()

    def _ready(self, p: int) -> bool:
        return p == 0 or p == self.n[0] + 1 or p <= self.received

    def _flush(self) -> None:
        x0 = self.taps[0][0]
        total = self.out.shape[0]
        while self.done < total:
            hi = self.done
            while hi < total and hi - self.done < self.step and self._ready(min(int(x0[hi]) + 1, self.last)):
                hi += 1
            if hi == self.done:
                break
            self.out[self.done:hi] = self._chunk(slice(self.done, hi))
            self.done = hi
            keep = int(x0[hi]) if hi < total else self.n[0] + 2
            for p in [p for p in self.planes if p < keep]:
                del self.planes[p], self.labels[p]
                self.cells.pop(p, None)

    def _chunk(self, sl: slice) -> np.ndarray:
        """Output planes ``sl``: an output voxel whose 8 neighbours on the preprocessed grid share one argmax
        takes it (a weighted mean of score vectors whose largest entry is the same class keeps it); the
        interpolation runs on the other voxels only, or on all of them when most are mixed."""
        import torch
        import torch.nn.functional as F

        (x0, x1, wx), (y0, y1, wy), (z0, z1, wz) = self.taps
        xs = [int(p) for p in x0[sl]]
        out = torch.stack([self._label(p) for p in xs]).index_select(1, y0).index_select(2, z0)  # (m, Yo, Zo)
        mixed = torch.stack([self._cell(p) for p in xs]).index_select(1, y0).index_select(2, z0)
        if self.monai:
            out[out == _PAD_LABEL] = 0  # all eight corners in the zero padding: zero logits, class 0
        n_mixed = int(mixed.sum())
        if n_mixed == 0:
            return out.numpy()
        a = torch.stack([self._plane(p) for p in xs])  # (m, K, Y, Z)
        b = torch.stack([self._plane(int(p)) for p in x1[sl]])
        w = wx[sl]
        if n_mixed > _DENSE_FRACTION * mixed.numel():  # fragmented: interpolate everything
            v = torch.lerp(a, b, w.view(-1, 1, 1, 1))
            del a, b
            if self.monai:  # the taps of grid, one fused pass (7x faster than gathers)
                grid = self.grid.expand(v.shape[0], -1, -1, -1)
                v = F.grid_sample(F.pad(v, (1, 1, 1, 1)), grid, mode="bilinear", padding_mode="border",
                                  align_corners=True)
            else:  # the same taps, one fused pass
                v = F.interpolate(v, size=self.out.shape[1:], mode="bilinear", align_corners=False)
            return v.max(1).indices.to(torch.uint8).numpy()
        if self.monai:  # the taps index the plane padded with zeros
            a, b = F.pad(a, (1, 1, 1, 1)), F.pad(b, (1, 1, 1, 1))
        mo, mq, mr = torch.nonzero(mixed, as_tuple=True)
        score = torch.zeros((mo.numel(), self.k))
        for src, fx in ((a, 1 - w[mo]), (b, w[mo])):
            for ys, fy in ((y0[mq], 1 - wy[mq]), (y1[mq], wy[mq])):
                for zs, fz in ((z0[mr], 1 - wz[mr]), (z1[mr], wz[mr])):
                    score += src[mo, :, ys, zs] * (fx * fy * fz)[:, None]
        out[mo, mq, mr] = score.argmax(1).to(torch.uint8)
        return out.numpy()

    def result(self) -> np.ndarray:
        """The label map ``(X, Y, Z)`` uint8 on the input file's grid (after every plane was pushed)."""
        if self.received != self.n[0] or self.done != self.out.shape[0]:
            raise RuntimeError(f"{self.received} of {self.n[0]} planes pushed, {self.done} of "
                               f"{self.out.shape[0]} output planes written")
        full = np.zeros(tuple(self.record["ras_shape"]), dtype=np.uint8)
        full[self.region] = self.out
        return _on_file_grid(full, self.record)


def record_geometry(record: dict) -> Geometry:
    """The original file's geometry stored in a record (to write predictions with)."""
    return Geometry.from_dict(record["geometry"])


def preprocess_files(
    image_paths: Union[PathLike, Sequence[PathLike]], plan: Plan, label_path: Optional[PathLike] = None
) -> Tuple[np.ndarray, Optional[np.ndarray], dict]:
    """Read and preprocess one case from files; the label must lie on the image's grid."""
    from unetr.data.io import read_label

    image, geom = read_image(image_paths)
    label = None
    if label_path is not None:
        label, lgeom = read_label(label_path)
        if lgeom.shape != geom.shape:
            raise DataError(f"{label_path}: label shape {lgeom.shape} differs from the image's {geom.shape}")
        if not np.allclose(lgeom.affine, geom.affine, atol=1e-3 * max(1.0, float(np.abs(geom.affine).max()))):
            raise DataError(f"{label_path}: label affine differs from the image's")
    return preprocess_case(image, geom, plan, label)


def preprocess_image_file(paths: Union[PathLike, Sequence[PathLike]], plan: Plan) -> Tuple[np.ndarray, dict]:
    """Read and preprocess an image for inference: ``(image (C, X', Y', Z') float32, record)``."""
    image, _, record = preprocess_files(paths, plan)
    return image, record


__all__ = [
    "preprocess_case", "invert_to_original", "preprocess_files", "preprocess_image_file", "record_geometry",
    "resample_image", "resample_nearest", "resample_linear", "resample_label_onehot", "resample_label", "normalize",
    "foreground_mask", "bounding_box", "target_shape", "apply_ornt", "invert_ornt", "ras_ornt", "SoftInverse",
    "resample_taps", "monai_shape",
]

