"""Volumes for the HTML viewer: read in RAS, brought to a voxel budget, quantised to bytes, compressed.

A case travels to the page as three byte volumes of the same shape, each zlib-compressed and base64-encoded:

- the image, one byte per voxel indexing a table of at most 256 grey levels (:func:`quantize`): half of
  the levels are spread evenly between the 0.1 and 99.9 percentiles, half follow the intensity histogram,
  so every window (CT soft tissue, lung, bone; MRI percentiles) keeps enough distinct grey levels;
- the reference and the prediction label maps (class numbers, uint8).

Arrays are ``(X, Y, Z)`` in RAS orientation, written with X varying fastest (Fortran order, as NIfTI stores
them), so an axial slice is one contiguous run of bytes. A case larger than the voxel budget is shown on a
coarser grid (:func:`display_factors`: the finest axes are coarsened first), with a note on the page.
"""

from __future__ import annotations

import base64
import logging
import math
import zlib
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

PathLike = Union[str, Path]

DEFAULT_MAX_VOXELS = 4_000_000
"""Voxels per case in the HTML report (about 171 x 171 x 120): a 512 x 512 x 120 CT is shown at a third of its
in-plane resolution, and one case costs about 1-3 MB of the page."""

log = logging.getLogger(__name__)

CaseData = Tuple[np.ndarray, Optional[np.ndarray], Optional[np.ndarray], Sequence[float]]
"""A case to draw: ``(image, reference or None, prediction or None, spacing)``."""

CT_WINDOWS = (("soft tissue", 40.0, 400.0), ("lung", -600.0, 1500.0), ("bone", 400.0, 1800.0))
"""CT window presets ``(name, level, width)`` in HU."""


def load_case_from_files(
    image_path: PathLike, reference_path: Optional[PathLike], prediction_path: Optional[PathLike]
) -> Tuple[np.ndarray, Optional[np.ndarray], Optional[np.ndarray], Tuple[float, ...]]:
    """Read an image and its label maps and reorient all to RAS for drawing.

    Returns:
        ``(image (X, Y, Z), reference or None, prediction or None, spacing)`` in RAS order.
    """
    from unetr.data.io import read_image, read_label
    from unetr.data.orientation import apply_ornt, ras_ornt

    image, geom = read_image(image_path)
    ornt = ras_ornt(geom.affine)
    img = apply_ornt(image[:1], ornt)[0]
    spacing_ras = [0.0, 0.0, 0.0]
    for src, (dst, _) in enumerate(np.asarray(ornt)):
        spacing_ras[int(dst)] = float(geom.spacing[src])  # input axis src becomes RAS axis dst
    spacing = tuple(spacing_ras)
    labs = []
    for p in (reference_path, prediction_path):
        if p is None or not Path(p).exists():
            labs.append(None)
            continue
        lab, lgeom = read_label(p)
        if lgeom.shape != geom.shape:
            raise ValueError(f"{p}: shape {lgeom.shape} differs from the image's {geom.shape}")
        labs.append(apply_ornt(lab, ornt))
    return img, labs[0], labs[1], spacing


def case_or_none(case: str, case_images: Optional[Mapping[str, CaseData]], load_case: Optional[Callable[[str], CaseData]],
                 missing: str) -> Tuple[Optional[CaseData], Optional[str]]:
    """A case's ``(image, reference, prediction, spacing)`` from ``case_images``, else from ``load_case``:
    ``(data or None, None)``, or ``(None, "<case>: <missing> (<error>)")`` when it could not be read (logged as
    a warning: one unreadable case must not sink a report)."""
    data = (case_images or {}).get(case)
    if data is None and load_case is not None:
        try:
            data = load_case(case)
        except Exception as e:  # noqa: BLE001 - reported to the caller as a note, the report goes on
            log.warning("%s: %s (%s)", case, missing, e)
            return None, f"{case}: {missing} ({e})"
    return data, None


