"""Segmentation metrics per case and class: Dice, IoU, HD95, average surface distance, surface Dice.

Definitions (``P`` prediction mask, ``R`` reference mask of one class; distances in mm using the voxel
spacing):

- **Dice** ``2|P & R| / (|P| + |R|)``; **IoU** ``|P & R| / |P | R|``.
- **Surface** of a mask: its voxels with at least one of the 6 face neighbours outside the mask (the
  volume border counts as outside), i.e. ``mask & ~erode(mask)``.
- ``d(P -> R)``: for every surface voxel of ``P``, the Euclidean distance (mm) from its centre to the
  nearest surface voxel centre of ``R``; ``d(R -> P)`` likewise.
- **HD95** ``max(q95(d(P -> R)), q95(d(R -> P)))`` with linear interpolation between order statistics.
- **ASD** (average symmetric surface distance) the mean of ``d(P -> R)`` and ``d(R -> P)`` pooled, i.e.
  ``(sum d(P->R) + sum d(R->P)) / (n_P + n_R)``.
- **Surface Dice** at tolerance ``t`` mm: ``(#{d(P->R) <= t} + #{d(R->P) <= t}) / (n_P + n_R)``.

Conventions for empty masks:

- absent from both prediction and reference: every metric is NaN and is left out of means (a class that
  is not there cannot be scored; counting it as 1 would inflate the mean);
- present in only one of them (a miss or a false alarm): Dice = IoU = surface Dice = 0, and HD95 and
  ASD take the *penalty*: the diagonal of the volume in mm, ``sqrt(sum((shape * spacing) ** 2))``, larger
  than any distance inside the volume. MONAI returns NaN or inf here, which its reductions then drop,
  so a model that misses an organ entirely can look better than one that finds it badly (MONAI#9095).

These definitions are those of MONAI's ``DiceMetric``, ``MeanIoU``, ``HausdorffDistanceMetric(percentile=95)``,
``SurfaceDistanceMetric(symmetric=True)`` and ``SurfaceDiceMetric`` (``use_subvoxels=False``) whenever
both masks are non-empty, which the tests check. They differ from the DeepMind ``surface-distance``
package, which weights boundary elements by their area and places them between voxels.

Speed: Dice and IoU of all classes come from one confusion matrix (one pass over the volume); the
bounding boxes of all classes from one pass per map; the two distance transforms of a class run on the
bounding box of the union of its two masks only, and HD95, ASD and surface Dice share them.

Folders of label maps are scored, and the results written, by :mod:`unetr.evaluation`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from scipy import ndimage

from unetr.labels import label_problem

METRICS = ("dice", "iou", "hd95", "asd", "surface_dice")


@dataclass(frozen=True)
class ClassScore:
    """The metrics of one class in one case; NaN where the class is absent from both masks."""

    dice: float
    iou: float
    hd95: float
    asd: float
    surface_dice: float
    pred_voxels: int
    ref_voxels: int

    def as_dict(self) -> Dict[str, float]:
        return {m: getattr(self, m) for m in METRICS} | {"pred_voxels": self.pred_voxels, "ref_voxels": self.ref_voxels}


def _check_spacing(spacing: Sequence[float], ndim: int) -> Tuple[float, ...]:
    sp = tuple(float(s) for s in spacing)
    if len(sp) != ndim or any(not s > 0 for s in sp):
        raise ValueError(f"spacing must be {ndim} positive values, got {tuple(spacing)}")
    return sp


def diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """The penalty distance: the diagonal of a volume of ``shape`` voxels of ``spacing`` mm."""
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing))))


def confusion_matrix(pred: np.ndarray, ref: np.ndarray, num_classes: int) -> np.ndarray:
    """Voxel counts ``C[p, r]`` of predicted class ``p`` against reference class ``r``.

    The one layout of a confusion matrix in this package: **rows are the prediction, columns the
    reference** (``C[p].sum()`` = voxels predicted ``p``, ``C[:, r].sum()`` = reference voxels of ``r``).
    :func:`dice_from_confusion` reads it; training validation counts the same layout in torch
    (:func:`unetr.training.validation.confusion_matrix_torch`).

    Args:
        pred: label map ``(X, Y, Z)`` of integers in ``[0, num_classes)``.
        ref: label map of the same shape.
        num_classes: K, background included.

    Returns:
        int64 array ``(K, K)``.
    """
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    p = np.asarray(pred).ravel()
    r = np.asarray(ref).ravel()
    for name, a in (("prediction", p), ("reference", r)):
        problem = label_problem(a, num_classes)
        if problem:
            raise ValueError(f"{name}: {problem}")
    idx = p.astype(np.int64) * num_classes + r.astype(np.int64)
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def dice_from_confusion(cm: np.ndarray) -> np.ndarray:
    """Dice of every class from a confusion matrix: ``2 C[k, k] / (C[k].sum() + C[:, k].sum())``.

    The one Dice-from-counts rule of the package (evaluation and training validation). Dice is symmetric
    in prediction and reference, but the layout is that of :func:`confusion_matrix`: rows prediction,
    columns reference.

    Args:
        cm: ``(K, K)`` voxel counts, rows prediction, columns reference (summed over cases if wanted).

    Returns:
        float64 ``(K,)``, background first; NaN for a class absent from both prediction and reference
        (it cannot be scored; see :func:`mean_foreground` for how means leave it out).
    """
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square (K, K), got shape {cm.shape}")
    tp = np.diagonal(cm).astype(np.float64)
    denom = cm.sum(1).astype(np.float64) + cm.sum(0).astype(np.float64)  # |P| + |R| per class
    out = np.full(denom.shape, np.nan)
    np.divide(2.0 * tp, denom, out=out, where=denom > 0)
    return out


def mean_foreground(values: Union[Sequence[float], Mapping[int, float]]) -> float:
    """The mean of a per-class metric over the foreground classes: class 0 and NaN values left out.

    The one mean rule of the package: validation mean Dice in training, the mean row of evaluation
    summaries (:func:`mean_over_classes`) and the ranking of cases in reports. A NaN value is a class
    absent from both prediction and reference; it is excluded explicitly, never counted as 0 or 1.

    Args:
        values: ``{class: value}``, or a sequence indexed by class (background first).

    Returns:
        The mean, or NaN when no foreground class has a value.
    """
    items = values.items() if isinstance(values, Mapping) else enumerate(values)
    kept = [float(v) for c, v in items if int(c) != 0 and not math.isnan(v)]
    return float(np.mean(kept)) if kept else float("nan")


def surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a face neighbour outside it (the border counts as outside).

    Equal to ``mask ^ scipy.ndimage.binary_erosion(mask)`` with the default cross, computed by shifts.
    """
    m = np.asarray(mask, dtype=bool)
    p = np.pad(m, 1)
    interior = m.copy()
    for axis in range(m.ndim):
        for lo, hi in ((0, -2), (2, None)):
            sl = [slice(1, -1)] * m.ndim
            sl[axis] = slice(lo, hi)
            interior &= p[tuple(sl)]
    return m & ~interior


