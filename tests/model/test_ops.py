"""The decoder's operators (and on the CPU their fast kernels) give what the plain PyTorch ops give."""

import pytest
import torch
import torch.nn.functional as F

from unetr.model.cpu_kernels import sum_of_squares
from unetr.model.decoder import ConvUnit, OutBlock
from unetr.model.layout import is_channels_last, to_channels_last
from unetr.model.ops import instance_norm


def test_to_channels_last_sets_the_channel_stride_also_for_one_channel():
    for c in (1, 3):
        x = torch.randn(2, c, 4, 5, 6)
        y = to_channels_last(x)
        assert is_channels_last(y) and torch.equal(y, x)
    assert not is_channels_last(torch.randn(1, 1, 4, 5, 6))  # a plain one-channel tensor is channels-first


@pytest.mark.parametrize("in_ch,size", [(1, 24), (128, 12)])  # the two shapes PyTorch sends to its slow kernel
def test_fp32_convolution_equals_conv3d_and_keeps_channels_last(in_ch, size):
    unit = ConvUnit(in_ch, 8, 3)
    x = to_channels_last(torch.randn(1, in_ch, size, size, size))
    with torch.no_grad():
        got = unit(x)
        want = F.conv3d(x.contiguous(), unit.conv.weight, None, 1, 1)
    assert is_channels_last(got)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_fp32_convolution_has_gradients():
    unit = ConvUnit(1, 4, 3)
    x = torch.randn(1, 1, 8, 8, 8, requires_grad=True)
    unit(x).square().sum().backward()
    gx, gw = x.grad.clone(), unit.conv.weight.grad.clone()
    x.grad, unit.conv.weight.grad = None, None
    F.conv3d(x, unit.conv.weight, None, 1, 1).square().sum().backward()
    torch.testing.assert_close(gx, x.grad)
    torch.testing.assert_close(gw, unit.conv.weight.grad)


def testsum_of_squares_is_accurate_and_handles_a_tail():
    v = torch.randn(2, 3 * 4096 + 17, 5) * 3 + 1
    want = v.double().square().sum(1)
    rel = ((sum_of_squares(v).double() - want) / want).abs().max().item()
    assert rel < 5e-6  # fp32 accumulation; a squared copy summed pairwise is no better than ~1e-7


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 5e-2)])
@pytest.mark.parametrize("offset", [0.0, 100.0])  # a large mean takes the two-pass variance
def test_instance_norm_channels_last_in_and_out_of_place(dtype, tol, offset):
    x = to_channels_last(torch.randn(2, 6, 10, 12, 14) * 3 + offset).to(dtype)
    want = F.instance_norm(x.float().contiguous(), eps=1e-5)
    got = instance_norm(x, 1e-5)
    assert is_channels_last(got) and got.dtype == dtype
    torch.testing.assert_close(got.float(), want, rtol=tol, atol=tol)
    y = x.clone()
    out = instance_norm(y, 1e-5, inplace=True)
    assert out.data_ptr() == y.data_ptr()
    torch.testing.assert_close(out.float(), want, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 6e-2)])
@pytest.mark.parametrize("grad_layout", ["channels_last", "channels_first"])
def test_instance_norm_channels_last_gradient_equals_pytorch(dtype, tol, grad_layout):
    x0 = to_channels_last(torch.randn(2, 5, 8, 10, 12) * 2 + 0.5)
    g = torch.randn(2, 5, 8, 10, 12)
    g = to_channels_last(g) if grad_layout == "channels_last" else g.contiguous()
    x = x0.to(dtype).requires_grad_()
    y = instance_norm(x, 1e-5)
    assert is_channels_last(y)
    y.backward(g.to(dtype))
    ref = x0.detach().contiguous().requires_grad_()
    F.instance_norm(ref, eps=1e-5).backward(g.contiguous())
    assert is_channels_last(x.grad)
    torch.testing.assert_close(x.grad.float(), ref.grad, rtol=tol, atol=tol)


@pytest.mark.parametrize("bias", [False, True])
def test_up_sampling_as_gemm_equals_conv_transpose(bias):
    unit = ConvUnit(6, 4, 2, 2, transposed=True, bias=bias)
    x0 = torch.randn(2, 6, 3, 4, 5)
    x = to_channels_last(x0).requires_grad_()
    y = unit(x)
    assert is_channels_last(y) and y.shape == (2, 4, 6, 8, 10)
    ref_x = x0.clone().requires_grad_()
    ref = unit.conv(ref_x)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(ref)
    y.backward(g)
    ref.backward(g)
    torch.testing.assert_close(x.grad, ref_x.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_output_head_is_a_1x1_convolution_with_channels_first_logits(dtype, tol):
    head = OutBlock(6, 3)
    x0 = torch.randn(2, 6, 4, 5, 6)
    x = to_channels_last(x0).to(dtype).requires_grad_()
    y = head(x)
    assert y.is_contiguous() and y.shape == (2, 3, 4, 5, 6)
    ref_x = x0.clone().requires_grad_()
    ref = head.conv.conv(ref_x)
    torch.testing.assert_close(y.float(), ref, rtol=tol, atol=tol)
    g = torch.randn_like(ref)
    y.backward(g.to(dtype))
    grads = (x.grad.float(), head.conv.conv.weight.grad.clone(), head.conv.conv.bias.grad.clone())
    head.zero_grad()
    ref.backward(g)
    assert is_channels_last(x.grad)
    for got, want in zip(grads, (ref_x.grad, head.conv.conv.weight.grad, head.conv.conv.bias.grad)):
        torch.testing.assert_close(got, want, rtol=tol * 4, atol=tol * 4)
