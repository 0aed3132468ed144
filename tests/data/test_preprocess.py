"""The per-case transform and its inverse: shapes, geometry, intensities, round trips, MONAI's orientation."""

import numpy as np
import pytest

from unetr.config import Plan
from unetr.data.intensity import bounding_box
from unetr.data.io import Geometry
from unetr.data.orientation import apply_ornt, invert_ornt, ras_ornt
from unetr.data.preprocess import (
    RECORD_VERSION,
    PreprocessRecord,
    invert_to_original,
    preprocess_case,
    preprocess_files,
)
from unetr.errors import DataError

SHAPE = (52, 64, 40)  # non-cubic: axis mix-ups show


def _affine(codes_perm=(1, 0, 2), flips=(-1, 1, -1), spacing=(1.4, 1.2, 3.0)):
    """A non-RAS affine: file axis i runs along world axis perm[i] with sign flips[i]."""
    a = np.zeros((4, 4))
    for i, (ax, f, s) in enumerate(zip(codes_perm, flips, spacing)):
        a[ax, i] = f * s
    a[:3, 3] = (12.0, -30.0, 7.0)
    a[3, 3] = 1
    return a


def _phantom(shape=SHAPE, affine=None):
    """Two ellipsoids (classes 1, 2) in a body (HU) with air around; radii in mm so they survive resampling."""
    affine = _affine() if affine is None else affine
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3)
    world = (idx @ affine[:3, :3].T + affine[:3, 3]).reshape(*shape, 3)
    centre = world.reshape(-1, 3).mean(0)
    w = world - centre
    label = np.zeros(shape, np.uint8)
    label[((w[..., 0] + 9) / 19) ** 2 + (w[..., 1] / 22) ** 2 + (w[..., 2] / 40) ** 2 < 1] = 1
    label[((w[..., 0] - 16) / 11) ** 2 + ((w[..., 1] - 10) / 13) ** 2 + ((w[..., 2] + 10) / 32) ** 2 < 1] = 2
    hu = np.full(shape, -1000.0, np.float32)
    hu[(w[..., 0] / 33) ** 2 + (w[..., 1] / 32) ** 2 < 1] = 20.0
    hu[label == 1] = 60
    hu[label == 2] = 150
    return hu[None], label, Geometry.from_affine(affine, shape)


def _plan(**kw):
    base = dict(target_spacing=(1.5, 1.5, 2.0), num_classes=3, class_names=("bg", "a", "b"), roi=(32, 32, 32))
    return Plan(**{**base, **kw})


def _dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_shapes_and_record():
    image, label, geom = _phantom()
    out, lab, rec = preprocess_case(image, geom, _plan(), label)
    assert out.dtype == np.float32 and lab.dtype == np.uint8 and out.shape[1:] == lab.shape
    # RAS grid: file axes (y, x, z) -> (x, y, z); spacing 1.2/1.4/3.0 -> 1.5/1.5/2.0 on the crop
    assert rec.ras_shape == (64, 52, 40)
    np.testing.assert_allclose(rec.ras_spacing, (1.2, 1.4, 3.0))
    expected = tuple(round(n * s / t) for n, s, t in zip(rec.crop_shape, rec.ras_spacing, (1.5, 1.5, 2.0)))
    assert lab.shape == expected == rec.shape
    np.testing.assert_allclose(rec.spacing, (1.5, 1.5, 2.0), rtol=0.05)
    assert rec.crop_shape[0] < 64 and rec.crop_shape[1] < 52  # the body was cropped in-plane
    assert set(np.unique(lab)) == {0, 1, 2}


def test_record_affine_maps_voxels_to_world():
    """With an identity intensity window, a world-x ramp must read back as the world x of each voxel centre."""
    shape = SHAPE
    affine = _affine()
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    ramp = world[..., 0].astype(np.float32)[None]
    plan = _plan(window=(-1e4, 1e4, -1e4, 1e4), crop_foreground=False)
    out, _, rec = preprocess_case(ramp, Geometry.from_affine(affine, shape), plan)
    vox = np.stack(np.meshgrid(*[np.arange(s) for s in out.shape[1:]], indexing="ij"), -1)
    expect = (vox @ rec.affine[:3, :3].T + rec.affine[:3, 3])[..., 0]
    inner = (slice(2, -2),) * 3  # linear interpolation is exact away from the clamped border
    np.testing.assert_allclose(out[0][inner], expect[inner], atol=1e-3)


@pytest.mark.parametrize("perm,flips", [((1, 0, 2), (-1, 1, -1)), ((2, 0, 1), (1, -1, 1)), ((0, 1, 2), (1, 1, 1))])
def test_inverse_round_trip_dice(perm, flips):
    image, label, geom = _phantom(affine=_affine(perm, flips))
    _, lab, rec = preprocess_case(image, geom, _plan(), label)
    back = invert_to_original(lab, rec, is_label=True)
    assert back.shape == SHAPE and back.dtype == label.dtype
    for k in (1, 2):
        assert _dice(back == k, label == k) >= 0.98, k


