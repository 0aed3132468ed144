"""Dataset fingerprint -> :class:`unetr.config.Plan`.

The fingerprint reads every labelled training case once and records, in RAS orientation, its spacing, its
shape before and after cropping to the body (by the body rule preprocessing crops with,
:mod:`unetr.data.intensity`), per-channel intensity statistics inside the labelled foreground (a seeded
subsample of up to 10,000 voxels per case), the voxel count of every class, and what the intensities say of
the modality.

The modality (``CT``, ``MR`` or ``OTHER``) is the one the dataset names (MSD ``modality``, nnU-Net
``channel_names``, a datalist's ``modality``); where it names none (paired folders, a datalist without
``modality``), the intensities decide (:func:`looks_like`): a case is CT when its voxels are integers (HU)
and at least 1% of them lie at or below -900 HU (air, -1000 HU, or the scanner's padding below it); else MR
when no value is negative (magnitude images), else OTHER. The majority of the cases decides, and the cases
that disagree are named in a warning (as are those that disagree with a named modality). ``--modality``
overrides both. The decision and its reason go to the log and into ``plan.json``.

:func:`make_plan` turns it into a plan:

- target spacing: the median spacing (default), ``"paper"`` (1.5 x 1.5 x 2.0 mm), or explicit values;
- ROI: 96 per axis, shrunk (to a multiple of 16) where the median case, cropped as the plan crops and
  resampled, is smaller;
- intensities: CT -> the paper's window (-175..250 HU -> [0, 1]) or, with ``intensity="ct_zscore"``, the
  foreground 0.5/99.5 percentiles and z-score (nnU-Net's CT scheme); MR and OTHER -> per-channel z-score;
- classes and channels from the dataset (or the labels found), and the model preset.

:func:`plan_dataset` does both with one set of overrides, so the crops the fingerprint measures (and the ROI
derives from) are the crops the plan's preprocessing makes.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np

from unetr.config import MODALITIES, Plan, load_json, save_json
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
MODALITY_SAMPLES = 100_000  # voxels per case the modality evidence is measured on
AIR_HU = -900.0  # air is -1000 HU; scanners pad outside their field of view further below
AIR_SHARE = 0.01  # a CT has at least this share of voxels at or below AIR_HU


def auto_intensity(modality: str) -> str:
    """The intensity scheme ``intensity="auto"`` stands for: the CT window for CT, z-score otherwise."""
    return "ct_window" if modality == "CT" else "zscore"


def _body_threshold(modality: str, intensity: str = "auto", window: Optional[Sequence[float]] = None
                    ) -> Optional[float]:
    """The body rule preprocessing will crop with, for a plan of these settings (:mod:`unetr.data.intensity`)."""
    scheme = auto_intensity(modality) if intensity == "auto" else intensity
    return body_threshold(scheme, Plan().window if window is None else window)


# ------------------------------------------------------------------------------------------------ modality


def modality_evidence(image: np.ndarray, rng: np.random.Generator) -> dict:
    """What the intensities of one case say of its modality, from a seeded subsample of channel 0.

    Args:
        image: ``(C, X, Y, Z)``.
        rng: draws the subsample (up to :data:`MODALITY_SAMPLES` voxels).

    Returns:
        ``{"integer": all sampled values are integers, "air": share at or below AIR_HU, "min": smallest,
        "looks": looks_like(...)}``.
    """
    flat = image[0].reshape(-1)
    sample = flat[rng.choice(flat.size, size=MODALITY_SAMPLES)] if flat.size > MODALITY_SAMPLES else flat
    sample = np.asarray(sample, dtype=np.float64)
    integer = bool(np.all(sample == np.round(sample)))
    air = float(np.mean(sample <= AIR_HU)) if sample.size else 0.0
    low = float(sample.min()) if sample.size else 0.0
    return {"integer": integer, "air": round(air, 4), "min": low, "looks": looks_like(integer, air, low)}


def looks_like(integer: bool, air: float, minimum: float) -> str:
    """The modality of one case's evidence (see the module docstring): CT, MR or OTHER."""
    if integer and air >= AIR_SHARE:
        return "CT"
    return "MR" if minimum >= 0 else "OTHER"


