"""The time budget (``unetr train --time-budget``): its pure rules, and :func:`fit` under a clock the test drives.

The training runs use a clock of their own (each micro-batch advances it by a set number of seconds), so the
assertions are about behaviour, whatever the speed of the machine running the tests.
"""

import json

import pytest
import torch
from train_helpers import DictLoader, flip_augmenter, make_cases, simple_sampler, tiny_setup

from unetr.training.budget import (
    BudgetPlanner,
    TimeBudget,
    parse_duration,
    plan_iterations,
    round_down,
    run_seconds,
    validations_between,
)
from unetr.training.trainer import fit

CASES = make_cases()
IDS = sorted(CASES)


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _fit(run_dir, clock, seconds_per_step, budget=20.0, **train):
    """A tiny run whose every micro-batch takes ``seconds_per_step(iteration)`` on ``clock``."""
    plan, model_cfg, cfg = tiny_setup(**{"iterations": 100, "val_every": 5, "checkpoint_every": 5,
                                         "warmup_iterations": 10, "log_every": 50, **train})

    def on_step(iteration, images, labels):
        clock.now += seconds_per_step(iteration)

    tb = None if budget is None else TimeBudget(budget, start=clock.now, clock=clock)
    return fit(run_dir=run_dir, train_ids=IDS[:4], val_ids=IDS[4:], load=DictLoader(CASES), plan=plan,
               model_cfg=model_cfg, cfg=cfg, progress=False, sampler=simple_sampler, augmenter=flip_augmenter,
               on_step=on_step, time_budget=tb)


# ---------------------------------------------------------------------------------------------- pure rules


@pytest.mark.parametrize("text, seconds", [("6m", 360.0), ("90s", 90.0), ("1h30m", 5400.0), ("2.5m", 150.0),
                                           ("360", 360.0), (" 1H ", 3600.0), ("1m30s", 90.0)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "6x", "m", "0", "-5", "6m6m", "6 minutes", "nan", "0s"])
def test_parse_duration_refuses(text):
    with pytest.raises(ValueError, match="time budget"):
        parse_duration(text)


@pytest.mark.parametrize("n, expected", [(0, 0), (7, 7), (99, 99), (100, 100), (437, 430), (1234, 1200),
                                         (25000, 25000), (25999, 25000)])
def test_round_down_two_significant_figures(n, expected):
    assert round_down(n) == expected


@pytest.mark.parametrize("done, total, every, expected", [(0, 100, 50, 2), (0, 120, 50, 3), (10, 10, 5, 0),
                                                          (49, 50, 50, 1), (50, 51, 50, 1), (8, 20, 5, 3)])
def test_validations_between(done, total, every, expected):
    assert validations_between(done, total, every) == expected


def test_plan_counts_steps_validations_and_checkpoints():
    kw = dict(done=10, step=0.5, validation=4.0, checkpoint=1.0, val_every=50, checkpoint_every=50, validates=True)
    # 160 iterations (80 s) + 4 validations (16 s) + 4 checkpoints (4 s) = 100 s: 170 fits exactly, 180 not
    assert run_seconds(10, 170, **{k: v for k, v in kw.items() if k != "done"}) == 100.0
    assert plan_iterations(left=100.0, cap=1000, **kw) == 170
    assert plan_iterations(left=99.9, cap=1000, **kw) == 160  # 169 -> two significant figures
    assert plan_iterations(left=1e6, cap=1000, **kw) == 1000  # the cap when it fits
    assert plan_iterations(left=0.0, cap=1000, **kw) == 10  # nothing more fits: stop where it is
    # no validation cases: their time is not counted
    assert plan_iterations(left=100.0, cap=1000, **{**kw, "validates": False}) == 200  # 95 s + 4 checkpoints


def test_planner_stops_when_the_next_iteration_and_the_final_validation_do_not_fit():
    clock = FakeClock()
    planner = BudgetPlanner(TimeBudget(10.0, start=0.0, clock=clock), first=0, cap=100, val_every=50,
                            checkpoint_every=50, validates=True, skip=0, measure=1)
    planner.step_took(1.0)
    clock.now = 1.0
    assert planner.ready_to_plan()
    total = planner.plan(1, validation=2.0, checkpoint=0.0)
    assert total == 8 and not planner.ready_to_plan()  # 7 more steps and the final validation: the 9 s left
    assert not planner.stop_after(1, total)
    clock.now = 5.5  # slower than measured: iteration 2 and a final validation (3 s) still fit in the 4.5 s left
    assert not planner.stop_after(1, total)
    assert not planner.stop_after(7, total)  # the planned last one (3 s, its validation included) fits too
    planner.step_took(1.0)
    clock.now = 7.5  # 2.5 s left: iteration 3 and a final validation would not fit, so iteration 2 is the last
    assert planner.stop_after(2, total)


# ---------------------------------------------------------------------------------------------- fit


def test_budget_plans_the_count_and_stops_within_it(tmp_path):
    clock = FakeClock()
    result = _fit(tmp_path / "run", clock, lambda it: 1.0)  # 1 s per step, 20 s: 8 timed, then 12 more fit
    assert result.iteration == 20 and clock.now <= 20.0
    doc = json.loads((tmp_path / "run" / "config.json").read_text())
    assert doc["train"]["iterations"] == 20  # the planned count is stored with the run
    last = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=True)
    assert last["iteration"] == 20 and last["scheduler"]["total"] == 20

    # the same command again resumes to the stored count: nothing to do, not 100 iterations
    again = _fit(tmp_path / "run", clock, lambda it: 1.0)
    assert again.iteration == 20 and again.resumed_from == 20

    # planned inside the learning-rate warm-up: the run is the one --iterations 20 gives, step for step
    fixed = _fit(tmp_path / "fixed", FakeClock(), lambda it: 1.0, budget=None, iterations=20)
    assert fixed.iteration == 20
    ours = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=True)["model"]
    theirs = torch.load(tmp_path / "fixed" / "last.pt", map_location="cpu", weights_only=True)["model"]
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_budget_stops_early_when_the_machine_slows_down(tmp_path):
    clock = FakeClock()
    # 1 s per step while timed (plans 20 iterations in 20 s), then 3 s per step: the run must end early, in time
    result = _fit(tmp_path / "run", clock, lambda it: 1.0 if it <= 8 else 3.0)
    assert 8 < result.iteration < 20 and clock.now <= 20.0
    last = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=True)
    assert last["iteration"] == result.iteration  # the last iteration was checkpointed
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_budget_smaller_than_the_timed_steps(tmp_path):
    clock = FakeClock()
    result = _fit(tmp_path / "run", clock, lambda it: 1.0, budget=4.5)  # even the timing would not fit
    assert result.iteration == 4 and clock.now <= 4.5


def test_budget_that_fits_keeps_the_iterations_asked_for(tmp_path):
    clock = FakeClock()
    result = _fit(tmp_path / "run", clock, lambda it: 1.0, budget=1000.0, iterations=30)
    assert result.iteration == 30
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["iterations"] == 30


def test_time_budget_refuses_nonsense():
    with pytest.raises(ValueError, match="positive"):
        TimeBudget(0.0)
