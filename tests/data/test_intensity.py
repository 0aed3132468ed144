"""The one body rule (planning's crops are preprocessing's crops) and the intensity schemes' edge cases."""

import json

import numpy as np
import pytest
from data_helpers import save_nifti

from unetr.config import Plan
from unetr.data.cases import load_dataset
from unetr.data.intensity import body_mask, body_threshold, bounding_box, crop_box, normalize, plan_crop_box
from unetr.data.plan import fingerprint, make_plan
from unetr.data.preprocess import preprocess_files

SHAPE = (32, 24, 40)


def test_body_rule_per_scheme():
    window = (-500.0, 500.0, 0.0, 1.0)
    assert body_threshold("ct_window", window) == -500.0
    assert body_threshold("ct_zscore", window) == -500.0
    assert body_threshold("zscore", window) is None
    image = np.zeros((2, *SHAPE), np.float32)  # (C, X, Y, Z)
    image[0, 3:5, 4:6, 7:9] = 5.0
    image[1, 20:22, 1:2, 30:31] = -3.0  # only non-zero in the second channel
    assert body_mask(image, None).shape == SHAPE
    assert bounding_box(body_mask(image, None)) == ((3, 22), (1, 6), (7, 31))  # any channel counts
    assert crop_box(image, 1.0) == ((3, 5), (4, 6), (7, 9))  # above the threshold only
    assert crop_box(image, 1.0, crop=False) == ((0, 32), (0, 24), (0, 40))
    assert crop_box(image, 10.0) == ((0, 32), (0, 24), (0, 40))  # no body: the whole volume
    plan = Plan(intensity="zscore", channel_names=("a", "b"), in_channels=2)
    assert plan_crop_box(image, plan) == ((3, 22), (1, 6), (7, 31))
    assert plan_crop_box(image, plan.replace(crop_foreground=False)) == ((0, 32), (0, 24), (0, 40))


def test_zscore_keeps_the_outside_at_zero():
    image = np.zeros((1, *SHAPE), np.float32)
    image[0, 4:20, 4:20, 4:30] = np.random.default_rng(0).normal(100, 10, (16, 16, 26))
    out = normalize(image.copy(), Plan(intensity="zscore", channel_names=("T1",)))
    assert np.all(out[0][image[0] == 0] == 0)
    np.testing.assert_allclose(out[0][image[0] != 0].mean(), 0.0, atol=1e-4)


def _dataset(tmp_path, channel="CT"):
    """Two cases: a body of -100 HU in -1000 HU air, so the CT rule (above -175) and the MRI rule (non-zero)
    crop differently."""
    rng = np.random.default_rng(0)
    for i in range(2):
        img = np.full(SHAPE, -1000.0, np.float32)
        img[6 + i:24, 5:19, 8:33 - i] = -100.0
        img += rng.normal(0, 1, SHAPE).astype(np.float32)
        lab = np.zeros(SHAPE, np.uint8)
        lab[10:20, 8:16, 12:25] = 1
        affine = np.diag([1.2, 0.9, 2.0, 1.0])
        save_nifti(tmp_path / "imagesTr" / f"c{i}_0000.nii.gz", img, affine)
        save_nifti(tmp_path / "labelsTr" / f"c{i}.nii.gz", lab, affine)
    (tmp_path / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": channel}, "labels": {"background": 0, "x": 1}, "file_ending": ".nii.gz"}))
    return load_dataset(tmp_path)


@pytest.mark.parametrize("channel,intensity", [("CT", "auto"), ("T1", "auto"), ("CT", "zscore")])
def test_planning_measures_the_crops_preprocessing_makes(tmp_path, channel, intensity, caplog):
    ds = _dataset(tmp_path, channel)
    fp = fingerprint(ds, workers=1, intensity=intensity)
    plan = make_plan(ds, fp, intensity=intensity, target_spacing=(1.2, 0.9, 2.0))
    assert not [r for r in caplog.records if "body threshold" in r.message]
    crops = []
    for case, measured in zip(sorted(ds.labelled, key=lambda c: c.id), fp["cases"]):
        _, _, rec = preprocess_files(case.images, plan, case.label)
        assert list(rec.crop_shape) == measured["cropped_shape"]
        crops.append(rec.crop_shape)
    # the two rules crop differently here, so the test would see a mix-up
    assert crops[0] == ((18, 14, 25) if plan.intensity != "zscore" else SHAPE)
    # a plan that crops with another rule than the fingerprint measured is reported
    make_plan(ds, fp, intensity="zscore" if plan.intensity != "zscore" else "ct_window")
    assert [r for r in caplog.records if "body threshold" in r.message]


def test_roi_without_cropping_comes_from_the_whole_volume(tmp_path):
    ds = _dataset(tmp_path)
    fp = fingerprint(ds, workers=1)
    cropped = make_plan(ds, fp, target_spacing=(0.6, 0.4, 1.0))
    whole = make_plan(ds, fp, target_spacing=(0.6, 0.4, 1.0), crop_foreground=False)
    # median body crop 17.5 x 14 x 24.5 voxels -> 35 x 31.5 x 49 resampled; the whole 32 x 24 x 40 -> 64 x 54 x 80
    assert cropped.roi == (32, 16, 48) and whole.roi == (64, 48, 80)
