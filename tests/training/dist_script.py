"""Distributed checks as separate processes: tests/training/test_distributed.py starts this file under torchrun.

Usage: python dist_script.py MODE OUT [options]

- ``prepare OUT --dataset DIR --sleep S --timeout T``: rank 0 plans DIR and caches it, each step ``S`` seconds
  slower than it would be, in a process group whose collectives time out after ``T`` seconds; then one
  collective, and every rank writes ``OUT/rank<R>.json`` with the plan it got.
- ``errors OUT``: first rank 0's preparation raises, then each rank looks for the marker in a folder of its own
  (as nodes without a shared file system would); every rank writes ``OUT/rank<R>.json`` with the errors it got.
- ``teardown OUT``: a DDP wrapper left in a reference cycle (as a stopped run's frames leave one, with the
  collector off so that only teardown may collect it), then ``D.teardown``; every rank writes
  ``OUT/rank<R>.json`` with the number of DDP wrappers still alive.
- ``train OUT --iterations N [--stop-after K]``: the tiny run with dropout, a checkpoint every iteration; with
  ``--stop-after`` every rank stops after iteration K (as a killed job would, with ``last.pt`` at K); rank 0 writes
  ``OUT/weights.json`` with a checksum of the final weights.
"""

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from train_helpers import DictLoader, make_cases, simple_sampler, tiny_setup  # noqa: E402

from unetr.errors import UnetrError  # noqa: E402
from unetr.training import distributed as D  # noqa: E402


class Stop(Exception):
    pass


def prepare(args, env):
    import unetr.data.cache as cache_module
    import unetr.data.plan as plan_module
    from unetr.data.cases import load_dataset
    from unetr.training.prepare import PREPARE_MARKER, _cache, _plan

    def slow(real):
        def run(*a, **kw):
            time.sleep(args.sleep)  # longer than the collectives' timeout
            return real(*a, **kw)

        return run

    plan_module.fingerprint = slow(plan_module.fingerprint)
    cache_module.build_cache = slow(cache_module.build_cache)
    ds = load_dataset(args.dataset)
    out = Path(args.out)
    plan, _ = _plan(ds, out, env, plan_path=None, plan_overrides={"roi": (32, 32, 32)}, preset_name="tiny",
                    workers=1, progress=False)
    _cache(list(ds.train), plan, out / "cache", env, marker=out / PREPARE_MARKER, workers=1, progress=False)
    D.barrier(env)  # a collective after the preparation still works
    (out / f"rank{env.rank}.json").write_text(json.dumps({"plan": plan.to_dict()}))


def errors(args, env):
    def broken():
        raise ValueError("the dataset is broken")

    out, got = Path(args.out), {}
    try:
        D.main_first(broken, env, out / "marker.json", poll_s=0.1)
    except (ValueError, UnetrError) as e:
        got["failed"] = f"{type(e).__name__}: {e}"
    try:
        D.main_first(lambda: 1, env, out / f"node{env.rank}" / "marker.json", poll_s=0.1, visible_s=3)
    except UnetrError as e:
        got["hidden"] = str(e)
    except RuntimeError:  # rank 0, in the final barrier, when rank 1 has stopped
        got["hidden"] = "peer stopped"
    (out / f"rank{env.rank}.json").write_text(json.dumps(got))


def teardown(args, env):
    import gc

    from torch.nn.parallel import DistributedDataParallel

    from unetr.model import build_model

    _, model_cfg, _ = tiny_setup()
    gc.disable()
    wrapped = D.data_parallel(build_model(model_cfg), env)
    wrapped(torch.randn(1, 1, *model_cfg.img_size)).sum().backward()
    holder = {"ddp": wrapped}
    holder["self"] = holder
    del wrapped, holder
    D.teardown(env)
    alive = sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects())
    gc.enable()
    (Path(args.out) / f"rank{env.rank}.json").write_text(json.dumps({"alive": alive}))


def train(args, env):
    from unetr.training.trainer import fit

    plan, model_cfg, cfg = tiny_setup(iterations=args.iterations, checkpoint_every=1, val_every=100)
    cases = make_cases()
    ids = sorted(cases)

    def on_step(iteration, images, labels):
        if args.stop_after and iteration > args.stop_after:
            raise Stop  # on every rank at the same step, before any collective of that step

    try:
        result = fit(run_dir=args.out, train_ids=ids[:4], val_ids=ids[4:], load=DictLoader(cases), plan=plan,
                     model_cfg=model_cfg.replace(dropout=0.3), cfg=cfg, env=env, progress=False,
                     sampler=simple_sampler, augmenter=lambda x, y, g, **kw: (x, y), on_step=on_step)
    except Stop:
        return
    if env.is_main:
        h = hashlib.sha1()
        for k, v in sorted(result.model.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().contiguous().numpy().tobytes())
        (Path(args.out) / "weights.json").write_text(json.dumps({"weights": h.hexdigest(),
                                                                 "resumed_from": result.resumed_from}))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["prepare", "errors", "teardown", "train"])
    p.add_argument("out")
    p.add_argument("--dataset")
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--iterations", type=int, default=4)
    p.add_argument("--stop-after", type=int, default=0)
    args = p.parse_args()
    env = D.setup("cpu", timeout_s=args.timeout)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.mode == "teardown":
        return teardown(args, env)
    try:
        {"prepare": prepare, "errors": errors, "train": train}[args.mode](args, env)
    finally:
        D.teardown(env)


if __name__ == "__main__":
    main()
