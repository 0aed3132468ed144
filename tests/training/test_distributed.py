import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from unetr.device import resolve_device
from unetr.training import distributed as D

HERE = Path(__file__).parent


def test_single_process_environment_is_a_no_op():
    env = D.setup("cpu", environ={})
    assert (env.rank, env.world_size, env.is_main, env.distributed) == (0, 1, True, False)
    t = torch.ones(3)
    assert D.all_reduce_sum(t, env) is t and t.tolist() == [1, 1, 1]
    assert D.all_reduce_mean(2.5, env) == 2.5
    assert D.any_true(True, env) and not D.any_true(False, env)
    assert D.broadcast_object({"a": 1}, env) == {"a": 1}
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
