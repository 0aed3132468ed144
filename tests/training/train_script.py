"""A tiny training run as a separate process: the kill-and-rerun and the torchrun tests start this file.

Usage: python train_script.py RUN_DIR ITERATIONS [--slow SECONDS] [--record]
With ``--record`` each rank writes ``rank<R>.json``: a checksum of every batch it saw and of its final weights.
"""

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from train_helpers import DictLoader, flip_augmenter, make_cases, simple_sampler, tiny_setup  # noqa: E402

from unetr.training import distributed as D  # noqa: E402
from unetr.training.trainer import fit  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run_dir")
    p.add_argument("iterations", type=int)
    p.add_argument("--slow", type=float, default=0.0)
    p.add_argument("--record", action="store_true")
    args = p.parse_args()
    env = D.setup("cpu")
    cases = make_cases()
    ids = sorted(cases)
    plan, model_cfg, cfg = tiny_setup(iterations=args.iterations, checkpoint_every=1, val_every=2, flip_prob=0.5)
    seen = []

    def on_step(iteration, images, labels):
        seen.append(hashlib.sha1(images.numpy().tobytes()).hexdigest())
        if args.slow:
            time.sleep(args.slow)

    result = fit(run_dir=args.run_dir, train_ids=ids[:4], val_ids=ids[4:], load=DictLoader(cases), plan=plan,
                 model_cfg=model_cfg, cfg=cfg, env=env, progress=False, sampler=simple_sampler,
                 augmenter=flip_augmenter, on_step=on_step)
    if args.record:
        h = hashlib.sha1()
        for k, v in sorted(result.model.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().contiguous().numpy().tobytes())
        out = Path(args.run_dir) / f"rank{env.rank}.json"
        out.write_text(json.dumps({"batches": seen, "weights": h.hexdigest(), "best": result.best_dice}))
    D.teardown(env)


if __name__ == "__main__":
    main()
