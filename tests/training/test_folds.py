"""Training on splits that never move: splits.json next to the plan, --fold all, --folds and --fold-parallel."""

import json

import pytest

from unetr.cli import main
from unetr.config import TrainConfig
from unetr.data.cases import load_dataset
from unetr.errors import DataError
from unetr.model.checkpoint import stored_model_config
from unetr.training import distributed as D
from unetr.training.folds import folds_for_rank, parse_folds, train_folds
from unetr.training.prepare import fold_cases

SMALL = (72.0, 66.0, 64.0)  # mm: ~48x44x32 voxels, enough for a 32^3 crop
FAST = dict(iterations=2, val_every=2, checkpoint_every=2, log_every=1, samples_per_volume=1, num_workers=0,
            device="cpu", precision="fp32", tensorboard=False)
TRAIN = ["--preset", "tiny", "--roi", "32", "--iterations", "2", "--val-every", "2", "--no-progress",
         "--num-workers", "0", "--precision", "fp32", "--workers", "0", "--set", "samples_per_volume=1",
         "--set", "tensorboard=false"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _phantoms(folder, cases):
    from unetr.data.synthetic import make_phantom_dataset

    return make_phantom_dataset(folder, cases=cases, test_cases=0, seed=0, size=SMALL)


@pytest.fixture(scope="module")
def five(tmp_path_factory):
    return _phantoms(tmp_path_factory.mktemp("ds") / "five", 5)


def test_parse_folds():
    assert parse_folds([3]) == ([0, 1, 2], 3)
    assert parse_folds([4, 0, 2, 2]) == ([0, 2, 4], None)
    for bad in ([], [1], [0, -1]):
        with pytest.raises(ValueError, match="--folds"):
            parse_folds(bad)
    assert folds_for_rank([0, 1, 2, 3, 4], 1, 2) == [1, 3] and folds_for_rank([0], 1, 2) == []


@pytest.mark.parametrize("fold", ["two", -1, True])
def test_bad_fold_setting(fold):
    with pytest.raises(ValueError, match="fold"):
        TrainConfig(fold=fold)
    assert TrainConfig(fold="3").fold == 3 and TrainConfig(fold="all").fold == "all"


def test_the_split_does_not_depend_on_the_training_seed_and_is_written_next_to_the_plan(five, tmp_path):
    ds = load_dataset(five)
    plan_dir = tmp_path / "shared"
    plan_dir.mkdir()
    plan = plan_dir / "plan.json"
    got = [fold_cases(ds, "ds", tmp_path / f"run{s}", TrainConfig(seed=s, fold=1), plan_path=plan) for s in (0, 9)]
    assert [c.id for c in got[0][1]] == [c.id for c in got[1][1]] and len(got[0][1]) == 1
    assert (plan_dir / "splits.json").is_file() and not (tmp_path / "run0" / "splits.json").exists()
    own = fold_cases(ds, "ds", tmp_path / "own", TrainConfig(fold=1))  # no --plan: next to OUT/plan.json
    assert (tmp_path / "own" / "splits.json").is_file() and [c.id for c in own[1]] == [c.id for c in got[0][1]]
    train, val = fold_cases(ds, "ds", tmp_path / "all", TrainConfig(fold="all"))
    assert len(train) == 5 and val == []


def test_a_resume_that_would_see_another_split_is_refused(five, tmp_path):
    ds = load_dataset(five)
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"")  # a run begun before splits were written down (seeded by --seed)
    with pytest.raises(DataError, match="begun without .*splits.json"):
        fold_cases(ds, "ds", out, TrainConfig(fold=0))
    fold_cases(ds, "ds", tmp_path / "other", TrainConfig(fold=0), plan_path=out / "plan.json")  # writes the split
    fold_cases(ds, "ds", out, TrainConfig(fold=0))  # now the run resumes on the split written down
    smaller = load_dataset(five)
    smaller = type(smaller)(smaller.root, smaller.name, smaller.train[:4])
    with pytest.raises(DataError, match=r"1 missing \(phantom_004\)"):
        fold_cases(smaller, "ds", out, TrainConfig(fold=0))
    # --restart moves the run and its splits.json aside: a new split of the cases there are now
    train, val = fold_cases(smaller, "ds", out, TrainConfig(fold=0, num_folds=4), write=False, anew=True)
    assert len(train) + len(val) == 4


def test_too_few_cases_say_what_to_do_and_fold_all_trains_on_every_case(tmp_path, capsys):
    two = _phantoms(tmp_path / "two", 2)
    out = tmp_path / "run"
    assert main(["train", str(two), "--out", str(out), *TRAIN]) == 2
    err = capsys.readouterr().err
    assert "2 case(s) cannot be split into 5 folds" in err and "--fold all" in err and "--folds 2" in err
    assert main(["train", str(two), "--out", str(out), "--fold", "all", *TRAIN]) == 0
    doc = json.loads((out / "config.json").read_text())
    assert doc["train"]["fold"] == "all" and (out / "model.safetensors").is_file()
    assert not (out / "splits.json").exists()  # no folds: nothing to split
    header = (out / "metrics.csv").read_text().splitlines()
    assert all(row.split(",")[-2] == "" for row in header[1:])  # no validation Dice in any row


