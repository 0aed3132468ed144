"""A time budget for a training run (``unetr train --time-budget 6m``): how many iterations fit, and a stop
before the deadline.

The budget counts from the start of the command (planning and preprocessing included). :func:`fit` times
its first iterations after ``skip`` ones that pay one-off costs (the kernel libraries' set-up, the data
loader's start), then writes one checkpoint and runs one validation window batch, both timed, and sets the
run's iteration count to the largest that fits in what is left with its validations and checkpoints
(:func:`plan_iterations`), never above ``--iterations``, rounded down to two significant figures so that
small timing noise rarely changes it. The count is stored with the run (``config.json``, ``last.pt``): a
rerun of the same command resumes to it instead of planning again. From then on, each iteration checks
that the next one and the final validation still fit, and otherwise ends the run there (with its final
validation and checkpoint), so the training ends within the budget even when the machine slows down.

The planning happens inside the learning-rate warm-up whenever ``warmup_iterations >= skip + measure`` (the
default 50 and the demo's 20 are; the warm-up rate does not depend on the total), so a planned run of ``N``
iterations is the run ``--iterations N`` gives, step for step.

Times come from one clock (``TimeBudget.clock``, :func:`time.perf_counter` by default), so tests can drive
the whole logic with a clock of their own.
"""

from __future__ import annotations

import logging
import math
import re
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import torch
from torch import nn

from unetr.config import TrainConfig
from unetr.training import distributed as D

log = logging.getLogger(__name__)

Clock = Callable[[], float]

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([hms])")


