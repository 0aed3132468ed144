"""The deterministic per-case transform, the record of what it did, and its exact inverse.

``preprocess_case`` runs, in this order (cheapest first, so the expensive resampling sees the fewest voxels):

1. reorient to RAS by flips and transposes only (:mod:`unetr.data.orientation`: views, no interpolation);
2. crop to the bounding box of the body (:func:`unetr.data.intensity.plan_crop_box`: CT, voxels above the
   window's lower bound; MRI, non-zero voxels);
3. resample to the plan's target spacing (:mod:`unetr.data.resample`: image linear via ``torch`` trilinear,
   cubic via scipy; label through its one-hot masks (linear, then argmax) or by nearest neighbour, so it
   stays an integer map);
4. normalise intensities (:func:`unetr.data.intensity.normalize`: CT window, CT percentile clipping and
   z-score, or per-channel z-score).

Sampling positions follow the half-voxel ("grid") convention: the cropped block keeps its physical extent,
and output voxel ``i`` samples input coordinate ``(i + 0.5) * n_in / n_out - 0.5``. The returned
:class:`PreprocessRecord` holds everything :func:`invert_to_original` needs to put a prediction back on the
input file's grid: resample to the cropped shape, pad with background, undo the reorientation.

The plan's ``geometry="monai"`` follows MONAI's chain instead (``Spacingd``, ``ScaleIntensityRanged``,
``CropForegroundd``): the whole volume is resampled keeping the first voxel's centre at exactly the target
spacing (output voxel ``i`` samples ``i * target / spacing``, border clamped), then cropped on the new grid;
its inverse is ``Invertd``'s (zero padding around the crop, then the same linear map back). Both give the
same arrays as those MONAI transforms (tested). The streamed soft inverse of predictions lives next to its
user: :class:`unetr.inference.soft_inverse.SoftInverse`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from unetr.config import Plan
from unetr.data.checks import check_labels, check_same_grid
from unetr.data.intensity import Box, normalize, plan_crop_box
from unetr.data.io import Geometry, PathLike, read_image, read_label
from unetr.data.orientation import apply_ornt, invert_ornt, ornt_affine, ras_ornt
from unetr.data.resample import (
    Taps,
    monai_shape,
    monai_taps,
    resample_image,
    resample_label,
    resample_label_onehot,
    resample_linear,
    resample_taps,
    target_shape,
)
from unetr.errors import DataError

log = logging.getLogger(__name__)

RECORD_VERSION = 1
"""The on-disk form of :class:`PreprocessRecord` (the key names of :meth:`PreprocessRecord.to_dict`)."""

_UINT8_CLASSES = 256  # preprocessed label maps are uint8


def _ints(values: Sequence) -> Tuple[int, ...]:
    return tuple(int(v) for v in values)


def _floats(values: Sequence) -> Tuple[float, ...]:
    return tuple(float(v) for v in values)


@dataclass(frozen=True, eq=False)
class PreprocessRecord:
    """What :func:`preprocess_case` did to one case: enough to put a prediction back on the file's grid.

    Stored in the cache as JSON (:meth:`to_dict`, :meth:`from_dict`); shapes and boxes are in RAS order.

    Attributes:
        geometry: the input file's geometry (predictions are written with it).
        ornt: ``(3, 2)`` the reorientation to RAS (:mod:`unetr.data.orientation`).
        ras_shape / ras_spacing: the reoriented input grid.
        bbox: the crop, a half-open box: on the reoriented input grid (``extent``), or on the resampled
            whole volume (``monai``).
        crop_shape: the crop's voxels before resampling (``extent``); the preprocessed shape (``monai``).
        shape / spacing: the preprocessed grid.
        affine: ``(4, 4)`` preprocessed voxel -> world (mm).
        target_spacing: the plan's.
        mode: the plan's ``geometry``: ``extent`` or ``monai``.
        full_shape / ratio: ``monai`` only: the resampled whole volume, and input voxels per output voxel.
        version: :data:`RECORD_VERSION`.
    """

    geometry: Geometry
    ornt: np.ndarray
    ras_shape: Tuple[int, int, int]
    ras_spacing: Tuple[float, float, float]
    bbox: Box
    crop_shape: Tuple[int, int, int]
    shape: Tuple[int, int, int]
    spacing: Tuple[float, float, float]
    affine: np.ndarray = field(repr=False)
    target_spacing: Tuple[float, float, float]
    mode: str = "extent"
    full_shape: Optional[Tuple[int, int, int]] = None
    ratio: Optional[Tuple[float, float, float]] = None
    version: int = RECORD_VERSION

    def __post_init__(self) -> None:
        put = object.__setattr__
        put(self, "ornt", np.asarray(self.ornt, dtype=np.float64).reshape(3, 2))
        put(self, "affine", np.asarray(self.affine, dtype=np.float64).reshape(4, 4))
        for name in ("ras_shape", "crop_shape", "shape"):
            put(self, name, _ints(getattr(self, name)))
        for name in ("ras_spacing", "spacing", "target_spacing"):
            put(self, name, _floats(getattr(self, name)))
        put(self, "bbox", tuple(_ints(b) for b in self.bbox))
        if self.mode not in ("extent", "monai"):
            raise ValueError(f"mode must be 'extent' or 'monai', got {self.mode!r}")
        if self.mode == "monai":
            if self.full_shape is None or self.ratio is None:
                raise ValueError("a 'monai' record needs full_shape and ratio")
            put(self, "full_shape", _ints(self.full_shape))
            put(self, "ratio", _floats(self.ratio))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PreprocessRecord):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    @property
    def crop(self) -> Tuple[slice, slice, slice]:
        """``bbox`` as slices."""
        return tuple(slice(a, b) for a, b in self.bbox)  # type: ignore[return-value]

    def to_dict(self) -> dict:
        """The JSON-able form (the cache's ``<id>.json``; key names as in :data:`RECORD_VERSION` 1)."""
        extra: dict = {}
        if self.mode == "monai":
            extra = {"geometry_mode": "monai", "full_shape": list(self.full_shape), "ratio": list(self.ratio)}
        return {
            "version": self.version,
            **extra,
            "geometry": self.geometry.to_dict(),
            "ornt": self.ornt.tolist(),
            "ras_shape": list(self.ras_shape),
            "ras_spacing": list(self.ras_spacing),
            "bbox": [list(b) for b in self.bbox],
            "crop_shape": list(self.crop_shape),
            "shape": list(self.shape),
            "spacing": list(self.spacing),
            "affine": self.affine.tolist(),
            "target_spacing": list(self.target_spacing),
        }

    @classmethod
    def from_dict(cls, data: dict) -> PreprocessRecord:
        """Read :meth:`to_dict`'s form; other keys (the cache's ``id``, ``sources`` ...) are ignored.

        Raises:
            DataError: a record of another version (rebuild the cache).
        """
        version = data.get("version")
        if version != RECORD_VERSION:
            raise DataError(f"preprocessing record of version {version!r}; this unetr reads version "
                            f"{RECORD_VERSION} (preprocess again)")
        return cls(
            geometry=Geometry.from_dict(data["geometry"]), ornt=data["ornt"], ras_shape=data["ras_shape"],
            ras_spacing=data["ras_spacing"], bbox=data["bbox"], crop_shape=data["crop_shape"], shape=data["shape"],
            spacing=data["spacing"], affine=data["affine"], target_spacing=data["target_spacing"],
            mode=data.get("geometry_mode", "extent"), full_shape=data.get("full_shape"), ratio=data.get("ratio"),
        )


# ---------------------------------------------------------------------------------------------- forward


def preprocess_case(
    image: np.ndarray, geometry: Geometry, plan: Plan, label: Optional[np.ndarray] = None, *,
    source: str = "the label map",
) -> Tuple[np.ndarray, Optional[np.ndarray], PreprocessRecord]:
    """Reorient, crop, resample and normalise one case.

    Args:
        image: ``(C, X, Y, Z)`` float32, as :func:`unetr.data.io.read_image` returns it.
        geometry: the image file's geometry.
        plan: target spacing, intensity scheme, crop switch, image spline order, classes.
        label: optional ``(X, Y, Z)`` integer label map on the same grid, with values in
            ``[0, plan.num_classes)``.
        source: names the label in error messages (its file).

    Returns:
        ``(image (C, X', Y', Z') float32, label (X', Y', Z') uint8 or None, record)``.

    Raises:
        DataError: channels other than the plan's, a label of another shape or outside the plan's classes.
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
        if plan.num_classes > _UINT8_CLASSES:
            raise DataError(f"the plan has {plan.num_classes} classes; preprocessed labels are uint8 "
                            f"(at most {_UINT8_CLASSES} classes)")
        check_labels(source, label, plan.num_classes)

    # 1. reorient (views only)
    ornt = ras_ornt(geometry.affine)
    ras_image = apply_ornt(image, ornt)
    ras_label = None if label is None else apply_ornt(label, ornt)
    ras_affine = ornt_affine(geometry.affine, ornt, geometry.shape)
    ras_spacing = _floats(np.sqrt((ras_affine[:3, :3] ** 2).sum(axis=0)))
    if plan.geometry == "monai":
        return _preprocess_monai(ras_image, ras_label, ras_affine, ras_spacing, ornt, geometry, plan)

    # 2. crop to the body
    box = plan_crop_box(ras_image, plan)
    sl = tuple(slice(a, b) for a, b in box)
    crop_shape = tuple(b - a for a, b in box)

    # 3. resample
    new_shape = target_shape(crop_shape, ras_spacing, plan.target_spacing)
    out = resample_image(ras_image[(slice(None), *sl)], new_shape, plan.image_order)
    if out is image or np.shares_memory(out, image):
        out = out.copy()  # normalisation is in place; never touch the caller's array

    # 4. normalise
    normalize(out, plan)

    out_label = None
    if ras_label is not None:
        out_label = resample_label(ras_label[sl], new_shape, plan.label_resample).astype(np.uint8, copy=False)

    scale = np.array(crop_shape, dtype=np.float64) / np.array(new_shape, dtype=np.float64)
    to_crop = np.eye(4)  # preprocessed voxel -> RAS voxel
    to_crop[:3, :3] = np.diag(scale)
    to_crop[:3, 3] = np.array([a for a, _ in box], dtype=np.float64) + (scale - 1) / 2
    record = PreprocessRecord(
        geometry=geometry, ornt=ornt, ras_shape=ras_image.shape[1:], ras_spacing=ras_spacing, bbox=box,
        crop_shape=crop_shape, shape=new_shape, spacing=np.array(ras_spacing) * scale, affine=ras_affine @ to_crop,
        target_spacing=plan.target_spacing,
    )
    return out, out_label, record


def _preprocess_monai(ras_image: np.ndarray, ras_label: Optional[np.ndarray], ras_affine: np.ndarray,
                      ras_spacing: Sequence[float], ornt: np.ndarray, geometry: Geometry, plan: Plan
                      ) -> Tuple[np.ndarray, Optional[np.ndarray], PreprocessRecord]:
    """MONAI's order and grid (``Spacingd``, ``ScaleIntensityRanged``, ``CropForegroundd``): resample the
    whole reoriented volume keeping the first voxel's centre, then crop to the body on the resampled grid."""
    ras_shape = ras_image.shape[1:]
    ratio = np.asarray(plan.target_spacing, dtype=np.float64) / np.asarray(ras_spacing)  # input voxels per output voxel
    full_shape = monai_shape(ras_shape, ras_spacing, plan.target_spacing)
    taps = [monai_taps(n_in, n_out, r) for n_in, n_out, r in zip(ras_shape, full_shape, ratio)]
    resampled = resample_taps(ras_image, taps)
    box = plan_crop_box(resampled, plan)
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
    record = PreprocessRecord(
        geometry=geometry, ornt=ornt, ras_shape=ras_shape, ras_spacing=ras_spacing, bbox=box, crop_shape=shape,
        shape=shape, spacing=plan.target_spacing, affine=ras_affine @ to_ras, target_spacing=plan.target_spacing,
        mode="monai", full_shape=full_shape, ratio=ratio,
    )
    return out, out_label, record


def preprocess_files(
    image_paths: Union[PathLike, Sequence[PathLike]], plan: Plan, label_path: Optional[PathLike] = None
) -> Tuple[np.ndarray, Optional[np.ndarray], PreprocessRecord]:
    """Read and preprocess one case from files (:func:`preprocess_case`).

    Raises:
        DataError: unreadable files, a label off the image's grid or outside the plan's classes.
    """
    image, geom = read_image(image_paths)
    label = None
    if label_path is not None:
        label, lgeom = read_label(label_path)
        check_same_grid(label_path, lgeom, geom)
    return preprocess_case(image, geom, plan, label, source=str(label_path))


def preprocess_image_file(paths: Union[PathLike, Sequence[PathLike]], plan: Plan
                          ) -> Tuple[np.ndarray, PreprocessRecord]:
    """Read and preprocess an image for inference: ``(image (C, X', Y', Z') float32, record)``."""
    image, _, record = preprocess_files(paths, plan)
    return image, record


# ---------------------------------------------------------------------------------------------- inverse


def invert_to_original(array, record: PreprocessRecord, is_label: bool, background: bool = True) -> np.ndarray:
    """Put a prediction on the preprocessed grid back on the original file's grid.

    Args:
        array: a label map ``(X', Y', Z')`` (``is_label=True``) or probabilities/logits ``(K, X', Y', Z')``
            on the preprocessed grid (numpy or torch).
        record: the record :func:`preprocess_case` returned for this case.
        is_label: label maps are resampled through their one-hot masks (linear, then argmax); probabilities
            are resampled linearly per channel.
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
    shape = record.shape
    if is_label and (array.ndim != 3 or tuple(array.shape) != shape):
        raise ValueError(f"label map must have the preprocessed shape {shape}, got {array.shape}")
    if not is_label and (array.ndim != 4 or tuple(array.shape[1:]) != shape):
        raise ValueError(f"probabilities must be (K, *{shape}), got {array.shape}")
    if record.mode == "monai":
        return to_file_grid(_invert_monai(array, record, is_label, background), record)
    if is_label:
        full = np.zeros(record.ras_shape, dtype=array.dtype)
        full[record.crop] = resample_label_onehot(array, record.crop_shape)
    else:
        full = np.zeros((array.shape[0], *record.ras_shape), dtype=np.float32)
        if background:
            full[0] = 1.0  # background outside the crop
        full[(slice(None), *record.crop)] = resample_linear(array.astype(np.float32, copy=False), record.crop_shape)
    return to_file_grid(full, record)


def to_file_grid(full: np.ndarray, record: PreprocessRecord) -> np.ndarray:
    """A map on the reoriented grid (``record.ras_shape``, any leading axes) back in the file's axis order."""
    out = apply_ornt(full, invert_ornt(record.ornt))
    expected = tuple(record.geometry.shape)
    assert tuple(out.shape[-3:]) == expected, (out.shape, expected)
    return np.ascontiguousarray(out)


def _invert_monai(array: np.ndarray, record: PreprocessRecord, is_label: bool, background: bool) -> np.ndarray:
    """The ``monai`` geometry's inverse on the reoriented grid (``Invertd``: the zero-padded crop, linear,
    border clamped)."""
    taps = monai_inverse_taps(record)
    if is_label:
        return resample_label_onehot(_padded(array, 0), record.ras_shape, taps=taps)
    pad = np.zeros(array.shape[0], dtype=np.float32)
    if background:
        pad[0] = 1.0
    return resample_taps(_padded(array.astype(np.float32, copy=False), pad), taps)


def monai_inverse_taps(record: PreprocessRecord) -> List[Taps]:
    """Per RAS axis, the taps that take the preprocessed array, padded with one plane on each side, back to
    the reoriented input grid as MONAI's ``Invertd`` does: input voxel ``j`` samples resampled coordinate
    ``j / ratio`` (border clamped); resampled voxels outside the crop read the padding (index 0 or n + 1)."""
    assert record.mode == "monai" and record.full_shape is not None and record.ratio is not None
    taps = []
    for n_ras, n_full, r, (b0, b1) in zip(record.ras_shape, record.full_shape, record.ratio, record.bbox):
        i0, i1, w = monai_taps(n_full, n_ras, 1.0 / r)
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


__all__ = [
    "RECORD_VERSION", "PreprocessRecord", "preprocess_case", "preprocess_files", "preprocess_image_file",
    "invert_to_original", "to_file_grid", "monai_inverse_taps",
]
