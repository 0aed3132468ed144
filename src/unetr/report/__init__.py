"""Reports of a run and its predictions: PNG pictures, ``report.md`` and the interactive ``report.html``.

- :mod:`~unetr.report.palette`: the class colours, shared by the PNGs and the page.
- :mod:`~unetr.report.png`: overlays of image, reference and prediction; training curves (matplotlib).
- :mod:`~unetr.report.markdown`: ``report.md`` (curves, metrics table, best and worst cases).
- :mod:`~unetr.report.volumes`: cases read in RAS and packed for the page (voxel budget, bytes, zlib).
- :mod:`~unetr.report.attention`: a run's transformer attention on one case, packed for the page.
- :mod:`~unetr.report.html`: ``report.html``, one self-contained page (``assets/``: template, CSS, script).
- :mod:`~unetr.report.folders`: both reports from the pipeline's folders (what ``unetr report`` runs).
"""

from unetr.report.attention import attention_for_case
from unetr.report.folders import report_from_folders
from unetr.report.html import report_data, write_html_report
from unetr.report.markdown import make_report, rank_cases
from unetr.report.palette import DISAGREEMENT, PALETTE, class_colors, class_hex
from unetr.report.png import focus_point, overlay_figure, plot_training_curves, read_metrics_csv
from unetr.report.volumes import DEFAULT_MAX_VOXELS, case_volume, load_case_from_files

__all__ = ["overlay_figure", "plot_training_curves", "make_report", "read_metrics_csv", "rank_cases",
           "focus_point", "class_colors", "class_hex", "PALETTE", "DISAGREEMENT", "load_case_from_files",
           "case_volume", "write_html_report", "report_data", "attention_for_case", "DEFAULT_MAX_VOXELS",
           "report_from_folders"]
