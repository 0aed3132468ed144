"""The ``monai`` geometry against MONAI's own transforms (its inverse is ``Invertd``)."""

import numpy as np
import pytest
import torch
from data_helpers import save_nifti

from unetr.config import Plan
from unetr.data.io import read_image
from unetr.data.preprocess import invert_to_original, preprocess_case, preprocess_files

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
    np.testing.assert_allclose(rec.affine, np.asarray(ref.affine), atol=1e-4)
    np.testing.assert_allclose(rec.spacing, plan.target_spacing)  # the target exactly, unlike `extent`


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


def test_plan_geometry_validation():
    with pytest.raises(ValueError, match="geometry must be"):
        _plan(geometry="nnunet")
    with pytest.raises(ValueError, match="image_order 1"):
        _plan(image_order=3)
    assert Plan.from_dict({k: v for k, v in _plan().to_dict().items() if k != "geometry"}).geometry == "extent"
