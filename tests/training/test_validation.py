"""Validation Dice: torch counts in the metrics layout, the shared Dice and mean rules, NaN kept out."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from unetr import metrics as M
from unetr.training import distributed as D
from unetr.training.validation import confusion_matrix_torch, validate

SHAPE = (12, 10, 14)  # non-cubic, so an axis mix-up shows
K = 4


def _maps(seed: int, k: int = K, shape=SHAPE):
    rng = np.random.default_rng(seed)
    return rng.integers(0, k, shape), rng.integers(0, k, shape)


class _LabelAsLogits(nn.Module):
    """A "model" whose prediction is its input channel read as a label: logits 10 * one-hot(round(x))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, *roi) -> (B, K, *roi)
        onehot = nn.functional.one_hot(x[:, 0].round().long(), K)  # (B, *roi, K)
        return 10.0 * onehot.permute(0, 4, 1, 2, 3).float()


@pytest.mark.parametrize("seed", [0, 1])
def test_torch_counts_are_the_metrics_confusion_matrix(seed):
    pred, ref = _maps(seed)
    cm = confusion_matrix_torch(torch.from_numpy(pred), torch.from_numpy(ref), K)
    assert cm.shape == (K, K) and cm.dtype == torch.int64
    np.testing.assert_array_equal(cm.numpy(), M.confusion_matrix(pred, ref, K))


def test_dice_from_confusion_rows_are_the_prediction_and_absent_is_nan():
    pred = np.array([[[0, 1, 1, 1, 1, 2]]])  # 4 voxels predicted 1, of which 1 is class 1
    ref = np.array([[[0, 0, 0, 0, 1, 1]]])
    cm = M.confusion_matrix(pred, ref, 4)
    assert cm[1].sum() == 4 and cm[:, 1].sum() == 2  # rows prediction, columns reference
    dice = M.dice_from_confusion(cm)
    assert dice.shape == (4,) and dice.dtype == np.float64
    assert dice[0] == pytest.approx(2 * 1 / (1 + 4)) and dice[1] == pytest.approx(2 * 1 / (4 + 2))
    assert dice[2] == 0.0 and math.isnan(dice[3])  # a false alarm scores 0; absent from both is NaN
    np.testing.assert_array_equal(M.dice_from_confusion(cm.T), dice)  # Dice itself is symmetric


@pytest.mark.parametrize("shape", [(3,), (3, 4), (2, 2, 2)])
def test_dice_from_confusion_needs_a_square_matrix(shape):
    with pytest.raises(ValueError, match="square"):
        M.dice_from_confusion(np.zeros(shape, np.int64))


def test_mean_foreground_leaves_out_background_and_nan():
    nan = float("nan")
    assert M.mean_foreground([0.1, 0.5, nan, 0.9]) == pytest.approx(0.7)
    assert M.mean_foreground({0: 0.1, 1: 0.5, 2: nan, 3: 0.9}) == pytest.approx(0.7)
    assert M.mean_foreground({2: 0.4, 3: 0.8}) == pytest.approx(0.6)  # a mapping needs no background
    assert math.isnan(M.mean_foreground([1.0, nan])) and math.isnan(M.mean_foreground({}))


def test_evaluation_means_use_the_same_rule():
    pred, ref = _maps(2)
    scores = M.evaluate_case(pred, ref, (1, 1, 1), K, classes=[0, 1, 2, 3], surface_metrics=False)
    summary = M.summarize({"a": scores}, metrics=("dice",))
    expected = M.mean_foreground({c: s.dice for c, s in scores.items()})
    assert M.mean_over_classes(summary, "dice") == pytest.approx(expected)
    assert expected != pytest.approx(np.mean([s.dice for s in scores.values()]))  # the background is out


def test_validate_equals_evaluation_on_the_same_predictions():
    cases = {}
    for i in range(3):
        pred, ref = _maps(10 + i, k=K - 1)  # class 3 absent from every prediction and reference
        cases[f"c{i}"] = (pred[None].astype(np.float32), ref.astype(np.uint8))
    env = D.DistEnv(device=torch.device("cpu"))
    dice = validate(_LabelAsLogits(), sorted(cases), cases.__getitem__, roi=(8, 8, 8), num_classes=K, env=env,
                    precision="fp32", overlap=0.5, sw_batch=2)
    total = sum(M.confusion_matrix(p[0].astype(np.int64), r, K) for p, r in cases.values())
    assert len(dice) == K and math.isnan(dice[3])
    np.testing.assert_allclose(dice[:3], M.dice_from_confusion(total)[:3])
    one = validate(_LabelAsLogits(), ["c0"], cases.__getitem__, roi=(8, 8, 8), num_classes=K, env=env, precision="fp32")
    scores = M.evaluate_case(cases["c0"][0][0].astype(np.int64), cases["c0"][1], (1, 1, 1), K, surface_metrics=False)
    assert one[1:3] == pytest.approx([scores[1].dice, scores[2].dice])
    assert M.mean_foreground(one) == pytest.approx(M.mean_foreground({c: s.dice for c, s in scores.items()}))


def test_validate_refuses_labels_outside_the_classes():
    image = np.zeros((1, *SHAPE), np.float32)
    label = np.full(SHAPE, K, np.uint8)
    env = D.DistEnv(device=torch.device("cpu"))
    with pytest.raises(ValueError, match="labels outside"):
        validate(_LabelAsLogits(), ["x"], lambda cid: (image, label), roi=(8, 8, 8), num_classes=K, env=env,
                 precision="fp32")


def test_validate_restores_the_training_mode():
    model = _LabelAsLogits().train()
    pred, ref = _maps(5)
    validate(model, ["x"], lambda cid: (pred[None].astype(np.float32), ref), roi=(8, 8, 8), num_classes=K,
             env=D.DistEnv(device=torch.device("cpu")), precision="fp32")
    assert model.training


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_validate_blends_the_windows_as_asked(mode, monkeypatch):
    """``val_mode`` reaches the sliding window (the BTCV recipe validates with MONAI's default, constant)."""
    import unetr.inference as inference

    seen = []
    real = inference.sliding_window

    def spy(*args, **kwargs):
        seen.append(kwargs["mode"])
        return real(*args, **kwargs)

    monkeypatch.setattr(inference, "sliding_window", spy)
    pred, ref = _maps(6)
    validate(_LabelAsLogits(), ["x"], lambda cid: (pred[None].astype(np.float32), ref), roi=(8, 8, 8), num_classes=K,
             env=D.DistEnv(device=torch.device("cpu")), precision="fp32", mode=mode)
    assert seen == [mode]