def surface_distances(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]
) -> Tuple[np.ndarray, np.ndarray]:
    """Distances in mm from the surface of ``pred`` to that of ``ref`` and back.

    Args:
        pred: boolean mask ``(X, Y, Z)``; must not be empty.
        ref: boolean mask of the same shape; must not be empty.
        spacing: voxel size in mm along (X, Y, Z).

    Returns:
        ``(d_pred_to_ref, d_ref_to_pred)``: float64 arrays with one value per surface voxel.
    """
    sp = _check_spacing(spacing, pred.ndim)
    union = pred | ref
    if not pred.any() or not ref.any():
        raise ValueError("surface distances need two non-empty masks")
    box = ndimage.find_objects(union.astype(np.uint8))[0]
    return _distances_in_box(pred[box], ref[box], sp)


def _distances_in_box(pred: np.ndarray, ref: np.ndarray, spacing: Tuple[float, ...]) -> Tuple[np.ndarray, np.ndarray]:
    # The box holds both masks, so every nearest surface voxel lies inside it and the transforms are exact.
    sp_pred, sp_ref = surface(pred), surface(ref)
    to_ref = ndimage.distance_transform_edt(~sp_ref, sampling=spacing)  # (x, y, z) mm to R's surface
    to_pred = ndimage.distance_transform_edt(~sp_pred, sampling=spacing)
    return to_ref[sp_pred], to_pred[sp_ref]


def _union_box(a: Optional[Tuple[slice, ...]], b: Optional[Tuple[slice, ...]]) -> Tuple[slice, ...]:
    if a is None:
        assert b is not None
        return b
    if b is None:
        return a
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))


def _checked_inputs(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], percentile: float, tolerance_mm: float
) -> Tuple[np.ndarray, np.ndarray, Tuple[float, ...]]:
    """The two label maps as arrays and the spacing as floats, or a ValueError naming the wrong argument."""
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    if not np.issubdtype(pred.dtype, np.integer) and pred.dtype != bool:
        raise ValueError(f"prediction must be an integer label map, got dtype {pred.dtype}")
    if not np.issubdtype(ref.dtype, np.integer) and ref.dtype != bool:
        raise ValueError(f"reference must be an integer label map, got dtype {ref.dtype}")
    sp = _check_spacing(spacing, pred.ndim)
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    if tolerance_mm < 0:
        raise ValueError(f"tolerance_mm must be non-negative, got {tolerance_mm}")
    return pred, ref, sp


def _surface_scores(
    pred: np.ndarray, ref: np.ndarray, spacing: Tuple[float, ...], percentile: float, tolerance_mm: float
) -> Tuple[float, float, float]:
    """HD (at ``percentile``), ASD and surface Dice of two non-empty masks cut to a box that holds both."""
    d_pr, d_rp = _distances_in_box(pred, ref, spacing)
    hd = max(float(np.percentile(d_pr, percentile)), float(np.percentile(d_rp, percentile)))
    n = d_pr.size + d_rp.size
    asd = float((d_pr.sum() + d_rp.sum()) / n)
    nsd = float(((d_pr <= tolerance_mm).sum() + (d_rp <= tolerance_mm).sum()) / n)
    return hd, asd, nsd


