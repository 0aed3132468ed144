"""The one rule for label values: integers in ``[0, num_classes)`` (imports numpy only).

``data/checks.py`` words it for files (``check_labels`` raises naming the file), ``unetr check`` collects
its problems, and evaluation and training validation apply it to label maps in memory.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np


def _listed(values: np.ndarray, most: int = 10) -> str:
    shown = [int(v) if float(v).is_integer() else float(v) for v in values[:most]]
    return str(shown)[:-1] + (", ...]" if len(values) > most else "]")


def label_problem(values: Union[np.ndarray, Sequence[int]], num_classes: Optional[int] = None) -> Optional[str]:
    """What is wrong with the values of a label map, or ``None``: labels are integers in ``[0, num_classes)``
    (``[0, inf)`` when ``num_classes`` is not given).

    The one label-range rule, for label files, label maps in memory and the class values a fingerprint
    found. Cheap when the values are fine (min and max); the offending values are listed otherwise.

    Args:
        values: a label map of any shape, or the label values present.
        num_classes: K, background included.
    """
    a = np.asarray(values)
    if a.size == 0:
        return None
    if a.dtype.kind == "f":
        frac = a != np.round(a)
        if frac.any():
            return f"label map has non-integer values (e.g. {a[frac].flat[0]:g})"
    elif a.dtype.kind not in "iub":
        return f"label map has data type {a.dtype}, expected integers"
    lo, hi = a.min(), a.max()
    if num_classes is None:
        if lo < 0:
            return f"label map has negative values {_listed(np.unique(a[a < 0]))}"
        return None
    if lo < 0 or hi >= num_classes:
        bad = np.unique(a[(a < 0) | (a >= num_classes)])
        return f"label values {_listed(bad)} outside the {num_classes} declared classes (0..{num_classes - 1})"
    return None


__all__ = ["label_problem"]
