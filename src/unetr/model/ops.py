"""The decoder's operators on every device: convolution, instance norm and the output head.

Each operator keeps channels-last input channels-last, and takes a CPU kernel of
:mod:`unetr.model.cpu_kernels` where :func:`~unetr.model.cpu_kernels.fast_paths_enabled` says it applies;
otherwise it runs its generic path, which uses public PyTorch operators only and is what GPUs run.
Exports (TorchScript, ONNX), ``torch.compile`` and Python dispatch modes (FLOP counting, fake tensors) get the
plain operators.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from unetr.model import cpu_kernels as K
from unetr.model.layout import from_voxels, is_channels_last, norm_channels_last, to_channels_last, voxels
from unetr.model.torch_private import dispatch_mode_active


def exporting() -> bool:
    """Whether the plain operators are wanted: exports, ``torch.compile`` (inductor fuses the plain operators
    itself; dynamo cannot trace the dispatch-mode query below, which breaks the graph at every layer), and
    dispatch modes (FLOP counting, fake tensors) that know ``aten.convolution`` but not the oneDNN operator
    called directly."""
    return (torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting()
            or torch.onnx.is_in_onnx_export() or dispatch_mode_active())


# ---------------------------------------------------------------------------------------------- convolution


def convolution(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for a ``Conv3d`` or ``ConvTranspose3d`` of the decoder; channels-last in, channels-last out.

    A 1×1×1 convolution is a matrix product over channels on every device (PyTorch's CPU kernel for it is
    slow). A one-channel input's convolution comes back channels-first from PyTorch: it is put back in the
    input's layout.
    """
    if isinstance(conv, nn.Conv3d) and conv.kernel_size == (1, 1, 1):
        y = _pointwise(x, conv.weight, conv.bias)
        if y is not None:
            return y
    if exporting():  # TorchScript/ONNX graphs get the plain operator
        return conv(x)
    fast = K.fast_paths_enabled(x.device)
    if fast and K.fits_up2(conv) and is_channels_last(x):
        return K.up2_channels_last(x, conv.weight, conv.bias)
    if fast and isinstance(conv, nn.Conv3d) and K.wants_onednn(x, conv.weight):
        y = K.onednn_conv3d(x, conv)
    else:
        y = conv(x)
    return to_channels_last(y) if is_channels_last(x) else y


