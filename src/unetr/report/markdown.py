"""``report.md``: the training curves, the metrics table and overlays of the best and worst cases.

The HTML report (:mod:`unetr.report.html`) shows all of this and more; the Markdown report stays for
readers that render Markdown (a repository, a notebook) and for its PNGs.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from unetr.metrics import METRICS, ClassScore, mean_foreground, mean_over_classes, summarize
from unetr.report.png import overlay_figure, plot_training_curves, read_metrics_csv
from unetr.report.volumes import case_or_none

log = logging.getLogger(__name__)

PathLike = Union[str, Path]


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
    """Cases sorted by their mean foreground Dice (:func:`unetr.metrics.mean_foreground`), best first; cases with
    no class scored (NaN) go last."""
    ranked = [(case, mean_foreground({c: s.dice for c, s in scores.items()})) for case, scores in per_case.items()]
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
    from unetr.fsutil import atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", ""]
    if run_dir is not None:
        run = Path(run_dir)
        if class_names is None:
            class_names = _run_class_names(run)
        lines += _training_section(run, out)
    if per_case:
        summary = summarize(per_case)
        k = max(summary) + 1 if summary else 2
        names = list(class_names) if class_names else [str(c) for c in range(k)]
        lines += ["## Metrics", "", f"{len(per_case)} case(s); mean ± std over cases, NaN (class absent from "
                  "both maps) left out; HD95 and ASD in mm.", "", _markdown_table(summary, names), ""]
        ranked = [r for r in rank_cases(per_case) if not math.isnan(r[1])]
        lines += ["### Cases by mean Dice", "", "| case | mean Dice |", "|---|---|"]
        lines += [f"| {c} | {d:.3f} |" for c, d in ranked] + [""]
        lines += _best_and_worst_section(out, ranked, names, n_show, case_images, load_case)
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _run_class_names(run: Path) -> Optional[Sequence[str]]:
    """The class names in the plan of a run's ``config.json`` (None without the file or the names)."""
    from unetr.settings import load_json

    if not (run / "config.json").is_file():
        return None
    plan = load_json(run / "config.json").get("plan") or {}
    return plan.get("class_names")


def _training_section(run: Path, out: Path) -> List[str]:
    """The report's lines on a run's training (its curves drawn into ``out``); none without ``metrics.csv``."""
    csv_path = run / "metrics.csv"
    if not csv_path.is_file():
        log.warning("%s has no metrics.csv; no training curves", run)
        return []
    rows = read_metrics_csv(csv_path)
    plot_training_curves(csv_path, out / "training_curves.png")
    lines = ["## Training", "", f"Run: `{run}`, {len(rows)} logged rows, last iteration "
             f"{int(rows[-1]['iteration'])}.", "", "![training curves](training_curves.png)", ""]
    vals = [r["val_mean_dice"] for r in rows if not math.isnan(r.get("val_mean_dice", math.nan))]
    if vals:
        lines += [f"Best validation mean Dice: **{max(vals):.4f}**.", ""]
    return lines


def _best_and_worst_section(out: Path, ranked: List[Tuple[str, float]], names: Sequence[str], n_show: int,
                            case_images, load_case) -> List[str]:
    """The report's lines showing the ``n_show`` best and worst of the ``ranked`` cases, drawn into ``out``
    (see :func:`make_report` for ``case_images`` and ``load_case``); none when no case could be drawn."""
    show: List[Tuple[str, str]] = [(c, "best") for c, _ in ranked[:n_show]]
    show += [(c, "worst") for c, _ in ranked[::-1][:n_show] if c not in {s for s, _ in show}]
    drawn = []
    for case, kind in show:
        data, _ = case_or_none(case, case_images, load_case, "no picture")
        if data is None:
            continue
        image, ref, pred, spacing = data
        png = overlay_figure(image, out / f"{case}.png", reference=ref, prediction=pred, spacing=spacing,
                             class_names=names, title=f"{case} ({kind}, mean Dice "
                             f"{dict(ranked)[case]:.3f})")
        drawn.append((case, kind, png.name))
    if not drawn:
        return []
    return ["## Best and worst cases", ""] + [f"**{case}** ({kind})\n\n![{case}]({png})\n" for case, kind, png in drawn]


__all__ = ["make_report", "rank_cases"]
