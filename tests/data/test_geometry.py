"""The ``monai`` geometry against MONAI's own transforms, and the streamed soft inverse of both geometries."""

import numpy as np
import pytest
import torch
from data_helpers import save_nifti

from unetr.config import Plan
from unetr.data.io import read_image
from unetr.data.preprocess import SoftInverse, invert_to_original, preprocess_case, preprocess_files

SHAPE = (47, 38, 23)
WINDOW = (-175.0, 250.0, 0.0, 1.0)


def _affine():
    """LPS-like storage with anisotropic voxels and an axis swap, so reorientation and spacing both act."""
    a = np.zeros((4, 4))
    a[1, 0], a[0, 1], a[2, 2], a[3, 3] = -0.9, -1.3, 2.7, 1.0
    a[:3, 3] = (40.0, -12.0, 6.0)
    return a


def _ct(tmp_path, seed=0):
    rng = np.random.default_rng(seed)
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij"), -1)
    body = (g[..., 0] / 0.8) ** 2 + (g[..., 1] / 0.7) ** 2 < 1
    hu = np.where(body, 30.0, -1000.0) + rng.normal(0, 15, SHAPE)
    hu[((g - [0.2, -0.1, 0.0]) ** 2).sum(-1) < 0.15] = 180.0
    label = np.zeros(SHAPE, np.uint8)
    label[((g - [0.2, -0.1, 0.0]) ** 2).sum(-1) < 0.15] = 1
    label[body & (g[..., 0] < -0.3)] = 2
    path = save_nifti(tmp_path / "ct.nii.gz", hu.astype(np.float32), _affine())
    return path, label


def _plan(**kw):
    base = dict(target_spacing=(1.5, 1.1, 2.0), num_classes=3, class_names=("bg", "a", "b"), roi=(32, 32, 32),
                window=WINDOW, geometry="monai")
    return Plan(**{**base, **kw})


@pytest.mark.parametrize("crop", [True, False])
def test_monai_geometry_is_spacingd_then_crop(tmp_path, crop, monai_ct_chain):
    path, _ = _ct(tmp_path)
    plan = _plan(crop_foreground=crop)
    ours, _, rec = preprocess_files(path, plan)
    ref = monai_ct_chain(plan.target_spacing, WINDOW, crop)({"image": str(path)})["image"]
    assert ours.shape == tuple(ref.shape)
    np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(rec["affine"]), np.asarray(ref.affine), atol=1e-4)
    np.testing.assert_allclose(rec["spacing"], plan.target_spacing)  # the target exactly, unlike `extent`


def test_monai_geometry_inverse_is_invertd(tmp_path, monai_ct_chain):
    from monai.transforms import Invertd

    path, _ = _ct(tmp_path)
    plan = _plan()
    _, _, rec = preprocess_files(path, plan)
    pre = monai_ct_chain(plan.target_spacing, WINDOW)
    data = pre({"image": str(path)})
    logits = torch.randn((3, *data["image"].shape[1:]), generator=torch.Generator().manual_seed(0))
    data["pred"] = torch.cat([data["image"] * 0] * 3) + logits  # a MetaTensor that carries the transforms
    back = Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False, to_tensor=True)(data)["pred"]
    ours = invert_to_original(logits.numpy(), rec, is_label=False, background=False)
    assert ours.shape == (3, *SHAPE)
    np.testing.assert_allclose(ours, back.numpy(), rtol=1e-5, atol=1e-5)
    # probabilities are padded with background instead: far outside the body it is certain
    probs = invert_to_original(torch.softmax(logits, 0).numpy(), rec, is_label=False)
    assert np.allclose(probs[:, 0, 0, 0], [1, 0, 0])


def test_monai_geometry_labels_round_trip(tmp_path):
    path, label = _ct(tmp_path)
    image, geom = read_image(path)
    for mode in ("onehot", "nearest"):
        out, lab, rec = preprocess_case(image, geom, _plan(label_resample=mode), label)
        assert lab.shape == out.shape[1:] and lab.dtype == np.uint8
        back = invert_to_original(lab, rec, is_label=True)
        for c in (1, 2):
            a, b = back == c, label == c
            assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.9, (mode, c)


@pytest.mark.parametrize("geometry", ["extent", "monai"])
def test_soft_inverse_streamed_equals_the_whole_volume(tmp_path, geometry):
    path, _ = _ct(tmp_path)
    _, _, rec = preprocess_files(path, _plan(geometry=geometry))
    n = rec["shape"]
    g = torch.Generator().manual_seed(1)
    logits = torch.nn.functional.avg_pool3d(torch.randn((1, 3, *n), generator=g) * 6, 5, 1, 2)[0]  # smooth
    inv = SoftInverse(rec, 3)
    start = 0
    for size in (1, 5, 2, 9, 3, 100):  # uneven slabs, as the sliding window hands them out
        if start < n[0]:
            inv.push(logits[:, start:start + size])
            start += size
    streamed = inv.result()
    if geometry == "extent":  # probabilities on the crop, background outside
        whole = invert_to_original(torch.softmax(logits, 0).numpy(), rec, is_label=False).argmax(0)
    else:  # logits, zero-padded, as MONAI's Invertd
        whole = invert_to_original(logits.numpy(), rec, is_label=False, background=False).argmax(0)
    assert streamed.shape == SHAPE and streamed.dtype == np.uint8
    assert (streamed == whole).mean() > 0.9999
    assert len(np.unique(streamed)) == 3


def test_soft_inverse_errors(tmp_path):
    path, _ = _ct(tmp_path)
    _, _, rec = preprocess_files(path, _plan())
    n = rec["shape"]
    inv = SoftInverse(rec, 3)
    with pytest.raises(ValueError, match="slab must be"):
        inv.push(torch.zeros((2, 1, n[1], n[2])))
    with pytest.raises(RuntimeError, match="planes pushed"):
        inv.result()
    inv.push(torch.zeros((3, n[0], n[1], n[2])))
    with pytest.raises(ValueError, match="more than"):
        inv.push(torch.zeros((3, 1, n[1], n[2])))


def test_plan_geometry_validation():
    with pytest.raises(ValueError, match="geometry must be"):
        _plan(geometry="nnunet")
    with pytest.raises(ValueError, match="image_order 1"):
        _plan(image_order=3)
    assert Plan.from_dict({k: v for k, v in _plan().to_dict().items() if k != "geometry"}).geometry == "extent"


@pytest.mark.parametrize("geometry", ["extent", "monai"])
def test_soft_inverse_boundary_only_path_equals_the_dense_one(tmp_path, geometry, monkeypatch):
    """Voxels whose eight neighbours share an argmax keep it without interpolation: the same labels."""
    import unetr.data.preprocess as P

    path, _ = _ct(tmp_path)
    _, _, rec = preprocess_files(path, _plan(geometry=geometry))
    n = rec["shape"]
    g = torch.Generator().manual_seed(2)
    logits = torch.nn.functional.avg_pool3d(torch.randn((1, 4, *n), generator=g), 7, 1, 3)[0] * 40
    results = []
    for fraction in (0.0, 1.01):  # every chunk dense / every chunk boundary-only
        monkeypatch.setattr(P, "_DENSE_FRACTION", fraction)
        inv = SoftInverse(rec, 4)
        for start in range(0, n[0], 7):
            inv.push(logits[:, start:start + 7])
        results.append(inv.result())
    assert (results[0] == results[1]).mean() > 0.9999
    assert len(np.unique(results[0])) == 4
