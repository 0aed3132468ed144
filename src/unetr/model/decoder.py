"""Decoder blocks.

The ``paper`` decoder mirrors MONAI's ``UnetrBasicBlock``/``UnetrPrUpBlock``/``UnetrUpBlock``/``UnetOutBlock``
module tree, so parameter names (``encoder2.blocks.0.1.conv1.conv.weight``...) coincide with MONAI's.
The ``tutorial`` decoder mirrors tamasino52/UNETR's ``Conv3DBlock``/``Deconv3DBlock`` tree (``block`` names).

All volumes are ``(B, C, X, Y, Z)``. The operators that keep the decoder channels-last on every device (and
their CPU kernels) are in :mod:`unetr.model.ops` and :mod:`unetr.model.cpu_kernels`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unetr.model import ops

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
        return ops.convolution(self.conv, x)  # keeps channels-last input channels-last


class InstanceNorm3d(nn.InstanceNorm3d):
    """``nn.InstanceNorm3d`` (no affine, no running statistics) that keeps channels-last input channels-last."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.instance_norm(x, self.eps)


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
        x = ops.instance_norm(x, norm.eps, inplace=True)
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
        return ops.class_logits(self.conv.conv, x)  # channels-first logits (B, K, X, Y, Z)


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
