"""Reorientation to RAS by flips and transposes only (views of the array, no interpolation).

An orientation is nibabel's ``(3, 2)`` array: row ``i`` is ``(output axis, flip)`` for input axis ``i``.

Example:
    >>> ornt = ras_ornt(geom.affine)                     # doctest: +SKIP
    >>> ras = apply_ornt(image, ornt)                    # (C, X, Y, Z) in the file's order -> RAS order
    >>> back = apply_ornt(ras, invert_ornt(ornt))        # the file's order again
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np


def ras_ornt(affine: np.ndarray) -> np.ndarray:
    """(3, 2) nibabel orientation that takes the array axes of ``affine`` to RAS (closest axes)."""
    import nibabel as nib

    return nib.orientations.io_orientation(np.asarray(affine, dtype=np.float64))


def apply_ornt(array: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Flip and transpose the last three axes of ``array`` by ``ornt`` (a view; any leading axes kept)."""
    lead = array.ndim - 3
    for ax, flip in enumerate(ornt[:, 1]):
        if flip == -1:
            array = np.flip(array, axis=lead + ax)
    order = list(range(lead)) + [lead + int(a) for a in np.argsort(ornt[:, 0])]
    return array.transpose(order)


def invert_ornt(ornt: np.ndarray) -> np.ndarray:
    """The orientation that undoes ``ornt``."""
    ornt = np.asarray(ornt)
    inv = np.zeros_like(ornt)
    for i, (out_ax, flip) in enumerate(ornt):
        inv[int(out_ax)] = (i, flip)
    return inv


def ornt_affine(affine: np.ndarray, ornt: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """The (4, 4) affine of the reoriented array, given the file's ``affine`` and spatial ``shape``."""
    import nibabel as nib

    return np.asarray(affine, dtype=np.float64) @ nib.orientations.inv_ornt_aff(ornt, tuple(shape))


def ras_shape_spacing(ornt: np.ndarray, shape: Sequence[int], spacing: Sequence[float]
                      ) -> Tuple[Tuple[int, int, int], Tuple[float, float, float]]:
    """The spatial shape and voxel spacing of the file's axes, permuted into RAS order by ``ornt``."""
    ras_shape, ras_spacing = [0, 0, 0], [0.0, 0.0, 0.0]
    for src, (dst, _) in enumerate(np.asarray(ornt)):
        ras_shape[int(dst)] = int(shape[src])  # input axis src becomes RAS axis dst
        ras_spacing[int(dst)] = float(spacing[src])
    return tuple(ras_shape), tuple(ras_spacing)  # type: ignore[return-value]


__all__ = ["ras_ornt", "apply_ornt", "invert_ornt", "ornt_affine", "ras_shape_spacing"]
