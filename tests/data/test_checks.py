"""The one grid rule and the one label rule."""

import numpy as np
import pytest

from unetr.data.checks import check_labels, check_same_grid, grid_problem, label_problem
from unetr.data.io import Geometry
from unetr.errors import DataError

SHAPE = (32, 32, 48)
CT = np.array([[-0.78, 0, 0, 199.6], [0, -0.78, 0, 180.2], [0, 0, 2.5, -412.0], [0, 0, 0, 1]])  # a real CT's


@pytest.mark.parametrize("affine,ok_mm,bad_mm", [(CT, 0.05, 0.1), (np.eye(4), 0.05, 0.2)])
def test_grid_problem_words_the_one_grid_rule(affine, ok_mm, bad_mm):
    """unetr.grid's rule (a tenth of the smallest voxel: 0.078 mm for this CT), worded for files."""
    g = Geometry.from_affine(affine, SHAPE)
    for axis in range(3):
        near, far = affine.copy(), affine.copy()
        near[axis, 3] += ok_mm
        far[axis, 3] -= bad_mm
        assert grid_problem(Geometry.from_affine(near, SHAPE), g) is None
        assert grid_problem(g, Geometry.from_affine(near, SHAPE)) is None  # symmetric
        assert g.same_grid(Geometry.from_affine(near, SHAPE))
        msg = grid_problem(Geometry.from_affine(far, SHAPE), g)
        assert msg and msg.startswith("label affine differs from the image's: the affines place voxels")
        assert not g.same_grid(Geometry.from_affine(far, SHAPE))
        with pytest.raises(DataError, match="^l.nii.gz: label affine differs"):
            check_same_grid("l.nii.gz", Geometry.from_affine(far, SHAPE), g)
    other = Geometry.from_affine(affine, (32, 32, 47))
    assert grid_problem(other, g, what="channel", of="a's") == "channel shape (32, 32, 47) differs from a's (32, 32, 48)"


def test_one_label_rule():
    lab = np.zeros((4, 5, 6), np.uint8)
    assert label_problem(lab, 2) is None and label_problem(lab) is None and label_problem(np.zeros(0), 2) is None
    lab[0, 0, :3] = (7, 5, 7)
    assert label_problem(lab, 3) == "label values [5, 7] outside the 3 declared classes (0..2)"
    assert label_problem(lab, 8) is None and label_problem(lab) is None
    assert label_problem([0, 1, 4], 4) == "label values [4] outside the 4 declared classes (0..3)"  # values present
    many = np.arange(-3, 20)
    assert label_problem(many, 4) == ("label values [-3, -2, -1, 4, 5, 6, 7, 8, 9, 10, ...] outside the 4 declared "
                                      "classes (0..3)")
    assert label_problem(many) == "label map has negative values [-3, -2, -1]"
    assert label_problem(np.array([0.0, 1.0, 2.5])) == "label map has non-integer values (e.g. 2.5)"
    assert label_problem(np.array([0.0, 1.0, 2.0]), 3) is None  # integral floats are labels
    assert "data type complex128" in label_problem(np.zeros(3, complex))
    with pytest.raises(DataError, match="^case_1.nii.gz: label values \\[5, 7\\] outside"):
        check_labels("case_1.nii.gz", lab, 3)
