"""The grid rule and the label rule as data/ applies them to files: each says what is wrong, naming both sides.

Grids: two volumes lie on one voxel grid by :func:`unetr.grid.grid_mismatch` (the package's one rule: shapes
equal, voxel centres within a tenth of a voxel); :func:`grid_problem` words it for an image and its label,
the channel files of an image, a prediction and its input. Labels: integers in ``[0, num_classes)``
(:func:`unetr.labels.label_problem`): label files as they are read and written, label maps before preprocessing, the
class values a fingerprint found. Each has a ``check_*`` twin that raises :class:`unetr.errors.DataError`
naming the file; ``unetr check`` collects the problems instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence, Union

import numpy as np

from unetr.errors import DataError
from unetr.grid import grid_mismatch
from unetr.labels import label_problem

if TYPE_CHECKING:
    from unetr.data.io import Geometry


def grid_problem(geom: Geometry, reference: Geometry, what: str = "label", of: str = "the image's") -> Optional[str]:
    """Why ``geom`` is not on the voxel grid of ``reference`` (:func:`unetr.grid.grid_mismatch`), or ``None``.

    Args:
        what / of: name the two in the message (``"label affine differs from the image's: ..."``).
    """
    if tuple(geom.shape) != tuple(reference.shape):
        return f"{what} shape {tuple(geom.shape)} differs from {of} {tuple(reference.shape)}"
    why = grid_mismatch(geom.shape, geom.affine, reference.shape, reference.affine)
    return None if why is None else f"{what} affine differs from {of}: {why}"


def check_same_grid(path: Union[str, Path], geom: Geometry, reference: Geometry, what: str = "label",
                    of: str = "the image's") -> None:
    """Raise :class:`DataError` naming ``path`` when :func:`grid_problem` finds one."""
    problem = grid_problem(geom, reference, what, of)
    if problem:
        raise DataError(f"{path}: {problem}")


def check_labels(path: Union[str, Path], values: Union[np.ndarray, Sequence[int]],
                 num_classes: Optional[int] = None) -> None:
    """Raise :class:`DataError` naming ``path`` when :func:`label_problem` finds one."""
    problem = label_problem(values, num_classes)
    if problem:
        raise DataError(f"{path}: {problem}")


__all__ = ["grid_problem", "check_same_grid", "label_problem", "check_labels"]
