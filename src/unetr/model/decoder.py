"""Decoder blocks.

The ``paper`` decoder mirrors MONAI's ``UnetrBasicBlock``/``UnetrPrUpBlock``/``UnetrUpBlock``/``UnetOutBlock``
module tree, so parameter names (``encoder2.blocks.0.1.conv1.conv.weight``...) coincide with MONAI's.
The ``tutorial`` decoder mirrors the seed text's ``Conv3DBlock``/``Deconv3DBlock`` tree (``block`` names).

All volumes are ``(B, C, X, Y, Z)``.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import _get_current_dispatch_mode

# ------------------------------------------------------------------------------------- paper (MONAI)


class ConvUnit(nn.Module):
    """A bare convolution held as ``.conv`` (MONAI's ``Convolution(conv_only=True)`` key layout)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, *, transposed: bool = False,
                 bias: bool = False) -> None:
        super().__init__()
        if transposed:
            # kernel == stride: every output voxel comes from exactly one input voxel (no overlap, no padding).
            self.conv = nn.ConvTranspose3d(in_ch, out_ch, kernel_size, stride=stride, bias=bias)
        else:
            self.conv = nn.Conv3d(in_ch, out_ch, kernel_size, stride=stride, padding=(kernel_size - 1) // 2, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        if c.kernel_size == (1, 1, 1) and isinstance(c, nn.Conv3d):
            # A 1×1×1 convolution is a matrix product over channels (PyTorch's CPU kernel for it is slow).
            w = c.weight.flatten(1)  # (Cout, Cin)
            if _is_channels_last(x):
                y = F.linear(x.permute(0, 2, 3, 4, 1), w, c.bias)  # (B, X, Y, Z, Cout)
                return y.permute(0, 4, 1, 2, 3)  # channels-last (B, Cout, X, Y, Z)
            if x.is_contiguous():
                y = torch.matmul(w, x.flatten(2))  # (B, Cin, N) -> (B, Cout, N)
                if c.bias is not None:
                    y = y + c.bias[:, None]
                return y.unflatten(2, x.shape[2:])  # (B, Cout, X, Y, Z)
        if _exporting():  # TorchScript/ONNX graphs get the plain operator
            return c(x)
        if (isinstance(c, nn.ConvTranspose3d) and c.kernel_size == c.stride == (2, 2, 2) and c.padding == (0, 0, 0)
                and c.output_padding == (0, 0, 0) and c.groups == 1 and x.device.type == "cpu"
                and _is_channels_last(x)):
            return _up2_channels_last(x, c.weight, c.bias)
        if isinstance(c, nn.Conv3d) and _cpu_fp32(x, c.weight):
            # PyTorch sends fp32 batch-1 convolutions with small B·C·X·Y (one input channel, or 128 channels
            # at 12³) to its slow im2col kernel; oneDNN's is 1.5-2.7× faster for them, with the same result.
            y = torch.ops.aten.mkldnn_convolution(x, c.weight, c.bias, c.padding, c.stride, c.dilation, c.groups)
        else:
            y = c(x)
        # a one-channel input comes back channels-first: keep the decoder's layout (a no-op otherwise)
        return to_channels_last(y) if _is_channels_last(x) else y


def _up2_channels_last(x: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``conv_transpose3d(x, w, kernel 2, stride 2)`` for channels-last ``x`` as one GEMM and one copy.

    Each input voxel writes its own 2×2×2 block: ``(B·X·Y·Z, Cin) @ (Cin, 8·Cout)``, then the blocks are put
    in place. The result is channels-last, and so is the gradient this returns in the backward pass (PyTorch's
    CPU kernel for this shape returns channels-first for some sizes, which slows everything after it).
    """
    b, cin, gx, gy, gz = x.shape
    cout = w.shape[1]
    w2 = w.permute(0, 2, 3, 4, 1).reshape(cin, 8 * cout)  # (Cin, kx·ky·kz·Cout)
    t = x.permute(0, 2, 3, 4, 1)  # (B, X, Y, Z, Cin), contiguous
    y = torch.matmul(t, w2) if bias is None else torch.addmm(bias.repeat(8), t.reshape(-1, cin), w2)
    y = y.reshape(b, gx, gy, gz, 2, 2, 2, cout).permute(0, 1, 4, 2, 5, 3, 6, 7)  # (B, X, 2, Y, 2, Z, 2, Cout)
    y = y.reshape(b, 2 * gx, 2 * gy, 2 * gz, cout)  # the copy that places the blocks
    return y.permute(0, 4, 1, 2, 3)  # channels-last (B, Cout, 2X, 2Y, 2Z)


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


def _cpu_fp32(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether a convolution of ``x`` by ``w`` runs in fp32 on a CPU with oneDNN (no autocast to lower it)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and w.dtype == torch.float32
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled and not _autocast_on("cpu"))


def _exporting() -> bool:
    """Whether the plain operators are wanted: exports, and dispatch modes (FLOP counting, fake tensors) that
    know ``aten.convolution`` but not the oneDNN operator called directly."""
    return (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()
            or _get_current_dispatch_mode() is not None)


def _is_channels_last(x: torch.Tensor) -> bool:
    """Channels-last strides (for one channel too, where both layouts are 'contiguous')."""
    return x.is_contiguous(memory_format=torch.channels_last_3d) and (x.stride(1) == 1 or x.numel() <= 1)


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, X, Y, Z)`` with channels-last strides, also for ``C == 1`` (where ``.contiguous(format)`` is a no-op)."""
    if x.shape[1] == 1:  # both layouts hold the voxels in the same order: only the channel stride differs
        x = x.contiguous()
        return x.as_strided(x.shape, (x.stride(0), 1, *x.stride()[2:]))
    return x.contiguous(memory_format=torch.channels_last_3d)


def instance_norm(x: torch.Tensor, eps: float = 1e-5, *, inplace: bool = False) -> torch.Tensor:
    """Instance normalisation of ``(B, C, X, Y, Z)`` without affine parameters, fast for channels-last input.

    PyTorch's ``instance_norm`` copies a channels-last tensor to channels-first and back. Here the work is done
    on the ``(B, X·Y·Z, C)`` view and the result keeps the input's layout and dtype:

    - fp32: the statistics are a sum over the voxels and the diagonal of ``C×C`` Gram matrices (GEMMs,
      accumulated in fp32; a second pass replaces the one-pass variance when the mean is large against the
      spread), then one fused multiply-add;
    - bf16/fp16 on the CPU: PyTorch's channels-last batch-norm kernel per case (batch norm over one case's
      voxels is instance norm; it accumulates in fp32).

    On the CPU, with autograd, the backward pass is batch norm's backward kernel per case, and incoming
    gradients are brought to channels-last first (a gradient in the other layout makes every element-wise
    backward kernel take its slow strided path). ``inplace=True`` writes the result into ``x`` (no new volume:
    here the allocation of a large output costs more than the arithmetic); only for tensors autograd does
    not track.
    """
    if not _is_channels_last(x) or _exporting():
        return F.instance_norm(x, eps=eps)
    if x.device.type == "cpu":
        if inplace:
            _norm_cl_forward(x, eps, x)
            return x
        if torch.is_grad_enabled() and x.requires_grad:
            return _InstanceNormCL.apply(x, eps)
        out = torch.empty_like(x, memory_format=torch.channels_last_3d)
        _norm_cl_forward(x, eps, out)
        return out
    # other devices: out of place, autograd through the ops
    b, c = x.shape[:2]
    v = _voxels(x)
    if x.dtype in (torch.bfloat16, torch.float16):
        out = torch.stack([F.batch_norm(v[i], None, None, training=True, eps=eps) for i in range(b)])
    else:
        mean, rstd = _fp32_stats(v, eps)
        out = torch.addcmul((-mean * rstd)[:, None], v, rstd[:, None])
    return out.view(b, *x.shape[2:], c).permute(0, 4, 1, 2, 3)


def _voxels(x: torch.Tensor) -> torch.Tensor:
    """The ``(B, X·Y·Z, C)`` view of a channels-last ``(B, C, X, Y, Z)`` tensor."""
    return x.permute(0, 2, 3, 4, 1).reshape(x.shape[0], -1, x.shape[1])


def _fp32_stats(v: torch.Tensor, eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-case mean and 1/std over the voxels of fp32 ``(B, N, C)``: ``(B, C)`` each."""
    n = v.shape[1]
    mean = v.sum(1) / n
    var = (_sum_of_squares(v) / n - mean.square()).clamp_min_(0.0)
    if var.min() < 1e-3 * mean.square().max():  # large offset: one-pass variance loses digits, use two passes
        var = (v - mean[:, None]).square().mean(1)
    return mean, torch.rsqrt(var + eps)


def _norm_cl_forward(x: torch.Tensor, eps: float, out: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Normalise channels-last ``x`` into channels-last ``out`` (may be ``x``) on the CPU; returns the saved
    statistics (mean, 1/std) in the form batch norm's backward kernel takes."""
    b, c = x.shape[:2]
    v, o = _voxels(x), _voxels(out)
    if x.dtype == torch.float32:
        mean, rstd = _fp32_stats(v, eps)
        torch.addcmul((-mean * rstd)[:, None], v, rstd[:, None], out=o)
        return mean, rstd
    mean = torch.empty(b, c, dtype=x.dtype)  # the kernel keeps half-precision statistics for half input
    rstd = torch.empty(b, c, dtype=x.dtype)
    for i in range(b):
        torch.ops.aten.native_batch_norm.out(v[i], None, None, None, None, True, 0.0, eps,
                                             out=o[i], save_mean=mean[i], save_invstd=rstd[i])
    return mean, rstd


class _InstanceNormCL(torch.autograd.Function):
    """Channels-last instance norm on the CPU with batch norm's kernels per case, for training."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: float) -> torch.Tensor:
        out = torch.empty_like(x, memory_format=torch.channels_last_3d)
        mean, rstd = _norm_cl_forward(x, eps, out)
        ctx.save_for_backward(x, mean, rstd)
        ctx.eps = eps
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, mean, rstd = ctx.saved_tensors
        grad = to_channels_last(grad)  # a no-op when it already is
        gx = torch.empty_like(x, memory_format=torch.channels_last_3d)
        v, g, gv = _voxels(x), _voxels(grad), _voxels(gx)
        c = x.shape[1]
        unused = torch.empty(2, c, dtype=x.dtype)  # the out= form wants all three outputs
        for i in range(x.shape[0]):
            torch.ops.aten.native_batch_norm_backward.out(
                g[i], v[i], None, None, None, mean[i], rstd[i], True, ctx.eps, [True, True, True],
                out0=gv[i], out1=unused[0], out2=unused[1])
        return gx, None


def _sum_of_squares(v: torch.Tensor, length: int = 4096) -> torch.Tensor:
    """``v.square().sum(1)`` for ``(B, N, C)`` without the squared copy: the diagonals of the ``C×C`` Gram
    matrices of chunks of ``length`` voxels (batched GEMMs), summed. Chunking bounds the fp32 rounding (~1e-7
    relative for 96³ voxels, ~1e-6 for one chunk; a single GEMM over 10⁶ voxels gives ~2e-6)."""
    b, n, c = v.shape
    if c > 256:  # the Gram matrix would cost more than the square
        return v.square().sum(1)
    m = n // length
    head = v[:, : m * length].reshape(b * m, length, c)
    out = torch.bmm(head.transpose(1, 2), head).diagonal(dim1=1, dim2=2).reshape(b, m, c).sum(1)
    if m * length < n:
        tail = v[:, m * length:]
        out = out + torch.bmm(tail.transpose(1, 2), tail).diagonal(dim1=1, dim2=2)
    return out


class InstanceNorm3d(nn.InstanceNorm3d):
    """``nn.InstanceNorm3d`` (no affine, no running statistics) with the channels-last fast path."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return instance_norm(x, self.eps)


def make_norm(norm: str, channels: int) -> nn.Module:
    """``instance`` (no affine, no running stats: MONAI's default) or ``batch``."""
    if norm == "instance":
        return InstanceNorm3d(channels)
    if norm == "batch":
        return nn.BatchNorm3d(channels)
    raise ValueError(f"norm must be 'instance' or 'batch', got {norm!r}")


def _norm_lrelu(norm: nn.Module, x: torch.Tensor, act: bool = True) -> torch.Tensor:
    """``norm(x)`` then LeakyReLU(0.01), in place where autograd allows (``x`` is a fresh convolution output)."""
    if isinstance(norm, InstanceNorm3d) and not (torch.is_grad_enabled() and x.requires_grad):
        x = instance_norm(x, norm.eps, inplace=True)
    else:
        x = norm(x)
    return F.leaky_relu(x, 0.01, inplace=True) if act else x


class BasicBlock(nn.Module):
    """``conv-norm-lrelu-conv-norm-lrelu`` (``res_block=False``)."""

    def __init__(self, in_ch: int, out_ch: int, *, norm: str, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv1 = ConvUnit(in_ch, out_ch, kernel_size)
        self.conv2 = ConvUnit(out_ch, out_ch, kernel_size)
        self.norm1 = make_norm(norm, out_ch)
        self.norm2 = make_norm(norm, out_ch)
        self.lrelu = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _norm_lrelu(self.norm2, self.conv2(_norm_lrelu(self.norm1, self.conv1(x))))


class ResBlock(BasicBlock):
    """``conv-norm-lrelu-conv-norm`` plus a (1×1×1 conv + norm projected) residual, then LeakyReLU."""

    def __init__(self, in_ch: int, out_ch: int, *, norm: str, kernel_size: int = 3) -> None:
        super().__init__(in_ch, out_ch, norm=norm, kernel_size=kernel_size)
        if in_ch != out_ch:  # the projection exists only where it is used (no dead parameters)
            self.conv3 = ConvUnit(in_ch, out_ch, 1)
            self.norm3 = make_norm(norm, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _norm_lrelu(self.norm1, self.conv1(x))
        y = _norm_lrelu(self.norm2, self.conv2(y), act=False)
        res = _norm_lrelu(self.norm3, self.conv3(x), act=False) if hasattr(self, "conv3") else x
        return F.leaky_relu(y.add_(res), 0.01, inplace=True)


def make_conv_block(in_ch: int, out_ch: int, *, norm: str, res_block: bool) -> nn.Module:
    return ResBlock(in_ch, out_ch, norm=norm) if res_block else BasicBlock(in_ch, out_ch, norm=norm)


class StemBlock(nn.Module):
    """The full-resolution encoder on the raw image (MONAI's ``UnetrBasicBlock``: a block held as ``.layer``)."""

    def __init__(self, in_ch: int, out_ch: int, *, norm: str, res_block: bool) -> None:
        super().__init__()
        self.layer = make_conv_block(in_ch, out_ch, norm=norm, res_block=res_block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class ProjectUpBlock(nn.Module):
    """Tokens reshaped to a grid, up-sampled ``num_layer + 1`` times by 2 (MONAI's ``UnetrPrUpBlock``).

    With ``conv_block`` each extra up-sampling is followed by a conv block, as in the paper's figure.
    """

    def __init__(self, in_ch: int, out_ch: int, num_layer: int, *, norm: str, conv_block: bool, res_block: bool) -> None:
        super().__init__()
        self.transp_conv_init = ConvUnit(in_ch, out_ch, 2, 2, transposed=True)
        if conv_block:
            self.blocks = nn.ModuleList(
                nn.Sequential(ConvUnit(out_ch, out_ch, 2, 2, transposed=True),
                              make_conv_block(out_ch, out_ch, norm=norm, res_block=res_block))
                for _ in range(num_layer)
            )
        else:
            self.blocks = nn.ModuleList(ConvUnit(out_ch, out_ch, 2, 2, transposed=True) for _ in range(num_layer))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.transp_conv_init(x)  # (B, E, g, g, g) -> (B, F, 2g, 2g, 2g)
        for blk in self.blocks:
            x = blk(x)  # doubles the grid
        return x


class UpBlock(nn.Module):
    """Up-sample by 2, concatenate the skip, conv block (MONAI's ``UnetrUpBlock``)."""

    def __init__(self, in_ch: int, out_ch: int, *, norm: str, res_block: bool) -> None:
        super().__init__()
        self.transp_conv = ConvUnit(in_ch, out_ch, 2, 2, transposed=True)
        self.conv_block = make_conv_block(2 * out_ch, out_ch, norm=norm, res_block=res_block)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.transp_conv(x)  # (B, Cin, g) -> (B, Cout, 2g)
        return self.conv_block(torch.cat((x, skip), dim=1))  # (B, 2 Cout, 2g) -> (B, Cout, 2g)


class OutBlock(nn.Module):
    """1×1×1 convolution to class logits (MONAI's ``UnetOutBlock``)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = ConvUnit(in_ch, out_ch, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv.conv
        if _is_channels_last(x) and not _exporting() and x.shape[1] > 1:
            # Channels-last features, channels-first logits, one batched GEMM: (K, C) @ (B, C, N) reads the
            # features transposed for free. Softmax over classes, the loss and the sliding-window sums all run
            # along contiguous voxels in this layout; the backward pass returns channels-last gradients.
            return _ChannelsFirstHead.apply(x, c.weight, c.bias)
        return self.conv(x)


class _ChannelsFirstHead(torch.autograd.Function):
    """``conv1x1(x, w, b)`` for channels-last ``x`` ``(B, C, *S)``, giving contiguous ``(B, K, *S)`` logits.

    The computation dtype is the features' (bf16 under autocast, where the convolutions before it produced
    bf16); gradients come back in each input's dtype, the features' gradient channels-last."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        b, dt = x.shape[0], x.dtype
        xt = _voxels(x).transpose(1, 2)  # (B, C, N), a view
        w = weight.flatten(1).to(dt)  # (K, C)
        if bias is None:
            y = torch.bmm(w.expand(b, -1, -1), xt)
        else:
            y = torch.baddbmm(bias.to(dt)[None, :, None], w.expand(b, -1, -1), xt)
        ctx.save_for_backward(x, w)
        ctx.meta = (weight.shape, weight.dtype, None if bias is None else bias.dtype)
        return y.view(b, -1, *x.shape[2:])  # (B, K, *S)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, w = ctx.saved_tensors
        w_shape, w_dtype, b_dtype = ctx.meta
        b, k = grad.shape[:2]
        g = grad.reshape(b, k, -1).to(w.dtype)  # (B, K, N)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gxv = torch.bmm(g.transpose(1, 2), w.expand(b, -1, -1))  # (B, N, C): channels-last
            gx = gxv.view(b, *x.shape[2:], x.shape[1]).permute(0, 4, 1, 2, 3).to(x.dtype)
        if ctx.needs_input_grad[1]:
            gw = torch.bmm(g, _voxels(x)).sum(0).view(w_shape).to(w_dtype)  # (K, C)
        if b_dtype is not None and ctx.needs_input_grad[2]:
            gb = g.sum((0, 2)).to(b_dtype)  # reductions of bf16 accumulate in fp32; no fp32 copy of g
        return gx, gw, gb


# ------------------------------------------------------------------------------------- tutorial


class SingleConv3DBlock(nn.Module):
    """``Conv3d`` with 'same' padding, held as ``.block`` (the tutorial's names)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int) -> None:
        super().__init__()
        self.block = nn.Conv3d(in_ch, out_ch, kernel_size, padding=(kernel_size - 1) // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class SingleDeconv3DBlock(nn.Module):
    """``ConvTranspose3d(k=2, s=2)``: doubles the grid."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.block = nn.ConvTranspose3d(in_ch, out_ch, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class Conv3DBlock(nn.Module):
    """``conv3 -> BatchNorm -> ReLU``."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.block = nn.Sequential(SingleConv3DBlock(in_ch, out_ch, kernel_size), nn.BatchNorm3d(out_ch), nn.ReLU(True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class Deconv3DBlock(nn.Module):
    """``deconv2 -> conv3 -> BatchNorm -> ReLU``: doubles the grid."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.block = nn.Sequential(SingleDeconv3DBlock(in_ch, out_ch), SingleConv3DBlock(out_ch, out_ch, kernel_size),
                                   nn.BatchNorm3d(out_ch), nn.ReLU(True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)
