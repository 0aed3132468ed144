"""Resampling: grid sizes, tiny exact cases, and the one-hot label vote against dense interpolation."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import unetr.data.resample as P
from unetr.data.resample import (
    linear_taps,
    monai_shape,
    resample_image,
    resample_label,
    resample_label_onehot,
    resample_nearest,
    target_shape,
)


def test_grid_sizes():
    assert target_shape((10, 20, 31), (1.0, 1.0, 2.0), (2.0, 2.0, 2.0)) == (5, 10, 31)
    assert target_shape((3, 3, 3), (1.0, 1.0, 1.0), (10.0, 10.0, 10.0)) == (1, 1, 1)  # at least one voxel
    # MONAI's Spacingd: first to last voxel centre at the target spacing, plus one
    # (9 / 2 + 1 = 5.5 and 19 / 2 + 1 = 10.5 round half to even, as numpy and MONAI do)
    assert monai_shape((10, 20, 31), (1.0, 1.0, 2.0), (2.0, 2.0, 2.0)) == (6, 10, 31)


def test_tiny_exact_cases():
    a = np.arange(2 * 4 * 6, dtype=np.int16).reshape(1, 2, 4, 6)  # non-cubic: axis mix-ups show
    up = resample_nearest(a, (4, 4, 3))
    assert up.shape == (1, 4, 4, 3) and up.dtype == np.int16
    # half-voxel grid: output i samples input (i + 0.5) * n_in / n_out - 0.5
    np.testing.assert_array_equal(up[0, :, 0, 0], [1, 1, 25, 25])  # x doubled: each input plane twice
    np.testing.assert_array_equal(up[0, 0, 0], [1, 3, 5])  # z halved: inputs 1, 3, 5 (nearest to 0.5, 2.5, 4.5)
    i0, i1, w = linear_taps(2, 4)  # half-voxel grid: samples at -0.25 (clamped), 0.25, 0.75, 1.25
    np.testing.assert_array_equal(i0, [0, 0, 0, 1])
    np.testing.assert_array_equal(i1, [1, 1, 1, 1])  # the last sample: both taps on the last voxel (clamped)
    np.testing.assert_allclose(w, [0.0, 0.25, 0.75, 0.25])
    lin = resample_image(a.astype(np.float32), (4, 4, 6), order=1)
    np.testing.assert_allclose(lin[0, :, 0, 0], [0, 6, 18, 24])  # torch trilinear, align_corners=False
    assert resample_image(a.astype(np.float32), (4, 4, 6), order=0).dtype == np.float32


@pytest.mark.parametrize("mode", ["onehot", "nearest"])
def test_label_resampling_keeps_integer_maps(mode):
    label = np.zeros((8, 6, 10), np.uint8)
    label[2:6, 1:5, 3:8] = 3
    out = resample_label(label, (16, 12, 5), mode)
    assert out.shape == (16, 12, 5) and out.dtype == np.uint8 and set(np.unique(out)) == {0, 3}
    np.testing.assert_array_equal(resample_label(label, label.shape, mode), label)  # the same grid: unchanged


@pytest.mark.parametrize("shape", [(40, 33, 55), (61, 50, 40), (90, 20, 41)])
def test_onehot_resampling_equals_dense_onehot_interpolation(shape):
    """The boundary-only vote equals resampling every class mask with torch's trilinear and taking argmax."""
    from scipy import ndimage

    noise = ndimage.gaussian_filter(np.random.default_rng(0).normal(size=(60, 50, 40)), 4)
    label = (np.clip(np.round(noise * 40), -2, 3) + 2).astype(np.uint8)  # 6 classes, smooth blobs
    src = torch.from_numpy(label)
    masks = torch.stack([(src == k).float() for k in range(6)])[None]  # (1, K, X, Y, Z)
    dense = F.interpolate(masks, size=shape, mode="trilinear", align_corners=False)[0].argmax(0).numpy()
    np.testing.assert_array_equal(resample_label_onehot(label, shape), dense)


def test_onehot_resampling_of_a_fragmented_map_is_the_same_in_slabs(monkeypatch):
    """Every voxel on a boundary (an untrained network's output): the vote runs in slabs of output planes to
    bound memory, and the slabs change nothing."""
    label = np.random.default_rng(1).integers(0, 5, size=(30, 70, 60)).astype(np.uint8)
    shape = (50, 130, 110)
    monkeypatch.setattr(P, "_DENSE_FRACTION", 2.0)  # the boundary vote, whatever the fraction
    monkeypatch.setattr(P, "_VOTE_VOXELS", 10**9)
    whole = P.resample_label_onehot(label, shape)
    monkeypatch.setattr(P, "_VOTE_VOXELS", 3 * 130 * 110 + 7)  # slabs of 3 planes, the last one shorter
    np.testing.assert_array_equal(P.resample_label_onehot(label, shape), whole)
    assert len(np.unique(whole)) == 5
    # the dense per-class path, taken when most voxels are on a boundary: the same vote, up to exact ties
    # (random labels tie often; float32 sums in another order may break them the other way)
    monkeypatch.setattr(P, "_DENSE_FRACTION", 0.3)
    dense = P.resample_label_onehot(label, shape)
    np.testing.assert_array_equal(dense, P._dense_vote(label, shape))
    masks = torch.stack([torch.from_numpy(label == k).double() for k in range(5)])[None]
    scores = F.interpolate(masks, size=shape, mode="trilinear", align_corners=False)[0]  # float64 reference
    for result in (dense, whole):
        chosen = scores.gather(0, torch.from_numpy(result.astype(np.int64))[None])[0]
        assert (scores.max(0).values - chosen).max().item() < 1e-6  # every pick is a (tied) maximum
    assert (dense == whole).mean() > 0.99
