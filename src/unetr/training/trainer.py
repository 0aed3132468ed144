"""The training loop: mixed precision, accumulation, validation, checkpoints, resume, logging.

Everything random in a step is a pure function of ``(seed, rank, micro-step)``: which cases are drawn,
where the crops are taken (``np.random.Generator``) and how they are augmented (``torch.Generator``). A run
resumed from ``last.pt`` therefore sees exactly the batches an uninterrupted run would have seen, whatever
the number of data-loader workers, and on one CPU process it ends with the same weights.

A run directory holds::

    config.json        model config + plan + train config (what `predict` needs with the weights)
    model.safetensors  the weights of the best validation mean Dice
    last.pt            resume state (weights, optimizer, scaler, iteration, RNG states), atomic
    metrics.csv        iteration, train_loss, lr, val_dice_<class>..., val_mean_dice, seconds
    curves.png         the curves, redrawn at each validation
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from unetr.config import ModelConfig, Plan, TrainConfig
from unetr.device import autocast, resolve_device, resolve_precision
from unetr.errors import UnetrError
from unetr.fsutil import atomic_write, atomic_write_text
from unetr.training import distributed as D
from unetr.training.loss import DiceCELoss
from unetr.training.optim import build_optimizer, lr_at, set_lr

log = logging.getLogger(__name__)

RUN_FORMAT = "unetr-run"
LAST_FORMAT = "unetr-last"
TIMING_COLUMNS = ("seconds",)

CaseLoader = Callable[[str], Tuple[np.ndarray, np.ndarray]]
"""``case_id -> (image (C, X, Y, Z) float32, label (X, Y, Z) integer)``; memory-mapped arrays are fine."""
CropSampler = Callable[..., Tuple[np.ndarray, np.ndarray]]
"""``(image, label, roi, num_samples, pos_fraction, generator) -> ((N, C, *roi), (N, 1, *roi))``."""
Augmenter = Callable[..., Tuple[torch.Tensor, torch.Tensor]]
"""``(images, labels, generator, **probabilities) -> (images, labels)`` on batched tensors."""
StepHook = Callable[[int, torch.Tensor, torch.Tensor], None]


class NonFiniteLossError(UnetrError):
    """The loss became NaN or infinite; the run stops and keeps its last good checkpoint."""


# ------------------------------------------------------------------------------------------- seeds


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from non-negative integers (``seed, rank, step``), well mixed by ``SeedSequence``."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint32).astype(np.uint64)
               .dot(np.array([1, 1 << 32], dtype=np.uint64)) & np.uint64((1 << 63) - 1))


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed Python and NumPy's global generators from torch's worker seed.

    The patches themselves do not depend on these (each step seeds its own generator), but any library
    code that reaches for a global generator stays reproducible.
    """
    s = torch.initial_seed() % (1 << 32)
    random.seed(s)
    np.random.seed(s)


# ------------------------------------------------------------------------------------------- data


