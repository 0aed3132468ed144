"""The training loop, :func:`fit`: mixed precision, accumulation, validation, checkpoints, resume, logging.

``fit`` reads as its steps: :func:`_setup` (model, optimizer, loss), :func:`_resume` (from ``last.pt``),
then per iteration :func:`_train_step` (forward and backward over the micro-batches, one optimizer step)
and :func:`_bookkeeping` (metrics row, validation, best weights, checkpoint). Its neighbours:

- :mod:`unetr.training.batches`: seeds, crops and the loader (the batches are a pure function of
  ``(seed, rank, micro-step)``, so a resumed run sees the batches of an uninterrupted one);
- :mod:`unetr.training.validation`: sliding-window validation Dice;
- :mod:`unetr.training.run_dir`: the files of the run directory;
- :mod:`unetr.training.resume`: the resume state, ``last.pt`` (written at each checkpoint, restored on resume);
- :mod:`unetr.training.lock`: the run directory's lock;
- :mod:`unetr.training.budget`: the iteration count a time budget allows (``--time-budget``) and its following;
- :mod:`unetr.training.prepare`: dataset -> plan -> cache -> checks -> ``fit``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from unetr.accel import compile_model
from unetr.config import ModelConfig, Plan, TrainConfig
from unetr.device import autocast, explain_precision, resolve_device, resolve_precision
from unetr.errors import UnetrError
from unetr.metrics import mean_foreground
from unetr.training import distributed as D
from unetr.training.batches import (
    Augmenter,
    CaseLoader,
    CropSampler,
    augment_kwargs,
    augment_seed,
    derive_seed,
    train_batches,
)
from unetr.training.budget import (
    BudgetPlanner,
    Clock,
    TimeBudget,
    budget_planner,
    follow_budget,
    time_validation,
    validation_windows,
)
from unetr.training.lock import run_lock
from unetr.training.loss import DiceCELoss
from unetr.training.optim import build_optimizer, lr_at, set_lr
from unetr.training.resume import Progress, describe_last, resume_run, save_checkpoint
from unetr.training.run_dir import (
    MetricsLog,
    effective_model_config,
    log_scalars,
    open_tensorboard,
    plot_curves,
    run_config,
    save_best,
)
from unetr.training.validation import validate

log = logging.getLogger(__name__)

StepHook = Callable[[int, torch.Tensor, torch.Tensor], None]
Batches = Iterator[Tuple[torch.Tensor, torch.Tensor]]


class NonFiniteLossError(UnetrError):
    """The loss became NaN or infinite; the run stops and keeps its last good checkpoint."""


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


@dataclass
class _Run:
    """What the steps of one :func:`fit` share: the settings, the model and its training machinery."""

    run_dir: Path
    env: D.DistEnv
    cfg: TrainConfig
    plan: Plan
    config: dict  # config.json
    precision: str  # resolved: bf16, fp16 or fp32
    model: nn.Module  # unwrapped
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    loss_fn: nn.Module
    metrics: MetricsLog
    augmenter: Augmenter
    aug_kwargs: dict  # the augmenter's probabilities and strengths
    aug_gen: torch.Generator
    train_ids: Sequence[str]
    val_ids: Sequence[str]
    load: CaseLoader
    progress: bool  # progress bars
    ddp: Optional[nn.Module] = None  # the model as the steps call it (DDP-wrapped with several processes, compiled)
    saved_at: float = field(default_factory=time.monotonic)  # when last.pt was last written (or the run began)
    resumed_iterations: Optional[int] = None  # the iteration count stored in the last.pt resumed from

    @property
    def last_path(self) -> Path:
        return self.run_dir / "last.pt"


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
    hold_lock: bool = True,
    time_budget: Optional[TimeBudget] = None,
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
        hold_lock: take the run directory's lock (:mod:`unetr.training.lock`); False when the caller holds it.
        time_budget: lower ``cfg.iterations`` to what fits in it and end the run before its deadline
            (:mod:`unetr.training.budget`); a resumed run keeps the count stored in its ``last.pt``.

    Returns:
        A :class:`TrainResult`.

    Raises:
        NonFiniteLossError: the loss became NaN or infinite (``last.pt`` keeps the last good state).
        RunLockedError: another live process trains in ``run_dir``.
        RunSettingsError: ``run_dir`` holds a run trained with settings that change what is trained.
    """
    env = env or D.DistEnv(device=resolve_device(cfg.device))
    if not train_ids:
        raise ValueError("no training cases")
    precision, why = explain_precision(cfg.precision, env.device)
    if env.is_main:
        log.info("precision %s on %s: %s", precision, env.device, why)
    if precision == "fp16" and env.device.type != "cuda":
        raise ValueError("precision fp16 (with a gradient scaler) needs a CUDA device; use bf16 or fp32")
    with run_lock(Path(run_dir), env, hold_lock):
        run = _setup(Path(run_dir), train_ids, val_ids, load, plan, model_cfg, cfg, env, progress, augmenter)
        return _train(run, sampler, on_step, time_budget)