def evaluate_case(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    num_classes: Optional[int] = None,
    *,
    classes: Optional[Iterable[int]] = None,
    tolerance_mm: float = 2.0,
    percentile: float = 95.0,
    surface_metrics: bool = True,
) -> Dict[int, ClassScore]:
    """All metrics of one case, per class.

    Args:
        pred: predicted label map ``(X, Y, Z)``, integers.
        ref: reference label map of the same shape.
        spacing: voxel size in mm (x, y, z).
        num_classes: K (background included); default ``max(pred.max(), ref.max()) + 1``.
        classes: the classes to score; default ``1..K-1`` (background left out).
        tolerance_mm: tolerance of the surface Dice.
        percentile: the percentile of the Hausdorff distance (95 for HD95).
        surface_metrics: compute HD95, ASD and surface Dice (else they are NaN; Dice/IoU only, fast).

    Returns:
        ``{class: ClassScore}``; see the module docstring for the conventions on empty masks.
    """
    pred, ref, sp = _checked_inputs(pred, ref, spacing, percentile, tolerance_mm)
    if num_classes is None:
        num_classes = int(max(pred.max(initial=0), ref.max(initial=0))) + 1
    class_list = list(range(1, num_classes)) if classes is None else [int(c) for c in classes]
    for c in class_list:
        if not 0 <= c < num_classes:
            raise ValueError(f"class {c} is outside 0..{num_classes - 1}")

    cm = confusion_matrix(pred, ref, num_classes)
    dices = dice_from_confusion(cm)
    penalty = diagonal_mm(pred.shape, sp)
    need_boxes = surface_metrics and class_list
    # find_objects labels 1..K-1; background (0) gets the whole volume.
    boxes_p = ndimage.find_objects(pred.astype(np.int32, copy=False), num_classes - 1) if need_boxes else []
    boxes_r = ndimage.find_objects(ref.astype(np.int32, copy=False), num_classes - 1) if need_boxes else []
    full = tuple(slice(0, n) for n in pred.shape)
    out: Dict[int, ClassScore] = {}
    nan = float("nan")
    for c in class_list:
        tp = int(cm[c, c])
        n_p = int(cm[c].sum())
        n_r = int(cm[:, c].sum())
        if n_p == 0 and n_r == 0:
            out[c] = ClassScore(nan, nan, nan, nan, nan, 0, 0)
            continue
        dice = float(dices[c])
        iou = tp / (n_p + n_r - tp)
        if not surface_metrics:
            out[c] = ClassScore(dice, iou, nan, nan, nan, n_p, n_r)
        elif n_p == 0 or n_r == 0:
            out[c] = ClassScore(0.0, 0.0, penalty, penalty, 0.0, n_p, n_r)
        else:
            bp = full if c == 0 else boxes_p[c - 1]
            br = full if c == 0 else boxes_r[c - 1]
            box = _union_box(bp, br)
            hd, asd, nsd = _surface_scores(pred[box] == c, ref[box] == c, sp, percentile, tolerance_mm)
            out[c] = ClassScore(dice, iou, hd, asd, nsd, n_p, n_r)
    return out


def summarize(
    per_case: Mapping[str, Mapping[int, ClassScore]], metrics: Sequence[str] = METRICS
) -> Dict[int, Dict[str, Dict[str, float]]]:
    """Mean, std, median and count over cases, per class and metric, NaN left out.

    Args:
        per_case: ``{case: {class: ClassScore}}`` as :func:`evaluate_case` returns.
        metrics: which metrics to summarise.

    Returns:
        ``{class: {metric: {"mean", "std", "median", "n"}}}``; a class with no finite value has NaN
        statistics and ``n = 0``.
    """
    classes = sorted({c for scores in per_case.values() for c in scores})
    out: Dict[int, Dict[str, Dict[str, float]]] = {}
    for c in classes:
        out[c] = {}
        for m in metrics:
            v = np.array([getattr(s[c], m) for s in per_case.values() if c in s], dtype=np.float64)
            v = v[~np.isnan(v)]
            if v.size:
                out[c][m] = {"mean": float(v.mean()), "std": float(v.std()), "median": float(np.median(v)),
                             "n": int(v.size)}
            else:
                out[c][m] = {"mean": float("nan"), "std": float("nan"), "median": float("nan"), "n": 0}
    return out


def mean_over_classes(summary: Mapping[int, Mapping[str, Mapping[str, float]]], metric: str = "dice") -> float:
    """The mean over foreground classes of the per-class means of ``metric`` (:func:`mean_foreground`:
    background and classes with no value left out)."""
    return mean_foreground({c: s[metric]["mean"] for c, s in summary.items()})


__all__ = [
    "ClassScore", "METRICS", "confusion_matrix", "dice_from_confusion", "mean_foreground", "surface", "surface_distances", "evaluate_case", "summarize",
    "mean_over_classes", "diagonal_mm",
]