class PatchSource(torch.utils.data.Dataset):
    """Item ``m`` is the crops of micro-step ``m`` on this rank, a pure function of ``(seed, rank, m)``.

    Cases are drawn epoch by epoch from a permutation seeded by ``(seed, epoch)`` that all ranks share; the
    ``r``-th rank takes the draws ``(m * world_size + r) * volumes + j``, so ranks see different cases.

    Args:
        load: reads one case (see :data:`CaseLoader`); must be picklable for worker processes.
        case_ids: training cases.
        roi: crop size (x, y, z).
        volumes: volumes per micro-step (``TrainConfig.batch_size``).
        samples_per_volume: crops per volume.
        pos_fraction: fraction of crops centred on foreground.
        seed: run seed.
        rank / world_size: this process and the number of processes.
        sampler: the crop sampler (default :func:`unetr.data.sampling.sample_crops`).
        sampler_kwargs: extra keyword arguments of the sampler (``class_balanced=True``).

    Returns (per item):
        ``images (volumes * samples_per_volume, C, *roi)`` float32 and labels ``(N, 1, *roi)`` uint8.
    """

    def __init__(self, load: CaseLoader, case_ids: Sequence[str], roi: Sequence[int], *, volumes: int,
                 samples_per_volume: int, pos_fraction: float, seed: int, rank: int = 0, world_size: int = 1,
                 sampler: Optional[CropSampler] = None, sampler_kwargs: Optional[dict] = None,
                 length: int = 1 << 62) -> None:
        if not case_ids:
            raise ValueError("PatchSource needs at least one case")
        self.load = load
        self.case_ids = list(case_ids)
        self.roi = tuple(int(r) for r in roi)
        self.volumes = int(volumes)
        self.samples_per_volume = int(samples_per_volume)
        self.pos_fraction = float(pos_fraction)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.sampler = sampler
        self.sampler_kwargs = dict(sampler_kwargs or {})
        self.length = int(length)

    def __len__(self) -> int:
        return self.length

    def case_of_draw(self, draw: int) -> str:
        """The case of global draw number ``draw`` (epoch-wise permutations)."""
        n = len(self.case_ids)
        epoch, pos = divmod(draw, n)
        perm = np.random.default_rng([self.seed, 7919, epoch]).permutation(n)
        return self.case_ids[int(perm[pos])]

    def __getitem__(self, micro_step: int) -> Tuple[torch.Tensor, torch.Tensor]:
        sampler = self.sampler
        if sampler is None:
            from unetr.data.sampling import sample_crops as sampler
        images, labels = [], []
        for j in range(self.volumes):
            draw = (micro_step * self.world_size + self.rank) * self.volumes + j
            image, label = self.load(self.case_of_draw(draw))
            rng = np.random.default_rng([self.seed, self.rank, micro_step, j])
            im, lb = sampler(image, label, self.roi, self.samples_per_volume, self.pos_fraction, rng,
                             **self.sampler_kwargs)
            images.append(np.asarray(im, dtype=np.float32))
            labels.append(np.asarray(lb, dtype=np.uint8))
        return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


class CachedCases:
    """A picklable :data:`CaseLoader` over the preprocessed cache (:func:`unetr.data.cache.load_cached`)."""

    def __init__(self, cache_dir: os.PathLike) -> None:
        self.cache_dir = Path(cache_dir)

    def __call__(self, case_id: str) -> Tuple[np.ndarray, np.ndarray]:
        from unetr.data.cache import load_cached

        image, label, _ = load_cached(self.cache_dir, case_id)
        return image, label


def _augment_kwargs(cfg: TrainConfig) -> dict:
    return dict(flip_prob=cfg.flip_prob, rot90_prob=cfg.rot90_prob, scale_prob=cfg.scale_intensity_prob,
                shift_prob=cfg.shift_intensity_prob, factor=cfg.intensity_factor, extra=cfg.extra_augment)


# ------------------------------------------------------------------------------------------- validation


