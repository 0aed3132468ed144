"""`unetr train`'s CPU defaults and its --time-budget option, through the command line."""

import json

import pytest

from unetr.cli import main


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from unetr.data.synthetic import make_phantom_dataset

    return make_phantom_dataset(tmp_path_factory.mktemp("ds") / "phantom", cases=5, test_cases=0, seed=0)


def _argv(phantom, out, *extra):
    return ["train", str(phantom), "--out", str(out), "--preset", "tiny", "--roi", "32", "--iterations", "1",
            "--val-every", "1", "--device", "cpu", "--precision", "fp32", "--no-progress",
            "--set", "samples_per_volume=1", "--set", "tensorboard=false", *extra]


def test_cpu_training_defaults_to_no_loader_worker(phantom, tmp_path):
    from unetr.accel import device_defaults

    assert main(_argv(phantom, tmp_path / "a", "--time-budget", "10m")) == 0
    assert json.loads((tmp_path / "a" / "config.json").read_text())["train"]["num_workers"] == -1  # auto:
    assert all(device_defaults("cpu", n).num_workers == 0 for n in (1, 2, 16))  # none on a CPU
    assert main(_argv(phantom, tmp_path / "b", "--num-workers", "1")) == 0  # asked for is asked for
    assert json.loads((tmp_path / "b" / "config.json").read_text())["train"]["num_workers"] == 1


def test_bad_time_budget_is_one_line(phantom, tmp_path, capsys):
    assert main(_argv(phantom, tmp_path / "c", "--time-budget", "soon")) == 2
    err = capsys.readouterr().err
    assert "time budget" in err and "soon" in err and "Traceback" not in err
    assert not (tmp_path / "c").exists()  # refused before anything is written


def test_time_budget_is_for_one_run_not_folds(phantom, tmp_path, capsys):
    argv = _argv(phantom, tmp_path / "d", "--time-budget", "10m", "--folds", "2")
    assert main(argv) == 2
    assert "--time-budget" in capsys.readouterr().err
