"""CPU kernels for the decoder, and the switch that turns them off.

On the CPU, PyTorch's own kernels for three of the decoder's operations are slow for UNETR's shapes or give
up the channels-last layout (after which every following kernel takes its slow strided path). The kernels
here compute the same values and gradients (up to float rounding) in other ways:

==========================  ====================================================  =============================
kernel                      why                                                   elsewhere (generic path)
==========================  ====================================================  =============================
:func:`onednn_conv3d`       fp32 batch-1 convolutions with small B·C·X·Y (one     ``nn.Conv3d`` (cuDNN, oneDNN
                            input channel; 128 channels at 12³) go to PyTorch's   or whatever PyTorch picks)
                            im2col kernel; oneDNN's is 1.5-2.7× faster
:func:`up2_channels_last`   the kernel-2 stride-2 transposed convolution returns  ``nn.ConvTranspose3d``, then
                            channels-first gradients for some sizes               back to channels-last
:func:`instance_norm_cl`    ``F.instance_norm`` copies channels-last input to     the device-agnostic autograd
                            channels-first and back                               function in ``ops``
==========================  ====================================================  =============================

:mod:`unetr.model.ops` calls a kernel only where :func:`fast_paths_enabled` holds for the tensor's device:
the CPU, outside :func:`generic_paths`, with the private operators of :mod:`unetr.model.torch_private`
available. Everywhere else (CUDA, MPS, XPU, and the CPU inside ``generic_paths()``) it runs the generic path:
public PyTorch operators, exactly what a GPU runs. ``tests/model/test_generic_paths.py`` checks that both
give the same forward and backward.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, Optional, Tuple, Union

import torch
from torch import nn

from unetr.model import torch_private as P
from unetr.model.layout import norm_channels_last, to_channels_last, voxels

_GENERIC = contextvars.ContextVar("unetr_generic_paths", default=False)


# ---------------------------------------------------------------------------------------------- the switch


@contextlib.contextmanager
def generic_paths(enabled: bool = True) -> Iterator[None]:
    """Within this context the model takes the branches it takes on non-CPU devices, also on the CPU.

    For testing on a CPU-only machine what a GPU will run, and for comparing the two. The setting belongs to
    the current thread (and asyncio task); it is read when each operation runs, so a backward pass follows
    the choice its forward pass made. ``enabled=False`` restores the fast paths inside an outer context.

    Example:
        >>> with generic_paths():
        ...     fast_paths_enabled(torch.device("cpu"))
        False
    """
    token = _GENERIC.set(bool(enabled))
    try:
        yield
    finally:
        _GENERIC.reset(token)


def fast_paths_enabled(device: Union[str, torch.device]) -> bool:
    """Whether the CPU kernels of this module apply to tensors on ``device``."""
    return torch.device(device).type == "cpu" and not _GENERIC.get() and P.private_apis_available()


# ---------------------------------------------------------------------------------------------- convolution


def wants_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a convolution of ``x`` by ``weight`` runs in fp32 with oneDNN (no autocast to lower it)."""
    return (x.dtype == torch.float32 and weight.dtype == torch.float32 and torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled and not torch.is_autocast_enabled("cpu"))


def onednn_conv3d(x: torch.Tensor, conv: nn.Conv3d) -> torch.Tensor:
    """``conv(x)`` through oneDNN's convolution, whatever PyTorch's heuristics would pick.

    PyTorch sends fp32 batch-1 convolutions with small B·C·X·Y (one input channel, or 128 channels at 12³)
    to its slow im2col kernel; oneDNN's is 1.5-2.7× faster for them, with the same result.
    """
    return P.mkldnn_convolution(x, conv.weight, conv.bias, conv.padding, conv.stride, conv.dilation, conv.groups)


def fits_up2(conv: nn.Module) -> bool:
    """Whether ``conv`` is a plain kernel-2 stride-2 transposed convolution (the decoder's up-sampling)."""
    return (isinstance(conv, nn.ConvTranspose3d) and conv.kernel_size == conv.stride == (2, 2, 2)
            and conv.padding == (0, 0, 0) and conv.output_padding == (0, 0, 0) and conv.groups == 1)


