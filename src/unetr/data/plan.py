"""Dataset fingerprint -> :class:`unetr.config.Plan`.

The fingerprint reads every labelled training case once and records, in RAS orientation, its spacing, its
shape before and after cropping to the body (by the body rule preprocessing crops with,
:mod:`unetr.data.intensity`), per-channel intensity statistics inside the labelled foreground (a seeded
subsample of up to 10,000 voxels per case), and the voxel count of every class.

:func:`make_plan` turns it into a plan:

- target spacing: the median spacing (default), ``"paper"`` (1.5 x 1.5 x 2.0 mm), or explicit values;
- ROI: 96 per axis, shrunk (to a multiple of 16) where the median case, cropped as the plan crops and
  resampled, is smaller;
- intensities: CT -> the paper's window (-175..250 HU -> [0, 1]) or, with ``intensity="ct_zscore"``, the
  foreground 0.5/99.5 percentiles and z-score (nnU-Net's CT scheme); MRI -> per-channel z-score;
- classes and channels from the dataset (or the labels found), and the model preset.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np

from unetr.config import Plan, load_json, save_json
from unetr.data.cases import Case, Dataset
from unetr.data.checks import check_same_grid, label_problem
from unetr.data.intensity import body_threshold, crop_box
from unetr.data.io import PathLike, read_image, read_label
from unetr.data.orientation import apply_ornt, ras_ornt, ras_shape_spacing
from unetr.errors import DataError

log = logging.getLogger(__name__)

PAPER_SPACING = (1.5, 1.5, 2.0)
MAX_ROI = 96
SAMPLES_PER_CASE = 10_000


def auto_intensity(modality: str) -> str:
    """The intensity scheme ``intensity="auto"`` stands for: the CT window for CT, z-score for MRI."""
    return "ct_window" if modality == "CT" else "zscore"


def _body_threshold(modality: str, intensity: str = "auto", window: Optional[Sequence[float]] = None
                    ) -> Optional[float]:
    """The body rule preprocessing will crop with, for a plan of these settings (:mod:`unetr.data.intensity`)."""
    scheme = auto_intensity(modality) if intensity == "auto" else intensity
    return body_threshold(scheme, Plan().window if window is None else window)


def _case_fingerprint(case: Case, index: int, threshold: Optional[float], seed: int) -> dict:
    image, geom = read_image(case.images)
    label = None
    if case.label:
        label, lgeom = read_label(case.label)
        check_same_grid(case.label, lgeom, geom)
    ornt = ras_ornt(geom.affine)
    shape, spacing = ras_shape_spacing(ornt, geom.shape, geom.spacing)
    box = crop_box(apply_ornt(image, ornt), threshold)
    rng = np.random.default_rng([seed, index])
    samples = []
    counts: dict = {}
    if label is not None:
        fg = np.flatnonzero(label.ravel() > 0)
        pick = rng.choice(fg, size=min(SAMPLES_PER_CASE, fg.size), replace=False) if fg.size else fg
        flat = image.reshape(image.shape[0], -1)
        samples = [flat[c, pick].tolist() for c in range(image.shape[0])]
        values, n = np.unique(label, return_counts=True)
        counts = {int(v): int(k) for v, k in zip(values, n)}
    return {
        "id": case.id, "spacing": list(spacing), "shape": list(shape),
        "cropped_shape": [b - a for a, b in box], "channels": int(image.shape[0]),
        "class_voxels": counts, "samples": samples,
    }


def fingerprint(dataset: Dataset, workers: int = 2, seed: int = 0, max_cases: Optional[int] = None,
                progress: bool = False, intensity: str = "auto", window: Optional[Sequence[float]] = None) -> dict:
    """Measure a dataset (see the module docstring). Returns a JSON-able dict.

    Args:
        dataset: its labelled cases are read.
        workers: reading threads (decompression and numpy release the GIL).
        seed: seeds the foreground-intensity subsample.
        max_cases: read at most this many cases (the first ones by id), for quick plans of big datasets.
        intensity / window: the plan's, when they will not be the defaults: the crops are measured with the
            body rule preprocessing will use (:func:`unetr.data.intensity.body_threshold`).
    """
    from tqdm import tqdm

    cases = sorted(dataset.labelled, key=lambda c: c.id)[:max_cases]
    if not cases:
        raise DataError(f"{dataset.root}: no labelled cases to fingerprint")
    modality = dataset.modality
    threshold = _body_threshold(modality, intensity, window)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        jobs = pool.map(lambda a: _case_fingerprint(a[1], a[0], threshold, seed), enumerate(cases))
        per_case = list(tqdm(jobs, total=len(cases), desc="fingerprint", disable=not progress))
    channels = {c["channels"] for c in per_case}
    if len(channels) != 1:
        raise DataError(f"{dataset.root}: cases disagree on the number of channels: {sorted(channels)}")
    nch = channels.pop()
    intensity = []
    for c in range(nch):
        v = np.concatenate([np.asarray(p["samples"][c], dtype=np.float64) for p in per_case if p["samples"]] or
                           [np.zeros(1)])
        intensity.append({
            "mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max()),
            "p00_5": float(np.percentile(v, 0.5)), "p99_5": float(np.percentile(v, 99.5)),
            "median": float(np.median(v)),
        })
    class_voxels: dict = {}
    for p in per_case:
        for k, n in p["class_voxels"].items():
            class_voxels[k] = class_voxels.get(k, 0) + n
    spacings = np.array([p["spacing"] for p in per_case])
    cropped = np.array([p["cropped_shape"] for p in per_case])
    return {
        "dataset": dataset.name,
        "modality": modality,
        "num_cases": len(per_case),
        "channels": nch,
        "channel_names": list(dataset.channel_names),
        "class_names": list(dataset.class_names),
        "median_spacing": np.median(spacings, axis=0).tolist(),
        "median_shape": np.median(np.array([p["shape"] for p in per_case]), axis=0).tolist(),
        "median_cropped_shape": np.median(cropped, axis=0).tolist(),
        "body_threshold": threshold,
        "intensity": intensity,
        "class_voxels": {str(k): class_voxels[k] for k in sorted(class_voxels)},
        "cases": [{k: v for k, v in p.items() if k != "samples"} for p in per_case],
    }


compute_fingerprint = fingerprint  # make_plan's argument shadows the name


def _roi_for(median_shape: Sequence[float], median_spacing: Sequence[float], target: Sequence[float]
             ) -> Tuple[int, int, int]:
    """96 per axis, shrunk to the largest multiple of 16 that fits the median resampled case (at least 16)."""
    roi = []
    for n, s, t in zip(median_shape, median_spacing, target):
        size = n * s / t
        roi.append(int(min(MAX_ROI, max(16, 16 * int(size // 16)))))
    return tuple(roi)  # type: ignore[return-value]


def _check_classes(dataset: Dataset, fp: dict, num_classes: int) -> None:
    """The class values the fingerprint found must be in ``[0, num_classes)`` (:func:`label_problem`)."""
    problem = label_problem(sorted(int(k) for k in fp["class_voxels"]), num_classes)
    if problem:
        cases = [c["id"] for c in fp.get("cases", []) if label_problem([int(k) for k in c["class_voxels"]], num_classes)]
        where = f" (cases {', '.join(cases[:10])})" if cases else ""
        raise DataError(f"{dataset.root}: {problem}{where}")


def _plan_roi(fp: dict, plan: Plan) -> Tuple[int, int, int]:
    """The ROI for the fingerprint's median case as this plan crops it: its body crop, or the whole volume."""
    if not plan.crop_foreground:
        return _roi_for(fp["median_shape"], fp["median_spacing"], plan.target_spacing)
    measured = fp.get("body_threshold", _body_threshold(fp["modality"]))  # fingerprints before the key: the default
    wanted = body_threshold(plan.intensity, plan.window)
    if measured != wanted:
        log.warning("the fingerprint measured the crops with body threshold %s, the plan crops with %s: the ROI "
                    "may not fit the cropped cases (fingerprint with the plan's intensity and window)",
                    measured, wanted)
    return _roi_for(fp["median_cropped_shape"], fp["median_spacing"], plan.target_spacing)


