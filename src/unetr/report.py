"""Pictures and a Markdown report: overlays of image, reference and prediction; training curves.

Everything is drawn with matplotlib's Agg backend (no display needed) and written atomically.

- :func:`overlay_figure` draws the axial, coronal and sagittal planes through the largest structure.
- :func:`plot_training_curves` draws a run's ``metrics.csv`` (loss, learning rate, validation Dice).
- :func:`make_report` puts a run's curves, the metrics table and the best and worst cases together in
  ``report.md``.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from unetr.fsutil import atomic_path
from unetr.metrics import METRICS, ClassScore, mean_over_classes, summarize

log = logging.getLogger(__name__)

PathLike = Union[str, Path]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: PathLike, dpi: int = 100) -> Path:
    path = Path(path)
    try:
        with atomic_path(path, ".png") as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        _plt().close(fig)
    return path


def class_colors(num_classes: int) -> np.ndarray:
    """RGBA colours ``(K, 4)``: background transparent, then tab20 colours."""
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    colors = np.array([cmap(i % 20) for i in range(max(num_classes, 1))], dtype=np.float64)
    colors[0] = (0, 0, 0, 0)
    return colors


def focus_point(*label_maps: Optional[np.ndarray]) -> Tuple[int, int, int]:
    """The centre of mass of the largest foreground class of the first non-empty map (else the centre)."""
    from scipy import ndimage

    for lab in label_maps:
        if lab is None or not lab.any():
            continue
        counts = np.bincount(lab.ravel().astype(np.int64))
        counts[0] = 0
        biggest = int(counts.argmax())
        com = ndimage.center_of_mass(lab == biggest)
        return tuple(int(round(c)) for c in com)  # type: ignore[return-value]
    shape = next((m.shape for m in label_maps if m is not None), (1, 1, 1))
    return tuple(s // 2 for s in shape)  # type: ignore[return-value]


def _planes(vol: np.ndarray, point: Sequence[int]) -> List[np.ndarray]:
    """Axial (z), coronal (y) and sagittal (x) slices through ``point``, transposed for ``imshow``."""
    x, y, z = point
    return [vol[:, :, z].T, vol[:, y, :].T, vol[x, :, :].T]


def overlay_figure(
    image: np.ndarray,
    path: PathLike,
    *,
    reference: Optional[np.ndarray] = None,
    prediction: Optional[np.ndarray] = None,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    class_names: Optional[Sequence[str]] = None,
    title: str = "",
    window: Optional[Tuple[float, float]] = None,
    alpha: float = 0.45,
) -> Path:
    """PNG of three planes through the largest structure: the image, with the reference and the prediction.

    Args:
        image: ``(X, Y, Z)`` (or ``(C, X, Y, Z)``, first channel shown) in RAS orientation.
        path: the PNG to write.
        reference: ``(X, Y, Z)`` label map, or None.
        prediction: ``(X, Y, Z)`` label map, or None.
        spacing: voxel size (mm), for the aspect ratio.
        class_names: legend entries, background first.
        title: figure title.
        window: grey-level range (default: 1st to 99th percentile).
        alpha: opacity of the labels.

    Returns:
        ``path``.
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    plt = _plt()
    img = np.asarray(image)
    if img.ndim == 4:
        img = img[0]
    if img.ndim != 3:
        raise ValueError(f"image must be (X, Y, Z) or (C, X, Y, Z), got shape {img.shape}")
    for name, lab in (("reference", reference), ("prediction", prediction)):
        if lab is not None and lab.shape != img.shape:
            raise ValueError(f"{name} shape {lab.shape} differs from image shape {img.shape}")
    maps = [m for m in (reference, prediction) if m is not None]
    k = max([int(m.max()) + 1 for m in maps] + [len(class_names) if class_names else 2])
    colors = class_colors(k)
    cmap = ListedColormap(colors)
    point = focus_point(reference, prediction)
    lo, hi = window if window is not None else np.percentile(img, [1, 99])
    sx, sy, sz = (float(s) for s in spacing)
    aspects = [sy / sx, sz / sx, sz / sy]  # rows of each plane over its columns
    columns = [("image", None)] + [(n, m) for n, m in (("reference", reference), ("prediction", prediction))
                                   if m is not None]
    fig, axes = plt.subplots(3, len(columns), figsize=(3.2 * len(columns), 9.0), squeeze=False)
    plane_names = ("axial", "coronal", "sagittal")
    img_planes = _planes(img, point)
    for j, (cname, lab) in enumerate(columns):
        lab_planes = _planes(lab, point) if lab is not None else [None] * 3
        for i in range(3):
            ax = axes[i, j]
            ax.imshow(img_planes[i], cmap="gray", vmin=lo, vmax=hi, origin="lower", aspect=aspects[i],
                      interpolation="nearest")
            if lab_planes[i] is not None:
                masked = np.ma.masked_equal(lab_planes[i], 0)
                ax.imshow(masked, cmap=cmap, vmin=-0.5, vmax=k - 0.5, alpha=alpha, origin="lower",
                          aspect=aspects[i], interpolation="nearest")
            if i < 2:
                ax.invert_xaxis()  # radiological view: the patient's right on the left
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(cname)
            if j == 0:
                ax.set_ylabel(plane_names[i])
    present = sorted({int(c) for m in maps for c in np.unique(m) if c != 0})
    if present:
        names = class_names or [str(c) for c in range(k)]
        handles = [Patch(color=colors[c], label=names[c] if c < len(names) else str(c)) for c in present]
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.05 if present else 0, 1, 0.97))
    return _save(fig, path)


