import pytest
import torch

from unetr.training.loss import DiceCELoss, dice_ce_loss


def test_shape_and_scalar():
    loss = DiceCELoss()(torch.randn(2, 3, 8, 6, 4), torch.randint(0, 3, (2, 1, 8, 6, 4)))
    assert loss.shape == () and loss.dtype == torch.float32


def test_uniform_logits_hand_value():
    # p = 1/2 everywhere, two classes, N voxels all background:
    # CE = log 2; Dice(bg) = 1 - 2*(N/2)/(N/2 + N) = 1/3; Dice(fg) = 1 - (0 + s)/(N/2 + s) ~ 1.
    n = 4 * 4 * 4
    logits = torch.zeros(1, 2, 4, 4, 4)
    target = torch.zeros(1, 1, 4, 4, 4, dtype=torch.long)
    s = 1e-5
    dice_bg = 1 - (2 * n / 2 + s) / (n / 2 + n + s)
    dice_fg = 1 - s / (n / 2 + s)
    ce = torch.log(torch.tensor(2.0))
    got = dice_ce_loss(logits, target)
    assert got.item() == pytest.approx(float(ce) + (dice_bg + dice_fg) / 2, rel=1e-6)
    assert dice_ce_loss(logits, target, ce_weight=0, include_background=False).item() == pytest.approx(dice_fg)


def test_perfect_prediction_is_near_zero():
    target = torch.zeros(1, 1, 4, 4, 6, dtype=torch.long)
    target[..., :3] = 1
    logits = torch.where(torch.cat([target == 0, target == 1], 1), 30.0, -30.0)
    assert dice_ce_loss(logits, target).item() < 1e-6


@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("batch", [True, False])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weights", [(0.7, 1.3), (1.0, 0.0), (0.0, 1.0)], ids=["both", "dice", "ce"])
@pytest.mark.parametrize("layout", ["channels_first", "channels_last"])
def test_value_and_gradient_equal_monai(include_background, batch, smoothing, weights, layout):
    """The hand-written backward pass against autograd through MONAI's loss, for every option."""
    monai_losses = pytest.importorskip("monai.losses")
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 8, 6, 10, generator=g) * 3
    if layout == "channels_last":
        logits = logits.contiguous(memory_format=torch.channels_last_3d)
    target = torch.randint(0, 4, (2, 1, 8, 6, 10), generator=g)
    w_dice, w_ce = weights
    ref = monai_losses.DiceCELoss(to_onehot_y=True, softmax=True, include_background=include_background,
                                  batch=batch, label_smoothing=smoothing, lambda_dice=w_dice, lambda_ce=w_ce)
    ours = DiceCELoss(include_background=include_background, batch_dice=batch, label_smoothing=smoothing,
                      dice_weight=w_dice, ce_weight=w_ce)
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    want, got = ref(a, target), ours(b, target)
    assert got.item() == pytest.approx(want.item(), rel=1e-5, abs=1e-6)
    (want * 2.5).backward()
    (got * 2.5).backward()
    assert b.grad.stride() == b.stride()  # the gradient keeps the logits' layout
    torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("batch", [True, False])
@pytest.mark.parametrize("include_background", [True, False])
def test_squared_pred_equals_monai(batch, include_background):
    """The BTCV recipe's loss: DiceCELoss(squared_pred=True, smooth_nr=0, smooth_dr=1e-6), value and gradient."""
    monai_losses = pytest.importorskip("monai.losses")
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 4, 8, 6, 10, generator=g) * 3
    target = torch.randint(0, 4, (2, 1, 8, 6, 10), generator=g)
    ref = monai_losses.DiceCELoss(to_onehot_y=True, softmax=True, squared_pred=True, smooth_nr=0.0, smooth_dr=1e-6,
                                  batch=batch, include_background=include_background)
    ours = DiceCELoss(squared_pred=True, smooth_nr=0.0, smooth_dr=1e-6, batch_dice=batch,
                      include_background=include_background)
    a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    want, got = ref(a, target), ours(b, target)
    assert got.item() == pytest.approx(want.item(), rel=1e-5, abs=1e-6)
    assert abs(got.item() - DiceCELoss(smooth_nr=0.0, smooth_dr=1e-6)(logits, target).item()) > 1e-3  # it differs
    want.backward()
    got.backward()
    torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-7)


def test_gradient_equals_monai():
    monai_losses = pytest.importorskip("monai.losses")
    logits = torch.randn(2, 3, 6, 5, 4, requires_grad=True)
    target = torch.randint(0, 3, (2, 1, 6, 5, 4))
    monai_losses.DiceCELoss(to_onehot_y=True, softmax=True)(logits, target).backward()
    ref = logits.grad.clone()
    logits.grad = None
    dice_ce_loss(logits, target).backward()
    torch.testing.assert_close(logits.grad, ref, rtol=1e-4, atol=1e-7)


def test_accepts_labels_without_channel_and_bf16_logits():
    logits = torch.randn(1, 3, 4, 4, 4)
    target = torch.randint(0, 3, (1, 4, 4, 4))
    a = dice_ce_loss(logits, target)
    b = dice_ce_loss(logits.bfloat16(), target.unsqueeze(1).to(torch.uint8))
    assert a.item() == pytest.approx(b.item(), rel=2e-2)


@pytest.mark.parametrize(
    "kwargs, logits, target",
    [
        ({}, torch.zeros(2, 3), torch.zeros(2, 1, dtype=torch.long)),
        ({}, torch.zeros(1, 2, 4, 4, 4), torch.zeros(1, 2, 4, 4, 4, dtype=torch.long)),
        ({}, torch.zeros(1, 2, 4, 4, 4), torch.zeros(1, 1, 4, 4, 5, dtype=torch.long)),
        ({"label_smoothing": 1.0}, torch.zeros(1, 2, 4, 4, 4), torch.zeros(1, 1, 4, 4, 4, dtype=torch.long)),
    ],
)
def test_bad_arguments(kwargs, logits, target):
    with pytest.raises(ValueError):
        dice_ce_loss(logits, target, **kwargs)


def test_bad_weights():
    with pytest.raises(ValueError, match="weights"):
        DiceCELoss(dice_weight=0, ce_weight=0)
