"""Patch sampling (against MONAI's RandCropByPosNegLabel) and batched augmentation."""

import numpy as np
import pytest
import torch

from unetr.data.sampling import augment, crop_at, pad_to_roi, rot90_note, sample_centres, sample_crops

SHAPE = (48, 40, 32)
ROI = (16, 16, 16)


def _case(fg=True):
    image = np.random.default_rng(0).normal(size=(2, *SHAPE)).astype(np.float32)
    label = np.zeros(SHAPE, np.uint8)
    if fg:
        label[20:28, 16:24, 12:20] = 1  # 512 voxels
        label[30:32, 18:20, 14:16] = 2  # 8 voxels: a rare class
    return image, label


def test_shapes_and_values_come_from_the_volume():
    image, label = _case()
    x, y = sample_crops(image, label, ROI, 4, 0.5, np.random.default_rng(0))
    assert x.shape == (4, 2, *ROI) and y.shape == (4, 1, *ROI) and x.dtype == np.float32 and y.dtype == np.uint8
    centres, _ = sample_centres(label, ROI, 4, 0.5, np.random.default_rng(0))
    for n, c in enumerate(centres):
        np.testing.assert_array_equal(x[n], crop_at(image, c, ROI))


@pytest.mark.parametrize("pos_fraction", [0.0, 0.25, 0.5, 1.0])
def test_pos_neg_ratio_over_many_draws(pos_fraction):
    _, label = _case()
    centres, positive = sample_centres(label, ROI, 4000, pos_fraction, np.random.default_rng(1))
    on_fg = label[tuple(centres.T)] > 0  # the fg block lies inside the valid-centre box: no centre moved off it
    assert abs(on_fg.mean() - pos_fraction) < 0.025
    np.testing.assert_array_equal(on_fg, positive)


def test_class_balanced_picks_rare_classes():
    _, label = _case()
    plain, _ = sample_centres(label, ROI, 3000, 1.0, np.random.default_rng(2))
    balanced, _ = sample_centres(label, ROI, 3000, 1.0, np.random.default_rng(2), class_balanced=True)
    rare_plain = (label[tuple(plain.T)] == 2).mean()
    rare_balanced = (label[tuple(balanced.T)] == 2).mean()
    assert rare_plain < 0.04 and abs(rare_balanced - 0.5) < 0.04


def test_no_foreground_or_no_background():
    image, label = _case(fg=False)
    _, pos = sample_centres(label, ROI, 50, 1.0, np.random.default_rng(0))
    assert not pos.any()  # nothing to be positive about: background, as MONAI does
    _, pos = sample_centres(np.ones(SHAPE, np.uint8), ROI, 50, 0.0, np.random.default_rng(0))
    assert pos.all()


def test_background_restricted_to_body():
    image, label = _case()
    image[:, :, :20] = -1.0  # "air" on the low-y side
    image[:, :, 20:] = 1.0
    centres, pos = sample_centres(label, (1, 1, 1), 2000, 0.0, np.random.default_rng(0), image=image,
                                  image_threshold=0.0)
    assert (centres[:, 1] >= 20).all() and not pos.any()


def test_crops_match_monai():
    """For a single candidate voxel, MONAI's crop and ours coincide (centre fitting at the borders included)."""
    from monai.transforms import RandCropByPosNegLabel

    image, label = _case()
    for voxel in [(1, 1, 1), (47, 39, 31), (24, 3, 30), (10, 20, 16)]:
        flat = np.ravel_multi_index(voxel, SHAPE)
        ref = RandCropByPosNegLabel(spatial_size=ROI, pos=1, neg=0, num_samples=1, fg_indices=np.array([flat]),
                                    bg_indices=np.array([0]))(torch.from_numpy(image), label=torch.from_numpy(label[None]))
        lab = np.zeros(SHAPE, np.uint8)
        lab[voxel] = 1
        x, _ = sample_crops(image, lab, ROI, 1, 1.0, np.random.default_rng(0))
        np.testing.assert_array_equal(x[0], np.asarray(ref[0]))


def test_padding_when_smaller_than_roi():
    image = np.ones((1, 10, 20, 12), np.float32)
    label = np.ones((10, 20, 12), np.uint8)
    x, y = sample_crops(image, label, (16, 16, 16), 3, 0.5, np.random.default_rng(0))
    assert x.shape == (3, 1, 16, 16, 16)
    assert x[:, 0, :3].sum() == 0 and x[:, 0, 13:].sum() == 0  # 6 padded x-planes: 3 before, 3 after
    assert x[:, 0, 3:13, :, 2:14].min() == 1 and x[:, 0, :, :, :2].sum() == 0  # z: 2 and 2
    padded, plab = pad_to_roi(image, label, (16, 16, 16))
    assert padded.shape == (1, 16, 20, 16) and plab.shape == (16, 20, 16)


def test_same_seed_same_crops():
    image, label = _case()
    a = sample_crops(image, label, ROI, 4, 0.5, np.random.default_rng(7))
    b = sample_crops(image, label, ROI, 4, 0.5, np.random.default_rng(7))
    c = sample_crops(image, label, ROI, 4, 0.5, np.random.default_rng(8))
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])


