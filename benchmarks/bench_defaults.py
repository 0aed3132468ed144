"""The CPU defaults, measured: training threads and data-loader workers, `auto` precision, prediction threads
and windows per batch, and preprocessing workers, on the demo's phantoms and recipe.

Each group alternates its settings in this one process (medians of ``--repeats`` rounds after a warm-up),
so machine load hits every setting alike; the section written into benchmarks/RESULTS.md names the CPU's
flags, PyTorch's kernel level and any ``ONEDNN_MAX_CPU_ISA`` restriction, and the load average before and
after. Run it once natively and once with ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`` to get
both kinds of CPU from an AVX-512 BF16 machine (the second then emulates an AVX2-only CPU: bf16 there is
as slow as on a CPU without it); each kind writes its own section.

Usage:
    python benchmarks/bench_defaults.py [--repeats 3] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from unetr.allocator import keep_freed_memory  # noqa: E402
from unetr.config import InferConfig, TrainConfig, preset  # noqa: E402
from unetr.device import autocast, cpu_summary, explain_precision  # noqa: E402

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work" / "defaults"
SPACING = (2.0, 2.0, 2.67)  # the demo's recipe (unetr.demo.PHANTOM_TRAIN)
ROI = (48, 48, 32)


def medians(fns: Dict[str, Callable[[], None]], repeats: int, warmup: int = 1) -> Dict[str, float]:
    """Each function ``warmup`` times, then ``repeats`` alternating rounds; the median seconds of each."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    times: Dict[str, List[float]] = {k: [] for k in fns}
    for r in range(repeats):
        for k in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            t = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def with_threads(n: int, fn: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        torch.set_num_threads(n)
        fn()
    return run


def dataset_and_cache():
    """The demo's phantoms (20 training, written once into benchmarks/_work) and their cache at the demo's
    spacing."""
    from unetr.data.cache import build_cache
    from unetr.data.cases import load_dataset
    from unetr.data.plan import fingerprint, make_plan
    from unetr.data.synthetic import make_phantom_dataset

    data = WORK / "data"
    if not (data / "dataset.json").is_file():
        make_phantom_dataset(data, cases=20, test_cases=0, seed=0)
    ds = load_dataset(data)
    plan = make_plan(ds, fingerprint(ds, workers=1), target_spacing=SPACING, roi=ROI, preset="tiny")
    build_cache(ds, plan, WORK / "cache", workers=2, progress=False)
    return ds, plan


def train_rows(plan, ids: List[str], repeats: int, steps: int) -> List[tuple]:
    """Seconds per training iteration (the crops loaded, augmented, forward, loss, backward, AdamW) of the
    demo's recipe, by threads x data-loader workers, and in both precisions."""
    from unetr.data.sampling import augment
    from unetr.model import build_model
    from unetr.training import CachedCases, DiceCELoss, build_optimizer
    from unetr.training.batches import augment_kwargs, train_batches

    cpu = torch.device("cpu")
    auto, _ = explain_precision("auto", cpu)
    other = "fp32" if auto == "bf16" else "bf16"
    cfg = TrainConfig(iterations=10**6, samples_per_volume=2, batch_dice=True, class_balanced=True, lr=1e-3,
                      device="cpu", seed=0)
    model = build_model(preset("tiny", in_channels=1, out_channels=4, img_size=ROI)).train()
    opt = build_optimizer(model, lr=1e-3, weight_decay=1e-5, device=cpu)
    loss_fn = DiceCELoss(batch_dice=True)
    gen = torch.Generator()

    def runner(workers: int, precision: str, n: int) -> Callable[[], None]:
        batches = None  # made at the first (warm-up) round: a worker starts once, as in a run

        def run() -> None:
            nonlocal batches
            if batches is None:
                batches = train_batches(CachedCases(WORK / "cache"), ids, ROI, cfg.replace(num_workers=workers),
                                        start=0, rank=0, world_size=1, device=cpu)
            for _ in range(n):
                x, y = next(batches)
                x, y = augment(x, y, gen, **augment_kwargs(cfg))
                with autocast(cpu, precision):
                    logits = model(x)
                loss_fn(logits, y).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
        return run

    rows = []
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    fns = {}
    for threads in sorted({1, cores}):
        for workers in (0, 1):
            fns[f"{threads} thread(s), {workers} worker(s), {auto}"] = with_threads(threads, runner(workers, auto, steps))
    for k, v in medians(fns, repeats).items():
        rows.append(("training iteration", k, v / steps))
    # the other precision, for each thread count: one round of fewer steps (emulated bf16 is slow), no worker
    few = max(2, steps // 4)
    for threads in sorted({1, cores}):
        t = medians({"o": with_threads(threads, runner(0, other, few))}, 1)["o"] / few
        rows.append(("training iteration", f"{threads} thread(s), 0 worker(s), {other}", t))
    return rows


def predict_rows(plan, ids: List[str], repeats: int) -> List[tuple]:
    """Seconds to segment one preprocessed phantom (sliding window, overlap 0.5): threads, windows per batch,
    precision."""
    from unetr.data.cache import load_cached
    from unetr.inference.predict import predict_volume
    from unetr.model import build_model

    cpu = torch.device("cpu")
    auto, _ = explain_precision("auto", cpu)
    model = build_model(preset("tiny", in_channels=1, out_channels=4, img_size=ROI)).eval()
    images = [torch.from_numpy(load_cached(WORK / "cache", cid)[0].copy()) for cid in ids[:2]]

    def runner(batch: int, precision: str) -> Callable[[], None]:
        config = InferConfig(sw_batch_size=batch, precision=precision, device="cpu")

        def run() -> None:
            for image in images:
                predict_volume(model, image, ROI, config)
        return run

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    fns = {}
    for threads in sorted({1, cores}):
        for batch in (1, 2, 4):
            fns[f"{threads} thread(s), {batch} window(s) per batch, {auto}"] = with_threads(threads, runner(batch, auto))
    other = "fp32" if auto == "bf16" else "bf16"
    for threads in sorted({1, cores}):
        fns[f"{threads} thread(s), 1 window(s) per batch, {other}"] = with_threads(threads, runner(1, other))
    return [("prediction of one phantom", k, v / len(images)) for k, v in medians(fns, repeats).items()]


def preprocess_rows(ds, plan, repeats: int) -> List[tuple]:
    """Seconds to preprocess the 20 phantoms into a new cache, by worker processes."""
    from unetr.data.cache import build_cache

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    def runner(workers: int) -> Callable[[], None]:
        def run() -> None:
            with tempfile.TemporaryDirectory(dir=WORK) as tmp:
                build_cache(ds, plan, Path(tmp) / "cache", workers=workers, progress=False)
        return run

    fns = {f"{w} worker(s)": runner(w) for w in sorted({1, 2, cores})}
    return [("preprocessing 20 phantoms", k, v) for k, v in medians(fns, repeats, warmup=0).items()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=8, help="training iterations per timed round")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    keep_freed_memory()
    load_before = os.getloadavg()
    WORK.mkdir(parents=True, exist_ok=True)
    ds, plan = dataset_and_cache()
    ids = sorted(c.id for c in ds.train)
    rows = train_rows(plan, ids, args.repeats, args.steps)
    for r in rows:
        print(*r, sep=" | ", flush=True)
    rows += predict_rows(plan, ids, args.repeats)
    rows += preprocess_rows(ds, plan, args.repeats)
    load_after = os.getloadavg()
    precision, why = explain_precision("auto", torch.device("cpu"))
    kind = "native bf16" if precision == "bf16" else "no native bf16"
    section = f"## CPU defaults, {kind} (bench_defaults.py)"
    lines = [section, "",
             f"`python benchmarks/bench_defaults.py --repeats {args.repeats} --steps {args.steps}` on {cpu_summary()}; "
             f"{os.cpu_count()} cores; torch {torch.__version__}; `auto` precision: {precision} ({why}); "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average (1 min) {load_before[0]:.1f} before, "
             f"{load_after[0]:.1f} after.",
             f"The demo's recipe: `tiny` UNETR, 4 classes, phantoms at {SPACING} mm, crops {ROI}, 2 crops per step; "
             "medians of alternating rounds in one process.", "",
             "| what | setting | seconds |", "|---|---|---:|"]
    lines += [f"| {what} | {setting} | {sec:.3f} |" for what, setting, sec in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        from bench_train import write_section

        write_section(text, HERE / "RESULTS.md", section)


if __name__ == "__main__":
    main()