def display_factors(shape: Sequence[int], spacing: Sequence[float], max_voxels: int) -> Tuple[int, int, int]:
    """Integer steps ``(fx, fy, fz)`` that bring ``shape`` within ``max_voxels``, coarsening the finest axis first.

    Each round coarsens the axis whose displayed voxel (``spacing * step``) is smallest, so an anisotropic
    CT (0.7 x 0.7 x 5 mm) loses in-plane resolution before it loses slices.

    Args:
        shape: ``(X, Y, Z)`` voxels.
        spacing: voxel size in mm.
        max_voxels: the budget (at least 1).
    """
    if max_voxels < 1:
        raise ValueError(f"max_voxels must be at least 1, got {max_voxels}")
    if len(shape) != 3 or len(spacing) != 3:
        raise ValueError(f"shape and spacing must have 3 entries, got {tuple(shape)} and {tuple(spacing)}")
    f = [1, 1, 1]

    def out(i: int) -> int:
        return -(-int(shape[i]) // f[i])

    while math.prod(out(i) for i in range(3)) > max_voxels:
        axes = [i for i in range(3) if out(i) > 1]
        i = min(axes, key=lambda a: (float(spacing[a]) * f[a], -out(a)))
        f[i] += 1
    return f[0], f[1], f[2]


def downsample_labels(labels: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour steps: the voxel at the centre of each ``factors`` block, ``(X', Y', Z')`` uint8."""
    idx = [np.minimum(np.arange(-(-n // f)) * f + f // 2, n - 1) for n, f in zip(labels.shape, factors)]
    return np.ascontiguousarray(labels[np.ix_(*idx)]).astype(np.uint8)


def downsample_image(image: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """Block means over ``factors`` blocks (the last block of an axis repeats its edge), ``(X', Y', Z')`` float32."""
    img = np.asarray(image, dtype=np.float32)
    if all(f == 1 for f in factors):
        return img
    pad = [(0, (-n) % f) for n, f in zip(img.shape, factors)]
    img = np.pad(img, pad, mode="edge")
    (X, Y, Z), (fx, fy, fz) = img.shape, factors
    blocks = img.reshape(X // fx, fx, Y // fy, fy, Z // fz, fz)  # (X', fx, Y', fy, Z', fz)
    return blocks.mean(axis=(1, 3, 5), dtype=np.float64).astype(np.float32)


def _subsample(flat: np.ndarray, size: int = 1_000_000) -> np.ndarray:
    """A regular subsample of about ``size`` of the values ``flat`` (all of them when there are fewer), for
    percentiles of large images."""
    return flat[:: max(1, flat.size // size)]


def quantize(image: np.ndarray, levels: int = 256, sample: int = 1_000_000) -> Tuple[np.ndarray, np.ndarray]:
    """Map an image to bytes indexing a table of grey levels.

    An image with at most ``levels`` distinct values is kept exactly. Otherwise the table holds about half
    its levels evenly between the 0.1 and 99.9 percentiles, a few evenly in each tail out to the minimum and
    the maximum, and the rest at quantiles of the intensities (where most voxels are); each voxel takes its
    nearest level.

    Args:
        image: ``(X, Y, Z)`` finite values.
        levels: table size (2..256).
        sample: voxels used for the percentiles (a regular subsample of larger images).

    Returns:
        ``(codes (X, Y, Z) uint8, table (L,) float32 ascending, L <= levels)``; ``table[codes]`` approximates
        ``image`` to within half the widest gap between neighbouring levels.
    """
    if not 2 <= levels <= 256:
        raise ValueError(f"levels must be in 2..256, got {levels}")
    img = np.asarray(image, dtype=np.float32)
    flat = img.ravel()
    sub = _subsample(flat, sample)
    distinct = np.unique(sub)
    if distinct.size <= levels:
        distinct = np.unique(flat)
    if distinct.size <= levels:
        table = distinct.astype(np.float32)
    else:
        lo, hi = np.percentile(sub, [0.1, 99.9])
        tail = max(1, levels // 32)  # the rare values outside the percentiles keep a few levels of their own
        even = np.linspace(lo, hi, levels // 2 - 2 * tail)
        tails = np.concatenate([np.linspace(flat.min(), lo, tail, endpoint=False),
                                np.linspace(hi, flat.max(), tail + 1)[1:]])
        quant = np.quantile(sub, np.linspace(0.0, 1.0, levels - levels // 2))
        table = np.unique(np.concatenate([tails, even, quant]).astype(np.float32))
    mids = (table[1:] + table[:-1]) / 2  # a value above mids[i] is nearer to table[i + 1]
    codes = np.searchsorted(mids, img, side="left").astype(np.uint8)
    return codes, table


def encode(array: np.ndarray) -> str:
    """A uint8 ``(X, Y, Z)`` array as base64 of its zlib-compressed bytes, X fastest (Fortran order)."""
    a = np.asarray(array)
    if a.dtype != np.uint8:
        raise ValueError(f"only uint8 arrays are encoded, got {a.dtype}")
    return base64.b64encode(zlib.compress(a.tobytes(order="F"), 6)).decode("ascii")


def decode(text: str, shape: Sequence[int]) -> np.ndarray:
    """The inverse of :func:`encode`: ``(X, Y, Z)`` uint8."""
    raw = zlib.decompress(base64.b64decode(text))
    return np.frombuffer(raw, dtype=np.uint8).reshape(tuple(shape), order="F")


def guess_modality(image: np.ndarray) -> str:
    """``"CT"`` when the image holds air in Hounsfield units (1st percentile below -500), else ``"MR"``."""
    sub = _subsample(np.asarray(image).ravel())
    return "CT" if sub.size and float(np.percentile(sub, 1)) < -500 else "MR"


def window_presets(image: np.ndarray, modality: str) -> List[Dict[str, object]]:
    """Grey-level windows ``{"name", "lo", "hi"}`` in the image's units, the default first.

    CT: soft tissue, lung and bone (fixed HU windows), then percentiles of all voxels. Other modalities:
    percentiles of the non-zero voxels (of all voxels when fewer than a tenth are non-zero), and the full range.
    """
    if modality not in ("CT", "MR"):
        raise ValueError(f"modality must be 'CT' or 'MR', got {modality!r}")
    flat = np.asarray(image, dtype=np.float32).ravel()
    sub = _subsample(flat)
    presets: List[Dict[str, object]] = []
    if modality == "CT":
        presets += [{"name": n, "lo": lvl - w / 2, "hi": lvl + w / 2} for n, lvl, w in CT_WINDOWS]
    else:
        nonzero = sub[sub != 0]
        sub = nonzero if nonzero.size >= sub.size / 10 else sub
    for lo_q, hi_q in ((1.0, 99.0), (0.5, 99.5), (5.0, 95.0)):
        lo, hi = (float(v) for v in np.percentile(sub, [lo_q, hi_q])) if sub.size else (0.0, 1.0)
        presets.append({"name": f"{lo_q:g}–{hi_q:g} %", "lo": lo, "hi": hi if hi > lo else lo + 1.0})
    mn, mx = (float(flat.min()), float(flat.max())) if flat.size else (0.0, 1.0)
    presets.append({"name": "full range", "lo": mn, "hi": mx if mx > mn else mn + 1.0})
    return presets


def case_volume(
    image: np.ndarray,
    reference: Optional[np.ndarray],
    prediction: Optional[np.ndarray],
    spacing: Sequence[float],
    *,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    modality: Optional[str] = None,
) -> Dict[str, object]:
    """One case for the viewer: its volumes at display resolution, compressed, with what the page needs.

    Args:
        image: ``(X, Y, Z)`` RAS image (a ``(C, X, Y, Z)`` image shows its first channel).
        reference: ``(X, Y, Z)`` label map or None.
        prediction: ``(X, Y, Z)`` label map or None.
        spacing: voxel size in mm (RAS order).
        max_voxels: the voxel budget of the case; larger cases are shown coarser, with a note.
        modality: ``"CT"`` or ``"MR"`` (window presets); guessed from the intensities when None.

    Returns:
        A JSON-able dict: ``shape``, ``spacing`` (displayed), ``source_shape``, ``source_spacing``, ``factors``,
        ``note`` (None unless downsampled), ``image`` (encoded codes), ``levels`` (grey level table),
        ``reference``/``prediction`` (encoded or None), ``windows`` (presets, default first), ``modality``
        and ``point`` (the initial crosshair: the centre of the largest structure).
    """
    from unetr.report.png import focus_point, shown_image

    img = shown_image(image, reference, prediction)
    for name, lab in (("reference", reference), ("prediction", prediction)):
        if lab is not None and lab.size and (int(lab.max()) > 255 or int(lab.min()) < 0):
            raise ValueError(f"{name} labels must lie in 0..255, got {int(lab.min())}..{int(lab.max())}")
    if len(spacing) != 3 or any(float(s) <= 0 for s in spacing):
        raise ValueError(f"spacing must be 3 positive numbers, got {tuple(spacing)}")
    factors = display_factors(img.shape, spacing, max_voxels)
    small = downsample_image(img, factors)
    codes, levels = quantize(small)
    refs = [None if lab is None else downsample_labels(lab, factors) for lab in (reference, prediction)]
    modality = modality or guess_modality(img)
    shown_spacing = [float(s) * f for s, f in zip(spacing, factors)]
    note = None
    if factors != (1, 1, 1):
        note = (f"shown at {' × '.join(f'{s:.2g}' for s in shown_spacing)} mm "
                f"({' × '.join(map(str, small.shape))} voxels) instead of "
                f"{' × '.join(f'{float(s):.2g}' for s in spacing)} mm ({' × '.join(map(str, img.shape))}): "
                f"every {'×'.join(map(str, factors))} block is one voxel, to fit the budget of "
                f"{max_voxels:,} voxels per case")
    return {
        "shape": list(small.shape), "spacing": shown_spacing, "source_shape": list(img.shape),
        "source_spacing": [float(s) for s in spacing], "factors": list(factors), "note": note,
        "image": encode(codes), "levels": [float(v) for v in levels],
        "reference": None if refs[0] is None else encode(refs[0]),
        "prediction": None if refs[1] is None else encode(refs[1]),
        "windows": window_presets(small, modality), "modality": modality,
        "point": list(focus_point(refs[0], refs[1]) if any(r is not None for r in refs) else
                      tuple(s // 2 for s in small.shape)),
    }


__all__ = ["DEFAULT_MAX_VOXELS", "CT_WINDOWS", "load_case_from_files", "case_or_none", "display_factors", "downsample_labels",
           "downsample_image", "quantize", "encode", "decode", "guess_modality", "window_presets", "case_volume"]