def _evidence_words(ev: Sequence[dict]) -> str:
    ct = sum(e["looks"] == "CT" for e in ev)
    air = float(np.median([e["air"] for e in ev]))
    return (f"{ct} of {len(ev)} case(s) integer-valued with air (median {100 * air:.1f}% of voxels at or below "
            f"{AIR_HU:g} HU)")


def decide_modality(evidence: Dict[str, dict], declared: Optional[str] = None, source: str = "",
                    override: Optional[str] = None) -> Tuple[str, str]:
    """The dataset's modality and why: ``override``, else ``declared``, else the majority of the cases' looks.

    Cases whose intensities disagree with the decision are named in a warning.

    Args:
        evidence: case id -> :func:`modality_evidence`.
        declared / source: the modality the dataset names and where (``dataset.json 'modality'``).
        override: ``--modality``.

    Returns:
        ``(modality, reason)``.
    """
    ev = list(evidence.values())
    if override is not None:
        if override not in MODALITIES:
            raise ValueError(f"modality must be one of {', '.join(MODALITIES)}, got {override!r}")
        modality, reason = override, "set by --modality"
    elif declared is not None:
        modality, reason = declared, f"named by {source or 'the dataset'}"
    else:
        counts = {m: sum(e["looks"] == m for e in ev) for m in MODALITIES}
        modality = max(MODALITIES, key=lambda m: counts[m])  # ties: the first of CT, MR, OTHER
        reason = f"the dataset names none; by the intensities: {_evidence_words(ev)}"
        if modality == "MR":
            reason += ", no negative values"
    odd = sorted(cid for cid, e in evidence.items() if e["looks"] != modality)
    if odd and ev:
        log.warning("modality %s (%s), but %d of %d case(s) look otherwise by their intensities: %s%s; set "
                    "--modality, or plan each modality apart", modality, reason, len(odd), len(ev),
                    ", ".join(f"{c} ({evidence[c]['looks']})" for c in odd[:10]), " ..." if len(odd) > 10 else "")
    return modality, reason


# ------------------------------------------------------------------------------------------------ fingerprint


def _case_fingerprint(case: Case, index: int, thresholds: Sequence[Optional[float]], seed: int) -> dict:
    image, geom = read_image(case.images)
    label = None
    if case.label:
        label, lgeom = read_label(case.label)
        check_same_grid(case.label, lgeom, geom)
    ornt = ras_ornt(geom.affine)
    shape, spacing = ras_shape_spacing(ornt, geom.shape, geom.spacing)
    ras = apply_ornt(image, ornt)
    crops = {t: [b - a for a, b in crop_box(ras, t)] for t in dict.fromkeys(thresholds)}  # one body mask per rule
    rng = np.random.default_rng([seed, index])
    evidence = modality_evidence(image, np.random.default_rng([seed, index, 1]))
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
        "id": case.id, "spacing": list(spacing), "shape": list(shape), "crops": crops,
        "channels": int(image.shape[0]), "modality": evidence, "class_voxels": counts, "samples": samples,
    }