def test_inverse_is_exact_when_spacing_is_kept():
    image, label, geom = _phantom()
    ras_spacing = (1.2, 1.4, 3.0)
    _, lab, rec = preprocess_case(image, geom, _plan(target_spacing=ras_spacing), label)
    assert rec.shape == rec.crop_shape
    np.testing.assert_array_equal(invert_to_original(lab, rec, is_label=True), label)
    onehot = np.stack([lab == k for k in range(3)]).astype(np.float32)
    probs = invert_to_original(onehot, rec, is_label=False)
    np.testing.assert_array_equal(probs.argmax(0), label)


def test_probabilities_inverse():
    image, label, geom = _phantom()
    _, lab, rec = preprocess_case(image, geom, _plan(), label)
    onehot = np.stack([lab == k for k in range(3)]).astype(np.float32)
    probs = invert_to_original(onehot, rec, is_label=False)
    assert probs.shape == (3, *SHAPE) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    outside = np.ones(rec.ras_shape, bool)
    outside[tuple(slice(a, b) for a, b in rec.bbox)] = False
    outside = apply_ornt(outside, invert_ornt(rec.ornt))
    assert outside.any() and np.all(probs[0][outside] == 1.0)
    for k in (1, 2):
        assert _dice(probs.argmax(0) == k, label == k) >= 0.98
    import torch

    np.testing.assert_array_equal(invert_to_original(torch.from_numpy(onehot), rec, False), probs)


def test_identity_when_ras_and_same_spacing():
    rng = np.random.default_rng(0)
    image = rng.uniform(-100, 200, (2, *SHAPE)).astype(np.float32)
    geom = Geometry.from_affine(np.diag([1.0, 1.2, 2.0, 1.0]), SHAPE)
    plan = _plan(target_spacing=(1.0, 1.2, 2.0), in_channels=2, channel_names=("a", "b"), crop_foreground=False)
    out, _, rec = preprocess_case(image, geom, plan)
    np.testing.assert_allclose(out, (np.clip(image, -175, 250) + 175) / 425, atol=1e-6)
    assert image.min() < -99  # the caller's array was not normalised in place


def test_orientation_matches_monai():
    monai = pytest.importorskip("monai")
    from monai.data import MetaTensor
    from monai.transforms import Orientation

    image, _, geom = _phantom(affine=_affine((2, 0, 1), (1, -1, -1)))
    ornt = ras_ornt(geom.affine)
    ours = apply_ornt(image, ornt)
    ref = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(MetaTensor(image, affine=geom.affine))
    np.testing.assert_array_equal(ours, ref.numpy())
    _, _, rec = preprocess_case(image, geom, _plan(target_spacing=(1.2, 3.0, 1.4), crop_foreground=False))
    np.testing.assert_allclose(rec.affine, ref.affine.numpy(), atol=1e-5)
    assert monai.__version__


@pytest.mark.parametrize("scheme", ["ct_window", "ct_zscore", "zscore"])
def test_intensity_schemes(scheme):
    image, label, geom = _phantom()
    kw = {"intensity": scheme}
    if scheme == "ct_zscore":
        kw["ct_stats"] = ((0.0, 100.0, 50.0, 25.0),)
    out, lab, _ = preprocess_case(image, geom, _plan(**kw), label)
    if scheme == "ct_window":
        assert out.min() >= 0.0 and out.max() <= 1.0
    elif scheme == "ct_zscore":
        assert out.min() >= -2.0 - 1e-6 and out.max() <= 2.0 + 1e-6  # clipped to (0, 100) then (x - 50) / 25
        np.testing.assert_allclose(np.median(out[0][lab == 1]), (60 - 50) / 25, atol=1e-5)
    else:
        inside = out[0] != 0
        np.testing.assert_allclose(out[0][inside].mean(), 0.0, atol=1e-4)
        np.testing.assert_allclose(out[0][inside].std(), 1.0, atol=1e-3)


def test_crop_switch_and_bounding_box():
    mask = np.zeros((10, 12, 14), bool)
    mask[2:5, 3:9, 0:1] = True
    assert bounding_box(mask) == ((2, 5), (3, 9), (0, 1))
    assert bounding_box(np.zeros((4, 5, 6), bool)) == ((0, 4), (0, 5), (0, 6))
    image, label, geom = _phantom()
    _, _, rec = preprocess_case(image, geom, _plan(crop_foreground=False), label)
    assert rec.crop_shape == rec.ras_shape


@pytest.mark.parametrize("order", [0, 3])
def test_other_spline_orders(order):
    image, label, geom = _phantom()
    out, lab, _ = preprocess_case(image, geom, _plan(image_order=order), label)
    assert out.shape[1:] == lab.shape and np.isfinite(out).all()
    if order == 0:
        assert len(np.unique(out)) == len(np.unique(image)) == 4  # air, body, two organs: no new values


