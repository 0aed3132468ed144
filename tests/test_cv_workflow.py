"""The cross-validation workflow on the phantom dataset with 3 folds (a few iterations each): train --folds,
unetr cv, ensembles, uncertainty, post-processing applied by predict, the zip package and unetr info."""

import json
import shutil

import numpy as np
import pytest
import torch

from unetr.cli import main
from unetr.config import InferConfig, Plan
from unetr.data.io import read_image, read_label
from unetr.data.preprocess import invert_to_original, preprocess_image_file
from unetr.inference.ensemble import labels_in_input_space, load_member, member_probabilities
from unetr.inference.postprocess import PostProcessing, Step
from unetr.package import open_model

TRAIN = ["--preset", "tiny", "--roi", "32", "--iterations", "2", "--val-every", "2", "--no-progress",
         "--num-workers", "0", "--precision", "fp32", "--workers", "0", "--set", "samples_per_volume=1",
         "--set", "tensorboard=false", "--set", "lr=3e-3"]
FP32 = ["--precision", "fp32", "--no-progress"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory):
    from unetr.data.synthetic import make_phantom_dataset

    root = tmp_path_factory.mktemp("cv")
    ds = make_phantom_dataset(root / "ds", cases=6, test_cases=1, seed=0, size=(72.0, 66.0, 64.0))
    run = root / "runs" / "p"
    assert main(["train", str(ds), "--out", str(run), "--folds", "3", "--save-probabilities", *TRAIN]) == 0
    return ds, run


def _labels(folder):
    return {p.name: read_label(p)[0] for p in sorted(folder.glob("*.nii.gz")) if "_" not in p.name[len("phantom_"):]}


def test_folds_validation_sets_partition_the_training_cases(cv_run):
    ds, run = cv_run
    ids = sorted(p.name[: -len(".nii.gz")] for p in (ds / "labelsTr").glob("*.nii.gz"))
    splits = json.loads((run / "splits.json").read_text())
    vals = [f["validation"] for f in splits["folds"]]
    assert len(vals) == 3 and sorted(c for v in vals for c in v) == ids  # each case validates exactly once
    for k, val in enumerate(vals):
        fold = run / f"fold_{k}"
        assert json.loads((fold / "config.json").read_text())["train"]["fold"] == k
        assert (fold / "model_final.safetensors").is_file()
        assert sorted(p.name[: -len(".nii.gz")] for p in (fold / "validation").glob("*.nii.gz")) == sorted(val)
        for cid in val:  # the probabilities in the original space, compact
            npz = np.load(fold / "validation" / f"{cid}.npz")
            label = read_label(fold / "validation" / f"{cid}.nii.gz")[0]
            assert npz["probabilities"].dtype == np.float16 and npz["probabilities"].shape == (4, *label.shape)
            assert np.allclose(npz["probabilities"].astype(np.float32).sum(0), 1.0, atol=5e-3)
            assert (npz["probabilities"].argmax(0) == label).mean() > 0.99  # fp16 rounding may flip near-ties


