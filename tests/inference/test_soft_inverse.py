"""The streamed soft inverse against the whole-volume inverse, for both geometries."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from unetr.config import Plan
from unetr.data.preprocess import invert_to_original, preprocess_files
from unetr.inference.soft_inverse import SoftInverse

SHAPE = (47, 38, 23)


def _affine():
    """LPS-like storage with anisotropic voxels and an axis swap, so reorientation and spacing both act."""
    a = np.zeros((4, 4))
    a[1, 0], a[0, 1], a[2, 2], a[3, 3] = -0.9, -1.3, 2.7, 1.0
    a[:3, 3] = (40.0, -12.0, 6.0)
    return a


def _ct(tmp_path: Path, seed: int = 0) -> Path:
    """A CT-like volume written with nibabel directly (not through the code under test)."""
    rng = np.random.default_rng(seed)
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij"), -1)
    body = (g[..., 0] / 0.8) ** 2 + (g[..., 1] / 0.7) ** 2 < 1
    hu = np.where(body, 30.0, -1000.0) + rng.normal(0, 15, SHAPE)
    hu[((g - [0.2, -0.1, 0.0]) ** 2).sum(-1) < 0.15] = 180.0
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(hu.astype(np.float32), _affine()), str(path))
    return path


def _plan(**kw):
    base = dict(target_spacing=(1.5, 1.1, 2.0), num_classes=3, class_names=("bg", "a", "b"), roi=(32, 32, 32),
                window=(-175.0, 250.0, 0.0, 1.0), geometry="monai")
    return Plan(**{**base, **kw})


@pytest.mark.parametrize("geometry", ["extent", "monai"])
def test_soft_inverse_streamed_equals_the_whole_volume(tmp_path, geometry):
    path = _ct(tmp_path)
    _, _, rec = preprocess_files(path, _plan(geometry=geometry))
    n = rec.shape
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
    path = _ct(tmp_path)
    _, _, rec = preprocess_files(path, _plan())
    n = rec.shape
    with pytest.raises(ValueError, match="1 to 254 classes"):
        SoftInverse(rec, 255)  # 255 marks the padding
    inv = SoftInverse(rec, 3)
    with pytest.raises(ValueError, match="slab must be"):
        inv.push(torch.zeros((2, 1, n[1], n[2])))
    with pytest.raises(RuntimeError, match="planes pushed"):
        inv.result()
    inv.push(torch.zeros((3, n[0], n[1], n[2])))
    with pytest.raises(ValueError, match="more than"):
        inv.push(torch.zeros((3, 1, n[1], n[2])))


@pytest.mark.parametrize("geometry", ["extent", "monai"])
def test_soft_inverse_boundary_only_path_equals_the_dense_one(tmp_path, geometry, monkeypatch):
    """Voxels whose eight neighbours share an argmax keep it without interpolation: the same labels."""
    import unetr.inference.soft_inverse as S

    path = _ct(tmp_path)
    _, _, rec = preprocess_files(path, _plan(geometry=geometry))
    n = rec.shape
    g = torch.Generator().manual_seed(2)
    logits = torch.nn.functional.avg_pool3d(torch.randn((1, 4, *n), generator=g), 7, 1, 3)[0] * 40
    results = []
    for fraction in (0.0, 1.01):  # every chunk dense / every chunk boundary-only
        monkeypatch.setattr(S, "_DENSE_FRACTION", fraction)
        inv = SoftInverse(rec, 4)
        for start in range(0, n[0], 7):
            inv.push(logits[:, start:start + 7])
        results.append(inv.result())
    assert (results[0] == results[1]).mean() > 0.9999
    assert len(np.unique(results[0])) == 4