def fingerprint(dataset: Dataset, workers: int = 2, seed: int = 0, max_cases: Optional[int] = None,
                progress: bool = False, intensity: str = "auto", window: Optional[Sequence[float]] = None,
                modality: Optional[str] = None) -> dict:
    """Measure a dataset (see the module docstring). Returns a JSON-able dict.

    Args:
        dataset: its labelled cases are read.
        workers: reading threads (decompression and numpy release the GIL).
        seed: seeds the foreground-intensity and modality subsamples.
        max_cases: read at most this many cases (the first ones by id), for quick plans of big datasets.
        intensity / window: the plan's, when they will not be the defaults: the crops are measured with the
            body rule preprocessing will use (:func:`unetr.data.intensity.body_threshold`).
        modality: overrides the dataset's named modality and the intensities' (``--modality``).
    """
    from tqdm import tqdm

    cases = sorted(dataset.labelled, key=lambda c: c.id)[:max_cases]
    if not cases:
        raise DataError(f"{dataset.root}: no labelled cases to fingerprint")
    # a modality set or named is the decision (decide_modality): only its body rule's crops are measured
    known = modality if modality is not None else dataset.modality
    needed = [_body_threshold(m, intensity, window) for m in (("CT", "MR") if known is None else (known,))]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        jobs = pool.map(lambda a: _case_fingerprint(a[1], a[0], needed, seed), enumerate(cases))
        per_case = list(tqdm(jobs, total=len(cases), desc="fingerprint", disable=not progress))
    channels = {c["channels"] for c in per_case}
    if len(channels) != 1:
        raise DataError(f"{dataset.root}: cases disagree on the number of channels: {sorted(channels)}")
    chosen, reason = decide_modality({p["id"]: p["modality"] for p in per_case}, dataset.modality,
                                     dataset.modality_source, modality)
    log.info("modality %s: %s", chosen, reason)
    rule = _body_threshold(chosen, intensity, window)
    for p in per_case:
        p["cropped_shape"] = p.pop("crops")[rule]
    nch = channels.pop()
    stats = []
    for c in range(nch):
        v = np.concatenate([np.asarray(p["samples"][c], dtype=np.float64) for p in per_case if p["samples"]] or
                           [np.zeros(1)])
        stats.append({
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
        "modality": chosen,
        "modality_reason": reason,
        "num_cases": len(per_case),
        "channels": nch,
        "channel_names": list(dataset.channel_names),
        "class_names": list(dataset.class_names),
        "median_spacing": np.median(spacings, axis=0).tolist(),
        "median_shape": np.median(np.array([p["shape"] for p in per_case]), axis=0).tolist(),
        "median_cropped_shape": np.median(cropped, axis=0).tolist(),
        "body_threshold": rule,
        "intensity": stats,
        "class_voxels": {str(k): class_voxels[k] for k in sorted(class_voxels)},
        "cases": [{k: v for k, v in p.items() if k != "samples"} for p in per_case],
    }


compute_fingerprint = fingerprint  # make_plan's argument shadows the name
_FINGERPRINT_MODALITY = {"MRI": "MR"}  # fingerprints written before MODALITIES


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
            ``"paper"``; ``intensity`` may be ``"auto"`` (CT window for CT, z-score otherwise). ``modality``
            overrides the fingerprint's (better given to :func:`fingerprint` too: :func:`plan_dataset`). When
            ``roi`` is not given, it is derived from the median case as the plan crops it (its body, or all
            of it).

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
    modality, reason = _FINGERPRINT_MODALITY.get(fp["modality"], fp["modality"]), fp.get("modality_reason", "")
    if overrides.get("modality") not in (None, modality):
        modality, reason = overrides.pop("modality"), "set by --modality"
    nch = int(fp["channels"])
    channel_names = tuple(dataset.channel_names) or ((modality,) if nch == 1 else tuple(f"ch{c}" for c in range(nch)))

    intensity = overrides.pop("intensity", "auto")
    if intensity == "auto":
        intensity = auto_intensity(modality)
    ct_stats = tuple((s["p00_5"], s["p99_5"], s["mean"], s["std"]) for s in fp["intensity"])
    fields: dict = dict(
        target_spacing=spacing, in_channels=nch, num_classes=len(class_names), class_names=class_names,
        channel_names=channel_names, intensity=intensity, ct_stats=ct_stats, modality=modality,
        modality_reason=reason,
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
    log.info("plan: spacing %s, roi %s, %s (%s: %s), %d classes", plan.target_spacing, plan.roi, plan.intensity,
             plan.modality, plan.modality_reason, plan.num_classes)
    return plan


def plan_dataset(dataset: Dataset, *, workers: int = 2, seed: int = 0, max_cases: Optional[int] = None,
                 progress: bool = False, **overrides: Any) -> Tuple[Plan, dict]:
    """Fingerprint a dataset and make its plan with one set of overrides (those of :func:`make_plan`).

    The fingerprint measures the crops with the body rule of the plan the overrides make (its ``intensity``,
    ``window`` and ``modality``), so the ROI derives from the crops preprocessing will make.

    Returns:
        ``(plan, fingerprint)``.
    """
    intensity = overrides.get("intensity", "auto")
    fp = fingerprint(dataset, workers=workers, seed=seed, max_cases=max_cases, progress=progress,
                     intensity=intensity, window=overrides.get("window"), modality=overrides.get("modality"))
    return make_plan(dataset, fp, **overrides), fp


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


__all__ = ["fingerprint", "make_plan", "plan_dataset", "decide_modality", "looks_like", "modality_evidence",
           "save_plan", "load_plan", "auto_intensity", "PAPER_SPACING"]
