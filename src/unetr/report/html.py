"""``report.html``: one self-contained page with the evaluation, a case table, a slice viewer, the training
curves and the model with its attention maps.

The page is plain HTML, CSS and JavaScript shipped in ``unetr/report/assets`` (no library, nothing fetched):
this module gathers the numbers and the compressed volumes into one JSON document
(:func:`report_data`) and writes it into the page template with the stylesheet and the script inlined
(:func:`render_html`). Opening the file in a browser is enough; the volumes are decoded there with the
browser's own ``DecompressionStream``. See ``docs/architecture.md`` for why it is built this way.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import re
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from unetr.metrics import ClassScore, mean_over_classes, summarize
from unetr.report.markdown import rank_cases
from unetr.report.palette import DISAGREEMENT, class_hex
from unetr.report.png import read_metrics_csv
from unetr.report.volumes import DEFAULT_MAX_VOXELS, case_or_none, case_volume

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
CaseArrays = Tuple[np.ndarray, Optional[np.ndarray], Optional[np.ndarray], Sequence[float]]

TABLE_METRICS = ("dice", "hd95", "surface_dice")
"""The per-class columns of the case table."""


def _clean(x: Any) -> Any:
    """JSON-able copy: NaN and infinities become None (JSON has no NaN), numpy scalars plain numbers."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def package_version() -> Optional[str]:
    """The installed unetr's version (None when it runs uninstalled, from a source tree)."""
    from importlib import metadata

    try:
        return metadata.version("unetr")
    except metadata.PackageNotFoundError:
        return None


def _names(class_names: Optional[Sequence[str]], k: int) -> List[str]:
    names = list(class_names or [])
    return names[:k] + [f"class {c}" for c in range(len(names), k)]


def run_config(run_dir: Optional[PathLike]) -> Dict[str, Any]:
    """A run's ``config.json`` (``{}`` when there is none)."""
    from unetr.settings import load_json

    if run_dir is None or not (Path(run_dir) / "config.json").is_file():
        return {}
    return load_json(Path(run_dir) / "config.json")


def count_parameters(weights: PathLike) -> int:
    """The number of values in a safetensors file, read from its header (no tensor is loaded)."""
    from safetensors import safe_open

    with safe_open(str(weights), "np") as f:
        return int(sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys()))


def model_facts(run_dir: PathLike, config: Mapping[str, Any]) -> List[Tuple[str, str]]:
    """What the model is, as ``(label, value)`` rows: preset, architecture, parameters, input, spacing, classes."""
    model = config.get("model") or {}
    plan = config.get("plan") or {}
    train = config.get("train") or {}
    rows: List[Tuple[str, str]] = []
    if plan.get("preset"):
        rows.append(("preset", str(plan["preset"])))
    if model:
        rows.append(("architecture", f"UNETR ({model.get('variant', 'paper')} decoder): ViT of {model.get('num_layers')} "
                     f"blocks, width {model.get('hidden_size')}, {model.get('num_heads')} heads, MLP "
                     f"{model.get('mlp_dim')}, patches {model.get('patch_size')}³ ({model.get('proj_type')}); decoder "
                     f"features {model.get('feature_size')}, {model.get('norm')} norm"))
    weights = Path(run_dir) / "model.safetensors"
    if weights.is_file():
        rows.append(("parameters", f"{count_parameters(weights):,}"))
    if model:
        rows.append(("input", f"{model.get('in_channels')} channel(s), windows of "
                     f"{' × '.join(str(s) for s in model.get('img_size', []))} voxels"))
    if plan:
        rows.append(("spacing", " × ".join(f"{float(s):.3g}" for s in plan.get("target_spacing", [])) + " mm"))
        rows.append(("intensity", f"{plan.get('intensity')}" + (f", window {plan.get('window')}"
                                                              if plan.get("intensity") == "ct_window" else "")))
        rows.append(("classes", ", ".join(f"{i} {n}" for i, n in enumerate(plan.get("class_names", [])))))
    if train:
        rows.append(("training", f"{train.get('iterations')} iterations, lr {train.get('lr')}, batch "
                     f"{train.get('batch_size')} × {train.get('samples_per_volume')} crops, seed {train.get('seed')}"))
    return rows


