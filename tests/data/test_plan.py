"""Fingerprint and plan: spacing in RAS order, ROI rule, intensity schemes, overrides, round trip."""

import json

import numpy as np
import pytest
from data_helpers import save_nifti

from unetr.config import Plan
from unetr.data.cases import load_dataset
from unetr.data.plan import fingerprint, load_plan, make_plan, save_plan
from unetr.errors import DataError


def _two_orientations(tmp_path, names=("CT",)):
    """The same RAS spacing (1, 2, 3) stored as RAS and as (L, S, P): the fingerprint must see (1, 2, 3) twice."""
    shape = (40, 32, 24)
    ras = np.diag([1.0, 2.0, 3.0, 1.0])
    lsp = np.zeros((4, 4))
    lsp[0, 0], lsp[2, 1], lsp[1, 2], lsp[3, 3] = -1.0, 3.0, -2.0, 1.0  # file axes: -x, +z, -y
    img = np.full(shape, -1000, np.int16)
    img[5:35, 4:28, 3:21] = 40
    lab = np.zeros(shape, np.uint8)
    lab[10:20, 8:16, 5:10] = 1
    lab[22:30, 8:16, 12:18] = 2
    save_nifti(tmp_path / "imagesTr" / "a_0000.nii.gz", img, ras)
    save_nifti(tmp_path / "labelsTr" / "a.nii.gz", lab, ras)
    lsp_img = np.transpose(img, (0, 2, 1))[::-1, ::-1, :]  # (x, y, z) -> (L, S, P) array
    save_nifti(tmp_path / "imagesTr" / "b_0000.nii.gz", np.ascontiguousarray(lsp_img), lsp)
    save_nifti(tmp_path / "labelsTr" / "b.nii.gz", np.ascontiguousarray(np.transpose(lab, (0, 2, 1))[::-1, ::-1, :]), lsp)
    (tmp_path / "dataset.json").write_text(json.dumps({
        "channel_names": {str(i): n for i, n in enumerate(names)}, "labels": {"background": 0, "a": 1, "b": 2},
        "file_ending": ".nii.gz"}))
    return load_dataset(tmp_path)


def test_fingerprint_spacing_is_in_ras_order(tmp_path):
    fp = fingerprint(_two_orientations(tmp_path))
    for case in fp["cases"]:
        np.testing.assert_allclose(case["spacing"], (1.0, 2.0, 3.0), rtol=1e-6)
        assert case["shape"] == [40, 32, 24] and case["cropped_shape"] == [30, 24, 18]
    assert fp["class_voxels"] == {"0": 2 * (40 * 32 * 24 - 400 - 384), "1": 800, "2": 768}
    assert fp["intensity"][0]["mean"] == 40.0 and fp["modality"] == "CT"
    json.dumps(fp)


def test_plan_defaults_and_roi_rule(tmp_path):
    ds = _two_orientations(tmp_path)
    fp = fingerprint(ds)
    plan = make_plan(ds, fp)
    assert plan.target_spacing == (1.0, 2.0, 3.0) and plan.intensity == "ct_window"
    assert plan.roi == (16, 16, 16)  # 30 x 24 x 18 voxels: the largest multiples of 16 that fit
    assert plan.class_names == ("background", "a", "b") and plan.num_classes == 3
    paper = make_plan(ds, fp, target_spacing="paper", preset="tiny")
    assert paper.target_spacing == (1.5, 1.5, 2.0) and paper.preset == "tiny"
    assert paper.roi == (16, 32, 16)  # 30 mm -> 20 voxels, 48 mm -> 32, 54 mm -> 27


def test_phantom_plan(phantom_dir):
    plan = make_plan(load_dataset(phantom_dir))
    assert all(48 <= r <= 96 and r % 16 == 0 for r in plan.roi)
    assert all(1.2 <= s <= 2.4 for s in plan.target_spacing)
    assert len(plan.ct_stats) == 1 and 30 < plan.ct_stats[0][2] < 120  # foreground mean HU


def test_overrides(tmp_path):
    ds = _two_orientations(tmp_path)
    fp = fingerprint(ds)
    z = make_plan(ds, fp, intensity="ct_zscore", roi=(32, 32, 16), target_spacing=(2, 2, 2))
    assert z.intensity == "ct_zscore" and z.roi == (32, 32, 16) and z.target_spacing == (2.0, 2.0, 2.0)
    lo, hi, mean, std = z.ct_stats[0]
    assert lo <= mean <= hi and std >= 0
    with pytest.raises(ValueError, match="unknown Plan field"):
        make_plan(ds, fp, no_such_field=1)
    with pytest.raises(ValueError, match="target_spacing"):
        make_plan(ds, fp, target_spacing="mean")


def test_mri_gets_zscore(tmp_path):
    ds = _two_orientations(tmp_path, names=("T2",))
    assert make_plan(ds).intensity == "zscore"


def test_labels_outside_declared_classes(tmp_path):
    ds = _two_orientations(tmp_path)
    fp = fingerprint(ds)
    fp["class_voxels"]["5"] = 10
    with pytest.raises(DataError, match="label values \\[5\\] outside the 3 declared classes"):
        make_plan(ds, fp)
    fp["cases"][1]["class_voxels"][5] = 10  # the message names the case that has it
    with pytest.raises(DataError, match="\\[5\\] outside .*\\(cases b\\)$"):
        make_plan(ds, fp)


def test_save_load_round_trip(tmp_path):
    ds = _two_orientations(tmp_path / "ds")
    fp = fingerprint(ds)
    plan = make_plan(ds, fp)
    save_plan(plan, tmp_path / "out" / "plan.json", fingerprint=fp)
    assert load_plan(tmp_path / "out" / "plan.json") == plan
    assert (tmp_path / "out" / "fingerprint.json").is_file()
    bad = plan.to_dict() | {"spacing": 1}
    with pytest.raises(ValueError, match="unknown Plan field"):
        load_plan(bad)
    assert isinstance(load_plan(plan.to_dict()), Plan)
