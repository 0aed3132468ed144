"""Dataset layouts, the dataset check (all problems at once) and the folds."""

import json
import shutil

import numpy as np
import pytest
from data_helpers import save_nifti

from unetr.data.cases import check_dataset, load_dataset
from unetr.data.splits import dataset_splits
from unetr.errors import DataError

SHAPE = (32, 32, 48)


def _volume(seed=0):
    return np.random.default_rng(seed).integers(-100, 200, SHAPE).astype(np.int16)


def _label(classes=3):
    lab = np.zeros(SHAPE, np.uint8)
    for k in range(1, classes):
        lab[4 * k: 4 * k + 3, 5:20, 10:30] = k
    return lab


def test_nnunet_v2_layout(phantom_dir):
    ds = load_dataset(phantom_dir)
    assert ds.layout == "nnunet" and ds.name == "Phantom"
    assert [c.id for c in ds.train] == [f"phantom_{i:03d}" for i in range(6)]
    assert ds.class_names == ("background", "liver", "spleen", "kidney") and ds.channel_names == ("CT",)
    assert ds.train[0].images[0].endswith("imagesTr/phantom_000_0000.nii.gz")
    assert ds.train[0].label.endswith("labelsTr/phantom_000.nii.gz")
    assert len(ds.test) == 1 and ds.test[0].label.endswith("labelsTs/phantom_006.nii.gz")
    assert load_dataset(phantom_dir / "dataset.json") == ds


def test_msd_v1_layout_with_4d_images(tmp_path):
    for i in range(2):
        save_nifti(tmp_path / "imagesTr" / f"BRATS_{i:03d}.nii.gz", np.stack([_volume(i)] * 2, -1))
        save_nifti(tmp_path / "labelsTr" / f"BRATS_{i:03d}.nii.gz", _label())
    save_nifti(tmp_path / "imagesTs" / "BRATS_100.nii.gz", np.stack([_volume()] * 2, -1))
    (tmp_path / "dataset.json").write_text(json.dumps({
        "name": "BRATS", "modality": {"0": "FLAIR", "1": "T1w"},
        "labels": {"0": "background", "1": "edema", "2": "tumour"},
        "training": [{"image": f"./imagesTr/BRATS_{i:03d}.nii.gz", "label": f"./labelsTr/BRATS_{i:03d}.nii.gz"}
                     for i in range(2)],
        "test": ["./imagesTs/BRATS_100.nii.gz"],
    }))
    ds = load_dataset(tmp_path)
    assert ds.layout == "msd" and ds.channel_names == ("FLAIR", "T1w") and ds.modality == "MR"
    assert ds.class_names == ("background", "edema", "tumour")
    assert [c.id for c in ds.train] == ["BRATS_000", "BRATS_001"] and ds.test[0].id == "BRATS_100"
    assert check_dataset(tmp_path) == []


def test_msd_entries_converted_to_channel_files(tmp_path):
    save_nifti(tmp_path / "imagesTr" / "liver_1_0000.nii.gz", _volume())
    save_nifti(tmp_path / "labelsTr" / "liver_1.nii.gz", _label())
    (tmp_path / "dataset.json").write_text(json.dumps({
        "modality": {"0": "CT"}, "labels": {"0": "background", "1": "a", "2": "b"},
        "training": [{"image": "./imagesTr/liver_1.nii.gz", "label": "./labelsTr/liver_1.nii.gz"}]}))
    ds = load_dataset(tmp_path)
    assert ds.train[0].images[0].endswith("liver_1_0000.nii.gz") and ds.train[0].id == "liver_1"


def test_monai_datalist(tmp_path):
    for i in range(4):
        save_nifti(tmp_path / "imagesTr" / f"img{i:04d}.nii.gz", _volume(i))
        save_nifti(tmp_path / "labelsTr" / f"label{i:04d}.nii.gz", _label())
    entry = [{"image": f"imagesTr/img{i:04d}.nii.gz", "label": f"labelsTr/label{i:04d}.nii.gz"} for i in range(4)]
    (tmp_path / "dataset_0.json").write_text(json.dumps({
        "description": "btcv yucheng", "labels": {"0": "background", "1": "spleen", "2": "rkid"},
        "modality": {"0": "CT"}, "name": "btcv", "training": entry[:3], "validation": entry[3:],
        "test": ["imagesTr/img0000.nii.gz"]}))
    ds = load_dataset(tmp_path / "dataset_0.json")
    assert ds.layout == "datalist" and ds.name == "btcv"
    assert [c.id for c in ds.train] == ["img0000", "img0001", "img0002"] and ds.validation[0].id == "img0003"
    splits = dataset_splits(ds, num_folds=5)  # the datalist's own split wins: one fold
    assert splits.source == "datalist" and splits.fold(0) == (("img0000", "img0001", "img0002"), ("img0003",))
    assert check_dataset(tmp_path / "dataset_0.json") == []