def up2_channels_last(x: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
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


# ---------------------------------------------------------------------------------------------- instance norm


def instance_norm_cl(x: torch.Tensor, eps: float, *, inplace: bool = False) -> torch.Tensor:
    """Instance norm (no affine) of channels-last ``(B, C, X, Y, Z)`` on the CPU, channels-last out.

    The work is done on the ``(B, X·Y·Z, C)`` view:

    - fp32: the statistics are a sum over the voxels and the diagonal of ``C×C`` Gram matrices (GEMMs,
      accumulated in fp32; a second pass replaces the one-pass variance when the mean is large against the
      spread), then one fused multiply-add;
    - bf16/fp16: PyTorch's channels-last batch-norm kernel per case (batch norm over one case's voxels is
      instance norm; it accumulates in fp32).

    With autograd the backward pass is batch norm's backward kernel per case, and incoming gradients are
    brought to channels-last first (a gradient in the other layout makes every element-wise backward kernel
    take its slow strided path). ``inplace=True`` writes the result into ``x`` (here the allocation of a
    large output costs more than the arithmetic); only for tensors autograd does not track.
    """
    return norm_channels_last(x, eps, inplace, norm_cl_into, _InstanceNormCL)


def fp32_stats(v: torch.Tensor, eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-case mean and 1/std over the voxels of fp32 ``(B, N, C)``: ``(B, C)`` each.

    The test of the one-pass variance reads one value back to the host: free on the CPU, a synchronisation
    per layer on a GPU (which is why the generic path does not do this)."""
    n = v.shape[1]
    mean = v.sum(1) / n
    var = (sum_of_squares(v) / n - mean.square()).clamp_min_(0.0)
    if var.min() < 1e-3 * mean.square().max():  # large offset: one-pass variance loses digits, use two passes
        var = (v - mean[:, None]).square().mean(1)
    return mean, torch.rsqrt(var + eps)


def norm_cl_into(x: torch.Tensor, eps: float, out: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Normalise channels-last ``x`` into channels-last ``out`` (may be ``x``); returns the statistics
    (mean, 1/std) in the form batch norm's backward kernel takes."""
    b, c = x.shape[:2]
    v, o = voxels(x), voxels(out)
    if x.dtype == torch.float32:
        mean, rstd = fp32_stats(v, eps)
        torch.addcmul((-mean * rstd)[:, None], v, rstd[:, None], out=o)
        return mean, rstd
    mean = torch.empty(b, c, dtype=x.dtype)  # the kernel keeps half-precision statistics for half input
    rstd = torch.empty(b, c, dtype=x.dtype)
    for i in range(b):
        P.batch_norm_into(v[i], eps, o[i], mean[i], rstd[i])
    return mean, rstd


class _InstanceNormCL(torch.autograd.Function):
    """Channels-last instance norm on the CPU with batch norm's kernels per case, for training."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: float) -> torch.Tensor:
        out = torch.empty_like(x, memory_format=torch.channels_last_3d)
        mean, rstd = norm_cl_into(x, eps, out)
        ctx.save_for_backward(x, mean, rstd)
        ctx.eps = eps
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, mean, rstd = ctx.saved_tensors
        grad = to_channels_last(grad)  # a no-op when it already is
        gx = torch.empty_like(x, memory_format=torch.channels_last_3d)
        v, g, gv = voxels(x), voxels(grad), voxels(gx)
        scratch = torch.empty(2, x.shape[1], dtype=x.dtype)
        for i in range(x.shape[0]):
            P.batch_norm_backward_into(g[i], v[i], mean[i], rstd[i], ctx.eps, gv[i], scratch)
        return gx, None


def sum_of_squares(v: torch.Tensor, length: int = 4096) -> torch.Tensor:
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


__all__ = ["fast_paths_enabled", "fits_up2", "generic_paths", "instance_norm_cl", "onednn_conv3d",
           "up2_channels_last", "wants_onednn"]
