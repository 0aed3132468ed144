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
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from scipy import ndimage

from unetr.fsutil import atomic_write_text
from unetr.labels import label_problem

log = logging.getLogger(__name__)

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
            d_pr, d_rp = _distances_in_box(pred[box] == c, ref[box] == c, sp)
            hd = max(float(np.percentile(d_pr, percentile)), float(np.percentile(d_rp, percentile)))
            n = d_pr.size + d_rp.size
            asd = float((d_pr.sum() + d_rp.sum()) / n)
            nsd = float(((d_pr <= tolerance_mm).sum() + (d_rp <= tolerance_mm).sum()) / n)
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


def write_csv(path: Union[str, Path], per_case: Mapping[str, Mapping[int, ClassScore]],
              class_names: Optional[Sequence[str]] = None) -> None:
    """One row per case and class: case, class, name, the metrics, voxel counts (NaN written as ``nan``)."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["case", "class", "name", *METRICS, "pred_voxels", "ref_voxels"])
    for case, scores in per_case.items():
        for c, s in scores.items():
            name = class_names[c] if class_names is not None and c < len(class_names) else str(c)
            w.writerow([case, c, name, *(f"{getattr(s, m):.6g}" for m in METRICS), s.pred_voxels, s.ref_voxels])
    atomic_write_text(path, buf.getvalue())


def read_csv(path: Union[str, Path]) -> Dict[str, Dict[int, ClassScore]]:
    """Read what :func:`write_csv` wrote."""
    import csv

    out: Dict[str, Dict[int, ClassScore]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            out.setdefault(row["case"], {})[int(row["class"])] = ClassScore(
                *(float(row[m]) for m in METRICS), int(row["pred_voxels"]), int(row["ref_voxels"])
            )
    return out


def write_summary_json(path: Union[str, Path], summary: Mapping[int, Mapping[str, Mapping[str, float]]],
                       class_names: Optional[Sequence[str]] = None, extra: Optional[dict] = None) -> None:
    """The summary as JSON, classes keyed by name (NaN written as ``null``)."""

    def clean(x):
        if isinstance(x, float) and math.isnan(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        return x

    names = {c: (class_names[c] if class_names is not None and c < len(class_names) else str(c)) for c in summary}
    data = {"classes": {names[c]: clean(dict(v)) | {"label": c} for c, v in summary.items()},
            "mean_dice": clean(mean_over_classes(summary, "dice")),
            "mean_hd95": clean(mean_over_classes(summary, "hd95")),
            "mean_surface_dice": clean(mean_over_classes(summary, "surface_dice"))}
    if extra:
        data.update(extra)
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def format_table(summary: Mapping[int, Mapping[str, Mapping[str, float]]],
                 class_names: Optional[Sequence[str]] = None, metrics: Sequence[str] = METRICS) -> str:
    """A plain-text table: one row per class, mean ± std of each metric, and a mean row."""
    names = [class_names[c] if class_names is not None and c < len(class_names) else str(c) for c in summary]
    width = max([len(n) for n in names] + [5])
    head = f"{'class':<{width}}  " + "  ".join(f"{m:>15}" for m in metrics) + f"  {'n':>4}"
    lines = [head, "-" * len(head)]
    for name, s in zip(names, summary.values()):
        cells = []
        for m in metrics:
            mean, std = s[m]["mean"], s[m]["std"]
            cells.append(f"{'nan':>15}" if math.isnan(mean) else f"{mean:.3f} ± {std:.3f}".rjust(15))
        lines.append(f"{name:<{width}}  " + "  ".join(cells) + f"  {s[metrics[0]]['n']:>4}")
    lines.append("-" * len(head))
    lines.append(f"{'mean':<{width}}  " + "  ".join(f"{mean_over_classes(summary, m):>15.3f}" for m in metrics))
    return "\n".join(lines)


def _case_name(file_name: str) -> str:
    return file_name[: -len(".nii.gz")] if file_name.endswith(".nii.gz") else file_name[: -len(".nii")]


def _label_files(folder: Path) -> Dict[str, Path]:
    return {p.name: p for p in sorted(folder.iterdir())
            if p.name.endswith((".nii.gz", ".nii")) and not p.name.startswith(".")
            and not p.name.endswith(("_probabilities.nii.gz", "_probabilities.nii"))}


def _read_one(read: Callable, path: Path):
    got = read(path)
    return (got[0], got[1], got[2] if len(got) > 2 else None)


def _score_pair(args) -> Tuple[str, Optional[Dict[int, ClassScore]], Optional[str], int]:
    """Score one (prediction, reference) pair; a missing prediction scores as an empty label map.

    Returns ``(file name, scores or None, problem or None, largest label seen)``. Runs in worker processes.
    """
    name, pred_path, ref_path, read, num_classes, tolerance_mm = args
    from unetr.grid import grid_mismatch

    try:
        ra, spacing, raff = _read_one(read, ref_path)
        if pred_path is None:
            pa, paff = np.zeros_like(ra), raff
        else:
            pa, _, paff = _read_one(read, pred_path)
    except MemoryError:
        return name, None, f"{name}: out of memory reading the case", 0
    except Exception as e:  # noqa: BLE001 - one message per unreadable case, the others go on
        return name, None, f"{name}: cannot read ({e})", 0
    if pa.shape != ra.shape:
        return name, None, f"{name}: prediction shape {pa.shape} differs from reference shape {ra.shape}", 0
    if paff is not None and raff is not None:
        why = grid_mismatch(pa.shape, paff, ra.shape, raff)
        if why is not None:
            return name, None, f"{name}: the prediction is not on the reference's grid ({why})", 0
    top = int(max(pa.max(initial=0), ra.max(initial=0)))
    if num_classes is None:
        return name, None, None, top
    try:
        return name, evaluate_case(pa, ra, spacing, num_classes, tolerance_mm=tolerance_mm), None, top
    except ValueError as e:
        return name, None, f"{name}: {e}", top


def evaluate_folders(
    pred_dir: Union[str, Path],
    ref_dir: Union[str, Path, Mapping[str, Union[str, Path]]],
    *,
    num_classes: Optional[int] = None,
    class_names: Optional[Sequence[str]] = None,
    tolerance_mm: float = 2.0,
    out_dir: Optional[Union[str, Path]] = None,
    read_label: Callable[[Path], tuple],
    workers: int = 1,
    allow_missing: bool = False,
    progress: bool = False,
) -> Tuple[Dict[str, Dict[int, ClassScore]], Dict[int, Dict[str, Dict[str, float]]], List[str]]:
    """Score every reference in ``ref_dir`` against the prediction of the same file name in ``pred_dir``.

    Cases are read and scored one at a time (in ``workers`` processes), so memory is bounded by a case or
    two per worker, not by the folder. A reference without a prediction is scored as a miss for every class
    it holds (Dice 0, HD95 the image diagonal), listed in the summary's ``missing`` and, unless
    ``allow_missing``, a problem; a prediction without a reference, or one whose affine places it elsewhere
    than its reference (:func:`unetr.grid.grid_mismatch`), is a problem and is not scored. The spacing
    comes from the reference's header. Writes ``metrics.csv`` and ``summary.json`` into ``out_dir``
    (default ``pred_dir``).

    Args:
        pred_dir: folder of predicted label maps (``.nii.gz``/``.nii``).
        ref_dir: folder of reference label maps with the same file names, or a mapping of prediction file
            names to reference files (a dataset's labels, whose files are named otherwise).
        num_classes: K; default from ``class_names``, else a first pass over the labels finds the largest.
        class_names: names of the classes, background first.
        tolerance_mm: tolerance of the surface Dice.
        out_dir: where the CSV and JSON go.
        read_label: ``path -> (array (X, Y, Z), spacing[, affine])`` (this module reads no files itself; the
            CLI passes :func:`unetr.data.io.read_label`'s array, spacing and affine). With the affine, grids
            are compared. Must be picklable when ``workers > 1``.
        workers: processes scoring cases in parallel.
        allow_missing: a missing prediction is scored as a miss but is not a problem.
        progress: a progress bar over cases.

    Returns:
        ``(per_case, summary, problems)``: problems are one message per case that could not be scored (or
        was missing).
    """
    ref_map = None if isinstance(ref_dir, (str, Path)) else {str(k): Path(v) for k, v in ref_dir.items()}
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir) if ref_map is None else Path("<references>")
    for d in (pred_dir,) if ref_map is not None else (pred_dir, ref_dir):
        if not d.is_dir():
            raise NotADirectoryError(f"{d}: not a folder")
    preds, refs = _label_files(pred_dir), ref_map if ref_map is not None else _label_files(ref_dir)
    if not preds:
        raise FileNotFoundError(f"{pred_dir}: no .nii/.nii.gz predictions")
    if not refs:
        raise FileNotFoundError(f"{ref_dir}: no .nii/.nii.gz references")
    if num_classes is None and class_names is not None:
        num_classes = len(class_names)
    problems: List[str] = [f"{n}: no reference {ref_dir / n}" for n in preds if n not in refs]
    missing = [n for n in refs if n not in preds]
    if missing and not allow_missing:
        problems += [f"{n}: no prediction {pred_dir / n} (scored as a miss)" for n in missing]
    jobs = [(n, preds.get(n), refs[n], read_label, num_classes, tolerance_mm) for n in refs]

    def run(jobs_):
        if workers <= 1:
            yield from map(_score_pair, jobs_)
            return
        import os
        from concurrent.futures import ProcessPoolExecutor

        from unetr.workers import die_with_parent

        with ProcessPoolExecutor(max_workers=workers, initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
            yield from pool.map(_score_pair, jobs_)

    if num_classes is None:  # a first pass finds the largest label
        num_classes = max([top for _, _, _, top in run(jobs)] + [1]) + 1
        jobs = [j[:4] + (num_classes,) + j[5:] for j in jobs]
    per_case: Dict[str, Dict[int, ClassScore]] = {}
    results = run(jobs)
    if progress:
        from tqdm.auto import tqdm

        results = tqdm(results, total=len(jobs), desc="cases", unit="case")
    for name, scores, problem, _ in results:
        if problem is not None:
            problems.append(problem)
        elif scores is not None:
            per_case[_case_name(name)] = scores
    for msg in problems:
        log.error(msg)
    summary = summarize(per_case)
    out = Path(out_dir) if out_dir is not None else pred_dir
    if per_case:
        write_csv(out / "metrics.csv", per_case, class_names)
        write_summary_json(out / "summary.json", summary, class_names,
                           extra={"cases": len(per_case), "tolerance_mm": tolerance_mm,
                                  "missing": [_case_name(n) for n in missing], "problems": problems})
    return per_case, summary, problems


def read_class_names(path: Union[str, Path]) -> List[str]:
    """Class names, background first, from a ``dataset.json`` (MSD ``{"0": "background", ...}`` or nnU-Net v2
    ``{"background": 0, ...}`` under ``labels``), a run's ``config.json`` (``plan.class_names``) or a plain
    JSON list.

    Raises:
        ValueError: the file has no usable label names (the message says why).
    """
    from unetr.config import load_json

    data = load_json(path)
    if isinstance(data, dict) and isinstance(data.get("plan"), dict) and "class_names" in data["plan"]:
        return [str(n) for n in data["plan"]["class_names"]]
    labels = data.get("labels") if isinstance(data, dict) else data
    if isinstance(labels, list):
        return [str(n) for n in labels]
    if not isinstance(labels, dict) or not labels:
        raise ValueError(f"{path}: no 'labels' mapping")
    try:
        if all(str(k).lstrip("-").isdigit() for k in labels):  # MSD: {"0": "background"}
            pairs = {int(k): str(v) for k, v in labels.items()}
        else:  # nnU-Net v2: {"background": 0}
            pairs = {int(v): str(k) for k, v in labels.items()}
    except (TypeError, ValueError):
        raise ValueError(f"{path}: labels must map integers to names (or names to integers)") from None
    k = max(pairs) + 1
    if sorted(pairs) != list(range(k)):
        raise ValueError(f"{path}: label values must be 0..{k - 1} without gaps, got {sorted(pairs)}")
    return [pairs[i] for i in range(k)]


__all__ = [
    "ClassScore", "METRICS", "confusion_matrix", "dice_from_confusion", "mean_foreground", "surface", "surface_distances", "evaluate_case", "summarize",
    "mean_over_classes", "diagonal_mm", "write_csv", "read_csv", "write_summary_json", "format_table",
    "evaluate_folders", "read_class_names",
]
