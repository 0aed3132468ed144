"""Both reports from folders as the pipeline writes them: what ``unetr report`` runs.

The cases come from the metrics (a ``metrics.csv`` of ``unetr evaluate``, or predictions scored against
references here); their pictures from the images, references and predictions of the same case name; the
curves, model and class names from the run directory.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

from unetr.metrics import ClassScore

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
_IMAGE_ENDINGS = (".nii.gz", "_0000.nii.gz", ".nii", "_0000.nii")


def class_names_for(classes: Optional[PathLike], run: Optional[PathLike], labels: Optional[PathLike]) -> Optional[List[str]]:
    """Class names, background first: from ``classes`` (a dataset.json or config.json; must be readable), else
    the run's ``config.json``, else the ``dataset.json`` beside the labels folder (None when none has them)."""
    from unetr.evaluation import read_class_names

    if classes is not None:
        if not Path(classes).is_file():
            raise FileNotFoundError(f"{classes}: no such file (class names)")
        return read_class_names(classes)
    for source in ([Path(run) / "config.json"] if run else []) + ([Path(labels).parent / "dataset.json"] if labels else []):
        if source.is_file():
            try:
                return read_class_names(source)
            except ValueError as e:
                log.warning("no class names from %s: %s", source, e)
    return None


def case_files(case: str, images: PathLike, labels: Optional[PathLike], pred: Optional[PathLike]
               ) -> Tuple[Path, Optional[Path], Optional[Path]]:
    """``(image, reference or None, prediction or None)`` of a case; the label files need not exist.

    Raises:
        FileNotFoundError: no image of that case (``<case>.nii.gz`` or nnU-Net's ``<case>_0000.nii.gz``).
    """
    image = next((Path(images) / f"{case}{end}" for end in _IMAGE_ENDINGS if (Path(images) / f"{case}{end}").exists()),
                 None)
    if image is None:
        raise FileNotFoundError(f"no image for {case} in {images}")
    return (image, Path(labels) / f"{case}.nii.gz" if labels else None,
            Path(pred) / f"{case}.nii.gz" if pred else None)


def report_from_folders(
    output: PathLike,
    *,
    run: Optional[PathLike] = None,
    pred: Optional[PathLike] = None,
    labels: Optional[PathLike] = None,
    images: Optional[PathLike] = None,
    metrics: Optional[PathLike] = None,
    classes: Optional[PathLike] = None,
    show: int = 2,
    attention: Optional[str] = None,
    max_voxels: Optional[int] = None,
    modality: Optional[str] = None,
) -> Tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into ``output``.

    Args:
        output: the report folder.
        run: a run directory (curves, validation Dice, model, class names, attention maps).
        pred: predictions, scored against ``labels`` when no ``metrics`` is given.
        labels: reference label maps.
        images: the images, for the viewer, the PNGs and the attention maps.
        metrics: a ``metrics.csv`` of ``unetr evaluate``.
        classes: a dataset.json (or config.json) naming the classes.
        show: best and worst cases drawn in ``report.md``.
        attention: the case whose attention maps the page shows (default: the worst scored; ``"none"``: none).
        max_voxels: the voxel budget per case in the viewer (default :data:`~unetr.report.volumes.DEFAULT_MAX_VOXELS`).
        modality: ``"CT"`` or ``"MR"`` window presets (default: guessed per case).

    Returns:
        ``(report.html, report.md)``.
    """
    from unetr.data.io import read_label_for_scoring
    from unetr.evaluation import evaluate_folders, read_csv
    from unetr.report.attention import attention_for_case
    from unetr.report.html import write_html_report
    from unetr.report.markdown import make_report, rank_cases
    from unetr.report.volumes import DEFAULT_MAX_VOXELS, load_case_from_files

    if not (run or pred or metrics):
        raise ValueError("give a run, predictions (with labels) or a metrics.csv")
    for option, path, folder in (("--run", run, True), ("--pred", pred, True), ("--labels", labels, True),
                                 ("--images", images, True), ("--metrics", metrics, False)):
        if path and not (Path(path).is_dir() if folder else Path(path).is_file()):
            raise FileNotFoundError(f"{option} {path}: no such {'folder' if folder else 'file'}")
    max_voxels = DEFAULT_MAX_VOXELS if max_voxels is None else int(max_voxels)
    if max_voxels < 1000:
        raise ValueError(f"max_voxels must be at least 1000, got {max_voxels}")
    names = class_names_for(classes, run, labels)
    per_case: Optional[Dict[str, Dict[int, ClassScore]]] = None
    notes: List[str] = []
    if metrics:
        per_case = read_csv(metrics)
    elif pred and labels:  # scored as `unetr evaluate` scores (the grids compared, affines included)
        per_case, _, notes = evaluate_folders(pred, labels, class_names=names, out_dir=output,
                                              read_label=read_label_for_scoring)  # its problems head the page
    if attention not in (None, "none") and per_case is not None and attention not in per_case:
        raise ValueError(f"attention case {attention!r} is not among the cases ({', '.join(sorted(per_case))})")

    def load_case(case: str):
        return load_case_from_files(*case_files(case, images, labels, pred)) if images else None

    md = make_report(output, run_dir=run, per_case=per_case, class_names=names, load_case=load_case, n_show=show)
    scored = [c for c, d in rank_cases(per_case or {}) if not math.isnan(d)]  # best first
    att_case = attention or (scored[-1] if scored else None)
    att = None
    if run and images and att_case and att_case != "none":
        try:
            image, ref, prd = case_files(att_case, images, labels, pred)
            label = next((p for p in (ref, prd) if p is not None and p.exists()), None)
            att = attention_for_case(run, image, label, case=att_case)
        except Exception as e:  # noqa: BLE001 - the rest of the report is worth having without them
            log.warning("no attention maps for %s: %s", att_case, e)
            notes.append(f"No attention maps for {att_case}: {e}")
    html = write_html_report(output, run_dir=run, per_case=per_case, class_names=names, load_case=load_case,
                             attention=att, max_voxels=max_voxels, modality=modality, notes=notes)
    return html, md


__all__ = ["report_from_folders", "class_names_for", "case_files"]
