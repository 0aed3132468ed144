"""Ensembles of untrained tiny models: the streamed mean, mirrorings, uncertainty maps, members' plans."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from unetr.cli import main
from unetr.config import InferConfig, Plan, preset
from unetr.errors import CheckpointError
from unetr.inference.ensemble import (
    MIRRORINGS,
    ensemble_probabilities,
    load_member,
    member_probabilities,
)
from unetr.inference.uncertainty import disagreement_map, entropy_map
from unetr.model import build_model, save_run
from unetr.package import open_model, shared_plan

ROI = (32, 32, 32)
SHAPE = (40, 34, 30)  # the image file, non-cubic

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _plan(**kw):
    base = dict(target_spacing=(2.0, 2.0, 2.0), roi=ROI, num_classes=3, class_names=("bg", "a", "b"),
                preset="tiny", window=(-175.0, 250.0, 0.0, 1.0))
    return Plan(**{**base, **kw})


def _run(folder, seed, plan=None):
    plan = plan or _plan()
    torch.manual_seed(seed)
    cfg = preset("tiny", in_channels=1, out_channels=3, img_size=ROI)
    save_run(folder, build_model(cfg), cfg, plan=plan.to_dict())
    return folder


def _image(path):
    rng = np.random.default_rng(0)
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij"), -1)
    hu = np.where((g ** 2).sum(-1) < 0.8, 40.0, -1000.0) + rng.normal(0, 20, SHAPE)
    nib.save(nib.Nifti1Image(hu.astype(np.float32), np.diag([1.5, 1.7, 2.2, 1.0])), str(path))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ens")
    return [_run(root / f"fold_{i}", seed=i) for i in range(3)], _image(root / "ct.nii.gz")


def test_the_streamed_mean_equals_the_mean_of_whole_member_volumes(runs):
    folders, _ = runs
    members = [m for f in folders for m in open_model(f).members]
    x = torch.rand((1, 40, 36, 44))
    cfg = InferConfig(precision="fp32", device="cpu")
    got = ensemble_probabilities([lambda m=m: load_member(m) for m in members], x, 3, cfg)
    whole = [member_probabilities(load_member(m), x, cfg) for m in members]  # (K, X, Y, Z) each
    total = whole[0] + whole[1] + whole[2]
    assert got.count == 3 and torch.equal(got.mean, total / 3)  # the same sums, in the same order
    assert torch.allclose(got.mean.sum(0), torch.ones(()), atol=1e-5)


def test_mirrorings_are_averaged_as_more_predictions(runs):
    folders, _ = runs
    member = open_model(folders[0]).members[0]
    x = torch.rand((1, 32, 32, 48))
    cfg = InferConfig(precision="fp32", device="cpu")
    got = ensemble_probabilities([lambda: load_member(member)], x, 3, cfg.replace(tta=True), votes=True)
    model = load_member(member)
    expected = sum(member_probabilities(model, x, cfg, axes=a) for a in MIRRORINGS) / len(MIRRORINGS)
    assert got.count == 8 and torch.allclose(got.mean, expected, atol=1e-6)
    assert int(got.votes.sum(0).min()) == int(got.votes.sum(0).max()) == 8  # one vote per prediction and voxel


def test_entropy_and_disagreement_maps():
    mean = torch.tensor([[1.0, 0.5, 1 / 3], [0.0, 0.5, 1 / 3], [0.0, 0.0, 1 / 3]]).reshape(3, 3, 1, 1)
    h = entropy_map(mean)[:, 0, 0]
    assert torch.allclose(h, torch.tensor([0.0, float(np.log(2) / np.log(3)), 1.0]), atol=1e-6)
    votes = torch.tensor([[3, 1, 0], [0, 2, 1], [0, 0, 2]], dtype=torch.uint8).reshape(3, 3, 1, 1)
    labels = torch.tensor([0, 0, 2]).reshape(3, 1, 1)
    d = disagreement_map(votes, labels, 3)[:, 0, 0]
    assert torch.allclose(d, torch.tensor([0.0, 2 / 3, 1 / 3]))


def test_one_member_predicts_as_a_run_always_did(runs, tmp_path):
    folders, image = runs
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    stale = a / f".ct.nii.gz.unetr-{2**22 + 7}-0badf00d.tmp.nii.gz"  # a killed writer's (no such process)
    stale.write_bytes(b"half a file")
    assert main(["predict", "-m", str(folders[0]), "-i", str(image), "-o", str(a), "--precision", "fp32",
                 "--no-progress"]) == 0
    from unetr.inference.predict import load_predictor, predict_files

    model, plan = load_predictor(folders[0])
    predict_files(model, plan, image, b, InferConfig(precision="fp32", device="cpu"), progress=False)
    assert nib.load(a / "ct.nii.gz").get_fdata().tolist() == nib.load(b / "ct.nii.gz").get_fdata().tolist()
    assert not stale.exists()  # an interrupted run's temporaries are removed, as for a checkpoint's prediction


def test_several_runs_make_an_ensemble_and_a_folder_of_folds_is_one(runs, tmp_path):
    folders, image = runs
    common = ["-i", str(image), "--precision", "fp32", "--no-progress"]
    assert main(["predict", "-m", *map(str, folders), "-o", str(tmp_path / "a"), *common]) == 0
    assert main(["predict", "-m", str(folders[0].parent), "-o", str(tmp_path / "b"), *common]) == 0
    a, b = (nib.load(tmp_path / x / "ct.nii.gz") for x in "ab")
    assert a.shape == SHAPE and np.allclose(a.affine, np.diag([1.5, 1.7, 2.2, 1.0]))
    assert a.get_fdata().tolist() == b.get_fdata().tolist()


def test_members_must_share_the_plan(runs, tmp_path, capsys):
    folders, image = runs
    other = _run(tmp_path / "other", seed=5, plan=_plan(target_spacing=(1.0, 2.0, 2.0)))
    with pytest.raises(CheckpointError, match=r"different preprocessing \(target_spacing"):
        shared_plan(open_model(folders[0]).members + open_model(other).members)
    assert main(["predict", "-m", str(folders[0]), str(other), "-i", str(image), "-o", str(tmp_path / "o")]) == 2
    assert "must share the plan" in capsys.readouterr().err
    bigger = _run(tmp_path / "roi", seed=6, plan=_plan(roi=(48, 48, 48), preset="tiny"))
    assert shared_plan(open_model(folders[0]).members + open_model(bigger).members)["roi"] == list(ROI)  # ROI may differ


def test_ensemble_options_that_do_not_apply(runs, tmp_path, capsys):
    folders, image = runs
    args = ["predict", "-m", *map(str, folders[:2]), "-i", str(image), "-o", str(tmp_path / "o")]
    assert main(args + ["--inverse", "labels"]) == 2
    assert "--inverse soft" in capsys.readouterr().err
    assert main(args + ["--compile"]) == 2
    assert "drop --compile" in capsys.readouterr().err
    assert main(["predict", "-m", str(folders[0]), "-i", str(image), "-o", str(tmp_path / "p"), "--spacing", "1", "1",
                 "1"]) == 2
    assert "is a run" in capsys.readouterr().err


def test_ensemble_probabilities_file(runs, tmp_path):
    folders, image = runs
    out = tmp_path / "o"
    assert main(["predict", "-m", *map(str, folders), "-i", str(image), "-o", str(out), "--probabilities",
                 "--precision", "fp32", "--no-progress"]) == 0
    npz = np.load(out / "ct.npz")
    assert npz["probabilities"].shape == (3, *SHAPE) and npz["probabilities"].dtype == np.float16
    assert list(npz["class_names"]) == ["bg", "a", "b"] and np.allclose(npz["affine"], np.diag([1.5, 1.7, 2.2, 1.0]))
    assert json.loads((folders[0] / "config.json").read_text())["plan"]["num_classes"] == 3
