"""Killed commands lose nothing: SIGKILL and SIGTERM at several points of preprocess, train and predict.

Each test starts the command as a process, kills it at a point it reaches (a case done, a checkpoint
written, an output appeared), then reruns the same command (in-process, for speed). The rerun's outputs
equal those of an uninterrupted run, no temporary file is left, and no process the killed one started is
still running. The last test runs two `unetr train` on one run directory at once: the second is refused.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, List

import nibabel as nib
import numpy as np
import pytest
import torch

from unetr import cli
from unetr.fsutil import process_alive

TRAIN = ["--preset", "tiny", "--set", "model.hidden_size=48", "--set", "model.mlp_dim=96", "--set",
         "samples_per_volume=1", "--set", "tensorboard=false", "--set", "checkpoint_minutes=0", "--iterations", "4",
         "--checkpoint-every", "1", "--val-every", "2", "--num-workers", "0", "--precision", "fp32", "--threads", "1",
         "--no-progress", "--workers", "0"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A phantom dataset, its plan and cache, a run trained without interruption, and its predictions."""
    from unetr.data.synthetic import make_phantom_dataset

    w = tmp_path_factory.mktemp("kill")
    make_phantom_dataset(w / "ds", cases=6, test_cases=3, seed=4)
    assert cli.main(["plan", str(w / "ds"), "-o", str(w / "plan.json"), "--roi", "32", "--preset", "tiny"]) == 0
    assert cli.main(["preprocess", str(w / "ds"), "--plan", str(w / "plan.json"), "--cache", str(w / "cache"),
                     "--workers", "0"]) == 0
    assert cli.main(_train(w, w / "run")) == 0
    assert cli.main(_predict(w, w / "pred")) == 0
    return w


def _train(w: Path, out: Path, *extra: str) -> List[str]:
    return ["train", str(w / "ds"), "-o", str(out), "--plan", str(w / "plan.json"), "--cache", str(w / "cache"),
            *TRAIN, *extra]


def _predict(w: Path, out: Path) -> List[str]:
    return ["predict", "-m", str(w / "run"), "-i", str(w / "ds" / "imagesTs"), "-o", str(out), "--no-progress"]