def test_bad_arguments():
    image, label, geom = _phantom()
    with pytest.raises(DataError, match="channel"):
        preprocess_case(np.concatenate([image, image]), geom, _plan(), label)
    with pytest.raises(DataError, match="label shape"):
        preprocess_case(image, geom, _plan(), label[:-1])
    with pytest.raises(ValueError, match="\\(C, X, Y, Z\\)"):
        preprocess_case(image[0], geom, _plan())
    _, lab, rec = preprocess_case(image, geom, _plan(), label)
    with pytest.raises(ValueError, match="preprocessed shape"):
        invert_to_original(lab[:-1], rec, is_label=True)
    with pytest.raises(ValueError, match="probabilities"):
        invert_to_original(lab, rec, is_label=False)


def test_preprocess_files_checks_label_grid(tmp_path):
    from unetr.data.io import write_image, write_label

    image, label, geom = _phantom()
    write_image(tmp_path / "i.nii.gz", image[0], geom, dtype="int16")
    write_label(tmp_path / "l.nii.gz", label, geom)
    out, lab, rec = preprocess_files([tmp_path / "i.nii.gz"], _plan(), tmp_path / "l.nii.gz")
    ref, ref_lab, _ = preprocess_case(image, geom, _plan(), label)
    np.testing.assert_allclose(out, ref, atol=1e-6)
    np.testing.assert_array_equal(lab, ref_lab)
    write_label(tmp_path / "moved.nii.gz", label, Geometry.from_affine(geom.affine + np.diag([0, 0, 1.0, 0]), SHAPE))
    with pytest.raises(DataError, match="moved.nii.gz: label affine"):
        preprocess_files([tmp_path / "i.nii.gz"], _plan(), tmp_path / "moved.nii.gz")


def test_nearest_label_resampling_branch():
    image, label, geom = _phantom()
    _, near, rec = preprocess_case(image, geom, _plan(label_resample="nearest"), label)
    _, onehot, _ = preprocess_case(image, geom, _plan(), label)
    assert near.shape == onehot.shape and not np.array_equal(near, onehot)
    back = invert_to_original(near, rec, is_label=True)
    back_onehot = invert_to_original(onehot, rec, is_label=True)
    for k in (1, 2):  # nearest loses more at the boundary: why one-hot is the default
        assert 0.95 <= _dice(back == k, label == k) < _dice(back_onehot == k, label == k)
    with pytest.raises(ValueError, match="label_resample"):
        _plan(label_resample="cubic")


def test_preprocess_image_file_for_inference(tmp_path):
    from unetr.data.io import write_image
    from unetr.data.preprocess import preprocess_image_file

    image, label, geom = _phantom()
    write_image(tmp_path / "i.nii.gz", image[0], geom, dtype="int16")
    out, rec = preprocess_image_file(tmp_path / "i.nii.gz", _plan())
    ref, _, ref_rec = preprocess_case(image, geom, _plan())
    np.testing.assert_allclose(out, ref, atol=1e-6)
    assert rec.shape == ref_rec.shape and rec.geometry.same_grid(geom)


# the keys a record of RECORD_VERSION 1 has on disk (the cache's <id>.json); records written before the
# record became a dataclass must still load
_V1_KEYS = ["version", "geometry", "ornt", "ras_shape", "ras_spacing", "bbox", "crop_shape", "shape", "spacing",
            "affine", "target_spacing"]
_V1_MONAI_KEYS = ["version", "geometry_mode", "full_shape", "ratio"] + _V1_KEYS[1:]


@pytest.mark.parametrize("geometry", ["extent", "monai"])
def test_record_round_trips_through_json_with_the_v1_keys(geometry):
    import json

    image, label, geom = _phantom()
    _, lab, rec = preprocess_case(image, geom, _plan(geometry=geometry), label)
    data = rec.to_dict()
    assert list(data) == (_V1_KEYS if geometry == "extent" else _V1_MONAI_KEYS) and data["version"] == RECORD_VERSION
    cached = {"id": "x", "cache_version": 1, "sources": [], "class_voxels": {"0": 1}, **json.loads(json.dumps(data))}
    back = PreprocessRecord.from_dict(cached)  # the cache's own keys are ignored
    assert back == rec and back.to_dict() == data and back.mode == geometry
    np.testing.assert_array_equal(invert_to_original(lab, back, is_label=True), invert_to_original(lab, rec, True))
    with pytest.raises(DataError, match="version 2"):
        PreprocessRecord.from_dict({**data, "version": 2})
    with pytest.raises(ValueError, match="mode"):
        PreprocessRecord(**{**rec.__dict__, "mode": "nnunet"})


def test_labels_outside_the_plans_classes_name_the_file(tmp_path):
    from unetr.data.io import write_image, write_label

    image, label, geom = _phantom()
    write_image(tmp_path / "i.nii.gz", image[0], geom, dtype="int16")
    label[0, 0, :3] = (5, 7, 5)
    write_label(tmp_path / "l.nii.gz", label, geom)
    with pytest.raises(DataError, match="l.nii.gz: label values \\[5, 7\\] outside the 3 declared classes"):
        preprocess_files([tmp_path / "i.nii.gz"], _plan(), tmp_path / "l.nii.gz")
    with pytest.raises(DataError, match="outside the 3 declared classes"):
        preprocess_case(image, geom, _plan(), label)
    label[0, 0, :3] = 0
    assert preprocess_case(image, geom, _plan(), label)[1].max() == 2
