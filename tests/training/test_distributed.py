import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_helpers import tiny_setup

from unetr.data.synthetic import make_phantom_dataset
from unetr.device import resolve_device
from unetr.model import build_model
from unetr.training import distributed as D
from unetr.training.optim import build_optimizer
from unetr.training.resume import Progress, ResumeState, RngState, restore_resume, save_resume
from unetr.training.run_dir import run_config

HERE = Path(__file__).parent


def test_single_process_environment_is_a_no_op():
    env = D.setup("cpu", environ={})
    assert (env.rank, env.world_size, env.is_main, env.distributed) == (0, 1, True, False)
    t = torch.ones(3)
    assert D.all_reduce_sum(t, env) is t and t.tolist() == [1, 1, 1]
    assert D.all_reduce_mean(2.5, env) == 2.5
    assert D.any_true(True, env) and not D.any_true(False, env)
    assert D.broadcast_object({"a": 1}, env) == {"a": 1}
    assert D.gather_object("x", env) == ["x"]
    assert D.main_first(lambda: 7, env, Path("/nonexistent/marker")) == 7  # no marker with one process
    D.barrier(env)
    D.teardown(env)


def test_environment_is_read_from_the_given_mapping():
    env = D.setup("cpu", environ={"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"})
    assert env.device == torch.device("cpu")


def test_bad_device():
    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only check")
def test_cuda_requested_without_gpu():
    with pytest.raises(ValueError, match="CUDA"):
        resolve_device("cuda")


def test_two_processes_with_gloo(tmp_path):
    """torchrun, 2 processes on the CPU: different patches per rank, identical weights, one writer."""
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HERE / "train_script.py"), str(run), "4", "--record"]
    subprocess.run(cmd, env=env, check=True, timeout=300)
    r0, r1 = (json.loads((run / f"rank{r}.json").read_text()) for r in (0, 1))
    assert len(r0["batches"]) == len(r1["batches"]) == 4
    assert not set(r0["batches"]) & set(r1["batches"])  # each rank saw its own patches
    assert r0["weights"] == r1["weights"]  # gradients were averaged: the replicas never diverged
    assert r0["best"] == r1["best"]  # the validation counts were reduced over the ranks
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 4  # written once (rank 0), one row per iteration
    assert torch.load(run / "last.pt", weights_only=True)["world_size"] == 2


def _torchrun(*args, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HERE / "dist_script.py"), *map(str, args)]
    return subprocess.run(cmd, env=env, timeout=timeout, capture_output=True, text=True)


def _ranks(out):
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_preparation_may_outlast_the_collective_timeout(tmp_path):
    """Rank 0 plans, then caches, each for longer than the process group's timeout, while rank 1 waits outside
    every collective (before: rank 1 waited in a broadcast or a barrier and was aborted by the timeout)."""
    ds = make_phantom_dataset(tmp_path / "ds", cases=2, test_cases=0, seed=0)
    out = tmp_path / "run"
    res = _torchrun("prepare", out, "--dataset", ds, "--sleep", 10, "--timeout", 5)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    r0, r1 = _ranks(out)
    assert r0["plan"] == r1["plan"] and r0["plan"]["roi"] == [32, 32, 32]
    assert not (out / ".prepare.json").exists()  # removed once every rank had the result
    assert sorted(p.name for p in (out / "cache").glob("*_image.npy")) == ["phantom_000_image.npy",
                                                                          "phantom_001_image.npy"]


def test_rank_0_failing_or_unseen_stops_the_waiting_ranks(tmp_path):
    """The waiting ranks stop with rank 0's error, and name a run directory they cannot see (not shared)."""
    res = _torchrun("errors", tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    r0, r1 = _ranks(tmp_path)
    assert r0["failed"] == "ValueError: the dataset is broken"
    assert r1["failed"].startswith("UnetrError: rank 0 failed to prepare the data (ValueError: the dataset is broken)")
    assert "cannot see" in r1["hidden"] and "file system every node shares" in r1["hidden"]


def test_each_rank_resumes_its_own_generators(tmp_path):
    """With dropout on, a 2-process run stopped after iteration 2 and resumed ends with the weights of an
    uninterrupted run: each rank takes back its own dropout generator (before: every rank took rank 0's)."""
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    for args in (("train", whole), ("train", cut, "--stop-after", 2), ("train", cut)):
        res = _torchrun(*args, "--iterations", 4)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    a, b = (json.loads((d / "weights.json").read_text()) for d in (whole, cut))
    assert (a["resumed_from"], b["resumed_from"]) == (0, 2)
    assert a["weights"] == b["weights"]
    last = torch.load(cut / "last.pt", weights_only=True)
    r0, r1 = last["rng_ranks"]
    assert torch.equal(r0["torch"], last["rng"]["torch"]) and not torch.equal(r0["torch"], r1["torch"])


def test_teardown_leaves_no_ddp_wrapper_to_the_interpreters_exit(tmp_path):
    """A DDP wrapper kept alive by a reference cycle is collected by teardown (before: it outlived the group and
    was destroyed during the interpreter's exit, where gloo sometimes aborted the process)."""
    res = _torchrun("teardown", tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert [r["alive"] for r in _ranks(tmp_path)] == [0, 0]


def test_restore_gives_each_rank_its_own_state(tmp_path):
    """One file, two ranks: each restores what it saved; a rank the file has no state for is seeded apart."""
    plan, model_cfg, cfg = tiny_setup()
    model = build_model(model_cfg)
    opt = build_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay, device=torch.device("cpu"))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    config = run_config(model_cfg, plan, cfg)
    cpu = torch.device("cpu")
    states = []
    for seed in (10, 11):
        torch.manual_seed(seed)
        states.append(RngState.capture(cpu))
    save_resume(tmp_path / "last.pt", ResumeState(Progress(3), 1.0, 2, model.state_dict(), opt.state_dict(),
                                                  scaler.state_dict(), states[0], config, tuple(states)))
    draws = []
    for rank in (0, 1, 2):
        restore_resume(tmp_path / "last.pt", model=model, optimizer=opt, scaler=scaler, config=config,
                       world_size=3, device=cpu, rank=rank)
        draws.append(torch.rand(4))
    for rank in (0, 1):
        torch.set_rng_state(states[rank].torch)
        assert torch.equal(draws[rank], torch.rand(4))
    assert not torch.equal(draws[2], draws[0]) and not torch.equal(draws[2], draws[1])