def _start(argv: List[str], log: Path) -> subprocess.Popen:
    """The command as a process, paced (tests/paced_unetr.py): a pause after each file it finishes, so that the
    kill lands before the next one however loaded the machine is."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as f:
        return subprocess.Popen([sys.executable, str(Path(__file__).parent / "paced_unetr.py"), *argv], stdout=f,
                                stderr=subprocess.STDOUT, env=env)


def _wait_for(proc: subprocess.Popen, ready: Callable[[], bool], log: Path, timeout: float = 120.0) -> None:
    """Poll until ``ready()``; fail when the process ends first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the command ended (exit {proc.returncode}) before the kill point:\n{log.read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no kill point within {timeout} s:\n{log.read_text()}")
        time.sleep(0.02)


def _children(pid: int) -> List[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _kill(proc: subprocess.Popen, sig: int, log: Path) -> None:
    assert proc.poll() is None, "the command ended before the kill"
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert proc.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 128 + signal.SIGTERM), log.read_text()
    if sig == signal.SIGTERM:
        last = log.read_text().strip().splitlines()[-1]
        assert "terminated (SIGTERM)" in last and "Traceback" not in log.read_text()


def _all_gone(pids: List[int], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while any(process_alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _temporaries(folder: Path) -> List[Path]:
    return [p for p in folder.rglob(".*") if ".tmp" in p.name]


def _case_jsons(cache: Path) -> List[Path]:
    return sorted(p for p in cache.glob("*.json") if p.name != "cache.json")


# ------------------------------------------------------------------------------------------ preprocess


@pytest.mark.parametrize("sig, after", [(signal.SIGKILL, 1), (signal.SIGTERM, 3)], ids=["SIGKILL", "SIGTERM"])
def test_preprocess(world, tmp_path, sig, after):
    cache, log = tmp_path / "cache", tmp_path / "log"
    argv = ["preprocess", str(world / "ds"), "--plan", str(world / "plan.json"), "--cache", str(cache)]
    proc = _start(argv + ["--workers", "2"], log)
    workers: List[int] = []

    def ready() -> bool:
        workers[:] = sorted(set(workers) | set(_children(proc.pid)))
        return len(workers) >= 2 and len(_case_jsons(cache)) >= after

    _wait_for(proc, ready, log)
    _kill(proc, sig, log)
    assert _all_gone(workers), "a worker outlived the command"
    assert len(_case_jsons(cache)) < 6  # killed mid-way: the rerun has work to do
    assert cli.main(argv + ["--workers", "0"]) == 0
    assert not _temporaries(cache)
    reference = _case_jsons(world / "cache")
    assert [p.name for p in _case_jsons(cache)] == [p.name for p in reference]
    for ref in reference:
        assert json.loads((cache / ref.name).read_text()) == json.loads(ref.read_text())
        for kind in ("image", "label"):
            name = ref.name.replace(".json", f"_{kind}.npy")
            assert np.array_equal(np.load(cache / name), np.load(world / "cache" / name)), name


# ------------------------------------------------------------------------------------------ train


def _rows(path: Path) -> list:
    with path.open(newline="") as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


def _weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _iteration(run: Path) -> int:
    try:
        return int(torch.load(run / "last.pt", map_location="cpu", weights_only=True)["iteration"])
    except (OSError, RuntimeError, EOFError):
        return 0


@pytest.mark.parametrize("sig, at", [(signal.SIGKILL, 1), (signal.SIGTERM, 2)], ids=["SIGKILL", "SIGTERM"])
def test_train(world, tmp_path, sig, at):
    run, log = tmp_path / "run", tmp_path / "log"
    proc = _start(_train(world, run), log)
    _wait_for(proc, lambda: _iteration(run) >= at, log)
    _kill(proc, sig, log)
    assert _iteration(run) < 4
    assert cli.main(_train(world, run)) == 0  # the same command resumes
    assert not _temporaries(run) and not (run / "train.lock").exists()
    ref = world / "run"
    a, b = _weights(run / "last.pt"), _weights(ref / "last.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _rows(run / "metrics.csv") == _rows(ref / "metrics.csv")
    assert (run / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes()


# ------------------------------------------------------------------------------------------ predict


@pytest.mark.parametrize("sig, after", [(signal.SIGKILL, 1), (signal.SIGTERM, 0)], ids=["SIGKILL", "SIGTERM"])
def test_predict(world, tmp_path, sig, after):
    out, log = tmp_path / "pred", tmp_path / "log"
    proc = _start(_predict(world, out), log)
    _wait_for(proc, lambda: out.is_dir() and len(list(out.glob("*.nii.gz"))) >= after, log)
    _kill(proc, sig, log)
    assert len(list(out.glob("*.nii.gz"))) < 3
    assert cli.main(_predict(world, out)) == 0
    assert not _temporaries(out)
    names = sorted(p.name for p in (world / "pred").glob("*.nii.gz"))
    assert sorted(p.name for p in out.glob("*.nii.gz")) == names and len(names) == 3
    for name in names:
        got, ref = nib.load(str(out / name)), nib.load(str(world / "pred" / name))
        assert np.array_equal(np.asarray(got.dataobj), np.asarray(ref.dataobj)), name
        assert np.array_equal(got.affine, ref.affine), name


# ------------------------------------------------------------------------------------------ two at once


def test_a_second_train_on_the_same_run_is_refused(world, tmp_path):
    run = tmp_path / "run"
    first = _start(_train(world, run, "--iterations", "1000", "--checkpoint-every", "1000"), tmp_path / "first")
    _wait_for(first, lambda: (run / "train.lock").exists(), tmp_path / "first")
    second = subprocess.run([sys.executable, "-m", "unetr", *_train(world, run, "--iterations", "1000",
                                                                    "--checkpoint-every", "1000")],
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert second.returncode == 2
    said = [line for line in second.stderr.splitlines() if line.startswith("unetr train:")]
    assert len(said) == 1 and f"PID {first.pid} on " in said[0] and "Traceback" not in second.stderr
    assert first.poll() is None  # the first run goes on, untouched
    _kill(first, signal.SIGTERM, tmp_path / "first")
    assert not (run / "train.lock").exists()