def read_metrics_csv(path: PathLike) -> List[Dict[str, float]]:
    """A run's ``metrics.csv`` as rows of floats (empty cells are NaN)."""
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            rows.append({k: (float(v) if v not in ("", None) else math.nan) for k, v in r.items()})
    if rows and "iteration" not in rows[0]:
        raise ValueError(f"{path}: not a metrics.csv (no 'iteration' column)")
    return rows


def plot_training_curves(metrics_csv: PathLike, path: PathLike) -> Path:
    """PNG of a run's training loss, learning rate and validation Dice (per class and mean) by iteration.

    Args:
        metrics_csv: columns ``iteration, train_loss, lr, val_dice_<class>..., val_mean_dice, seconds``.
        path: the PNG to write.
    """
    plt = _plt()
    rows = read_metrics_csv(metrics_csv)
    if not rows:
        raise ValueError(f"{metrics_csv}: no rows")

    def series(col: str) -> Tuple[List[float], List[float]]:
        pts = [(r["iteration"], r[col]) for r in rows if col in r and not math.isnan(r[col])]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, (a, b, c) = plt.subplots(1, 3, figsize=(14, 3.8))
    a.plot(*series("train_loss"), color="tab:blue")
    a.set(xlabel="iteration", ylabel="loss", title="training loss")
    b.plot(*series("lr"), color="tab:orange")
    b.set(xlabel="iteration", ylabel="learning rate", title="learning rate")
    dice_cols = [k for k in rows[0] if k.startswith("val_dice_")]
    for col in dice_cols:
        if col.endswith("background"):
            continue
        c.plot(*series(col), marker=".", alpha=0.6, label=col[len("val_dice_"):])
    if "val_mean_dice" in rows[0]:
        c.plot(*series("val_mean_dice"), marker="o", color="black", label="mean")
    c.set(xlabel="iteration", ylabel="Dice", title="validation Dice", ylim=(0, 1))
    if dice_cols:
        c.legend(fontsize=7, loc="lower right")
    for ax in (a, b, c):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def _markdown_table(summary: Mapping[int, Mapping[str, Mapping[str, float]]], class_names: Sequence[str]) -> str:
    head = "| class | " + " | ".join(METRICS) + " | n |"
    lines = [head, "|" + "---|" * (len(METRICS) + 2)]

    def cell(s: Mapping[str, float]) -> str:
        return "–" if math.isnan(s["mean"]) else f"{s['mean']:.3f} ± {s['std']:.3f}"

    for c, s in summary.items():
        name = class_names[c] if c < len(class_names) else str(c)
        lines.append(f"| {name} | " + " | ".join(cell(s[m]) for m in METRICS) + f" | {s['dice']['n']} |")
    lines.append("| **mean** | " + " | ".join(
        "–" if math.isnan(v := mean_over_classes(summary, m)) else f"**{v:.3f}**" for m in METRICS) + " | |")
    return "\n".join(lines)


def rank_cases(per_case: Mapping[str, Mapping[int, ClassScore]]) -> List[Tuple[str, float]]:
    """Cases sorted by their mean foreground Dice, best first (cases with no class scored go last)."""
    def mean_dice(scores: Mapping[int, ClassScore]) -> float:
        v = [s.dice for s in scores.values() if not math.isnan(s.dice)]
        return float(np.mean(v)) if v else math.nan

    ranked = [(case, mean_dice(s)) for case, s in per_case.items()]
    return sorted(ranked, key=lambda t: (math.isnan(t[1]), -t[1] if not math.isnan(t[1]) else 0.0))


