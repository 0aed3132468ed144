import numpy as np
import pytest

from unetr.grid import grid_mismatch

CT = np.array([[-0.78, 0, 0, 200.0], [0, -0.78, 0, 180.0], [0, 0, 2.5, -400.0], [0, 0, 0, 1]])


def test_float_noise_of_real_headers_passes():
    noisy = CT + np.random.default_rng(0).normal(0, 1e-5, CT.shape) * (np.arange(4) < 3)[:, None]
    assert grid_mismatch((512, 512, 120), CT, (512, 512, 120), noisy) is None


@pytest.mark.parametrize("change, words", [
    (lambda a: a @ np.diag([-1.0, 1, 1, 1]), "apart"),            # a flipped x axis
    (lambda a: a + np.array([[0, 0, 0, 0.2]] * 3 + [[0] * 4]), "apart"),  # a shift of a quarter voxel
    (lambda a: a @ np.diag([1.0, 1, 1.01, 1]), "apart"),          # another z spacing
])
def test_real_differences_are_caught(change, words):
    assert words in grid_mismatch((512, 512, 120), CT, (512, 512, 120), change(CT))


def test_shape_and_channel_axes():
    assert "shape" in grid_mismatch((4, 4, 4), np.eye(4), (4, 4, 5), np.eye(4))
    assert grid_mismatch((4, 4, 4, 2), np.eye(4), (4, 4, 4), np.eye(4)) is None
