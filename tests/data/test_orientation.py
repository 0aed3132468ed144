"""Reorientation to RAS: views only, exact inverse, and the reoriented affine, shape and spacing agree."""

import numpy as np
import pytest

from unetr.data.orientation import apply_ornt, invert_ornt, ornt_affine, ras_ornt, ras_shape_spacing

SHAPE = (5, 6, 7)  # non-cubic: axis mix-ups show


def _affine(perm, flips, spacing=(1.5, 0.7, 3.0)):
    a = np.zeros((4, 4))
    for i, (ax, f, s) in enumerate(zip(perm, flips, spacing)):
        a[ax, i] = f * s
    a[:3, 3] = (10.0, -20.0, 30.0)
    a[3, 3] = 1.0
    return a


@pytest.mark.parametrize("perm,flips", [((0, 1, 2), (1, 1, 1)), ((1, 0, 2), (-1, 1, -1)), ((2, 0, 1), (1, -1, -1))])
def test_reorientation_is_exact_and_consistent(perm, flips):
    affine = _affine(perm, flips)
    image = np.arange(2 * np.prod(SHAPE)).reshape(2, *SHAPE)  # a leading channel axis is kept
    ornt = ras_ornt(affine)
    ras = apply_ornt(image, ornt)
    assert np.shares_memory(ras, image)  # a view: no copy, no interpolation
    np.testing.assert_array_equal(apply_ornt(ras, invert_ornt(ornt)), image)
    shape, spacing = ras_shape_spacing(ornt, SHAPE, (1.5, 0.7, 3.0))
    assert ras.shape == (2, *shape)
    ras_affine = ornt_affine(affine, ornt, SHAPE)
    np.testing.assert_allclose(np.sqrt((ras_affine[:3, :3] ** 2).sum(0)), spacing)
    assert np.all(np.diag(ras_affine)[:3] > 0)  # R, A, S: each axis runs along its world axis, forwards
    # the same voxel is at the same place in the world on both grids
    idx = np.array([1, 2, 3])
    ras_idx = np.argwhere(ras[0] == image[0][tuple(idx)])[0]
    np.testing.assert_allclose(ras_affine[:3, :3] @ ras_idx + ras_affine[:3, 3], affine[:3, :3] @ idx + affine[:3, 3])
