"""How often a torchrun rank aborts at exit after leaving a gloo process group, with and without the
collections that ``unetr.training.distributed.teardown`` adds.

Each run: two processes under torchrun, a DDP step on a small convolution, the wrapper deleted, then rank 0
leaves the group and exits while rank 1 is still running (it sleeps a second first). ``plain`` calls
``destroy_process_group`` alone; ``teardown`` calls unetr's teardown. Runs alternate between the two.

    python benchmarks/teardown_abort.py --runs 40

Prints the failed runs (non-zero exit; the abort reads "terminate called without an active exception") per way.
"""

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

WORKER = '''
import sys, time, torch, torch.distributed as dist, torch.nn as nn
from unetr.training import distributed as D
env = D.setup("cpu")
model = nn.parallel.DistributedDataParallel(nn.Sequential(nn.Conv3d(1, 8, 3), nn.Conv3d(8, 2, 1)))
for _ in range(2):
    model(torch.randn(2, 1, 8, 8, 8)).sum().backward()
del model
if env.rank == 1:
    time.sleep(1.0)
if sys.argv[1] == "plain":
    dist.destroy_process_group()
else:
    D.teardown(env)
'''


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=40, help="runs per way")
    args = p.parse_args()
    failed = {"plain": 0, "teardown": 0}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        worker = Path(tmp) / "worker.py"
        worker.write_text(WORKER)
        for i in range(args.runs):
            for way in failed:
                res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                      "--nproc_per_node=2", str(worker), way], env=env, capture_output=True,
                                     text=True, timeout=300)
                failed[way] += res.returncode != 0
            print(f"run {i + 1}/{args.runs}: " + ", ".join(f"{k} {v} failed" for k, v in failed.items()), flush=True)
    for way, n in failed.items():
        print(f"{way}: {n} of {args.runs} runs failed")


if __name__ == "__main__":
    main()
