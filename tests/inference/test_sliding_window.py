"""Sliding window: placement, weights, equality with MONAI, argmax path, devices, padding, bad arguments."""

import pytest
import torch

from unetr.inference.sliding_window import (
    count_windows,
    importance_map,
    sliding_window,
    window_grid,
    window_starts,
)


def _net(in_ch: int = 2, out_ch: int = 3) -> torch.nn.Module:
    g = torch.Generator().manual_seed(1)
    net = torch.nn.Sequential(
        torch.nn.Conv3d(in_ch, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv3d(4, out_ch, 3, padding=1)
    )
    for p in net.parameters():
        p.data = torch.randn(p.shape, generator=g) * 0.5
    return net.eval()


@pytest.mark.parametrize(
    "size,roi,overlap,expected",
    [(10, 4, 0.5, [0, 2, 4, 6]), (11, 4, 0.5, [0, 2, 4, 6, 7]), (4, 4, 0.5, [0]), (3, 4, 0.5, [0]),
     (9, 4, 0.0, [0, 4, 5]), (5, 4, 0.9, [0, 1])],
)
def test_window_starts(size, roi, overlap, expected):
    assert window_starts(size, roi, overlap) == expected


def test_window_grid_covers_every_voxel_and_is_x_major():
    shape, roi = (13, 9, 7), (4, 4, 4)
    grid = window_grid(shape, roi, 0.25)
    cover = torch.zeros(shape)
    for x, y, z in grid:
        cover[x : x + 4, y : y + 4, z : z + 4] += 1
    assert cover.min() >= 1
    assert [c[0] for c in grid] == sorted(c[0] for c in grid)
    assert count_windows(shape, roi, 0.25) == len(grid)


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_importance_map_matches_monai(mode):
    from monai.data.utils import compute_importance_map

    roi = (16, 12, 8)
    ours = importance_map(roi, mode, 0.125)
    ref = compute_importance_map(roi, mode=mode, sigma_scale=0.125)
    assert ours.shape == roi
    torch.testing.assert_close(ours, ref.float(), rtol=1e-6, atol=1e-7)


def test_importance_map_is_a_fresh_copy():
    a = importance_map((9, 8, 7))
    a.zero_()
    b = importance_map((9, 8, 7))
    assert b.max() > 0.5 and b.min() >= 1e-3


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
@pytest.mark.parametrize("shape,roi,overlap", [((40, 28, 20), (16, 16, 8), 0.5), ((23, 17, 30), (16, 8, 16), 0.25),
                                               ((10, 20, 6), (16, 16, 8), 0.5)])
def test_equals_monai_sliding_window_inference(mode, shape, roi, overlap):
    from monai.inferers import sliding_window_inference

    net = _net()
    x = torch.randn((1, 2) + shape)
    with torch.no_grad():
        ref = sliding_window_inference(x, roi, 3, net, overlap=overlap, mode=mode, sigma_scale=0.125)
    ours = sliding_window(x, net, roi, overlap=overlap, mode=mode, batch_size=3)
    assert ours.shape == (3,) + shape
    torch.testing.assert_close(ours, ref[0], rtol=1e-5, atol=1e-5)
    labels = sliding_window(x[0], net, roi, overlap=overlap, mode=mode, batch_size=2, output="argmax")
    assert labels.dtype == torch.uint8 and labels.shape == shape
    assert torch.equal(labels.long(), ref[0].argmax(0))


def test_fp16_accumulators_close_and_progress_counts():
    net = _net()
    x = torch.randn(2, 33, 20, 18)
    ref = sliding_window(x, net, (16, 16, 16))
    seen = []
    half = sliding_window(x, net, (16, 16, 16), accum_dtype=torch.float16, out_dtype=torch.float16,
                          progress=seen.append)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), ref, rtol=2e-2, atol=2e-2)
    assert sum(seen) == count_windows((33, 20, 18), (16, 16, 16), 0.5)


def test_windows_and_accumulators_on_given_devices():
    # The predictor sees windows on `device`; the result lives on `accum_device`.
    seen = []

    def pred(w):
        seen.append(w.device)
        return w[:, :1] * 2

    x = torch.rand(1, 20, 17, 16)
    out = sliding_window(x, pred, (16, 16, 16), device="cpu", accum_device="cpu", mode="constant")
    assert all(d.type == "cpu" for d in seen)
    torch.testing.assert_close(out, x * 2)


def test_identity_predictor_returns_the_image():
    x = torch.rand(2, 37, 21, 19)
    out = sliding_window(x, lambda w: w, (16, 16, 8), overlap=0.5, mode="gaussian")
    torch.testing.assert_close(out, x, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs,match",
    [(dict(overlap=1.0), "overlap"), (dict(batch_size=0), "batch_size"), (dict(output="labels"), "output"),
     (dict(mode="box"), "mode"), (dict(roi=(16, 16)), "roi"), (dict(sigma_scale=0.0), "sigma_scale")],
)
def test_bad_arguments(kwargs, match):
    args = dict(roi=(16, 16, 16))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        sliding_window(torch.zeros(1, 16, 16, 16), lambda w: w, **args)


def test_bad_shapes():
    with pytest.raises(ValueError, match="image must be"):
        sliding_window(torch.zeros(16, 16, 16), lambda w: w, (16, 16, 16))
    with pytest.raises(ValueError, match="one volume"):
        sliding_window(torch.zeros(2, 1, 16, 16, 16), lambda w: w, (16, 16, 16))
    with pytest.raises(ValueError, match="predictor must return"):
        sliding_window(torch.zeros(1, 16, 16, 16), lambda w: w[:, :, :8], (16, 16, 16))


def test_stream_hands_out_the_blended_outputs_in_order():
    net = _net(2, 3)
    x = torch.randn(2, 45, 30, 21, generator=torch.Generator().manual_seed(3))
    whole = sliding_window(x, net, (16, 16, 16), overlap=0.5, batch_size=3)
    slabs = []
    assert sliding_window(x, net, (16, 16, 16), overlap=0.5, batch_size=3, output="stream", sink=slabs.append) is None
    assert len(slabs) > 1 and all(s.shape[0] == 3 and s.shape[2:] == (30, 21) for s in slabs)
    torch.testing.assert_close(torch.cat(slabs, 1), whole)
    with pytest.raises(ValueError, match="sink"):
        sliding_window(x, net, (16, 16, 16), output="stream")
    with pytest.raises(ValueError, match="sink"):
        sliding_window(x, net, (16, 16, 16), sink=slabs.append)