def _train(run: _Run, sampler: Optional[CropSampler], on_step: Optional[StepHook],
           time_budget: Optional[TimeBudget] = None) -> TrainResult:
    """Resume, then train from there to ``cfg.iterations`` (the body of :func:`fit`)."""
    from tqdm.auto import tqdm

    env, plan, val_ids = run.env, run.plan, run.val_ids
    counters, seconds0 = _resume(run)
    start = counters.iteration
    planner = budget_planner(time_budget, run.cfg, start=start, stored=run.resumed_iterations,
                             validates=bool(val_ids))
    if planner is not None and planner.planned:
        _set_iterations(run, planner.cap)
    cfg = run.cfg  # a resumed budget run goes to its stored count
    if start >= cfg.iterations:
        if env.is_main:
            log.info("%s already trained for %d iterations; nothing to do", run.run_dir, start)
        return TrainResult(run.run_dir, start, counters.best_dice, counters.best_iteration, seconds=seconds0,
                           resumed_from=start, model=run.model)
    run.ddp = D.data_parallel(run.model, env)
    if cfg.compile:  # the training step's forward; validation and the saved weights use the plain model
        run.ddp = compile_model(run.ddp, env.device)
        if env.is_main:
            log.info("torch.compile: the first training step compiles the model (minutes on a CPU)")
    batches = train_batches(run.load, run.train_ids, plan.roi, cfg, start=start, rank=env.rank,
                            world_size=env.world_size, device=env.device, sampler=sampler)
    tb = open_tensorboard(run.run_dir) if (cfg.tensorboard and env.is_main) else None
    bar = tqdm(total=cfg.iterations, initial=start, desc="train", disable=not (run.progress and env.is_main),
               dynamic_ncols=True, unit="it")
    t0 = time.perf_counter() - seconds0
    last_dice: List[float] = []
    run.model.train()
    try:
        while counters.iteration < run.cfg.iterations:  # a time budget may lower run.cfg.iterations
            it = counters.iteration
            lr = lr_at(it, base_lr=cfg.lr, total=run.cfg.iterations, warmup=cfg.warmup_iterations,
                       min_lr=cfg.min_lr)
            set_lr(run.optimizer, lr)
            t_step = time_budget.clock() if time_budget else 0.0
            loss = _train_step(run, batches, it, lr, on_step)
            counters.step_done(loss)
            bar.update(1)
            if planner is not None:
                _follow_budget(run, planner, counters, time_budget.clock() - t_step, t0, bar)
            t_book = time_budget.clock() if time_budget else 0.0
            dice = _bookkeeping(run, counters, lr, t0, tb)
            if dice is not None:
                last_dice = dice
                if planner is not None:
                    planner.validation_took(time_budget.clock() - t_book)
            # after the validation of this iteration, so that the bar's best is never one validation behind
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", best=f"{max(counters.best_dice, 0):.3f}",
                            refresh=False)
    finally:
        bar.close()
        if tb is not None:
            tb.close()
    if env.is_main and not val_ids:  # nothing to select on: the final weights are the model
        save_best(run.run_dir, run.model, run.config)
    D.barrier(env)
    return TrainResult(run.run_dir, counters.iteration, counters.best_dice, counters.best_iteration,
                       last_dice=last_dice, seconds=time.perf_counter() - t0, resumed_from=start, model=run.model)