def confusion_counts(pred: torch.Tensor, label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """True positives, false positives and false negatives per class.

    Args:
        pred: ``(X, Y, Z)`` predicted labels.
        label: ``(X, Y, Z)`` reference labels in ``[0, K)``.

    Returns:
        ``(3, K)`` int64: rows TP, FP, FN.
    """
    k = num_classes
    idx = label.reshape(-1).long() * k + pred.reshape(-1).long()
    cm = torch.bincount(idx, minlength=k * k).reshape(k, k)  # (reference, prediction)
    tp = cm.diagonal()
    return torch.stack([tp, cm.sum(0) - tp, cm.sum(1) - tp])


def dice_from_counts(counts: torch.Tensor) -> List[float]:
    """Dice per class from ``(3, K)`` TP/FP/FN; NaN for a class absent from prediction and reference."""
    tp, fp, fn = (c.double() for c in counts)
    denom = 2 * tp + fp + fn
    return [float(2 * t / d) if d > 0 else float("nan") for t, d in zip(tp, denom)]


@torch.no_grad()
def validate(model: nn.Module, case_ids: Sequence[str], load: CaseLoader, *, roi: Sequence[int], num_classes: int,
             env: D.DistEnv, precision: str, overlap: float = 0.5, sw_batch: int = 4, progress: bool = False) -> List[float]:
    """Sliding-window Dice per class over ``case_ids``, from TP/FP/FN summed over the cases (and ranks).

    Each rank segments the cases ``case_ids[rank::world_size]``; the counts are summed over ranks.

    Returns:
        Dice per class (background first), NaN where a class is absent from predictions and references.
    """
    from tqdm.auto import tqdm

    from unetr.inference import sliding_window

    device = env.device
    was_training = model.training
    model.eval()

    def predictor(x: torch.Tensor) -> torch.Tensor:
        with autocast(device, precision):
            return model(x).float()  # (B, K, *roi)

    counts = torch.zeros(3, num_classes, dtype=torch.int64)
    mine = list(case_ids)[env.rank::env.world_size]
    for cid in tqdm(mine, desc="validation", leave=False, disable=not progress, dynamic_ncols=True):
        image, label = load(cid)
        img = torch.from_numpy(np.array(image, dtype=np.float32))  # (C, X, Y, Z), a writable copy
        pred = sliding_window(img, predictor, roi, overlap=overlap, batch_size=sw_batch, device=device,
                              accum_device=device, output="argmax")  # (X, Y, Z)
        lab = torch.from_numpy(np.asarray(label).astype(np.int64))
        if lab.max() >= num_classes or lab.min() < 0:
            raise ValueError(f"validation case {cid}: labels outside [0, {num_classes})")
        counts += confusion_counts(pred.cpu(), lab, num_classes)
    counts = D.all_reduce_sum(counts.to(device), env).cpu()
    model.train(was_training)
    return dice_from_counts(counts)


def mean_foreground(dice: Sequence[float]) -> float:
    """Mean Dice over the foreground classes (class 0 excluded), ignoring NaN; NaN when all are NaN."""
    fg = [d for d in dice[1:] if not math.isnan(d)]
    return float(np.mean(fg)) if fg else float("nan")


# ------------------------------------------------------------------------------------------- files


def run_config(model_cfg: ModelConfig, plan: Plan, cfg: TrainConfig) -> dict:
    """The ``config.json`` of a run directory."""
    return {"format": RUN_FORMAT, "version": 1, "model": model_cfg.to_dict(), "plan": plan.to_dict(),
            "train": cfg.to_dict()}


def save_best(run_dir: Path, model: nn.Module, config: dict) -> None:
    """Write ``model.safetensors`` and ``config.json`` (atomically) through :func:`unetr.model.save_run`."""
    from unetr.model import save_run

    save_run(run_dir, model, ModelConfig.from_dict(config["model"]), plan=config["plan"],
             extra={"train": config["train"]})


def _rng_state(device: torch.device) -> dict:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class MetricsLog:
    """``metrics.csv``: one row per logged iteration, rewritten atomically so it is never half written."""

    def __init__(self, path: Path, class_names: Sequence[str]) -> None:
        self.path = path
        self.columns = (["iteration", "train_loss", "lr"] + [f"val_dice_{c}" for c in class_names]
                        + ["val_mean_dice", "seconds"])
        self.rows: List[Dict[str, str]] = []

    def load(self, up_to: int) -> None:
        """Keep the rows already written up to iteration ``up_to`` (the resumed checkpoint)."""
        if not self.path.exists():
            return
        with self.path.open(newline="") as f:
            self.rows = [r for r in csv.DictReader(f) if int(r["iteration"]) <= up_to]

    def add(self, row: Dict[str, Any]) -> None:
        def fmt(v: Any) -> str:
            if v is None:
                return ""
            if isinstance(v, float):
                return "nan" if math.isnan(v) else f"{v:.6g}"
            return str(v)

        self.rows.append({c: fmt(row.get(c)) for c in self.columns})
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self.columns, lineterminator="\n")
        w.writeheader()
        w.writerows(self.rows)

        atomic_write_text(self.path, buf.getvalue())


def plot_curves(metrics_csv: Path, path: Path) -> None:
    """Redraw the curves PNG from ``metrics.csv`` (:func:`unetr.report.plot_training_curves`)."""
    from unetr.report import plot_training_curves

    try:
        plot_training_curves(metrics_csv, path)
    except (ValueError, OSError) as e:  # a picture must never stop training
        log.warning("could not draw %s: %s", path, e)


# ------------------------------------------------------------------------------------------- the loop


@dataclass
class TrainResult:
    """What :func:`fit` returns."""

    run_dir: Path
    iteration: int
    best_dice: float
    best_iteration: int
    last_dice: List[float] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from: int = 0
    model: Optional[nn.Module] = None  # the final weights (unwrapped)


def _infinite(loader: torch.utils.data.DataLoader) -> Iterator:
    yield from loader  # the sampler already spans the whole run