def parse_duration(text: str) -> float:
    """Seconds of a duration: ``"6m"``, ``"90s"``, ``"1h30m"``, ``"2.5m"`` or plain seconds ``"360"``.

    Raises:
        ValueError: naming ``text`` when it is not a positive duration.
    """
    s = str(text).strip().lower().replace(" ", "")
    try:
        seconds = float(s)
    except ValueError:
        parts = _PART.findall(s)
        if not parts or "".join(n + u for n, u in parts) != s or len({u for _, u in parts}) != len(parts):
            raise ValueError(f"time budget must look like 6m, 90s, 1h30m or a number of seconds, got {text!r}") from None
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"time budget must be positive, got {text!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """``372.4 -> "6m12s"``; under a minute ``"41s"``."""
    s = int(round(max(seconds, 0.0)))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


@dataclass(frozen=True)
class TimeBudget:
    """``seconds`` of wall time from ``start`` (a reading of ``clock``)."""

    seconds: float
    start: float = field(default_factory=time.perf_counter)
    clock: Clock = time.perf_counter

    def __post_init__(self) -> None:
        if not self.seconds > 0:
            raise ValueError(f"time budget must be positive, got {self.seconds} s")

    def left(self) -> float:
        """Seconds until the deadline (negative once it has passed)."""
        return self.start + self.seconds - self.clock()


# ------------------------------------------------------------------------------------------- pure rules


def round_down(n: int) -> int:
    """``n`` rounded down to two significant figures (``437 -> 430``, ``1234 -> 1200``, ``87 -> 87``)."""
    if n < 100:
        return max(int(n), 0)
    step = 10 ** (len(str(int(n))) - 2)
    return int(n) // step * step


def validations_between(done: int, total: int, val_every: int) -> int:
    """Validations a run makes after iteration ``done`` up to ``total``: every ``val_every``-th and the last."""
    if total <= done:
        return 0
    return total // val_every - done // val_every + (1 if total % val_every else 0)


def checkpoints_between(done: int, total: int, checkpoint_every: int) -> int:
    """Checkpoints after iteration ``done`` up to ``total``: every ``checkpoint_every``-th and the last."""
    return validations_between(done, total, checkpoint_every)


def run_seconds(done: int, total: int, *, step: float, validation: float, checkpoint: float, val_every: int,
                checkpoint_every: int, validates: bool) -> float:
    """Expected seconds from iteration ``done`` to the end of a run of ``total`` iterations."""
    n_val = validations_between(done, total, val_every) if validates else 0
    return (max(total - done, 0) * step + n_val * validation
            + checkpoints_between(done, total, checkpoint_every) * checkpoint)


def plan_iterations(*, left: float, done: int, cap: int, step: float, validation: float, checkpoint: float,
                    val_every: int, checkpoint_every: int, validates: bool) -> int:
    """The largest iteration count in ``[done, cap]`` whose rest of the run fits in ``left`` seconds, rounded
    down to two significant figures (:func:`round_down`, never below ``done``).

    Args:
        left: seconds left in the budget now, after iteration ``done``.
        done: iterations already taken.
        cap: the most iterations (``--iterations``).
        step / validation / checkpoint: measured seconds of one training iteration, one validation pass and
            one checkpoint write.
        val_every / checkpoint_every: as in :class:`unetr.config.TrainConfig`.
        validates: whether the run has validation cases.

    Example:
        >>> plan_iterations(left=100.0, done=10, cap=1000, step=0.5, validation=4.0, checkpoint=0.0,
        ...                 val_every=50, checkpoint_every=50, validates=True)
        170
    """
    if step <= 0:
        return cap

    def fits(total: int) -> bool:
        return run_seconds(done, total, step=step, validation=validation, checkpoint=checkpoint, val_every=val_every,
                           checkpoint_every=checkpoint_every, validates=validates) <= left

    lo, hi = done, cap  # fits(done) holds (nothing left to run); find the largest total that fits
    if fits(cap):
        return cap
    while hi - lo > 1:  # the cost grows with the total
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return max(round_down(lo), done)


def validation_windows(shapes: Sequence[Sequence[int]], roi: Sequence[int], overlap: float, sw_batch: int) -> int:
    """Forward passes of one validation over images of ``shapes`` (``(X, Y, Z)`` each)."""
    from unetr.inference.sliding_window import count_windows

    return sum(math.ceil(count_windows(s, roi, overlap) / max(sw_batch, 1)) for s in shapes)


# ------------------------------------------------------------------------------------------- measurements


def time_validation(model: nn.Module, batches: int, *, in_channels: int, roi: Sequence[int], sw_batch: int,
                    device: torch.device, precision: str, clock: Clock, overhead: float = 1.3) -> float:
    """Estimated seconds of one validation: ``batches`` forward passes of ``sw_batch`` windows, the second of
    two timed passes on zeros (the first builds the kernels), times ``overhead``, an allowance for the
    blending, the argmax and reading the cases (an estimate: the first real validation's time replaces it)."""
    from unetr.device import autocast

    was_training = model.training
    model.eval()
    x = torch.zeros(sw_batch, in_channels, *roi, device=device)  # (B, C, *roi)
    seconds = 0.0
    with torch.no_grad(), autocast(device, precision):
        for _ in range(2):
            t = clock()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = clock() - t
    model.train(was_training)
    return seconds * batches * overhead


class BudgetPlanner:
    """The iteration count a :class:`TimeBudget` allows: planned once from timed steps, then a stop when the
    next iteration and the final validation would pass the deadline.

    Args:
        budget: the budget.
        first: the iteration the run starts (or resumes) from.
        cap: the most iterations.
        val_every / checkpoint_every: the run's.
        validates: whether the run has validation cases.
        planned: the count is already known (a resumed run keeps the one stored with it); only stop early.
        skip: first iterations not timed (one-off costs).
        measure: iterations timed before planning.
    """

    def __init__(self, budget: TimeBudget, *, first: int, cap: int, val_every: int, checkpoint_every: int,
                 validates: bool, planned: bool = False, skip: int = 2, measure: int = 6) -> None:
        if skip < 0 or measure < 1:
            raise ValueError(f"skip must be >= 0 and measure >= 1, got {skip} and {measure}")
        self.budget = budget
        self.first, self.cap = int(first), int(cap)
        self.val_every, self.checkpoint_every, self.validates = int(val_every), int(checkpoint_every), bool(validates)
        self.planned = bool(planned)
        self.skip, self.measure = int(skip), int(measure)
        self.steps: List[float] = []  # seconds of each iteration of this process
        self.validation: Optional[float] = None  # seconds of one validation (estimated, then measured)
        self.checkpoint = 0.0

    @property
    def clock(self) -> Clock:
        return self.budget.clock

    def step_took(self, seconds: float) -> None:
        self.steps.append(float(seconds))

    def validation_took(self, seconds: float) -> None:
        """A real validation (with its metrics row and checkpoint) took ``seconds``; later stops use it."""
        self.validation = float(seconds)

    def step_seconds(self) -> float:
        """The median of the timed iterations (the later ones once planned: they follow the machine's load)."""
        timed = self.steps[self.skip:] or self.steps
        return statistics.median(timed[-max(self.measure, 1) * 4:]) if timed else 0.0

    def ready_to_plan(self) -> bool:
        return not self.planned and len(self.steps) >= self.skip + self.measure

    def plan(self, done: int, *, validation: float, checkpoint: float, report: bool = True) -> int:
        """The iteration count, from the timed steps and the measured ``validation`` and ``checkpoint``
        (logged when ``report``)."""
        self.planned = True
        self.validation, self.checkpoint = float(validation), float(checkpoint)
        step = self.step_seconds()
        left = self.budget.left()
        total = plan_iterations(left=left, done=done, cap=self.cap, step=step, validation=validation,
                                checkpoint=checkpoint, val_every=self.val_every,
                                checkpoint_every=self.checkpoint_every, validates=self.validates)
        expected = run_seconds(done, total, step=step, validation=validation, checkpoint=checkpoint,
                               val_every=self.val_every, checkpoint_every=self.checkpoint_every,
                               validates=self.validates)
        if not report:
            return total
        log.info("time budget %s: %.2f s per iteration, %s per validation, %.2f s per checkpoint measured; "
                 "%s left after %d iterations: %s; training expected to end in %s, at %s",
                 format_duration(self.budget.seconds), step, f"{validation:.1f} s" if self.validates else "no time",
                 checkpoint, format_duration(left), done,
                 f"the {self.cap} iterations asked for fit" if total == self.cap
                 else f"{total} iterations instead of the {self.cap} asked for",
                 format_duration(expected), time.strftime("%H:%M:%S", time.localtime(time.time() + expected)))
        return total

    def stop_after(self, done: int, total: int) -> bool:
        """Whether iteration ``done`` must be the last: one more iteration (with what it is due to do) and the
        final validation and checkpoint would not fit in what is left of the budget."""
        if done >= total or not self.steps:
            return False
        step = max(self.step_seconds(), self.steps[-1])  # the last step too: a slow-down shows at once
        validation = self.validation or 0.0
        nxt = done + 1
        due_val = self.validates and (nxt % self.val_every == 0 or nxt == total)
        due_ckpt = nxt % self.checkpoint_every == 0 or nxt == total
        final = 0.0 if nxt == total else (validation if self.validates else 0.0) + self.checkpoint
        return step + due_val * validation + due_ckpt * self.checkpoint + final > self.budget.left()


# ------------------------------------------------------------------------------------------- following a run


def budget_planner(budget: Optional[TimeBudget], cfg: TrainConfig, *, start: int, stored: Optional[int],
                   validates: bool) -> Optional[BudgetPlanner]:
    """The planner of a time budget for a run that starts (or resumes) at iteration ``start`` (None without a
    budget). A resumed run whose ``last.pt`` stores a count (``stored``) below ``cfg.iterations`` (the one its
    budget planned) keeps that count, the planner's ``cap`` (never below ``start``), and is only stopped early
    (``planned``); otherwise the count is planned from this process's first iterations."""
    if budget is None:
        return None
    resumed = stored if start > 0 else None
    planned = resumed is not None and resumed < cfg.iterations
    cap = max(int(resumed), start) if planned else cfg.iterations
    return BudgetPlanner(budget, first=start, cap=cap, val_every=cfg.val_every,
                         checkpoint_every=cfg.checkpoint_every, validates=validates, planned=planned)


def follow_budget(planner: BudgetPlanner, done: int, total: int, step_seconds: float, env: D.DistEnv, *,
                  checkpoint: Callable[[], None], validation: Callable[[], float]) -> int:
    """The run's iteration count after iteration ``done`` of ``total``, which took ``step_seconds``. Once enough
    iterations are timed: the planned count, after timing ``checkpoint()`` (it writes a resume point) and
    taking ``validation()`` (the estimated seconds of one validation); later: ``done`` when this iteration
    must be the last, else ``total``. Every rank takes rank 0's decision (a collective)."""
    planner.step_took(step_seconds)
    if planner.ready_to_plan():
        t = planner.clock()
        checkpoint()  # a resume point, and its cost
        seconds = planner.clock() - t
        return D.broadcast_object(planner.plan(done, validation=validation(), checkpoint=seconds,
                                               report=env.is_main), env)
    if D.any_true(planner.stop_after(done, total), env):
        if env.is_main:
            log.warning("time budget: %d of %d iterations fit; this is the last (the machine is slower than "
                        "measured at the start)", done, total)
        return done
    return total


__all__ = ["BudgetPlanner", "TimeBudget", "budget_planner", "checkpoints_between", "follow_budget",
           "format_duration", "parse_duration", "plan_iterations", "round_down", "run_seconds", "time_validation", "validation_windows",
           "validations_between"]