def test_cv_figures_equal_evaluate_on_the_pooled_predictions(cv_run, tmp_path):
    ds, run = cv_run
    assert main(["cv", str(run)]) == 0
    pooled = tmp_path / "pooled"
    pooled.mkdir()
    for p in run.glob("fold_*/validation/*.nii.gz"):
        shutil.copy(p, pooled / p.name)
    assert main(["evaluate", str(pooled), str(ds / "labelsTr"), "--labels", str(ds / "dataset.json"),
                 "-o", str(tmp_path / "ev")]) == 0
    ev = json.loads((tmp_path / "ev" / "summary.json").read_text())
    cv = json.loads((run / "crossval" / "summary.json").read_text())
    for key in ("classes", "mean_dice", "mean_hd95", "mean_surface_dice", "cases"):
        assert cv[key] == ev[key], key
    assert (run / "crossval" / "metrics.csv").read_text() == (tmp_path / "ev" / "metrics.csv").read_text()
    assert sorted(cv["folds"]) == ["0", "1", "2"]
    rows = (run / "crossval" / "folds.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 * 3  # header, 3 folds x 3 classes
    pp = json.loads((run / "postprocessing.json").read_text())
    assert pp["format"] == "unetr-postprocessing" and set(pp["dice_before"]) == {"liver", "spleen", "kidney", "mean"}


def test_an_ensembles_labels_are_the_argmax_of_its_members_averaged_probabilities(cv_run, tmp_path):
    ds, run = cv_run
    out = tmp_path / "ens"
    assert main(["predict", "-m", str(run), "-i", str(ds / "imagesTs"), "-o", str(out), "--no-postprocessing",
                 *FP32]) == 0
    (name,) = [p.name for p in out.glob("*.nii.gz")]
    ensemble = read_label(out / name)[0]
    source = open_model(run)
    plan = Plan.from_dict(source.plan)
    image, record = preprocess_image_file(ds / "imagesTs" / name.replace(".nii.gz", "_0000.nii.gz"), plan)
    x = torch.from_numpy(image)
    config = InferConfig(precision="fp32", device="cpu")
    members = [member_probabilities(load_member(m), x, config) for m in source.members]  # each (K, X', Y', Z')
    total = members[0].clone()
    for p in members[1:]:
        total += p
    mean = total / len(members)
    assert (labels_in_input_space(mean, record) == ensemble).all()  # fp32, every voxel
    # the same members' probabilities taken to the input grid one by one, then averaged: resampling is
    # linear, so only float rounding separates the two orders
    back = sum(invert_to_original(p.numpy(), record, is_label=False) for p in members) / len(members)
    assert (back.argmax(0) == ensemble).mean() > 0.999
    singles = [labels_in_input_space(p, record) for p in members]
    assert any((s != ensemble).any() for s in singles)  # the members disagree somewhere: the mean decides


@pytest.mark.parametrize("kind", ["entropy", "disagreement"])
def test_uncertainty_maps(cv_run, tmp_path, kind):
    ds, run = cv_run
    out = tmp_path / kind
    assert main(["predict", "-m", str(run), "-i", str(ds / "imagesTs"), "-o", str(out), "--uncertainty", kind,
                 *FP32]) == 0
    (path,) = out.glob("*_uncertainty.nii.gz")
    u, _ = read_image(path)
    image, _ = read_image(next((ds / "imagesTs").glob("*.nii.gz")))
    assert u.shape == image.shape and u.min() >= 0.0 and u.max() <= 1.0 and u.max() > u.min()


def test_predict_applies_the_post_processing_unless_told_not_to(cv_run, tmp_path):
    ds, run = cv_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("cache", "last.pt"))
    pp = PostProcessing((Step("foreground", "largest"),))
    (copy / "postprocessing.json").write_text(json.dumps(pp.to_dict()))
    args = ["-i", str(ds / "imagesTs"), *FP32]
    assert main(["predict", "-m", str(copy), "-o", str(tmp_path / "a"), *args]) == 0
    assert main(["predict", "-m", str(copy), "-o", str(tmp_path / "b"), "--no-postprocessing", *args]) == 0
    (a,), (b,) = _labels(tmp_path / "a").values(), _labels(tmp_path / "b").values()
    spacing = read_label(next((tmp_path / "b").glob("*.nii.gz")))[1].spacing
    assert (a == pp.apply(b, spacing)).all()
    from scipy import ndimage

    assert ndimage.label(b > 0, np.ones((3, 3, 3)))[1] > 1 and (a != b).any()  # there was something to clean


def test_the_package_predicts_where_the_run_never_was_and_says_what_it_is(cv_run, tmp_path, capsys):
    ds, run = cv_run
    copy = tmp_path / "elsewhere" / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("cache", "last.pt"))
    assert main(["cv", str(copy)]) == 0  # its figures and post-processing travel in the package
    zipped = tmp_path / "p.unetr.zip"
    assert main(["export", str(copy), "--format", "zip", "-o", str(zipped)]) == 0
    assert main(["export", str(copy), "--format", "zip", "-o", str(zipped)]) == 2  # exists: not replaced
    assert main(["predict", "-m", str(copy), "-i", str(ds / "imagesTs"), "-o", str(tmp_path / "a"), *FP32]) == 0
    shutil.rmtree(tmp_path / "elsewhere")  # the run is gone; the package holds everything
    capsys.readouterr()
    assert main(["predict", "-m", str(zipped), "-i", str(ds / "imagesTs"), "-o", str(tmp_path / "b"), *FP32]) == 0
    assert [v.tolist() for v in _labels(tmp_path / "a").values()] == [v.tolist() for v in _labels(tmp_path / "b").values()]
    capsys.readouterr()
    assert main(["info", str(zipped)]) == 0
    text = capsys.readouterr().out
    assert "package" in text and "members (3): fold_0" in text and "liver" in text and "cross-validation" in text
    assert "post-processing:" in text and "torch" in text and "ROI 32x32x32" in text