def test_sampling_bad_arguments():
    image, label = _case()
    with pytest.raises(ValueError, match="pos_fraction"):
        sample_crops(image, label, ROI, 2, 1.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="one grid"):
        sample_crops(image, label[:-1], ROI, 2, 0.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="num_samples"):
        sample_crops(image, label, ROI, 0, 0.5, np.random.default_rng(0))


# ------------------------------------------------------------------------------------------ augment


def _batch(b=4, shape=(16, 16, 24)):
    label = torch.randint(0, 3, (b, 1, *shape), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    return label.float() * 10.0, label  # the image "is" the label: geometry must move them together


def test_augment_deterministic_and_shapes():
    x, y = _batch()
    a = augment(x, y, torch.Generator().manual_seed(3), flip_prob=0.5, rot90_prob=0.5, extra=True)
    b = augment(x, y, torch.Generator().manual_seed(3), flip_prob=0.5, rot90_prob=0.5, extra=True)
    c = augment(x, y, torch.Generator().manual_seed(4), flip_prob=0.5, rot90_prob=0.5, extra=True)
    assert a[0].shape == x.shape and a[1].shape == y.shape and a[1].dtype == torch.uint8
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert torch.equal(x, _batch()[0])  # inputs untouched


def test_flips_rot90_move_image_and_label_together():
    x, y = _batch(shape=(16, 16, 24))
    xi, yi = augment(x, y, torch.Generator().manual_seed(0), flip_prob=0.5, rot90_prob=0.5, scale_prob=0,
                     shift_prob=0)
    assert torch.equal(xi, yi.float() * 10.0)
    assert not torch.equal(yi, y)


def test_flip_all_axes_exactly():
    x, y = _batch()
    xi, yi = augment(x, y, torch.Generator().manual_seed(0), flip_prob=1.0, rot90_prob=0, scale_prob=0,
                     shift_prob=0)
    assert torch.equal(xi, torch.flip(x, [2, 3, 4])) and torch.equal(yi, torch.flip(y, [2, 3, 4]))


def test_rot90_quarter_turns_on_square_planes_half_turns_otherwise():
    """MONAI's RandRotate90d(max_k=3) turns by 90, 180 or 270 degrees; where X != Y a quarter turn would change
    the crop's shape, so there the rotation is the half turn (it used to be skipped without a word)."""
    x, y = _batch(b=24, shape=(16, 16, 24))
    xi, yi = augment(x, y, torch.Generator().manual_seed(0), flip_prob=0, rot90_prob=1.0, scale_prob=0, shift_prob=0)
    turns = [next(k for k in (1, 2, 3) if torch.equal(xi[n], torch.rot90(x[n], k, dims=(1, 2)))) for n in range(24)]
    assert set(turns) == {1, 2, 3} and torch.equal(xi, yi.float() * 10.0)
    x2, y2 = _batch(b=6, shape=(16, 20, 24))
    xi2, yi2 = augment(x2, y2, torch.Generator().manual_seed(0), flip_prob=0, rot90_prob=1.0, scale_prob=0,
                       shift_prob=0)
    assert torch.equal(xi2, torch.rot90(x2, 2, dims=(2, 3))) and torch.equal(yi2, torch.rot90(y2, 2, dims=(2, 3)))
    assert rot90_note((16, 20, 24), 0.2) is not None and "180" in rot90_note((16, 20, 24), 0.2)
    assert rot90_note((16, 16, 24), 0.2) is None and rot90_note((16, 20, 24), 0.0) is None


def test_intensity_scale_and_shift_ranges():
    x = torch.ones(64, 1, 4, 4, 4)
    s, _ = augment(x, None, torch.Generator().manual_seed(0), flip_prob=0, rot90_prob=0, scale_prob=1.0,
                   shift_prob=0, factor=0.1)
    vals = s[:, 0, 0, 0, 0]
    assert vals.min() >= 0.9 and vals.max() <= 1.1 and vals.std() > 0.03
    assert torch.all(s == vals[:, None, None, None, None])  # one factor per sample
    t, _ = augment(x, None, torch.Generator().manual_seed(0), flip_prob=0, rot90_prob=0, scale_prob=0,
                   shift_prob=0.5, factor=0.1)
    changed = (t[:, 0, 0, 0, 0] != 1).float().mean()
    assert 0.3 < changed < 0.7


def test_extra_keeps_labels_integral():
    y = torch.zeros(3, 1, 16, 16, 24, dtype=torch.uint8)
    y[:, :, :8] = 1
    y[:, :, 8:, :8] = 2
    x = y.float() * 10.0
    xi, yi = augment(x, y, torch.Generator().manual_seed(1), flip_prob=0, rot90_prob=0, scale_prob=0,
                     shift_prob=0, extra=True, rotate_prob=1.0, zoom_prob=1.0, noise_prob=0.0)
    assert set(torch.unique(yi).tolist()) <= {0, 1, 2}
    agree = (xi.round() == yi.float() * 10).float().mean()  # image (linear) and label (nearest) still overlap
    assert agree > 0.85 and not torch.equal(yi, y)


def test_augment_bad_arguments():
    with pytest.raises(ValueError, match="B, C, X, Y, Z"):
        augment(torch.zeros(1, 4, 4, 4), None, torch.Generator())
    with pytest.raises(ValueError, match="labels"):
        augment(torch.zeros(2, 1, 4, 4, 4), torch.zeros(1, 1, 4, 4, 4), torch.Generator())