def make_plan(dataset: Dataset, fingerprint: Optional[dict] = None, **overrides: Any) -> Plan:
    """Build the plan of a dataset.

    Args:
        dataset: gives class and channel names.
        fingerprint: from :func:`fingerprint` (computed here when None).
        **overrides: any :class:`Plan` field. ``target_spacing`` may also be ``"median"`` (default) or
            ``"paper"``; ``intensity`` may be ``"auto"`` (CT window for CT, z-score for MRI). When ``roi`` is
            not given, it is derived from the median case as the plan crops it (its body, or all of it).

    Raises:
        DataError: labels outside the declared classes.
        ValueError: an unknown field or an invalid value (from :class:`Plan`).
    """
    fp = fingerprint if fingerprint is not None else compute_fingerprint(dataset)
    overrides = dict(overrides)
    spacing = overrides.pop("target_spacing", "median")
    if isinstance(spacing, str):
        if spacing not in ("median", "paper"):
            raise ValueError(f"target_spacing must be 'median', 'paper' or three numbers, got {spacing!r}")
        spacing = tuple(fp["median_spacing"]) if spacing == "median" else PAPER_SPACING
    spacing = tuple(round(float(s), 4) for s in spacing)
    roi = overrides.pop("roi", None)

    class_names = tuple(dataset.class_names) or tuple(fp.get("class_names") or ())
    if class_names:
        _check_classes(dataset, fp, len(class_names))
    else:
        top = max([int(k) for k in fp["class_voxels"]] + [1])
        class_names = ("background",) + tuple(f"class_{k}" for k in range(1, top + 1))
    nch = int(fp["channels"])
    channel_names = tuple(dataset.channel_names) or (("CT",) if nch == 1 else tuple(f"ch{c}" for c in range(nch)))

    intensity = overrides.pop("intensity", "auto")
    if intensity == "auto":
        intensity = auto_intensity(fp["modality"])
    ct_stats = tuple((s["p00_5"], s["p99_5"], s["mean"], s["std"]) for s in fp["intensity"])
    fields: dict = dict(
        target_spacing=spacing, in_channels=nch, num_classes=len(class_names), class_names=class_names,
        channel_names=channel_names, intensity=intensity, ct_stats=ct_stats,
    )
    if roi:
        fields["roi"] = tuple(roi)
    fields.update(overrides)
    unknown = sorted(set(fields) - set(Plan.__dataclass_fields__))
    if unknown:
        raise ValueError(f"unknown Plan field(s): {', '.join(unknown)}")
    plan = Plan(**fields)
    if not roi:
        plan = plan.replace(roi=_plan_roi(fp, plan))
    log.info("plan: spacing %s, roi %s, %s, %d classes", plan.target_spacing, plan.roi, plan.intensity,
             plan.num_classes)
    return plan


def save_plan(plan: Plan, path: PathLike, fingerprint: Optional[dict] = None) -> Path:
    """Write ``plan.json`` atomically (and ``fingerprint.json`` next to it when given)."""
    path = Path(path)
    save_json(path, plan.to_dict())
    if fingerprint is not None:
        save_json(path.with_name("fingerprint.json"), fingerprint)
    return path


def load_plan(path: Union[PathLike, dict]) -> Plan:
    """Read a plan from ``plan.json`` (or a dict); unknown fields are an error naming them."""
    data = path if isinstance(path, dict) else load_json(path)
    return Plan.from_dict(data)


__all__ = ["fingerprint", "make_plan", "save_plan", "load_plan", "auto_intensity", "PAPER_SPACING"]
