"""Pictures drawn with matplotlib's Agg backend (no display needed), written atomically.

- :func:`overlay_figure` draws the axial, coronal and sagittal planes through the largest structure, in the
  viewer's orientation (patient's right on the left, anterior and superior up, sagittal seen from the left)
  and the viewer's class colours (:mod:`unetr.report.palette`).
- :func:`plot_training_curves` draws a run's ``metrics.csv`` (loss, learning rate, validation Dice).
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from unetr.fsutil import atomic_path
from unetr.report.palette import class_colors, class_hex

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
    """Axial (z), coronal (y) and sagittal (x) slices through ``point``, transposed for ``imshow`` (rows are
    the second axis of each plane: y, z, z; columns the first: x, x, y)."""
    x, y, z = point
    return [vol[:, :, z].T, vol[:, y, :].T, vol[x, :, :].T]


def shown_image(image, reference=None, prediction=None) -> np.ndarray:
    """The ``(X, Y, Z)`` volume a picture or the page shows of ``image`` (a ``(C, X, Y, Z)`` image shows its
    first channel), checked against the shapes of the label maps drawn over it (None: no map)."""
    img = np.asarray(image)
    if img.ndim == 4:
        img = img[0]
    if img.ndim != 3:
        raise ValueError(f"image must be (X, Y, Z) or (C, X, Y, Z), got shape {img.shape}")
    for name, lab in (("reference", reference), ("prediction", prediction)):
        if lab is not None and tuple(lab.shape) != img.shape:
            raise ValueError(f"{name} shape {tuple(lab.shape)} differs from image shape {img.shape}")
    return img


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
    img = shown_image(image, reference, prediction)
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
            ax.invert_xaxis()  # the patient's right on the left (axial, coronal); anterior on the left (sagittal)
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
    colors = class_hex(len(dice_cols) + 1)
    for i, col in enumerate(dice_cols):
        if col.endswith("background"):
            continue
        c.plot(*series(col), marker=".", alpha=0.8, color=colors[i] if i else None, label=col[len("val_dice_"):])
    if "val_mean_dice" in rows[0]:
        c.plot(*series("val_mean_dice"), marker="o", color="black", label="mean")
    c.set(xlabel="iteration", ylabel="Dice", title="validation Dice", ylim=(0, 1))
    if dice_cols:
        c.legend(fontsize=7, loc="lower right")
    for ax in (a, b, c):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


__all__ = ["overlay_figure", "plot_training_curves", "read_metrics_csv", "focus_point"]