def fit(
    *,
    run_dir: os.PathLike,
    train_ids: Sequence[str],
    val_ids: Sequence[str],
    load: CaseLoader,
    plan: Plan,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    env: Optional[D.DistEnv] = None,
    progress: bool = True,
    sampler: Optional[CropSampler] = None,
    augmenter: Optional[Augmenter] = None,
    on_step: Optional[StepHook] = None,
) -> TrainResult:
    """Train a UNETR on cached cases and write the run directory; resumes from ``run_dir/last.pt``.

    Args:
        run_dir: output folder (created; only rank 0 writes).
        train_ids / val_ids: case ids for ``load``.
        load: reads a preprocessed case (see :data:`CaseLoader`), e.g. :class:`CachedCases`.
        plan: the preprocessing plan (ROI, classes) stored with the weights.
        model_cfg: the network.
        cfg: the training settings.
        env: the distributed environment (one CPU/GPU process from ``cfg.device`` when omitted).
        progress: show progress bars (rank 0).
        sampler: crop sampler (default :func:`unetr.data.sampling.sample_crops`).
        augmenter: batched augmentation (default :func:`unetr.data.sampling.augment`; pass
            ``lambda x, y, g, **kw: (x, y)`` to disable).
        on_step: called as ``on_step(iteration, images, labels)`` with each micro-batch (after augmentation).

    Returns:
        A :class:`TrainResult`.

    Raises:
        NonFiniteLossError: the loss became NaN or infinite (``last.pt`` keeps the last good state).
    """
    from tqdm.auto import tqdm

    from unetr.model import build_model

    env = env or D.DistEnv(device=resolve_device(cfg.device))
    device = env.device
    run_dir = Path(run_dir)
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    if not train_ids:
        raise ValueError("no training cases")
    if augmenter is None:
        from unetr.data.sampling import augment as augmenter
    precision = resolve_precision(cfg.precision, device)
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision fp16 (with a gradient scaler) needs a CUDA device; use bf16 or fp32")
    if cfg.checkpointing and not model_cfg.checkpointing:
        model_cfg = model_cfg.replace(checkpointing=True)
    roi = tuple(plan.roi)
    config = run_config(model_cfg, plan, cfg)

    torch.manual_seed(derive_seed(cfg.seed))  # the initial weights: the same on every rank
    model = build_model(model_cfg.replace(img_size=roi) if tuple(model_cfg.img_size) != roi else model_cfg,
                        channels_last=cfg.channels_last)
    model.to(device)
    torch.manual_seed(derive_seed(cfg.seed, env.rank, 3))  # dropout and other in-model randomness: per rank
    optimizer = build_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay, device=device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    loss_fn = DiceCELoss(include_background=cfg.include_background, dice_weight=cfg.dice_weight,
                         ce_weight=cfg.ce_weight, smooth_nr=cfg.smooth_nr, smooth_dr=cfg.smooth_dr,
                         batch_dice=cfg.batch_dice, label_smoothing=cfg.label_smoothing)
    metrics = MetricsLog(run_dir / "metrics.csv", plan.class_names)

    # ---- resume
    start, best_dice, best_it, loss_sum, loss_n, seconds0 = 0, -1.0, 0, 0.0, 0, 0.0
    last_path = run_dir / "last.pt"
    if last_path.exists():
        ck = torch.load(last_path, map_location="cpu", weights_only=True)
        if ck.get("format") != LAST_FORMAT:
            raise UnetrError(f"{last_path}: not a unetr resume checkpoint")
        if ck["config"]["model"] != model_cfg.to_dict() or ck["config"]["plan"]["roi"] != list(roi):
            raise UnetrError(f"{last_path} was written for another model or ROI; use a new --out or delete it")
        if ck["world_size"] != env.world_size:
            log.warning("resuming a %d-process run with %d processes: the batches differ from an uninterrupted run",
                        ck["world_size"], env.world_size)
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scaler.load_state_dict(ck["scaler"])
        start, best_dice, best_it = int(ck["iteration"]), float(ck["best_dice"]), int(ck["best_iteration"])
        loss_sum, loss_n, seconds0 = float(ck["loss_sum"]), int(ck["loss_count"]), float(ck["seconds"])
        _set_rng_state(ck["rng"], device)
        metrics.load(up_to=start)
        if env.is_main:
            log.info("resuming %s from iteration %d", run_dir, start)
    if start >= cfg.iterations:
        if env.is_main:
            log.info("%s already trained for %d iterations; nothing to do", run_dir, start)
        return TrainResult(run_dir, start, best_dice, best_it, seconds=seconds0, resumed_from=start, model=model)

    ddp = model
    if env.distributed:
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    source = PatchSource(load, train_ids, roi, volumes=cfg.batch_size, samples_per_volume=cfg.samples_per_volume,
                         pos_fraction=cfg.pos_fraction, seed=cfg.seed, rank=env.rank, world_size=env.world_size,
                         sampler=sampler, sampler_kwargs={"class_balanced": True} if cfg.class_balanced else None)
    g = torch.Generator().manual_seed(derive_seed(cfg.seed, env.rank, 1))
    loader = torch.utils.data.DataLoader(
        source, batch_size=None, sampler=range(start * cfg.accumulate, cfg.iterations * cfg.accumulate),
        num_workers=cfg.num_workers, worker_init_fn=seed_worker, generator=g, pin_memory=device.type == "cuda",
        persistent_workers=False, prefetch_factor=4 if cfg.num_workers else None,
    )
    batches = _infinite(loader)
    aug_gen = torch.Generator(device=device)
    aug_kwargs = _augment_kwargs(cfg)

    def checkpoint(iteration: int, seconds: float) -> None:
        if not env.is_main:
            return
        state = {
            "format": LAST_FORMAT, "version": 1, "iteration": iteration, "world_size": env.world_size,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": {"kind": "warmup_cosine", "step": iteration, "total": cfg.iterations,
                          "warmup": cfg.warmup_iterations, "base_lr": cfg.lr, "min_lr": cfg.min_lr},
            "scaler": scaler.state_dict(), "best_dice": best_dice, "best_iteration": best_it,
            "loss_sum": loss_sum, "loss_count": loss_n, "seconds": seconds, "rng": _rng_state(device),
            "sampler": {"seed": cfg.seed, "micro_step": iteration * cfg.accumulate}, "config": config,
        }
        atomic_write(last_path, lambda f: torch.save(state, f))

    tb = _tensorboard(run_dir) if (cfg.tensorboard and env.is_main) else None
    bar = tqdm(total=cfg.iterations, initial=start, desc="train", disable=not (progress and env.is_main),
               dynamic_ncols=True, unit="it")
    t0 = time.perf_counter() - seconds0
    last_dice: List[float] = []
    model.train()
    iteration = start
    try:
        for it in range(start, cfg.iterations):
            lr = lr_at(it, base_lr=cfg.lr, total=cfg.iterations, warmup=cfg.warmup_iterations, min_lr=cfg.min_lr)
            set_lr(optimizer, lr)
            step_loss = torch.zeros((), device=device)
            for a in range(cfg.accumulate):
                micro = it * cfg.accumulate + a
                images, labels = next(batches)
                images = images.to(device, non_blocking=True)  # (N, C, *roi)
                labels = labels.to(device, non_blocking=True)  # (N, 1, *roi) uint8
                aug_gen.manual_seed(derive_seed(cfg.seed, env.rank, micro, 2))
                images, labels = augmenter(images, labels, aug_gen, **aug_kwargs)
                if on_step is not None:
                    on_step(it + 1, images, labels)
                sync = a == cfg.accumulate - 1 or not env.distributed
                with (contextlib.nullcontext() if sync else ddp.no_sync()):
                    with autocast(device, precision):
                        logits = ddp(images)  # (N, K, *roi)
                    loss = loss_fn(logits, labels) / cfg.accumulate
                    scaler.scale(loss).backward()
                step_loss += loss.detach()
            value = float(step_loss)
            if D.any_true(not math.isfinite(value), env):
                good = f"{last_path} (iteration {_last_iteration(last_path)})" if last_path.exists() else "none written yet"
                raise NonFiniteLossError(
                    f"non-finite training loss at iteration {it + 1} (lr {lr:.3g}); stopping. "
                    f"Last good checkpoint: {good}. Try a lower --set lr=..., grad_clip, or precision fp32.")
            if cfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            iteration = it + 1
            loss_sum += value
            loss_n += 1
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2e}", best=f"{max(best_dice, 0):.3f}", refresh=False)

            do_val = bool(val_ids) and (iteration % cfg.val_every == 0 or iteration == cfg.iterations)
            do_log = do_val or iteration % cfg.log_every == 0 or iteration == cfg.iterations
            if do_log:
                row: Dict[str, Any] = {"iteration": iteration, "lr": lr,
                                       "train_loss": D.all_reduce_mean(loss_sum / max(loss_n, 1), env)}
                loss_sum, loss_n = 0.0, 0
                if do_val:
                    last_dice = validate(model, val_ids, load, roi=roi, num_classes=plan.num_classes, env=env,
                                         precision=precision, overlap=cfg.val_overlap, sw_batch=cfg.val_sw_batch,
                                         progress=progress and env.is_main)
                    mean = mean_foreground(last_dice)
                    row.update({f"val_dice_{c}": d for c, d in zip(plan.class_names, last_dice)})
                    row["val_mean_dice"] = mean
                    if not math.isnan(mean) and mean > best_dice:
                        best_dice, best_it = mean, iteration
                        if env.is_main:
                            save_best(run_dir, model, config)
                    if env.is_main:
                        log.info("iteration %d: train loss %.4f, validation mean Dice %.4f (best %.4f at %d)",
                                 iteration, row["train_loss"], mean, best_dice, best_it)
                row["seconds"] = time.perf_counter() - t0
                if env.is_main:
                    metrics.add(row)
                    if do_val:
                        plot_curves(metrics.path, run_dir / "curves.png")
                    if tb is not None:
                        for k, v in row.items():
                            if k != "iteration" and v is not None and not (isinstance(v, float) and math.isnan(v)):
                                tb.add_scalar(k, v, iteration)
            if iteration % cfg.checkpoint_every == 0 or iteration == cfg.iterations:
                checkpoint(iteration, time.perf_counter() - t0)
    finally:
        bar.close()
        if tb is not None:
            tb.close()
    if env.is_main and not val_ids:  # nothing to select on: the final weights are the model
        save_best(run_dir, model, config)
    D.barrier(env)
    return TrainResult(run_dir, iteration, best_dice, best_it, last_dice=last_dice,
                       seconds=time.perf_counter() - t0, resumed_from=start, model=model)


