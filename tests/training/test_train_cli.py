"""`unetr train` and train_dataset on a small phantom dataset: the whole path, and bad input caught early."""

import json

import pytest

from unetr.cli import main
from unetr.config import TrainConfig
from unetr.errors import DataError, UnetrError
from unetr.training.prepare import train_dataset

FAST = dict(iterations=2, val_every=2, checkpoint_every=1, log_every=1, samples_per_volume=1, num_workers=0,
            device="cpu", precision="fp32", tensorboard=False)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from unetr.data.synthetic import make_phantom_dataset

    return make_phantom_dataset(tmp_path_factory.mktemp("ds") / "phantom", cases=5, test_cases=0, seed=0)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache") / "cache"


def test_cli_trains_and_a_rerun_resumes(phantom, cache, tmp_path):
    out = tmp_path / "run"
    argv = ["train", str(phantom), "--out", str(out), "--preset", "tiny", "--roi", "32", "--iterations", "2",
            "--val-every", "2", "--cache", str(cache), "--no-progress", "--num-workers", "0", "--precision", "fp32",
            "--set", "samples_per_volume=1", "--set", "model.dropout=0.0", "--set", "tensorboard=false"]
    assert main(argv) == 0
    doc = json.loads((out / "config.json").read_text())
    assert doc["model"]["hidden_size"] == 192 and doc["plan"]["roi"] == [32, 32, 32]
    assert doc["train"]["iterations"] == 2 and doc["plan"]["preset"] == "tiny"
    assert (out / "plan.json").is_file() and (out / "metrics.csv").is_file()
    assert main(argv) == 0  # the same command again: already done, nothing retrained
    longer = list(argv)
    longer[longer.index("--iterations") + 1] = "3"
    assert main(longer) == 0  # a longer budget continues the run
    assert (out / "metrics.csv").read_text().splitlines()[-1].startswith("3,")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert main(longer + ["--lr", "3e-3"]) == 2  # another optimizer: refused, nothing touched
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert main(longer + ["--lr", "3e-3", "--restart"]) == 0  # the old run moves aside, whole
    old = out.with_name("run.old-1")
    assert {p.name: p.read_bytes() for p in old.iterdir() if p.is_file()} == before
    assert json.loads((out / "config.json").read_text())["train"]["lr"] == 3e-3


def test_cli_bad_set_key(phantom, tmp_path, capsys):
    assert main(["train", str(phantom), "--out", str(tmp_path / "r"), "--set", "lrr=1"]) == 2
    assert "unknown TrainConfig field" in capsys.readouterr().err


def test_unwritable_out(phantom, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UnetrError, match="cannot write"):
        train_dataset(phantom, blocker / "run", TrainConfig(**FAST))


def test_empty_dataset(tmp_path):
    (tmp_path / "empty" / "imagesTr").mkdir(parents=True)
    (tmp_path / "empty" / "labelsTr").mkdir()
    with pytest.raises(DataError):
        train_dataset(tmp_path / "empty", tmp_path / "run", TrainConfig(**FAST))


def test_labels_outside_the_declared_classes(phantom, tmp_path):
    from unetr.config import Plan, save_json

    plan = Plan(roi=(32, 32, 32), num_classes=2, class_names=("background", "liver"), preset="tiny")
    save_json(tmp_path / "plan.json", plan.to_dict())
    with pytest.raises(DataError, match="outside the 2 declared classes"):
        train_dataset(phantom, tmp_path / "run", TrainConfig(**FAST), plan_path=tmp_path / "plan.json",
                      cache_dir=tmp_path / "cache", workers=0, progress=False)


def test_roi_larger_than_the_images_without_padding(phantom, cache, tmp_path):
    with pytest.raises(DataError, match="larger than"):
        train_dataset(phantom, tmp_path / "run", TrainConfig(**FAST, pad_to_roi=False), preset_name="tiny",
                      plan_overrides={"roi": (128, 128, 128)}, cache_dir=cache, workers=0, progress=False)


def test_a_roi_larger_than_the_images_is_padded_with_a_notice(phantom, tmp_path, caplog):
    from unetr.data.cache import build_cache
    from unetr.data.cases import load_dataset
    from unetr.data.plan import make_plan
    from unetr.training.prepare import check_cases

    ds = load_dataset(phantom)
    plan = make_plan(ds, preset="tiny", roi=(96, 96, 32))
    build_cache(ds.train[:2], plan, tmp_path / "cache", workers=0, progress=False)
    ids = [c.id for c in ds.train[:2]]
    check_cases(ids, tmp_path / "cache", plan, pad_to_roi=True)
    assert "ROI (96, 96, 32) is larger than 2 of 2 preprocessed image(s)" in caplog.text
    assert "crops are padded with zeros" in caplog.text and "--roi 64 64 32 would fit" in caplog.text
    with pytest.raises(DataError, match="padding is off"):
        check_cases(ids, tmp_path / "cache", plan, pad_to_roi=False)
