import math

import pytest
import torch
from torch import nn

from unetr.training.optim import build_optimizer, lr_at, param_groups, set_lr


def test_lr_warmup_then_cosine():
    lrs = [lr_at(s, base_lr=1.0, total=10, warmup=2, min_lr=0.1) for s in range(11)]
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0) and lrs[2] == pytest.approx(1.0)
    assert lrs[6] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))
    assert lrs[10] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))


def test_lr_without_warmup_and_past_the_end():
    assert lr_at(0, base_lr=2.0, total=5) == pytest.approx(2.0)
    assert lr_at(50, base_lr=2.0, total=5, min_lr=0.5) == pytest.approx(0.5)


@pytest.mark.parametrize("kwargs", [dict(step=-1, total=5), dict(step=0, total=0), dict(step=0, total=5, warmup=-1)])
def test_lr_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        lr_at(base_lr=1.0, **kwargs)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 2, 3)
        self.norm = nn.InstanceNorm3d(2, affine=True)
        self.pos_emb = nn.Parameter(torch.zeros(1, 4, 2))
        self.frozen = nn.Parameter(torch.zeros(3, 3), requires_grad=False)


def test_param_groups_split_decay():
    groups = param_groups(_Net(), 0.01)
    decay, no_decay = groups
    assert decay["weight_decay"] == 0.01 and len(decay["params"]) == 1  # conv weight only
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) == 4  # conv bias, norm w/b, pos_emb


def test_decay_all_is_one_decayed_group_as_adamw_over_model_parameters():
    """The BTCV script's torch.optim.AdamW(model.parameters(), weight_decay=...) decays every parameter."""
    (group,) = param_groups(_Net(), 0.01, decay_all=True)
    assert group["weight_decay"] == 0.01 and len(group["params"]) == 5  # all trainable ones, the frozen left out


def test_build_optimizer_and_set_lr():
    opt = build_optimizer(_Net(), lr=1e-3, weight_decay=1e-5, device=torch.device("cpu"))
    assert isinstance(opt, torch.optim.AdamW)
    set_lr(opt, 0.5)
    assert all(g["lr"] == 0.5 for g in opt.param_groups)


@pytest.mark.parametrize("kwargs", [dict(lr=0.0, weight_decay=0.0), dict(lr=1e-3, weight_decay=-1.0)])
def test_build_optimizer_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        build_optimizer(_Net(), device=torch.device("cpu"), **kwargs)
