"""`unetr summary`: the layer table, the parameter total and the FLOPs."""

import re

import pytest
import torch

from unetr.cli import main
from unetr.config import preset
from unetr.model import build_model


def test_summary_prints_the_table_total_and_flops(capsys):
    assert main(["summary", "--preset", "tiny", "--in-channels", "2", "--out-channels", "3", "--img-size", "32", "32",
                 "48"]) == 0
    out = capsys.readouterr().out
    model = build_model(preset("tiny", in_channels=2, out_channels=3, img_size=(32, 32, 48)))
    total = int(re.search(r"Total params: ([\d,]+)", out).group(1).replace(",", ""))
    assert total == sum(p.numel() for p in model.parameters())
    assert "[1, 3, 32, 32, 48]" in out  # the output layer's shape
    assert "ViT (vit)" in out and "UpBlock (decoder2)" in out
    gflop = float(re.search(r"Forward FLOPs: ([\d.,]+) GFLOP", out).group(1).replace(",", ""))
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.eval()(torch.zeros(1, 2, 32, 32, 48))
    assert gflop == pytest.approx(counter.get_total_flops() / 1e9, rel=1e-2)


def test_summary_rejects_a_bad_size(capsys):
    assert main(["summary", "--preset", "tiny", "--img-size", "40"]) == 2
    assert "multiple of patch_size" in capsys.readouterr().err


def test_paper_flops_equal_monai_unetr_flops():
    """The counted FLOPs are those of the network (MONAI's implementation as the reference), whatever fast
    paths the forward pass takes."""
    monai_nets = pytest.importorskip("monai.networks.nets")
    from torch.utils.flop_counter import FlopCounterMode

    img = (32, 32, 48)
    ours = build_model(preset("paper", in_channels=1, out_channels=3, img_size=img)).eval()
    ref = monai_nets.UNETR(in_channels=1, out_channels=3, img_size=img, feature_size=16).eval()
    x = torch.zeros(1, 1, *img)
    flops = []
    for m in (ours, ref):
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            m(x)
        flops.append(counter.get_total_flops())
    # MONAI's attention counts its two batched products; SDPA counts the same multiply-adds
    assert flops[0] == pytest.approx(flops[1], rel=1e-3)