def test_a_datalist_with_its_own_validation_cannot_cross_validate(tmp_path):
    from unetr.config import save_json

    entries = [{"image": f"img{i}.nii.gz", "label": f"lab{i}.nii.gz"} for i in range(3)]
    save_json(tmp_path / "list.json", {"training": entries[:2], "validation": entries[2:]})
    with pytest.raises(DataError, match="names its own validation cases"):
        train_folds(tmp_path / "list.json", tmp_path / "run", TrainConfig(**FAST), [0, 1], num_folds=2)


def test_fold_parallel_gives_each_process_its_folds(five, tmp_path, monkeypatch):
    """Two torchrun processes, played one after the other in this process (the barrier between them is
    all they share): each trains only its fold, alone, with the one plan, split and cache."""
    monkeypatch.setattr(D, "barrier", lambda env: None)
    out = tmp_path / "folds"
    common = dict(num_folds=2, fold_parallel=True, preset_name="tiny", plan_overrides={"roi": (32, 32, 32)},
                  workers=0, progress=False)
    cfg = TrainConfig(**FAST)
    r0 = train_folds(five, out, cfg, [0, 1], env=D.DistEnv(rank=0, world_size=2), **common)
    assert list(r0) == [0] and (out / "fold_0" / "model_final.safetensors").is_file() and not (out / "fold_1").exists()
    r1 = train_folds(five, out, cfg, [0, 1], env=D.DistEnv(rank=1, local_rank=1, world_size=2), **common)
    assert list(r1) == [1] and (out / "fold_1" / "model_final.safetensors").is_file()
    splits = json.loads((out / "splits.json").read_text())
    for k in (0, 1):
        doc = json.loads((out / f"fold_{k}" / "config.json").read_text())
        assert doc["train"]["fold"] == k and doc["train"]["num_folds"] == 2
        # the final weights carry the model config, as every run's weights do (a tiny fold loads as tiny)
        assert stored_model_config(out / f"fold_{k}" / "model_final.safetensors") == doc["model"]
        predicted = sorted(p.name[:-len(".nii.gz")] for p in (out / f"fold_{k}" / "validation").glob("*.nii.gz"))
        assert predicted == splits["folds"][k]["validation"]
    assert json.loads((out / "folds.json").read_text())["folds"] == [0, 1]


def test_an_unfinished_fold_resumes_and_a_longer_one_predicts_again(five, tmp_path):
    out = tmp_path / "folds"
    kw = dict(num_folds=2, preset_name="tiny", plan_overrides={"roi": (32, 32, 32)}, workers=0, progress=False)
    train_folds(five, out, TrainConfig(**FAST), [1], **kw)
    stamp = out / "fold_1" / "validation" / "predicted.json"
    assert json.loads(stamp.read_text())["iteration"] == 2
    before = (out / "fold_1" / "model_final.safetensors").stat().st_mtime_ns
    train_folds(five, out, TrainConfig(**FAST), [1], **kw)  # finished: nothing retrained or repredicted
    assert (out / "fold_1" / "model_final.safetensors").stat().st_mtime_ns == before
    train_folds(five, out, TrainConfig(**{**FAST, "iterations": 3, "val_every": 3}), [1], **kw)
    assert json.loads(stamp.read_text())["iteration"] == 3  # the final weights changed: predicted again
    with pytest.raises(DataError, match="has 2 folds and this run asks for 3"):
        train_folds(five, out, TrainConfig(**FAST), [0, 1, 2], num_folds=3, **{k: v for k, v in kw.items()
                                                                                 if k != "num_folds"})


def test_the_folds_plan_is_made_as_one_runs_plan(five, tmp_path):
    """The folds' plan is fingerprinted with the body rule of the plan the overrides make, as one run's is
    (the folds used to measure the crops with the default rule whatever ``--modality`` said)."""
    from unetr.data.plan import load_plan, plan_dataset

    overrides = {"roi": (32, 32, 32), "modality": "MR"}
    out = tmp_path / "folds"
    train_folds(five, out, TrainConfig(**FAST), [0], num_folds=2, preset_name="tiny", plan_overrides=overrides,
                workers=0, progress=False)
    plan, fp = plan_dataset(load_dataset(five), workers=0, preset="tiny", **overrides)
    assert json.loads((out / "fingerprint.json").read_text()) == json.loads(json.dumps(fp))
    assert load_plan(out / "plan.json") == plan


def test_a_plan_named_with_plan_is_read_never_written(five, tmp_path):
    """``--plan`` names the user's file: with ``--folds`` as in one run, a missing one is an error, not a new
    plan written there."""
    missing = tmp_path / "mine" / "plan.json"
    with pytest.raises((FileNotFoundError, DataError, ValueError)):
        train_folds(five, tmp_path / "folds", TrainConfig(**FAST), [0], num_folds=2, preset_name="tiny",
                    plan_path=missing, plan_overrides={"roi": (32, 32, 32)}, workers=0, progress=False)
    assert not missing.exists()