def _pointwise(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """A 1×1×1 convolution as one matrix product for channels-last or contiguous ``x``; ``None`` otherwise."""
    w = weight.flatten(1)  # (Cout, Cin)
    if is_channels_last(x):
        y = F.linear(x.permute(0, 2, 3, 4, 1), w, bias)  # (B, X, Y, Z, Cout)
        return y.permute(0, 4, 1, 2, 3)  # channels-last (B, Cout, X, Y, Z)
    if x.is_contiguous():
        y = torch.matmul(w, x.flatten(2))  # (B, Cin, N) -> (B, Cout, N)
        if bias is not None:
            y = y + bias[:, None]
        return y.unflatten(2, x.shape[2:])  # (B, Cout, X, Y, Z)
    return None


# ---------------------------------------------------------------------------------------------- instance norm


def instance_norm(x: torch.Tensor, eps: float = 1e-5, *, inplace: bool = False) -> torch.Tensor:
    """Instance normalisation of ``(B, C, X, Y, Z)`` without affine parameters, in the input's layout and dtype.

    PyTorch's ``instance_norm`` copies a channels-last tensor to channels-first and back; for channels-last
    input the work is done on the ``(B, X·Y·Z, C)`` view instead, by the CPU kernel
    (:func:`~unetr.model.cpu_kernels.instance_norm_cl`) or by the generic path: statistics accumulated in fp32
    for every input dtype, one fused multiply-add, no host synchronisation and no loop over cases, and a
    backward pass written out (it saves the input and two ``(B, C)`` statistics, as batch norm does).
    ``inplace=True`` writes the result into ``x``; only for tensors autograd does not track.
    """
    if not is_channels_last(x) or exporting():
        return F.instance_norm(x, eps=eps)
    if K.fast_paths_enabled(x.device):
        return K.instance_norm_cl(x, eps, inplace=inplace)
    return norm_channels_last(x, eps, inplace, _norm_into, _InstanceNorm)


def _norm_into(x: torch.Tensor, eps: float, out: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Normalise channels-last ``x`` into channels-last ``out`` (may be ``x``); returns the fp32 mean and
    1/std, ``(B, C)`` each."""
    v, o = voxels(x), voxels(out)  # (B, N, C) views
    mean = v.sum(1, dtype=torch.float32) / v.shape[1]  # (B, C), accumulated in fp32 also for bf16/fp16
    # Welford (stable for any offset), accumulated in fp32; fp16 would overflow beyond a variance of 65504
    var = torch.var(v.float() if v.dtype == torch.float16 else v, dim=1, correction=0).float()
    rstd = torch.rsqrt(var + eps)
    torch.addcmul((-mean * rstd)[:, None], v, rstd[:, None], out=o)  # computed in fp32, stored in x's dtype
    return mean, rstd


class _InstanceNorm(torch.autograd.Function):
    """Channels-last instance norm with public operators, for training on any device.

    With ``x̂ = (x - mean) · rstd`` over each case's and channel's ``N`` voxels, the input gradient is
    ``rstd · (g - mean(g) - x̂ · mean(g · x̂))``, computed in fp32 and stored channels-last in ``x``'s dtype.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: float) -> torch.Tensor:
        out = torch.empty_like(x, memory_format=torch.channels_last_3d)
        mean, rstd = _norm_into(x, eps, out)
        ctx.save_for_backward(x, mean, rstd)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> Tuple[torch.Tensor, None]:
        x, mean, rstd = ctx.saved_tensors
        v, g = voxels(x), voxels(to_channels_last(grad))  # (B, N, C) each
        n = v.shape[1]
        centred = v - mean[:, None]  # (B, N, C) fp32
        g_sum = g.sum(1, dtype=torch.float32)  # (B, C)
        gc_sum = (centred * g).sum(1)  # (B, C): sum of g·(x - mean)
        # rstd·g - rstd·mean(g) - (x - mean)·rstd³·mean(g·(x - mean)), the last two terms into `centred`
        centred.mul_((-rstd.pow(3) * gc_sum / n)[:, None]).add_((-rstd * g_sum / n)[:, None])
        gx = torch.empty_like(x, memory_format=torch.channels_last_3d)
        torch.addcmul(centred, g, rstd[:, None], out=voxels(gx))
        return gx, None


# ---------------------------------------------------------------------------------------------- output head


def class_logits(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """The 1×1×1 convolution ``conv`` from features to class logits ``(B, K, X, Y, Z)``, channels-first.

    Channels-last features give channels-first logits through one batched GEMM: ``(K, C) @ (B, C, N)`` reads
    the features transposed for free. Softmax over classes, the loss and the sliding-window sums all run
    along contiguous voxels in this layout; the backward pass returns channels-last gradients.
    """
    if is_channels_last(x) and not exporting() and x.shape[1] > 1:
        return _ChannelsFirstHead.apply(x, conv.weight, conv.bias)
    return convolution(conv, x)


class _ChannelsFirstHead(torch.autograd.Function):
    """``conv1x1(x, w, b)`` for channels-last ``x`` ``(B, C, *S)``, giving contiguous ``(B, K, *S)`` logits.

    The computation dtype is the features' (bf16 under autocast, where the convolutions before it produced
    bf16); gradients come back in each input's dtype, the features' gradient channels-last."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        b, dt = x.shape[0], x.dtype
        xt = voxels(x).transpose(1, 2)  # (B, C, N), a view
        w = weight.flatten(1).to(dt)  # (K, C)
        if bias is None:
            y = torch.bmm(w.expand(b, -1, -1), xt)
        else:
            y = torch.baddbmm(bias.to(dt)[None, :, None], w.expand(b, -1, -1), xt)
        ctx.save_for_backward(x, w)
        ctx.meta = (weight.shape, weight.dtype, None if bias is None else bias.dtype)
        return y.view(b, -1, *x.shape[2:])  # (B, K, *S)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        x, w = ctx.saved_tensors
        w_shape, w_dtype, b_dtype = ctx.meta
        b, k = grad.shape[:2]
        g = grad.reshape(b, k, -1).to(w.dtype)  # (B, K, N)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gxv = torch.bmm(g.transpose(1, 2), w.expand(b, -1, -1))  # (B, N, C): channels-last
            gx = from_voxels(gxv, x).to(x.dtype)
        if ctx.needs_input_grad[1]:
            gw = torch.bmm(g, voxels(x)).sum(0).view(w_shape).to(w_dtype)  # (K, C)
        if b_dtype is not None and ctx.needs_input_grad[2]:
            gb = g.sum((0, 2)).to(b_dtype)  # reductions of bf16 accumulate in fp32; no fp32 copy of g
        return gx, gw, gb


__all__ = ["class_logits", "convolution", "exporting", "instance_norm"]