def training_payload(metrics_csv: PathLike) -> Optional[Dict[str, Any]]:
    """A run's ``metrics.csv`` as ``{"columns", "rows"}`` (None when it has no rows)."""
    rows = read_metrics_csv(metrics_csv)
    if not rows:
        return None
    columns = list(rows[0])
    return {"columns": columns, "rows": [[r[c] for c in columns] for r in rows]}


def validation_summary(training: Optional[Mapping[str, Any]], config: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """The run's validation fold and its best and last validation Dice (per class and mean)."""
    if not training or "val_mean_dice" not in training["columns"]:
        return None
    cols = training["columns"]
    rows = [dict(zip(cols, r)) for r in training["rows"] if not math.isnan(r[cols.index("val_mean_dice")])]
    if not rows:
        return None

    def point(r: Mapping[str, float]) -> Dict[str, Any]:
        return {"iteration": int(r["iteration"]), "mean_dice": r["val_mean_dice"],
                "classes": {c[len("val_dice_"):]: r[c] for c in cols if c.startswith("val_dice_")}}

    train = config.get("train") or {}
    best = max(rows, key=lambda r: r["val_mean_dice"])
    return {"fold": train.get("fold"), "num_folds": train.get("num_folds"), "best": point(best), "last": point(rows[-1])}


def summary_payload(per_case: Mapping[str, Mapping[int, ClassScore]], names: Sequence[str]) -> Dict[str, Any]:
    """Mean, std and count over cases of the table's metrics, per class and over classes."""
    summary = summarize(per_case, TABLE_METRICS)
    return {
        "cases": len(per_case),
        "classes": [{"index": c, "name": names[c], **{m: summary[c][m] for m in TABLE_METRICS}} for c in summary],
        "mean": {m: mean_over_classes(summary, m) for m in TABLE_METRICS},
    }


def cases_payload(per_case: Mapping[str, Mapping[int, ClassScore]]) -> List[Dict[str, Any]]:
    """One entry per case: its scores per class and its mean foreground Dice, worst first."""
    mean = dict(rank_cases(per_case))
    order = sorted(per_case, key=lambda c: (math.isnan(mean[c]), mean[c] if not math.isnan(mean[c]) else 0.0))
    return [{"name": case, "mean_dice": mean[case],
             "scores": {str(c): s.as_dict() for c, s in sorted(per_case[case].items())}} for case in order]


def report_data(
    *,
    title: str = "unetr report",
    run_dir: Optional[PathLike] = None,
    per_case: Optional[Mapping[str, Mapping[int, ClassScore]]] = None,
    class_names: Optional[Sequence[str]] = None,
    volumes: Optional[Mapping[str, Mapping[str, Any]]] = None,
    attention: Optional[Mapping[str, Any]] = None,
    notes: Sequence[str] = (),
) -> Dict[str, Any]:
    """Everything the page shows, as one JSON-able dict (NaN as None).

    Args:
        title: the page's heading.
        run_dir: a run directory: training curves, validation Dice, model facts, class names.
        per_case: ``{case: {class: ClassScore}}``.
        class_names: names of the classes, background first (default: the run's, else ``class k``).
        volumes: ``{case: case_volume(...)}`` for the viewer.
        attention: :func:`unetr.report.attention.attention_for_case`'s result, or None.
        notes: lines shown under the heading (what could not be shown, and why).
    """
    config = run_config(run_dir)
    if class_names is None and (config.get("plan") or {}).get("class_names"):
        class_names = config["plan"]["class_names"]
    per_case = per_case or {}
    volumes = volumes or {}
    k = max([len(class_names or [])] + [max(s) + 1 for s in per_case.values() if s] + [2])
    names = _names(class_names, k)
    training = None
    if run_dir is not None and (Path(run_dir) / "metrics.csv").is_file():
        training = training_payload(Path(run_dir) / "metrics.csv")
    cases = cases_payload(per_case) if per_case else [{"name": c, "mean_dice": None, "scores": {}} for c in volumes]
    for c in cases:
        c["has_volume"] = c["name"] in volumes
    return _clean({
        "meta": {"title": title, "version": package_version(), "run": None if run_dir is None else str(run_dir),
                 "generated": datetime.datetime.now().isoformat(timespec="seconds")},
        "classes": [{"index": i, "name": n, "color": col} for i, (n, col) in enumerate(zip(names, class_hex(k)))],
        "disagreement": dict(DISAGREEMENT),
        "summary": summary_payload(per_case, names) if per_case else None,
        "validation": validation_summary(training, config),
        "cases": cases,
        "volumes": dict(volumes),
        "training": training,
        "model": {"facts": model_facts(run_dir, config)} if config else None,
        "attention": attention,
        "notes": list(notes),
    })


def _asset(name: str) -> str:
    return resources.files("unetr.report").joinpath("assets", name).read_text(encoding="utf-8")


def render_html(data: Mapping[str, Any]) -> str:
    """The page: the template with the stylesheet, the script and ``data`` (JSON) inlined."""
    text = json.dumps(data, allow_nan=False, separators=(",", ":"))
    parts = {
        "title": _escape(str(data.get("meta", {}).get("title", "unetr report"))),
        "css": _asset("report.css"),
        "js": _asset("report.js"),
        "data": text.replace("<", "\\u003c"),  # no "</script>" or "<!--" can end or bend the script element
    }
    return re.sub(r"\{\{(title|css|js|data)\}\}", lambda m: parts[m.group(1)], _asset("report.html"))


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def write_html_report(
    out_dir: PathLike,
    *,
    run_dir: Optional[PathLike] = None,
    per_case: Optional[Mapping[str, Mapping[int, ClassScore]]] = None,
    class_names: Optional[Sequence[str]] = None,
    case_images: Optional[Mapping[str, CaseArrays]] = None,
    load_case: Optional[Callable[[str], Optional[CaseArrays]]] = None,
    attention: Optional[Mapping[str, Any]] = None,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    modality: Optional[str] = None,
    title: str = "unetr report",
    notes: Sequence[str] = (),
) -> Path:
    """Write ``report.html`` into ``out_dir``.

    Args:
        out_dir: the report folder (created).
        run_dir: a run directory (curves, validation Dice, model facts, class names).
        per_case: ``{case: {class: ClassScore}}``; its cases make the table.
        class_names: names of the classes, background first.
        case_images: ``{case: (image, reference, prediction, spacing)}`` RAS arrays for the viewer.
        load_case: ``case -> (image, reference, prediction, spacing)`` or None, called for each case that
            ``case_images`` lacks, one case at a time (only one case's arrays are held at once).
        attention: attention maps of one case (:func:`unetr.report.attention.attention_for_case`).
        max_voxels: the voxel budget of each case in the viewer (larger cases are shown coarser, with a note).
        modality: ``"CT"`` or ``"MR"`` for the window presets (default: guessed per case).
        title: the page's heading.
        notes: extra lines for the top of the page.

    Returns:
        The path of ``report.html``.
    """
    from unetr.fsutil import atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = list(per_case) if per_case else list(case_images or {})
    notes = list(notes)
    volumes: Dict[str, Dict[str, Any]] = {}
    for case in names:
        data, problem = case_or_none(case, case_images, load_case, "not in the viewer")
        if problem:
            notes.append(problem)
        if data is None:
            continue
        image, ref, pred, spacing = data
        volumes[case] = case_volume(image, ref, pred, spacing, max_voxels=max_voxels, modality=modality)
        if volumes[case]["note"]:
            log.info("%s: %s", case, volumes[case]["note"])
    page = render_html(report_data(title=title, run_dir=run_dir, per_case=per_case, class_names=class_names,
                                   volumes=volumes, attention=attention, notes=notes))
    path = out / "report.html"
    atomic_write_text(path, page)
    log.info("%s: %.1f MB, %d case(s) in the viewer", path, len(page.encode()) / 1e6, len(volumes))
    return path


__all__ = ["write_html_report", "report_data", "package_version", "render_html", "model_facts", "training_payload",
           "validation_summary", "summary_payload", "cases_payload", "count_parameters", "run_config", "TABLE_METRICS"]
