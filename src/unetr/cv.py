"""``unetr cv runs/NAME``: the pooled out-of-fold evaluation of a cross-validation, and its post-processing.

Each fold's validation cases were predicted by that fold's final model (``fold_K/validation/``); together
they cover the dataset once. They are scored against the dataset's reference labels with the metrics and
the missing-class conventions of ``unetr evaluate`` (:mod:`unetr.metrics`: a class absent from both is NaN
and left out; a missing prediction scores as a miss), pooled and per fold, and written to
``runs/NAME/crossval/`` (``metrics.csv`` per case and class, ``folds.csv`` per fold and class,
``summary.json``).

The same predictions decide the post-processing (:func:`unetr.inference.postprocess.decide`): for the
foreground and then each class, keep the largest connected component (or drop components under a size)
only where this raises the cross-validated mean Dice without lowering any class by more than a tolerance.
The decision, with the figures before and after, goes to ``runs/NAME/postprocessing.json``, which
``unetr predict -m runs/NAME`` applies.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from unetr.config import load_json, save_json
from unetr.errors import UnetrError
from unetr.evaluation import format_table, map_cases, read_pair, write_csv, write_summary_json
from unetr.fsutil import atomic_write_text
from unetr.inference.postprocess import PostProcessing, case_candidates, decide, merge_candidates
from unetr.metrics import METRICS, ClassScore, evaluate_case, mean_over_classes, summarize

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
CV_DIR = "crossval"


@dataclass
class CVResult:
    """What :func:`cross_validate` found and wrote.

    Attributes:
        per_case: ``{case: {class: ClassScore}}`` pooled over the folds.
        summary: :func:`unetr.metrics.summarize` of the pooled cases.
        folds: ``{fold: summary of its cases}``.
        postprocessing: the decision (its ``record`` holds the figures before and after).
        class_names: background first.
        problems: cases that could not be scored, or were missing.
        out: the folder of the figures.
    """

    per_case: Dict[str, Dict[int, ClassScore]]
    summary: Dict[int, Dict[str, Dict[str, float]]]
    folds: Dict[int, Dict[int, Dict[str, Dict[str, float]]]]
    postprocessing: PostProcessing
    class_names: List[str]
    problems: List[str] = field(default_factory=list)
    out: Optional[Path] = None


def _cases_of_folds(run: Path, dataset: Optional[PathLike]) -> Tuple[List[Tuple[int, str, Optional[Path], str]],
                                                                     List[str], List[int]]:
    """``[(fold, case, prediction or None, reference)]`` for every validation case of every trained fold,
    the class names, and the folds of the split that were not trained (yet)."""
    from unetr.data.cases import load_dataset
    from unetr.data.splits import load_splits
    from unetr.package import fold_dirs

    record_path = run / "folds.json"
    if not record_path.is_file() and dataset is None:
        raise UnetrError(f"{run}: no folds.json (written by `unetr train --folds`); give the dataset (--dataset)")
    record = load_json(record_path) if record_path.is_file() else {}
    ds = load_dataset(dataset if dataset is not None else record["dataset"])
    splits_file = Path(record["splits"]) if "splits" in record else run / "splits.json"
    splits = load_splits(splits_file)
    refs = {c.id: c.label for c in ds.labelled}
    trained = {int(p.name.split("_")[1]): p for p in fold_dirs(run)}
    if not trained:
        raise UnetrError(f"{run}: no trained folds (fold_0/, fold_1/ ...)")
    names = list(load_json(next(iter(trained.values())) / "config.json")["plan"]["class_names"])
    jobs = []
    for k in range(splits.num_folds):
        if k not in trained:
            continue
        for cid in splits.fold(k)[1]:
            if cid not in refs:
                raise UnetrError(f"{splits_file}: case {cid} is not in the dataset {ds.root}")
            pred = trained[k] / "validation" / f"{cid}.nii.gz"
            jobs.append((k, cid, pred if pred.is_file() else None, str(refs[cid])))
    missing_folds = [k for k in range(splits.num_folds) if k not in trained]
    return jobs, names, missing_folds


def _score(job) -> Tuple[int, str, Optional[Dict[int, ClassScore]], Optional[tuple], Optional[str]]:
    """Score one validation case: the metrics of ``unetr evaluate`` and the post-processing candidates
    (runs in worker processes)."""
    from unetr.data.io import read_label_for_scoring

    fold, cid, pred_path, ref_path, num_classes, tolerance_mm, min_size_mm3 = job
    pred, ref, spacing, problem = read_pair(cid, pred_path, ref_path, read_label_for_scoring)
    if problem is not None:
        return fold, cid, None, None, problem
    try:
        scores = evaluate_case(pred, ref, spacing, num_classes, tolerance_mm=tolerance_mm)
        cands = case_candidates(pred, ref, spacing, num_classes, min_size_mm3)
    except ValueError as e:
        return fold, cid, None, None, f"{cid}: {e}"
    return fold, cid, scores, cands, None


def cross_validate(run: PathLike, *, dataset: Optional[PathLike] = None, tolerance_mm: float = 2.0,
                   max_class_drop: float = 0.005, min_size_mm3: float = 0.0, out: Optional[PathLike] = None,
                   workers: int = 1, write_postprocessing: bool = True, progress: bool = False) -> CVResult:
    """Evaluate the pooled out-of-fold predictions of a folder of folds and decide its post-processing.

    Args:
        run: the folder of folds (``unetr train --folds``).
        dataset: the dataset (default: the one ``folds.json`` names).
        tolerance_mm: surface Dice tolerance.
        max_class_drop: the largest drop of any class's mean Dice a post-processing step may cause.
        min_size_mm3: also try removing components under this size (0: only the largest component).
        out: folder of the figures (default ``run/crossval``).
        workers: processes scoring cases in parallel.
        write_postprocessing: write ``run/postprocessing.json``.
        progress: a progress bar over cases.

    Returns:
        A :class:`CVResult`.

    Raises:
        UnetrError: no trained folds, no folds.json and no dataset, or no case could be scored.
    """
    run = Path(run)
    jobs, names, missing_folds = _cases_of_folds(run, dataset)
    k = len(names)
    full = [(f, c, p, r, k, tolerance_mm, min_size_mm3) for f, c, p, r in jobs]
    results = map_cases(_score, full, workers, progress)
    per_case: Dict[str, Dict[int, ClassScore]] = {}
    by_fold: Dict[int, Dict[str, Dict[int, ClassScore]]] = {}
    cands = {}
    problems = [f"{j[1]}: no prediction in fold_{j[0]}/validation (scored as a miss)" for j in jobs if j[2] is None]
    for fold, cid, scores, cand, problem in results:
        if problem is not None:
            problems.append(problem)
            continue
        per_case[cid] = scores
        by_fold.setdefault(fold, {})[cid] = scores
        cands[cid] = cand
    if not per_case:
        raise UnetrError(f"{run}: no validation case could be scored ({len(problems)} problem(s))")
    for msg in problems:
        log.error(msg)
    if missing_folds:
        log.warning("%s: fold(s) %s not trained: their validation cases are not in these figures", run,
                    missing_folds)
    per_case = dict(sorted(per_case.items()))  # the order `unetr evaluate` scores them in (file names)
    summary = summarize(per_case)
    folds = {f: summarize(cases) for f, cases in sorted(by_fold.items())}
    classes = list(range(1, k))
    pp = decide(merge_candidates(cands), classes, tolerance=max_class_drop, min_size_mm3=min_size_mm3,
                class_names=names)
    pp = PostProcessing(pp.steps, {**pp.record, "folds": sorted(by_fold)})
    out_dir = Path(out) if out is not None else run / CV_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / "metrics.csv", per_case, names)
    write_folds_csv(out_dir / "folds.csv", folds, names)
    write_summary_json(out_dir / "summary.json", summary, names, extra={
        "cases": len(per_case), "tolerance_mm": tolerance_mm,
        "missing": [j[1] for j in jobs if j[2] is None], "problems": problems, "missing_folds": missing_folds,
        "folds": {str(f): _fold_figures(s, names) for f, s in folds.items()},
        "postprocessing": pp.to_dict(names)})
    if write_postprocessing:
        save_json(run / "postprocessing.json", pp.to_dict(names))
    return CVResult(per_case, summary, folds, pp, names, problems, out_dir)


def _fold_figures(summary: Dict[int, Dict[str, Dict[str, float]]], names: Sequence[str]) -> dict:
    def clean(x: float) -> Optional[float]:
        return None if math.isnan(x) else x

    return {"classes": {names[c] if c < len(names) else str(c): {m: {k: clean(v) for k, v in s[m].items()}
                                                                  for m in METRICS}
                        for c, s in summary.items()},
            "mean_dice": clean(mean_over_classes(summary, "dice")),
            "mean_hd95": clean(mean_over_classes(summary, "hd95")),
            "mean_surface_dice": clean(mean_over_classes(summary, "surface_dice"))}


def write_folds_csv(path: PathLike, folds: Dict[int, Dict[int, Dict[str, Dict[str, float]]]],
                    class_names: Sequence[str]) -> None:
    """One row per fold and class: mean and standard deviation of each metric over the fold's cases."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["fold", "class", "name", "n"] + [f"{m}_{s}" for m in METRICS for s in ("mean", "std")])
    for f, summary in folds.items():
        for c, s in summary.items():
            name = class_names[c] if c < len(class_names) else str(c)
            w.writerow([f, c, name, s["dice"]["n"]] + [f"{s[m][x]:.6g}" for m in METRICS for x in ("mean", "std")])
    atomic_write_text(path, buf.getvalue())


