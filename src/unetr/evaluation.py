"""Evaluation of folders: predictions scored against references case by case, and the files of the results.

``unetr evaluate`` (and ``unetr report`` without a ``metrics.csv``) pairs the label maps of two folders by
file name, reads and scores them one case at a time in worker processes (:func:`unetr.metrics.evaluate_case`,
the per-volume maths and its conventions), and writes ``metrics.csv`` (one row per case and class) and
``summary.json``; ``unetr cv`` writes the same files from its pooled folds. This module reads no volumes
itself: :func:`evaluate_folders` takes a reader (the CLI passes :mod:`unetr.data.io`'s).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from unetr.fsutil import atomic_write_text
from unetr.metrics import METRICS, ClassScore, evaluate_case, mean_over_classes, summarize

log = logging.getLogger(__name__)


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


def read_pair(name: str, pred_path: Optional[Path], ref_path: Union[str, Path], read: Callable
              ) -> Tuple[Optional[np.ndarray], Optional[np.ndarray], Optional[Sequence[float]], Optional[str]]:
    """Read one (prediction, reference) pair with ``read`` (see :func:`evaluate_folders`) and check that they
    lie on one grid; a missing prediction (``pred_path`` None) is an empty label map on the reference's grid.

    Returns:
        ``(prediction, reference, the reference's spacing, None)``, or ``(None, None, None, problem)`` with one
        message naming ``name``.
    """
    from unetr.grid import grid_mismatch

    try:
        ra, spacing, raff = _read_one(read, ref_path)
        if pred_path is None:
            pa, paff = np.zeros_like(ra), raff
        else:
            pa, _, paff = _read_one(read, pred_path)
    except MemoryError:
        return None, None, None, f"{name}: out of memory reading the case"
    except Exception as e:  # noqa: BLE001 - one message per unreadable case, the others go on
        return None, None, None, f"{name}: cannot read ({e})"
    if pa.shape != ra.shape:
        return None, None, None, f"{name}: prediction shape {pa.shape} differs from reference shape {ra.shape}"
    if paff is not None and raff is not None:
        why = grid_mismatch(pa.shape, paff, ra.shape, raff)
        if why is not None:
            return None, None, None, f"{name}: the prediction is not on the reference's grid ({why})"
    return pa, ra, spacing, None


def _score_pair(args) -> Tuple[str, Optional[Dict[int, ClassScore]], Optional[str], int]:
    """Score one (prediction, reference) pair; a missing prediction scores as an empty label map.

    Returns ``(file name, scores or None, problem or None, largest label seen)``. Runs in worker processes.
    """
    name, pred_path, ref_path, read, num_classes, tolerance_mm = args
    pa, ra, spacing, problem = read_pair(name, pred_path, ref_path, read)
    if problem is not None:
        return name, None, problem, 0
    top = int(max(pa.max(initial=0), ra.max(initial=0)))
    if num_classes is None:
        return name, None, None, top
    try:
        return name, evaluate_case(pa, ra, spacing, num_classes, tolerance_mm=tolerance_mm), None, top
    except ValueError as e:
        return name, None, f"{name}: {e}", top


def _label_pairs(
    pred_dir: Union[str, Path], ref_dir: Union[str, Path, Mapping[str, Union[str, Path]]]
) -> Tuple[Path, Path, Dict[str, Path], Dict[str, Path]]:
    """The prediction folder, the reference folder (``<references>`` for a mapping) and the label files of
    each by file name; raises when a folder is missing or holds no label map."""
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
    return pred_dir, ref_dir, preds, refs


def map_cases(score: Callable[[tuple], tuple], jobs: Sequence[tuple], workers: int, progress: bool = False
              ) -> Iterator[tuple]:
    """``score`` (a module-level function: it is pickled) of every job, in order, in ``workers`` processes that
    die with this one (in this one if ``workers <= 1``); ``progress``: a progress bar over the cases."""
    if progress:
        from tqdm.auto import tqdm

        yield from tqdm(map_cases(score, jobs, workers), total=len(jobs), desc="cases", unit="case")
        return
    if workers <= 1:
        yield from map(score, jobs)
        return
    import os
    from concurrent.futures import ProcessPoolExecutor

    from unetr.workers import die_with_parent

    with ProcessPoolExecutor(max_workers=workers, initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
        yield from pool.map(score, jobs)


def _collect(results: Iterable[tuple], problems: List[str]) -> Dict[str, Dict[int, ClassScore]]:
    """The scores of :func:`_score_pair`'s results by case name; a case's problem is appended to ``problems``."""
    per_case: Dict[str, Dict[int, ClassScore]] = {}
    for name, scores, problem, _ in results:
        if problem is not None:
            problems.append(problem)
        elif scores is not None:
            per_case[_case_name(name)] = scores
    return per_case


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
        read_label: ``path -> (array (X, Y, Z), spacing[, affine])`` (this module reads no volumes itself; the
            CLI passes :func:`unetr.data.io.read_label`'s array, spacing and affine). With the affine, grids
            are compared. Must be picklable when ``workers > 1``.
        workers: processes scoring cases in parallel.
        allow_missing: a missing prediction is scored as a miss but is not a problem.
        progress: a progress bar over cases.

    Returns:
        ``(per_case, summary, problems)``: problems are one message per case that could not be scored (or
        was missing).
    """
    pred_dir, ref_dir, preds, refs = _label_pairs(pred_dir, ref_dir)
    if num_classes is None and class_names is not None:
        num_classes = len(class_names)
    problems: List[str] = [f"{n}: no reference {ref_dir / n}" for n in preds if n not in refs]
    missing = [n for n in refs if n not in preds]
    if missing and not allow_missing:
        problems += [f"{n}: no prediction {pred_dir / n} (scored as a miss)" for n in missing]
    jobs = [(n, preds.get(n), refs[n], read_label, num_classes, tolerance_mm) for n in refs]
    if num_classes is None:  # a first pass finds the largest label
        num_classes = max([top for _, _, _, top in map_cases(_score_pair, jobs, workers)] + [1]) + 1
        jobs = [j[:4] + (num_classes,) + j[5:] for j in jobs]
    per_case = _collect(map_cases(_score_pair, jobs, workers, progress), problems)
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
        ValueError: the file has no usable label names (the message says why; the mapping is read by the
            datasets' rule, :func:`unetr.data.dataset_json.class_names`).
    """
    from unetr.config import load_json
    from unetr.data.dataset_json import class_names

    data = load_json(path)
    if isinstance(data, dict) and isinstance(data.get("plan"), dict) and "class_names" in data["plan"]:
        return [str(n) for n in data["plan"]["class_names"]]
    labels = data.get("labels") if isinstance(data, dict) else data
    if isinstance(labels, list):
        return [str(n) for n in labels]
    if not isinstance(labels, dict) or not labels:
        raise ValueError(f"{path}: no 'labels' mapping")
    return list(class_names(labels, Path(path)))


__all__ = [
    "write_csv", "read_csv", "write_summary_json", "format_table", "evaluate_folders", "read_class_names",
    "read_pair", "map_cases",
]
