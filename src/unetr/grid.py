"""The one rule for "these two volumes lie on the same voxel grid" (imports numpy only).

Two volumes share a grid when their spatial shapes are equal and every voxel centre lands within a tenth
of a voxel of the same point in the world under both affines. Checking the eight corners is enough: an
affine map's largest displacement over a box is at a corner. A tenth of a voxel forgives what float32
headers and qform/sform round trips do to real CTs (1e-5..1e-3 mm) and still catches flips, swapped axes,
shifts and other spacings. Used by ``unetr check``, preprocessing, multi-channel reads, prediction outputs
and evaluation alike.
"""

from __future__ import annotations

import itertools
from typing import Optional, Sequence

import numpy as np

TOLERANCE_VOXELS = 0.1


def _corners(shape: Sequence[int]) -> np.ndarray:
    ends = [(0, max(int(n) - 1, 0)) for n in shape[:3]]
    return np.array([[*c, 1.0] for c in itertools.product(*ends)], dtype=np.float64).T  # (4, 8)


def grid_mismatch(shape_a: Sequence[int], affine_a: np.ndarray, shape_b: Sequence[int], affine_b: np.ndarray,
                  tolerance_voxels: float = TOLERANCE_VOXELS) -> Optional[str]:
    """Why two grids differ, in words, or None when they are the same grid.

    Args:
        shape_a / shape_b: spatial shapes (X, Y, Z); extra trailing (channel) axes are ignored.
        affine_a / affine_b: 4x4 voxel-to-world affines in mm.
        tolerance_voxels: the largest distance between corresponding voxel centres, in units of the
            smallest voxel edge.
    """
    if tuple(int(n) for n in shape_a[:3]) != tuple(int(n) for n in shape_b[:3]):
        return f"shape {tuple(shape_a[:3])} differs from {tuple(shape_b[:3])}"
    a, b = np.asarray(affine_a, np.float64), np.asarray(affine_b, np.float64)
    corners = _corners(shape_a)
    gap = float(np.linalg.norm((a @ corners - b @ corners)[:3], axis=0).max())
    voxel = float(min(np.linalg.norm(a[:3, :3], axis=0).min(), np.linalg.norm(b[:3, :3], axis=0).min()))
    if not gap <= tolerance_voxels * voxel:
        return f"the affines place voxels up to {gap:.3g} mm apart (more than {tolerance_voxels:g} voxel)"
    return None


__all__ = ["TOLERANCE_VOXELS", "grid_mismatch"]
