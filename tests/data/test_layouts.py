"""Public datasets as they are published: naming, modality, conversion, and check -> train -> predict -> evaluate.

The datasets are tiny generated copies of the public layouts (:mod:`layout_builders`), built once per session.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pytest
from data_helpers import save_nifti
from layout_builders import AMOS_MR, BUILDERS, LPS, TOTALSEG_STRUCTURES, scene, totalsegmentator

from unetr.cli import main
from unetr.data.cases import load_dataset
from unetr.data.naming import channel_files, name_cases
from unetr.errors import DataError


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> dict:
    """Every public layout, built once: name -> the dataset folder as published."""
    root = tmp_path_factory.mktemp("public")
    return {name: build(root) for name, build in BUILDERS.items()}


# ------------------------------------------------------------------------------------------------ naming


def test_case_ids_of_the_public_layouts(built):
    amos = load_dataset(built["amos"])
    assert [c.id for c in amos.train] == ["amos_0001", "amos_0004", "amos_0005", "amos_0507", "amos_0508"]
    assert [c.id for c in amos.validation] == ["amos_0008", "amos_0540"] and [c.id for c in amos.test] == ["amos_0002"]
    assert amos.train[0].label.endswith("labelsTr/amos_0001.nii.gz") and len(amos.class_names) == 16
    word = load_dataset(built["word"])
    assert [c.id for c in word.train] == [f"word_{i:04d}" for i in range(1, 6)]
    assert [c.id for c in word.validation] == ["word_0101", "word_0102"] and word.test[0].id == "word_0121"
    assert all(c.label for c in word.train + word.validation) and word.layout == "folders"
    spleen = load_dataset(built["msd_spleen"])
    assert [c.id for c in spleen.train] == ["spleen_2", "spleen_3", "spleen_6", "spleen_8", "spleen_10"]
    assert [c.id for c in spleen.test] == ["spleen_1", "spleen_7"]
    btcv = load_dataset(built["btcv"] / "dataset_0.json")
    assert [c.id for c in btcv.train] == ["img0001", "img0002", "img0003", "img0004"]
    assert [c.id for c in btcv.validation] == ["img0035"] and btcv.validation[0].label.endswith("label0035.nii.gz")
    brats = load_dataset(built["nnunet_brats"])
    assert [c.id for c in brats.train] == [f"BraTS2021_{i:05d}" for i in range(5)]
    assert [Path(f).name for f in brats.train[0].images] == [f"BraTS2021_00000_{c:04d}.nii.gz" for c in range(4)]
    assert brats.test[0].label.endswith("labelsTs/BraTS2021_00005.nii.gz") and brats.modality == "MR"


@pytest.mark.parametrize("stems,channels,expected", [
    (["amos_0001", "amos_0004", "amos_0005"], None, None),  # ids, not channels: the case does not start at 0000
    (["case_0001", "case_0002", "case_0003"], 3, None),  # the paired folders: three cases, not one
    (["la_003_0000", "la_004_0000"], 1, [("la_003", 0), ("la_004", 0)]),
    (["b_0000", "b_0001", "a_0001", "a_0000"], 2, [("b", 0), ("b", 1), ("a", 1), ("a", 0)]),
    (["b_0000", "b_0001", "a_0000", "a_0001"], 1, None),  # two channels each where one is expected
    (["x_0000", "x_0001", "y_0000"], None, None),  # not the same count for every case
    (["x_0000", "plain"], None, None),
])
def test_channel_suffix_only_when_every_file_follows_it(stems, channels, expected):
    assert channel_files(stems, channels) == expected


def test_paired_folders_with_numbered_ids_stay_separate_cases(tmp_path):
    image, label = scene(0, 1)
    for i in (1, 2, 3):
        save_nifti(tmp_path / "images" / f"case_{i:04d}.nii.gz", image, LPS)
        save_nifti(tmp_path / "labels" / f"case_{i:04d}.nii.gz", label, LPS)
    ds = load_dataset(tmp_path)
    assert [c.id for c in ds.train] == ["case_0001", "case_0002", "case_0003"]
    assert all(len(c.images) == 1 and c.label for c in ds.train)


def test_paired_folders_converted_for_nnunet_pair_by_the_stripped_ids(tmp_path):
    """imagesTr/x_0000 with labelsTr/x and no dataset.json: the labels say the suffix is a channel."""
    image, label = scene(0, 1)
    for i in range(2):
        save_nifti(tmp_path / "imagesTr" / f"liver_{i}_0000.nii.gz", image, LPS)
        save_nifti(tmp_path / "labelsTr" / f"liver_{i}.nii.gz", label, LPS)
    ds = load_dataset(tmp_path)
    assert [(c.id, bool(c.label)) for c in ds.train] == [("liver_0", True), ("liver_1", True)]


def test_datalist_files_of_one_name_are_told_apart_by_their_folder(tmp_path):
    image, label = scene(0, 1)
    for case in ("case_00000", "case_00001"):
        save_nifti(tmp_path / case / "imaging.nii.gz", image, LPS)
        save_nifti(tmp_path / case / "segmentation.nii.gz", label, LPS)
    (tmp_path / "list.json").write_text(json.dumps({"training": [
        {"image": f"{c}/imaging.nii.gz", "label": f"{c}/segmentation.nii.gz"} for c in ("case_00000", "case_00001")]}))
    ds = load_dataset(tmp_path / "list.json")
    assert [c.id for c in ds.train] == ["case_00000_imaging", "case_00001_imaging"]
    assert [c for c, _ in name_cases([tmp_path / "case_00000" / "imaging.nii.gz",
                                      tmp_path / "case_00001" / "imaging.nii.gz"], 1)] == [
        "case_00000_imaging", "case_00001_imaging"]


def test_predict_names_inputs_by_the_same_rule(built):
    from unetr.inference.inputs import find_inputs

    assert [c for c, _ in find_inputs(built["amos"] / "imagesTr", 1)] == [
        "amos_0001", "amos_0004", "amos_0005", "amos_0507", "amos_0508"]
    grouped = find_inputs(built["nnunet_brats"] / "imagesTr", 4)
    assert [c for c, _ in grouped] == [f"BraTS2021_{i:05d}" for i in range(5)] and {len(f) for _, f in grouped} == {4}
    assert [c for c, _ in find_inputs(built["msd_spleen"] / "imagesTs", 1)] == ["spleen_1", "spleen_7"]  # no ._ files


def test_nnunet_case_with_an_extra_channel_is_named_by_check(built, tmp_path):
    import shutil

    ds = tmp_path / "brats"
    shutil.copytree(built["nnunet_brats"], ds)
    shutil.copy(ds / "imagesTr" / "BraTS2021_00001_0003.nii.gz", ds / "imagesTr" / "BraTS2021_00001_0004.nii.gz")
    from unetr.data.cases import check_dataset

    (problem,) = check_dataset(ds)
    assert problem.startswith("BraTS2021_00001: ") and "BraTS2021_00001_0000.nii.gz" in problem
    assert problem.endswith("5 channel(s), the dataset declares 4")


# ------------------------------------------------------------------------------------------------ modality


def _folder(tmp_path, mr: bool, n: int = 3) -> Path:
    for i in range(n):
        image, label = scene(i, 2, mr=mr)
        save_nifti(tmp_path / "imagesTr" / f"c{i}.nii.gz", image, LPS)
        save_nifti(tmp_path / "labelsTr" / f"c{i}.nii.gz", label, LPS)
    return tmp_path


@pytest.mark.parametrize("mr", [False, True])
def test_modality_from_the_intensities_when_none_is_named(tmp_path, mr):
    from unetr.data.plan import plan_dataset

    ds = load_dataset(_folder(tmp_path, mr))
    assert ds.modality is None
    plan, fp = plan_dataset(ds, workers=1)
    assert plan.modality == ("MR" if mr else "CT") and plan.intensity == ("zscore" if mr else "ct_window")
    assert "by the intensities" in plan.modality_reason and fp["modality_reason"] == plan.modality_reason
    assert plan.channel_names == (plan.modality,)
    assert all(c["modality"]["looks"] == plan.modality for c in fp["cases"])
    assert fp["body_threshold"] == (None if mr else -175.0)  # the crop rule of the plan's own intensity scheme


def test_modality_override_and_named_modality_that_disagrees(built, tmp_path, caplog):
    from unetr.data.plan import plan_dataset

    ds = load_dataset(_folder(tmp_path, mr=False))
    plan, fp = plan_dataset(ds, workers=1, modality="MR")
    assert (plan.modality, plan.intensity, plan.modality_reason) == ("MR", "zscore", "set by --modality")
    assert fp["body_threshold"] is None  # fingerprinted with the rule the plan will crop with
    caplog.set_level("WARNING")
    plan, _ = plan_dataset(load_dataset(built["amos"]), workers=1)
    assert plan.modality == "CT" and plan.modality_reason == "named by dataset.json 'modality'"
    warned = " ".join(r.message for r in caplog.records)
    assert all(f"amos_{n:04d} (MR)" in warned for n in AMOS_MR) and "--modality" in warned


def test_planning_crops_are_preprocessing_crops_for_a_detected_mr(tmp_path):
    from unetr.data.plan import plan_dataset
    from unetr.data.preprocess import preprocess_files

    ds = load_dataset(_folder(tmp_path, mr=True, n=2))
    plan, fp = plan_dataset(ds, workers=1)
    for case, measured in zip(sorted(ds.labelled, key=lambda c: c.id), fp["cases"]):
        _, _, rec = preprocess_files(case.images, plan, case.label)
        assert list(rec.crop_shape) == measured["cropped_shape"]


def test_cli_plan_says_the_modality(tmp_path, capsys):
    ds = _folder(tmp_path / "ds", mr=True)
    assert main(["plan", str(ds), "-o", str(tmp_path / "plan.json"), "--workers", "1"]) == 0
    assert "modality MR (the dataset names none; by the intensities" in capsys.readouterr().out
    doc = json.loads((tmp_path / "plan.json").read_text())
    assert doc["modality"] == "MR" and doc["intensity"] == "zscore"
    assert main(["plan", str(ds), "-o", str(tmp_path / "ct.json"), "--modality", "CT", "--workers", "1"]) == 0
    doc = json.loads((tmp_path / "ct.json").read_text())
    assert (doc["modality"], doc["intensity"], doc["modality_reason"]) == ("CT", "ct_window", "set by --modality")


# ------------------------------------------------------------------------------------------------ conversion


def test_kits23_is_refused_with_the_command_then_converted(built, tmp_path):
    raw = built["kits23"]
    with pytest.raises(DataError, match=f"unetr convert kits23 {raw} {raw.parent / 'dataset_nnunet'}$"):
        load_dataset(raw)
    out = tmp_path / "kits"
    assert main(["convert", "kits23", str(raw), str(out)]) == 0
    ds = load_dataset(out)
    assert ds.layout == "nnunet" and ds.class_names == ("background", "kidney", "tumor", "cyst")
    assert [c.id for c in ds.train] == [f"case_{i:05d}" for i in range(5)]
    link = Path(ds.train[0].images[0])
    assert link.name == "case_00000_0000.nii.gz" and link.is_symlink()
    assert os.path.samefile(link, raw / "case_00000" / "imaging.nii.gz")
    assert main(["convert", "kits23", str(raw), str(out)]) == 2  # not into a folder with files
    assert main(["convert", "kits23", str(raw), str(tmp_path / "copied"), "--copy"]) == 0
    assert not (tmp_path / "copied" / "labelsTr" / "case_00000.nii.gz").is_symlink()


def test_totalsegmentator_masks_merge_into_one_label_map_with_the_names(built, tmp_path):
    from unetr.data.io import read_label

    raw = built["totalsegmentator"]
    with pytest.raises(DataError, match="unetr convert totalsegmentator"):
        load_dataset(raw)
    out = tmp_path / "ts"
    assert main(["convert", "totalsegmentator", str(raw), str(out)]) == 0
    ds = load_dataset(out)
    assert ds.class_names == ("background",) + TOTALSEG_STRUCTURES
    assert [c.id for c in ds.train] == [f"s{i:04d}" for i in range(1, 6)] and [c.id for c in ds.test] == ["s0006"]
    merged, _ = read_label(out / "labelsTr" / "s0002.nii.gz")
    for k, name in enumerate(TOTALSEG_STRUCTURES, start=1):
        mask, _ = read_label(raw / "s0002" / "segmentations" / f"{name}.nii.gz")
        assert np.array_equal(merged == k, mask == 1), name
    # a chosen subset, in the chosen order: the other structures become background
    sub = tmp_path / "sub"
    assert main(["convert", "totalsegmentator", str(raw / "s0002"), str(sub), "--structures", "spleen", "liver"]) == 0
    two, _ = read_label(sub / "labelsTr" / "s0002.nii.gz")
    assert np.array_equal(two == 1, merged == 4) and np.array_equal(two == 2, merged == 3) and two.max() == 2
    assert load_dataset(sub).class_names == ("background", "spleen", "liver")


def test_totalsegmentator_overlaps_and_bad_masks(tmp_path, caplog):
    from unetr.data.convert import merge_masks

    raw = totalsegmentator(tmp_path, subjects=(1,), test=())
    subject = raw / "s0001"
    liver = scene(81, 4)[1] == 3  # s0001's liver (seed 80 + 1)
    both = (liver | np.roll(liver, 2, axis=0)).astype(np.uint8)  # overlaps the liver and some background
    save_nifti(subject / "segmentations" / "spleen.nii.gz", both, LPS)
    label, _, overlap = merge_masks(subject, ("liver", "spleen"))
    assert overlap == int(liver.sum()) and np.array_equal(label == 1, liver)  # the first listed keeps them
    save_nifti(subject / "segmentations" / "spleen.nii.gz", both * 2, LPS)
    with pytest.raises(DataError, match="spleen.nii.gz: not a binary mask"):
        merge_masks(subject, ("liver", "spleen"))
    with pytest.raises(DataError, match="pancreas.nii.gz: missing"):
        merge_masks(subject, ("liver", "pancreas"))
    save_nifti(subject / "segmentations" / "liver.nii.gz", liver.astype(np.uint8), np.diag([2.0, 2, 2, 1]))
    with pytest.raises(DataError, match="liver.nii.gz: mask affine differs"):
        merge_masks(subject, ("liver",))


# ------------------------------------------------------------------------------------------------ end to end


@dataclass(frozen=True)
class Flow:
    """How a user runs a public dataset: what check/train take, what is predicted and scored against what."""

    dataset: str  # relative to the dataset folder ("" the folder itself)
    predict: Sequence[str]  # inputs, relative to the dataset folder
    reference: str  # a labels folder, or the dataset ("" / a JSON file): `unetr evaluate` pairs by case id
    predicted: Sequence[str]  # the prediction files expected
    modality: str
    convert: Optional[str] = None  # refused as published: converted first with `unetr convert`


FLOWS = {
    "msd_spleen": Flow("", ["imagesTr"], "", [f"spleen_{n}.nii.gz" for n in (2, 3, 6, 8, 10)], "CT"),
    "btcv": Flow("dataset_0.json", ["imagesTr/img0035.nii.gz"], "dataset_0.json", ["img0035.nii.gz"], "CT"),
    "amos": Flow("", ["imagesVa"], "labelsVa", ["amos_0008.nii.gz", "amos_0540.nii.gz"], "CT"),
    "word": Flow("", ["imagesVal"], "labelsVal", ["word_0101.nii.gz", "word_0102.nii.gz"], "CT"),
    "kits23": Flow("", ["imagesTr/case_00003_0000.nii.gz", "imagesTr/case_00004_0000.nii.gz"], "",
                   ["case_00003.nii.gz", "case_00004.nii.gz"], "CT", convert="kits23"),
    "nnunet_brats": Flow("", ["imagesTs"], "labelsTs", ["BraTS2021_00005.nii.gz"], "MR"),
    "totalsegmentator": Flow("", ["imagesTs"], "labelsTs", ["s0006.nii.gz"], "CT", convert="totalsegmentator"),
}


@pytest.mark.parametrize("name", list(FLOWS))
def test_public_layout_check_train_predict_evaluate(built, name, tmp_path, capsys):
    flow, folder = FLOWS[name], built[name]
    if flow.convert:
        assert main(["check", str(folder)]) == 1
        assert f"unetr convert {flow.convert} {folder} " in capsys.readouterr().out
        assert main(["convert", flow.convert, str(folder), str(tmp_path / "converted")]) == 0
        folder = tmp_path / "converted"
    dataset = folder / flow.dataset if flow.dataset else folder
    assert main(["check", str(dataset)]) == 0
    run = tmp_path / "run"
    assert main(["train", str(dataset), "--out", str(run), "--preset", "tiny", "--roi", "32", "--iterations", "2",
                 "--val-every", "2", "--no-progress", "--num-workers", "0", "--workers", "0", "--precision", "fp32",
                 "--device", "cpu", "--set", "samples_per_volume=1", "--set", "tensorboard=false"]) == 0
    plan = json.loads((run / "plan.json").read_text())
    assert plan["modality"] == flow.modality
    preds = tmp_path / "pred"
    assert main(["predict", "-m", str(run), "-i", *[str(folder / p) for p in flow.predict], "-o", str(preds),
                 "--device", "cpu", "--no-progress"]) == 0
    assert sorted(p.name for p in preds.iterdir()) == sorted(flow.predicted)
    reference = folder / flow.reference if flow.reference else dataset
    assert main(["evaluate", str(preds), str(reference), "-o", str(tmp_path / "eval")]) == 0
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["cases"] == len(flow.predicted) and not summary["problems"]


def test_btcv_recipe_on_plan_and_train(built, tmp_path, caplog):
    """`--recipe btcv` on the BTCV layout: the script's plan, and its epochs in iterations for these 4 training
    volumes (50 warm-up epochs = 200 iterations); the options given on the command line win."""
    datalist = built["btcv"] / "dataset_0.json"
    assert main(["plan", str(datalist), "-o", str(tmp_path / "plan.json"), "--recipe", "btcv", "--workers", "1"]) == 0
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["target_spacing"] == [1.5, 1.5, 2.0] and plan["roi"] == [96, 96, 96]
    assert (plan["geometry"], plan["label_resample"], plan["window"]) == ("monai", "nearest", [-175.0, 250.0, 0.0, 1.0])
    run = tmp_path / "run"
    argv = ["train", str(datalist), "--out", str(run), "--recipe", "btcv", "--preset", "tiny", "--roi", "32",
            "--iterations", "2", "--val-every", "2", "--no-progress", "--num-workers", "0", "--workers", "0",
            "--precision", "fp32", "--device", "cpu", "--set", "samples_per_volume=1", "--set", "tensorboard=false"]
    assert main(argv) == 0
    caplog.set_level("WARNING")
    assert main(argv) == 0  # the same command again: the recipe's plan settings are the plan's, no warning
    assert not [r for r in caplog.records if "ignoring the plan settings" in r.message]
    doc = json.loads((run / "config.json").read_text())
    train, model, plan = doc["train"], doc["model"], doc["plan"]
    assert (train["iterations"], train["val_every"], train["warmup_iterations"]) == (2, 2, 200)
    assert (train["image_threshold"], train["squared_pred"], train["decay_all"], train["val_mode"]) == (
        0.0, True, True, "constant")
    assert (train["smooth_nr"], train["smooth_dr"], train["samples_per_volume"]) == (0.0, 1e-6, 1)
    assert model["proj_type"] == "perceptron" and model["hidden_size"] == 192  # the recipe's embedding, tiny's sizes
    assert (plan["geometry"], plan["target_spacing"], plan["roi"]) == ("monai", [1.5, 1.5, 2.0], [32, 32, 32])