def _setup(run_dir: Path, train_ids: Sequence[str], val_ids: Sequence[str], load: CaseLoader, plan: Plan,
           model_cfg: ModelConfig, cfg: TrainConfig, env: D.DistEnv, progress: bool,
           augmenter: Optional[Augmenter]) -> _Run:
    """Check the settings, then build the model (seeded: the same initial weights on every rank), the
    optimizer, the gradient scaler (fp16 only), the loss and the metrics log."""
    from unetr.model import build_model

    device = env.device
    if augmenter is None:
        from unetr.data.sampling import augment as augmenter
    precision = resolve_precision(cfg.precision, device)
    model_cfg = effective_model_config(model_cfg, plan, cfg)

    torch.manual_seed(derive_seed(cfg.seed))  # the initial weights: the same on every rank
    model = build_model(model_cfg, channels_last=cfg.channels_last)
    model.to(device)
    torch.manual_seed(derive_seed(cfg.seed, env.rank, 3))  # dropout and other in-model randomness: per rank
    optimizer = build_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay, device=device,
                                decay_all=cfg.decay_all)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    loss_fn = DiceCELoss(include_background=cfg.include_background, dice_weight=cfg.dice_weight,
                         ce_weight=cfg.ce_weight, smooth_nr=cfg.smooth_nr, smooth_dr=cfg.smooth_dr,
                         batch_dice=cfg.batch_dice, label_smoothing=cfg.label_smoothing,
                         squared_pred=cfg.squared_pred)
    return _Run(run_dir=run_dir, env=env, cfg=cfg, plan=plan,
                config=run_config(model_cfg, plan, cfg, train_ids, val_ids), precision=precision, model=model,
                optimizer=optimizer, scaler=scaler, loss_fn=loss_fn,
                metrics=MetricsLog(run_dir / "metrics.csv", plan.class_names), augmenter=augmenter,
                aug_kwargs=augment_kwargs(cfg), aug_gen=torch.Generator(device=device), train_ids=train_ids,
                val_ids=val_ids, load=load, progress=progress)


def _resume(run: _Run) -> Tuple[Progress, float]:
    """The progress and the seconds to go on from: those of ``last.pt`` (restored into the model, optimizer,
    scaler and generators, with the metrics rows up to it), or a fresh start."""
    state = resume_run(run.run_dir, run.config, model=run.model, optimizer=run.optimizer, scaler=run.scaler,
                       env=run.env)
    if state is None:
        return Progress(), 0.0
    run.resumed_iterations = state.config.get("train", {}).get("iterations")
    run.metrics.load(up_to=state.progress.iteration)
    if run.env.is_main:
        log.info("resuming %s from iteration %d", run.run_dir, state.progress.iteration)
    return state.progress, state.seconds


def _set_iterations(run: _Run, total: int, bar: Any = None) -> None:
    """The run's iteration count becomes ``total`` (stored in ``config.json`` and ``last.pt``)."""
    run.cfg = run.cfg.replace(iterations=total)
    run.config["train"]["iterations"] = total
    if bar is not None:
        bar.total = total
        bar.refresh()


def _follow_budget(run: _Run, planner: BudgetPlanner, counters: Progress, step_seconds: float, t0: float,
                   bar: Any) -> None:
    """After an iteration under a time budget: the run's count becomes the one :func:`follow_budget` decides,
    timing a checkpoint of this run and estimating a validation of this rank's share of its cases."""
    total = follow_budget(planner, counters.iteration, run.cfg.iterations, step_seconds, run.env,
                          checkpoint=lambda: _checkpoint(run, counters, time.perf_counter() - t0),
                          validation=lambda: _validation_seconds(run, planner.clock))
    if total != run.cfg.iterations:
        _set_iterations(run, total, bar)


def _validation_seconds(run: _Run, clock: Clock) -> float:
    """The estimated seconds of one validation of this rank's share of the cases (0 without validation cases)."""
    if not run.val_ids:
        return 0.0
    env, cfg, plan = run.env, run.cfg, run.plan
    shapes = [run.load(cid)[0].shape[1:] for cid in run.val_ids[env.rank::env.world_size]]
    batches = validation_windows(shapes, plan.roi, cfg.val_overlap, cfg.val_sw_batch)
    return time_validation(run.model, batches, in_channels=plan.in_channels, roi=plan.roi, sw_batch=cfg.val_sw_batch,
                           device=env.device, precision=run.precision, clock=clock)


