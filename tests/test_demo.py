"""unetr.demo without running the steps: the commands, the training's share of the time budget, the step times."""

import pytest

from unetr import demo


def _recorded(tmp_path, **kw):
    seen = []

    def runner(cmd):
        seen.append(list(cmd))
        return 0

    result = demo.run_demo(tmp_path / "demo", runner=runner, **kw)
    return seen, result


def test_training_gets_what_the_budget_leaves(tmp_path):
    seen, result = _recorded(tmp_path, budget_s=300.0)
    assert [c[0] for c in seen] == ["synth", "train", "predict", "evaluate", "report"]
    train = seen[1]
    seconds = float(train[train.index("--time-budget") + 1].rstrip("s"))
    assert 300.0 - demo.AFTER_TRAIN_S - 5 <= seconds <= 300.0 - demo.AFTER_TRAIN_S
    assert "--num-workers" not in train  # the CPU default of `unetr train`
    threads = int(train[train.index("--threads") + 1])
    assert 1 <= threads <= demo.usable_cores()
    assert [name for name, _, _ in result["steps"]] == ["synth", "train", "predict", "evaluate", "report"]
    assert all(wall >= 0 and cpu >= 0 for _, wall, cpu in result["steps"])


@pytest.mark.parametrize("cores, busy, threads", [(2, 0, 2), (2, 1, 1), (2, 9, 1), (16, 3, 13), (1, 0, 1)])
def test_threads_are_the_free_cores(cores, busy, threads):
    assert demo.demo_threads(cores, busy) == threads


def test_busy_cores_reads_a_count():
    assert demo.busy_cores(samples=2, interval=0.0) >= 0


def test_no_budget_no_limit_and_a_small_budget_still_trains(tmp_path):
    seen, _ = _recorded(tmp_path / "a", budget_s=None)
    assert "--time-budget" not in seen[1]
    seen, _ = _recorded(tmp_path / "b", budget_s=10.0)  # less than the other steps need: a minute of training
    assert seen[1][seen[1].index("--time-budget") + 1] == "60s"


def test_iterations_override_sets_validation_and_checkpoints(tmp_path):
    seen, _ = _recorded(tmp_path, iterations=60)
    train = seen[1]
    assert [train[train.index(f) + 1] for f in ("--iterations", "--val-every", "--checkpoint-every")] == ["60", "10",
                                                                                                        "10"]


def test_failed_step_names_the_command(tmp_path):
    with pytest.raises(demo.UnetrError, match="unetr synth"):
        demo.run_demo(tmp_path / "demo", runner=lambda cmd: 1)


def test_unknown_data_is_refused(tmp_path):
    with pytest.raises(ValueError, match="phantom"):
        demo.demo_commands(tmp_path, data="lungs")


def test_folds_train_without_a_budget(tmp_path):
    seen, _ = _recorded(tmp_path, folds=3)
    train = next(c for c in seen if c[0] == "train")
    assert "--folds" in train and "--time-budget" not in train  # `train --folds` refuses a budget
