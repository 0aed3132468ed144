import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from train_helpers import ROI, DictLoader, flip_augmenter, make_cases, simple_sampler, tiny_setup

from unetr.device import resolve_precision
from unetr.metrics import dice_from_confusion, mean_foreground
from unetr.model import build_model, load_model
from unetr.training.lock import LOCK_NAME, RunLock, RunLockedError
from unetr.training.loss import DiceCELoss
from unetr.training.optim import build_optimizer
from unetr.training.run_dir import RunSettingsError
from unetr.training.trainer import NonFiniteLossError, fit
from unetr.training.validation import confusion_matrix_torch

HERE = Path(__file__).parent
CASES = make_cases()
IDS = sorted(CASES)


def _fit(run_dir, on_step=None, **train):
    plan, model_cfg, cfg = tiny_setup(**train)
    return fit(run_dir=run_dir, train_ids=IDS[:4], val_ids=IDS[4:], load=DictLoader(CASES), plan=plan,
               model_cfg=model_cfg, cfg=cfg, progress=False, sampler=simple_sampler, augmenter=flip_augmenter,
               on_step=on_step)


def _rows(path, drop=("seconds",)):
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(f)]


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


# ---------------------------------------------------------------------------------------------- units


def test_one_step_lowers_the_loss_on_a_fixed_batch():
    _, model_cfg, _ = tiny_setup()
    model = build_model(model_cfg)
    g = np.random.default_rng(0)
    image, label = CASES[IDS[0]]
    x, y = simple_sampler(image, label, ROI, 2, 1.0, g)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    loss_fn = DiceCELoss()
    opt = build_optimizer(model, lr=1e-3, weight_decay=1e-5, device=torch.device("cpu"))
    before = loss_fn(model(x), y)
    before.backward()
    opt.step()
    with torch.no_grad():
        after = loss_fn(model(x), y)
    assert after.item() < before.item()