def format_cv(result: CVResult) -> str:
    """The console report: the pooled table, each fold's mean Dice, and the post-processing decision."""
    names = result.class_names
    lines = ["pooled out-of-fold:", format_table(result.summary, names), "",
             "per fold (mean over cases; " + ", ".join(f"{names[c]} Dice" for c in sorted(result.summary)) + "):"]
    for f, s in result.folds.items():
        n = max((v["dice"]["n"] for v in s.values()), default=0)
        per = ", ".join(f"{s[c]['dice']['mean']:.3f}" for c in sorted(s))
        lines.append(f"fold {f} ({n} case(s)): {per}; mean Dice {mean_over_classes(s, 'dice'):.4f}, HD95 "
                     f"{mean_over_classes(s, 'hd95'):.2f} mm, surface Dice {mean_over_classes(s, 'surface_dice'):.4f}")
    rec = result.postprocessing.record
    before, after = rec.get("dice_before", {}), rec.get("dice_after", {})
    lines.append("")
    lines.append(f"post-processing: {result.postprocessing.describe(result.class_names)} "
                 f"(mean Dice {before.get('mean')} -> {after.get('mean')})")
    return "\n".join(lines)


__all__ = ["CV_DIR", "CVResult", "cross_validate", "format_cv", "write_folds_csv"]