def _train_step(run: _Run, batches: Batches, it: int, lr: float, on_step: Optional[StepHook]) -> float:
    """Iteration ``it``: forward and backward over ``cfg.accumulate`` micro-batches, then one optimizer step.

    Returns:
        The training loss of the iteration (the mean over its micro-batches).

    Raises:
        NonFiniteLossError: the loss is not finite on some rank (checked before the weights change).
    """
    cfg, env, device = run.cfg, run.env, run.env.device
    step_loss = torch.zeros((), device=device)
    for a in range(cfg.accumulate):
        images, labels = next(batches)
        images = images.to(device, non_blocking=True)  # (N, C, *roi)
        labels = labels.to(device, non_blocking=True)  # (N, 1, *roi) uint8
        run.aug_gen.manual_seed(augment_seed(cfg.seed, env.rank, it * cfg.accumulate + a))
        images, labels = run.augmenter(images, labels, run.aug_gen, **run.aug_kwargs)
        if on_step is not None:
            on_step(it + 1, images, labels)
        sync = a == cfg.accumulate - 1 or not env.distributed
        with (contextlib.nullcontext() if sync else run.ddp.no_sync()):
            with autocast(device, run.precision):
                logits = run.ddp(images)  # (N, K, *roi)
            loss = run.loss_fn(logits, labels) / cfg.accumulate
            run.scaler.scale(loss).backward()
        step_loss += loss.detach()
    value = float(step_loss)
    if D.any_true(not math.isfinite(value), env):
        raise NonFiniteLossError(
            f"non-finite training loss at iteration {it + 1} (lr {lr:.3g}); stopping. "
            f"Last good checkpoint: {describe_last(run.last_path)}. "
            "Try a lower --set lr=..., grad_clip, or precision fp32.")
    if cfg.grad_clip > 0:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    return value


def _bookkeeping(run: _Run, counters: Progress, lr: float, t0: float, tb: Any) -> Optional[List[float]]:
    """After an iteration: the metrics row (with validation and best weights when due) and the checkpoint.

    Returns:
        The validation Dice per class when validation ran, else None.
    """
    cfg, it = run.cfg, counters.iteration
    last = it == cfg.iterations
    do_val = bool(run.val_ids) and (it % cfg.val_every == 0 or last)
    dice = None
    if do_val or it % cfg.log_every == 0 or last:
        row: Dict[str, Any] = {"iteration": it, "lr": lr,
                               "train_loss": D.all_reduce_mean(counters.take_mean_loss(), run.env)}
        if do_val:
            dice = _validate(run, counters, row)
        row["seconds"] = time.perf_counter() - t0
        if run.env.is_main:
            run.metrics.add(row)
            if do_val:
                plot_curves(run.metrics.path, run.run_dir / "curves.png")
            if tb is not None:
                log_scalars(tb, row, it)
    overdue = cfg.checkpoint_minutes > 0 and D.any_true(  # one decision on every rank: _checkpoint is collective
        time.monotonic() - run.saved_at >= 60.0 * cfg.checkpoint_minutes, run.env)
    if it % cfg.checkpoint_every == 0 or last or overdue:
        _checkpoint(run, counters, time.perf_counter() - t0)
    return dice


def _validate(run: _Run, counters: Progress, row: Dict[str, Any]) -> List[float]:
    """Validation Dice into ``row``; a new best mean foreground Dice writes the best weights."""
    cfg, env = run.cfg, run.env
    dice = validate(run.model, run.val_ids, run.load, roi=tuple(run.plan.roi), num_classes=run.plan.num_classes,
                    env=env, precision=run.precision, overlap=cfg.val_overlap, sw_batch=cfg.val_sw_batch,
                    mode=cfg.val_mode, progress=run.progress and env.is_main)
    mean = mean_foreground(dice)
    row.update({f"val_dice_{c}": d for c, d in zip(run.plan.class_names, dice)})
    row["val_mean_dice"] = mean
    if counters.improves(mean) and env.is_main:
        save_best(run.run_dir, run.model, run.config)
    if env.is_main:
        log.info("iteration %d: train loss %.4f, validation mean Dice %.4f (best %.4f at %d)",
                 counters.iteration, row["train_loss"], mean, counters.best_dice, counters.best_iteration)
    return dice


def _checkpoint(run: _Run, counters: Progress, seconds: float) -> None:
    """``last.pt`` after this iteration (:func:`save_checkpoint`: a collective, every rank calls this at the
    same iterations)."""
    run.saved_at = time.monotonic()
    save_checkpoint(run.last_path, counters, seconds, env=run.env, model=run.model, optimizer=run.optimizer,
                    scaler=run.scaler, config=run.config)


__all__ = ["NonFiniteLossError", "StepHook", "TrainResult", "fit"]