def test_confusion_counts_and_dice_by_hand():
    label = torch.tensor([0, 0, 1, 1, 2, 2]).reshape(1, 2, 3)
    pred = torch.tensor([0, 1, 1, 1, 0, 0]).reshape(1, 2, 3)
    cm = confusion_matrix_torch(pred, label, 4)  # class 3 absent everywhere
    assert cm.tolist() == [[1, 0, 2, 0], [1, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]  # rows prediction
    tp = cm.diagonal()
    assert torch.stack([tp, cm.sum(1) - tp, cm.sum(0) - tp]).tolist() == [[1, 2, 0, 0], [2, 1, 0, 0], [1, 0, 2, 0]]
    dice = dice_from_confusion(cm.numpy()).tolist()
    assert dice[0] == pytest.approx(2 / 5) and dice[1] == pytest.approx(4 / 5) and dice[2] == 0.0
    assert math.isnan(dice[3])
    assert mean_foreground(dice) == pytest.approx(0.4)  # NaN class excluded, background excluded
    assert math.isnan(mean_foreground([0.9, float("nan")]))


@pytest.mark.parametrize("name, expected", [("fp32", "fp32"), ("bf16", "bf16"), ("fp16", "fp16")])
def test_resolve_precision_explicit(name, expected):
    assert resolve_precision(name, torch.device("cpu")) == expected


def test_resolve_precision_auto_and_bad():
    assert resolve_precision("auto", torch.device("cpu")) in ("bf16", "fp32")
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp8", torch.device("cpu"))


# ---------------------------------------------------------------------------------------------- runs


def test_run_directory_contents(tmp_path):
    result = _fit(tmp_path / "run", iterations=4, val_every=2, checkpoint_every=2)
    run = tmp_path / "run"
    assert {"config.json", "model.safetensors", "last.pt", "metrics.csv", "curves.png"} <= {p.name for p in run.iterdir()}
    rows = _rows(run / "metrics.csv", drop=())
    assert list(rows[0]) == ["iteration", "train_loss", "lr", "val_dice_background", "val_dice_box", "val_dice_ball",
                             "val_mean_dice", "seconds"]
    assert [r["iteration"] for r in rows] == ["1", "2", "3", "4"] and rows[1]["val_mean_dice"] != ""
    assert result.iteration == 4 and 0.0 <= result.best_dice <= 1.0
    doc = json.loads((run / "config.json").read_text())
    assert doc["format"] == "unetr-run" and doc["train"]["iterations"] == 4 and doc["plan"]["roi"] == list(ROI)
    model, info = load_model(run)
    assert info["model"]["out_channels"] == 3
    last = torch.load(run / "last.pt", map_location="cpu", weights_only=True)  # plain tensors and values only
    assert last["iteration"] == 4 and set(last["rng"]) >= {"python", "numpy", "torch"}


def test_the_bar_shows_the_best_dice_of_the_validation_just_run(tmp_path, monkeypatch):
    """The progress bar's ``best`` after iteration 2 is the Dice of iteration 2's validation (before: the bar
    was given its values before that validation, and showed the previous best until the next iteration)."""
    import tqdm.auto

    shown = {}

    class Recorded(tqdm.auto.tqdm):
        def set_postfix(self, *args, **kwargs):
            shown[self.n] = dict(kwargs)
            return super().set_postfix(*args, **kwargs)

    monkeypatch.setattr(tqdm.auto, "tqdm", Recorded)
    plan, model_cfg, cfg = tiny_setup(iterations=2, val_every=2, checkpoint_every=2)
    result = fit(run_dir=tmp_path / "run", train_ids=IDS[:4], val_ids=IDS[4:], load=DictLoader(CASES), plan=plan,
                 model_cfg=model_cfg, cfg=cfg, progress=True, sampler=simple_sampler, augmenter=flip_augmenter)
    assert result.best_dice > 0  # so that 0.000 (no validation yet) cannot pass
    assert shown[2]["best"] == f"{result.best_dice:.3f}" and shown[1]["best"] == "0.000"


def test_resume_equals_uninterrupted_and_same_seed_same_metrics(tmp_path):
    _fit(tmp_path / "a", iterations=6)

    class Crash(Exception):
        pass

    def crash(iteration, images, labels):
        if iteration == 5:  # after the checkpoint of iteration 4, mid-way through the next step
            raise Crash

    with pytest.raises(Crash):
        _fit(tmp_path / "b", on_step=crash, iterations=6)
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=True)["iteration"] == 4
    result = _fit(tmp_path / "b", iterations=6, num_workers=2)  # the batches do not depend on the workers
    assert result.resumed_from == 4 and result.iteration == 6
    a, b = _state(tmp_path / "a" / "last.pt"), _state(tmp_path / "b" / "last.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert _rows(tmp_path / "a" / "metrics.csv") == _rows(tmp_path / "b" / "metrics.csv")
    # a finished run is not trained again
    assert _fit(tmp_path / "b", iterations=6).resumed_from == 6


def test_same_seed_identical_metrics_different_seed_differs(tmp_path):
    _fit(tmp_path / "a", iterations=3, val_every=3)
    _fit(tmp_path / "b", iterations=3, val_every=3)
    _fit(tmp_path / "c", iterations=3, val_every=3, seed=1)
    assert _rows(tmp_path / "a" / "metrics.csv") == _rows(tmp_path / "b" / "metrics.csv")
    assert _rows(tmp_path / "a" / "metrics.csv") != _rows(tmp_path / "c" / "metrics.csv")


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    def poison(iteration, images, labels):
        if iteration == 3:
            images.fill_(float("nan"))

    with pytest.raises(NonFiniteLossError, match="iteration 3"):
        _fit(tmp_path / "r", on_step=poison, iterations=6)
    assert torch.load(tmp_path / "r" / "last.pt", weights_only=True)["iteration"] == 2


def test_resume_refuses_another_model(tmp_path):
    _fit(tmp_path / "r", iterations=2)
    plan, model_cfg, cfg = tiny_setup(iterations=4)
    with pytest.raises(RunSettingsError, match="model.num_layers 4 -> 3"):
        fit(run_dir=tmp_path / "r", train_ids=IDS[:4], val_ids=IDS[4:], load=DictLoader(CASES), plan=plan,
            model_cfg=model_cfg.replace(num_layers=3), cfg=cfg, progress=False, sampler=simple_sampler,
            augmenter=flip_augmenter)


def test_fp16_needs_cuda(tmp_path):
    with pytest.raises(ValueError, match="CUDA"):
        _fit(tmp_path / "r", precision="fp16")


@pytest.mark.parametrize("minutes, seen", [
    (1e-9, [None, 1, 2]),  # always overdue: last.pt after every iteration
    (1e6, [None, None, 2]),  # never due by time: every checkpoint_every=2 iterations only
    (0.0, [None, None, 2]),  # off
])
def test_last_pt_every_checkpoint_every_or_checkpoint_minutes(tmp_path, minutes, seen):
    last = tmp_path / "r" / "last.pt"
    got = []

    def look(iteration, images, labels):
        got.append(torch.load(last, weights_only=True)["iteration"] if last.exists() else None)

    _fit(tmp_path / "r", on_step=look, iterations=3, checkpoint_every=2, val_every=10, checkpoint_minutes=minutes)
    assert got == seen


def test_a_second_process_is_refused_and_the_run_is_untouched(tmp_path):
    run = tmp_path / "r"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from unetr.training.lock import RunLock; RunLock(sys.argv[1]).acquire(); "
        "print('held', flush=True); time.sleep(60)"), str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=rf"PID {holder.pid} on .*choose another --out"):
            _fit(run, iterations=2)
        assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]
    finally:
        holder.kill()
        holder.wait()
    result = _fit(run, iterations=1)  # the holder is gone: its lock is taken over
    assert result.iteration == 1 and not (run / LOCK_NAME).exists()


def test_a_failed_start_leaves_no_run_folder(tmp_path):
    with pytest.raises(ValueError, match="CUDA"):
        _fit(tmp_path / "new" / "r", precision="fp16")
    assert not (tmp_path / "new").exists()
    with pytest.raises(RunLockedError):
        with RunLock(tmp_path / "held"):
            _fit(tmp_path / "held", iterations=1)  # the same process holds it: refused too (no silent sharing)
    assert not (tmp_path / "held").exists()


@pytest.mark.parametrize("precision", ["auto", "fp32"])
def test_the_log_says_which_precision_and_why(tmp_path, caplog, precision):
    import logging

    from unetr.device import explain_precision

    with caplog.at_level(logging.INFO, logger="unetr.training.trainer"):
        _fit(tmp_path, iterations=1, val_every=1, precision=precision)
    chosen, why = explain_precision(precision, torch.device("cpu"))
    assert f"precision {chosen} on cpu: {why}" in caplog.text