@pytest.mark.parametrize("names", [("imagesTr", "labelsTr"), ("images", "labels")])
def test_paired_folders(tmp_path, names):
    for i in range(3):
        save_nifti(tmp_path / names[0] / f"case{i}.nii.gz", _volume(i))
        save_nifti(tmp_path / names[1] / f"case{i}.nii.gz", _label())
    save_nifti(tmp_path / names[0] / "nolabel.nii.gz", _volume())
    ds = load_dataset(tmp_path)
    assert ds.layout == "folders" and [c.id for c in ds.train] == ["case0", "case1", "case2", "nolabel"]
    assert ds.train[-1].label is None and ds.class_names == ()
    assert [c.id for c in ds.labelled] == ["case0", "case1", "case2"]


@pytest.mark.parametrize("kind", ["missing", "empty", "not_json", "bad_json", "bad_labels", "no_training"])
def test_bad_datasets(tmp_path, kind):
    path = tmp_path
    if kind == "missing":
        path = tmp_path / "nope"
    elif kind == "not_json":
        path = tmp_path / "x.txt"
        path.write_text("x")
    elif kind == "bad_json":
        (tmp_path / "dataset.json").write_text("{not json")
    elif kind == "bad_labels":
        (tmp_path / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"},
                                                           "labels": {"background": 0, "x": 2}}))
    elif kind == "no_training":
        path = tmp_path / "list.json"
        path.write_text(json.dumps({"validation": []}))
    with pytest.raises((DataError, ValueError)) as info:
        load_dataset(path)
    assert str(path.name) in str(info.value) or kind == "bad_labels"
    assert check_dataset(path)  # the check reports it instead of raising


def test_check_lists_every_problem_at_once(phantom_dir, tmp_path):
    assert check_dataset(phantom_dir) == []
    ds = tmp_path / "broken"
    shutil.copytree(phantom_dir, ds)
    (ds / "labelsTr" / "phantom_000.nii.gz").unlink()  # missing label
    save_nifti(ds / "labelsTr" / "phantom_001.nii.gz", np.zeros((8, 8, 8), np.uint8))  # shape mismatch
    from unetr.data.io import read_image, read_label, write_label

    lab, geom = read_label(ds / "labelsTr" / "phantom_002.nii.gz")
    save_nifti(ds / "labelsTr" / "phantom_002.nii.gz", lab, geom.affine + np.diag([0, 0, 0.5, 0]))  # affine
    lab3, geom3 = read_label(ds / "labelsTr" / "phantom_003.nii.gz")
    lab3[0, 0, 0] = 9
    write_label(ds / "labelsTr" / "phantom_003.nii.gz", lab3, geom3)  # outside the classes
    img, g4 = read_image(ds / "imagesTr" / "phantom_004_0000.nii.gz")
    bad = img[0]
    bad[1, 1, 1] = np.nan
    save_nifti(ds / "imagesTr" / "phantom_004_0000.nii.gz", bad, g4.affine)  # NaN
    shutil.copy(ds / "imagesTr" / "phantom_005_0000.nii.gz", ds / "imagesTr" / "phantom_005_0001.nii.gz")  # 2 ch
    problems = "\n".join(check_dataset(ds))
    for expected in ["training case\\(s\\) without a label: phantom_000",  # each problem names its file:
                     "phantom_001: \\S*labelsTr/phantom_001.nii.gz: label shape",
                     "phantom_002: \\S*labelsTr/phantom_002.nii.gz: label affine differs",
                     "phantom_003: \\S*labelsTr/phantom_003.nii.gz: label values \\[9\\] outside",
                     "phantom_004: .*NaN or Inf",
                     "phantom_005: \\S*imagesTr/phantom_005_0000.nii.gz: 2 channel\\(s\\), the dataset declares 1"]:
        assert __import__("re").search(expected, problems), (expected, problems)


@pytest.mark.parametrize("shift_mm,ok", [(0.05, True), (0.2, False)])
def test_check_and_preprocessing_apply_one_grid_rule(tmp_path, shift_mm, ok):
    """A real CT's mm-scale origin: 0.05 mm of header rounding passes `unetr check` and preprocessing alike
    (the old check's 1e-3 mm refused it), a 0.2 mm shift (more than a tenth of a 0.78 mm voxel) fails both."""
    from unetr.config import Plan
    from unetr.data.preprocess import preprocess_files

    ct = np.array([[-0.78, 0, 0, 199.6], [0, -0.78, 0, 180.2], [0, 0, 2.5, -400.0], [0, 0, 0, 1]])
    moved = ct.copy()
    moved[2, 3] += shift_mm
    save_nifti(tmp_path / "imagesTr" / "ct_0000.nii.gz", _volume(), ct)
    save_nifti(tmp_path / "labelsTr" / "ct.nii.gz", _label(), moved)
    problems = check_dataset(tmp_path)
    plan = Plan(roi=(16, 16, 16), num_classes=3, class_names=("bg", "a", "b"), crop_foreground=False)
    if ok:
        assert problems == []
        preprocess_files(tmp_path / "imagesTr" / "ct_0000.nii.gz", plan, tmp_path / "labelsTr" / "ct.nii.gz")
    else:
        assert len(problems) == 1 and problems[0].startswith(f"ct: {tmp_path / 'labelsTr' / 'ct.nii.gz'}: label affine differs from the image's")
        with pytest.raises(DataError, match="ct.nii.gz: label affine differs"):
            preprocess_files(tmp_path / "imagesTr" / "ct_0000.nii.gz", plan, tmp_path / "labelsTr" / "ct.nii.gz")