def make_report(
    out_dir: PathLike,
    *,
    run_dir: Optional[PathLike] = None,
    per_case: Optional[Mapping[str, Mapping[int, ClassScore]]] = None,
    class_names: Optional[Sequence[str]] = None,
    case_images: Optional[Mapping[str, Tuple[np.ndarray, Optional[np.ndarray], Optional[np.ndarray],
                                             Sequence[float]]]] = None,
    load_case=None,
    n_show: int = 2,
    title: str = "unetr report",
) -> Path:
    """Write ``report.md`` with the training curves, the metrics table and the best and worst cases.

    Args:
        out_dir: the report folder (created).
        run_dir: a run directory; its ``metrics.csv`` gives the curves and its ``config.json`` the class names.
        per_case: ``{case: {class: ClassScore}}`` (from :func:`unetr.metrics.evaluate_case` or a CSV).
        class_names: names of the classes, background first.
        case_images: ``{case: (image, reference, prediction, spacing)}`` RAS arrays for the pictures.
        load_case: ``case -> (image, reference, prediction, spacing)`` or None, called for the cases shown
            when ``case_images`` lacks them (so only those are read).
        n_show: how many best and how many worst cases to draw.
        title: the report's heading.

    Returns:
        The path of ``report.md``.
    """
    from unetr.config import load_json
    from unetr.fsutil import atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", ""]
    if run_dir is not None:
        run = Path(run_dir)
        if class_names is None and (run / "config.json").is_file():
            plan = load_json(run / "config.json").get("plan") or {}
            class_names = plan.get("class_names")
        csv_path = run / "metrics.csv"
        if csv_path.is_file():
            rows = read_metrics_csv(csv_path)
            plot_training_curves(csv_path, out / "training_curves.png")
            lines += ["## Training", "", f"Run: `{run}`, {len(rows)} logged rows, last iteration "
                      f"{int(rows[-1]['iteration'])}.", "", "![training curves](training_curves.png)", ""]
            vals = [r["val_mean_dice"] for r in rows if not math.isnan(r.get("val_mean_dice", math.nan))]
            if vals:
                lines += [f"Best validation mean Dice: **{max(vals):.4f}**.", ""]
        else:
            log.warning("%s has no metrics.csv; no training curves", run)
    if per_case:
        summary = summarize(per_case)
        k = max(summary) + 1 if summary else 2
        names = list(class_names) if class_names else [str(c) for c in range(k)]
        lines += ["## Metrics", "", f"{len(per_case)} case(s); mean ± std over cases, NaN (class absent from "
                  "both maps) left out; HD95 and ASD in mm.", "", _markdown_table(summary, names), ""]
        ranked = [r for r in rank_cases(per_case) if not math.isnan(r[1])]
        lines += ["### Cases by mean Dice", "", "| case | mean Dice |", "|---|---|"]
        lines += [f"| {c} | {d:.3f} |" for c, d in ranked] + [""]
        show: List[Tuple[str, str]] = [(c, "best") for c, _ in ranked[:n_show]]
        show += [(c, "worst") for c, _ in ranked[::-1][:n_show] if c not in {s for s, _ in show}]
        drawn = []
        for case, kind in show:
            data = (case_images or {}).get(case)
            if data is None and load_case is not None:
                try:
                    data = load_case(case)
                except Exception as e:  # noqa: BLE001 - a missing picture must not sink the report
                    log.warning("%s: no picture (%s)", case, e)
            if data is None:
                continue
            image, ref, pred, spacing = data
            png = overlay_figure(image, out / f"{case}.png", reference=ref, prediction=pred, spacing=spacing,
                                 class_names=names, title=f"{case} ({kind}, mean Dice "
                                 f"{dict(ranked)[case]:.3f})")
            drawn.append((case, kind, png.name))
        if drawn:
            lines += ["## Best and worst cases", ""]
            lines += [f"**{case}** ({kind})\n\n![{case}]({png})\n" for case, kind, png in drawn]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


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


__all__ = ["overlay_figure", "plot_training_curves", "make_report", "read_metrics_csv", "rank_cases",
           "focus_point", "class_colors", "load_case_from_files"]