def _last_iteration(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)["iteration"]
    except Exception:  # noqa: BLE001 - only for the message
        return "?"


def _tensorboard(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.debug("tensorboard not installed; skipping its logs")
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


# ------------------------------------------------------------------------------------------- from a dataset


def check_writable(folder: Path) -> None:
    """Fail early, with a message, when ``folder`` cannot be created or written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UnetrError(f"{folder}: cannot write the run directory there ({e.strerror or e})") from None


def check_cases(case_ids: Sequence[str], cache_dir: Path, plan: Plan, pad_to_roi: bool) -> None:
    """Labels inside the declared classes, and (without padding) every image at least as large as the ROI.

    Raises:
        DataError: naming the offending cases.
    """
    from unetr.data.cache import load_cached
    from unetr.errors import DataError

    bad_labels, small = [], []
    for cid in case_ids:
        image, label, record = load_cached(cache_dir, cid)
        if label is None:
            raise DataError(f"case {cid}: no label in the cache {cache_dir}")
        present = [int(k) for k in record.get("class_voxels", {})] or [int(label.max())]
        extra = sorted(k for k in present if k >= plan.num_classes)
        if extra:
            bad_labels.append(f"{cid} (labels {extra})")
        if not pad_to_roi and any(s < r for s, r in zip(image.shape[1:], plan.roi)):
            small.append(f"{cid} {tuple(image.shape[1:])}")
    if bad_labels:
        raise DataError(f"labels outside the {plan.num_classes} declared classes {list(plan.class_names)}: "
                        + ", ".join(bad_labels[:10]) + (" ..." if len(bad_labels) > 10 else ""))
    if small:
        raise DataError(f"ROI {plan.roi} is larger than {len(small)} preprocessed image(s) and padding is off "
                        f"(pad_to_roi=false): " + ", ".join(small[:10]) + " -- use a smaller --roi or pad")


def train_dataset(
    dataset: os.PathLike,
    out: os.PathLike,
    cfg: TrainConfig,
    *,
    preset_name: Optional[str] = None,
    plan_path: Optional[os.PathLike] = None,
    plan_overrides: Optional[dict] = None,
    model_overrides: Optional[dict] = None,
    cache_dir: Optional[os.PathLike] = None,
    workers: int = 2,
    env: Optional[D.DistEnv] = None,
    progress: bool = True,
) -> TrainResult:
    """Plan and preprocess a dataset when needed (both cached), check it, then :func:`fit`.

    ``out/plan.json`` and the cache (``out/cache`` unless ``cache_dir``) are reused when present, so rerunning
    the same command resumes instead of starting over.

    Args:
        dataset: dataset folder, ``dataset.json`` or MONAI datalist.
        out: the run directory.
        cfg: training settings.
        preset_name: model preset (default: the plan's).
        plan_path: an existing ``plan.json`` (e.g. from ``unetr plan``); else one is made (and saved in ``out``).
        plan_overrides: :class:`Plan` fields for a new plan (``roi``, ``target_spacing``, ...).
        model_overrides: :class:`ModelConfig` fields (``dropout``, ``feature_size``, ...).
        cache_dir: the preprocessed cache.
        workers: processes for planning and preprocessing.
        env: the distributed environment (one process when omitted).
        progress: progress bars.
    """
    from unetr.data.cache import build_cache
    from unetr.data.cases import dataset_split, load_dataset
    from unetr.data.plan import fingerprint, load_plan, make_plan, save_plan
    from unetr.errors import DataError

    env = env or D.DistEnv(device=resolve_device(cfg.device))
    out = Path(out)
    cache = Path(cache_dir) if cache_dir else out / "cache"
    if env.is_main:
        check_writable(out)
    ds = load_dataset(dataset)
    if not ds.labelled:
        raise DataError(f"{dataset}: no labelled training cases")
    train_cases, val_cases = dataset_split(ds, cfg.fold, cfg.num_folds, cfg.seed)
    if not train_cases:
        raise DataError(f"{dataset}: no training cases after the split (fold {cfg.fold} of {cfg.num_folds})")

    own_plan = out / "plan.json"
    plan_existed = plan_path is not None or own_plan.is_file()
    plan = None
    if env.is_main:
        if plan_path is not None:
            plan = load_plan(plan_path)
        elif own_plan.is_file():
            plan = load_plan(own_plan)
            log.info("reusing %s", own_plan)
        else:
            overrides = dict(plan_overrides or {})
            if preset_name:
                overrides.setdefault("preset", preset_name)
            fp = fingerprint(ds, workers=workers, progress=progress)
            plan = make_plan(ds, fp, **overrides)
            save_plan(plan, own_plan, fingerprint=fp)
        build_cache(list(train_cases) + list(val_cases), plan, cache, workers=workers, progress=progress)
    plan = Plan.from_dict(D.broadcast_object(plan.to_dict() if plan is not None else None, env))
    D.barrier(env)

    # the preset and the ROI do not change the preprocessed arrays: they may differ from the cached plan
    run_changes = {k: v for k, v in (plan_overrides or {}).items() if k in ("roi", "preset")}
    if preset_name:
        run_changes["preset"] = preset_name
    run_plan = plan.replace(**run_changes)
    ignored = sorted(set(plan_overrides or {}) - {"roi", "preset"})
    if ignored and plan_existed and env.is_main:
        log.warning("the plan exists already; ignoring the plan settings %s (use a new --out)", ", ".join(ignored))
    train_ids, val_ids = [c.id for c in train_cases], [c.id for c in val_cases]
    check_cases(train_ids + val_ids, cache, run_plan, cfg.pad_to_roi)
    model_cfg = run_plan.model_config(**(model_overrides or {}))
    if env.is_main:
        log.info("training %s (%s preset, %.1fM parameters) on %d cases, validating on %d; ROI %s; run %s",
                 dataset, run_plan.preset, _count_params(model_cfg) / 1e6, len(train_ids), len(val_ids),
                 run_plan.roi, out)
    return fit(run_dir=out, train_ids=train_ids, val_ids=val_ids, load=CachedCases(cache), plan=run_plan,
               model_cfg=model_cfg, cfg=cfg, env=env, progress=progress)


def _count_params(model_cfg: ModelConfig) -> int:
    from unetr.model import build_model

    with torch.device("meta"):
        return sum(p.numel() for p in build_model(model_cfg).parameters())
