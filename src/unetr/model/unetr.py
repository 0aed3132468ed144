"""UNETR: a ViT encoder on 16³ patches whose hidden states feed a convolutional decoder by skip connections.

Two decoders, one encoder:

- ``variant="paper"``: the network of Hatamizadeh et al. as MONAI implements it (``monai.networks.nets.UNETR``):
  the outputs of blocks ``skip_layers`` (4, 7, 10 for ViT-B) and the normed output of the last block, a
  residual decoder of width ``feature_size`` with instance (or batch) norm. Parameter names are MONAI's.
- ``variant="tutorial"``: the network of tamasino52/UNETR (the single-file PyTorch code the popular Chinese walk-through prints): skips from blocks 3/6/9/12,
  Conv+BatchNorm+ReLU decoder with fixed widths 32…512. Its bugs are fixed: the feed-forward has a forward
  (``linear2(dropout(relu(linear1(x))))``), the duplicated class is one class, and the final encoder
  LayerNorm, which the text builds but never applies, normalises the deepest skip (block 12), as in the ViT
  and MONAI — so it is used and the parameter count stays the text's 148,955,299 for 4→3 channels at 128³.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import nn

from unetr.config import check_model_args
from unetr.model import decoder as D
from unetr.model.layout import to_channels_last
from unetr.model.vit import ViT


class UNETR(nn.Module):
    """UNETR for 3D segmentation: ``(B, C, X, Y, Z) -> (B, K, X, Y, Z)`` logits.

    Args:
        in_channels: image channels C.
        out_channels: classes K (background included).
        img_size: the ROI the position embedding is learnt for; other sizes that are multiples of
            ``patch_size`` work too (the position embedding is interpolated).
        variant: ``paper`` or ``tutorial`` (see the module docstring).
        patch_size, hidden_size, mlp_dim, num_layers, num_heads, qkv_bias, dropout, mlp_act, norm_eps,
            proj_type: the ViT encoder.
        skip_layers: 1-based blocks feeding the decoder: 3 for ``paper`` (the bottleneck is the normed last
            block), 4 for ``tutorial`` (the last one is normed).
        feature_size, norm, res_block, conv_block: the ``paper`` decoder.
        checkpointing: recompute transformer blocks in the backward pass (less memory, ~30 % more time).
        channels_last: run the decoder in ``torch.channels_last_3d`` layout, where oneDNN and cuDNN convolutions
            are faster (no layout reorders inside each call); ``False`` keeps PyTorch's default layout. Outputs
            agree up to float rounding; parameters are unchanged.

    Example:
        >>> m = UNETR(in_channels=1, out_channels=3, img_size=(32, 32, 48), hidden_size=48, mlp_dim=96,
        ...           num_layers=4, num_heads=4, skip_layers=(1, 2, 3), feature_size=8)
        >>> m(torch.randn(1, 1, 32, 32, 48)).shape
        torch.Size([1, 3, 32, 32, 48])
    """

    def __init__(self, *, in_channels: int, out_channels: int, img_size: Sequence[int] = (96, 96, 96),
                 variant: str = "paper", patch_size: int = 16, hidden_size: int = 768, mlp_dim: int = 3072,
                 num_layers: int = 12, num_heads: int = 12, skip_layers: Sequence[int] = (4, 7, 10),
                 feature_size: int = 16, norm: str = "instance", res_block: bool = True, conv_block: bool = True,
                 proj_type: str = "conv", qkv_bias: bool = False, dropout: float = 0.0, mlp_act: str = "gelu",
                 norm_eps: float = 1e-5, checkpointing: bool = False, channels_last: bool = True) -> None:
        super().__init__()
        img_size = tuple(int(s) for s in img_size)
        skip_layers = tuple(int(s) for s in skip_layers)
        check_model_args(in_channels=in_channels, out_channels=out_channels, img_size=img_size, variant=variant,
                         patch_size=patch_size, hidden_size=hidden_size, mlp_dim=mlp_dim, num_layers=num_layers,
                         num_heads=num_heads, skip_layers=skip_layers, feature_size=feature_size, norm=norm,
                         proj_type=proj_type, dropout=dropout, mlp_act=mlp_act)
        self.in_channels, self.out_channels, self.img_size = in_channels, out_channels, img_size
        self.variant, self.patch_size, self.hidden_size = variant, patch_size, hidden_size
        self.skip_layers = skip_layers
        self.channels_last = bool(channels_last)

        self.vit = ViT(in_channels=in_channels, img_size=img_size, patch_size=patch_size, hidden_size=hidden_size,
                       mlp_dim=mlp_dim, num_layers=num_layers, num_heads=num_heads, proj_type=proj_type,
                       dropout=dropout, qkv_bias=qkv_bias, act=mlp_act, norm_eps=norm_eps, checkpointing=checkpointing)
        if variant == "paper":
            f, kw = feature_size, dict(norm=norm, res_block=res_block)
            self.encoder1 = D.StemBlock(in_channels, f, **kw)
            self.encoder2 = D.ProjectUpBlock(hidden_size, 2 * f, 2, conv_block=conv_block, **kw)
            self.encoder3 = D.ProjectUpBlock(hidden_size, 4 * f, 1, conv_block=conv_block, **kw)
            self.encoder4 = D.ProjectUpBlock(hidden_size, 8 * f, 0, conv_block=conv_block, **kw)
            self.decoder5 = D.UpBlock(hidden_size, 8 * f, **kw)
            self.decoder4 = D.UpBlock(8 * f, 4 * f, **kw)
            self.decoder3 = D.UpBlock(4 * f, 2 * f, **kw)
            self.decoder2 = D.UpBlock(2 * f, f, **kw)
            self.out = D.OutBlock(f, out_channels)
        else:
            E = hidden_size
            self.decoder0 = nn.Sequential(D.Conv3DBlock(in_channels, 32), D.Conv3DBlock(32, 64))
            self.decoder3 = nn.Sequential(D.Deconv3DBlock(E, 512), D.Deconv3DBlock(512, 256), D.Deconv3DBlock(256, 128))
            self.decoder6 = nn.Sequential(D.Deconv3DBlock(E, 512), D.Deconv3DBlock(512, 256))
            self.decoder9 = D.Deconv3DBlock(E, 512)
            self.decoder12_upsampler = D.SingleDeconv3DBlock(E, 512)
            self.decoder9_upsampler = nn.Sequential(D.Conv3DBlock(1024, 512), D.Conv3DBlock(512, 512),
                                                    D.SingleDeconv3DBlock(512, 256))
            self.decoder6_upsampler = nn.Sequential(D.Conv3DBlock(512, 256), D.Conv3DBlock(256, 256),
                                                    D.SingleDeconv3DBlock(256, 128))
            self.decoder3_upsampler = nn.Sequential(D.Conv3DBlock(256, 128), D.Conv3DBlock(128, 128),
                                                    D.SingleDeconv3DBlock(128, 64))
            self.decoder0_header = nn.Sequential(D.Conv3DBlock(128, 64), D.Conv3DBlock(64, 64),
                                                 D.SingleConv3DBlock(64, out_channels, 1))

    # ------------------------------------------------------------------------------------------ helpers
    @property
    def checkpointing(self) -> bool:
        return self.vit.checkpointing

    @checkpointing.setter
    def checkpointing(self, on: bool) -> None:
        self.vit.checkpointing = bool(on)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` for inputs the model cannot take."""
        if x.ndim != 5:
            raise ValueError(f"expected a (B, C, X, Y, Z) tensor, got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"the model takes {self.in_channels} input channel(s), got {x.shape[1]} "
                             f"(input shape {tuple(x.shape)})")
        bad = [s for s in x.shape[2:] if s % self.patch_size or s == 0]
        if bad:
            raise ValueError(f"spatial size {tuple(x.shape[2:])} is not a multiple of the patch size {self.patch_size}; "
                             "pad the input or use sliding-window inference")

    def _grid(self, tokens: torch.Tensor, grid: Tuple[int, int, int], channels_last: bool) -> torch.Tensor:
        b, n, e = tokens.shape
        if channels_last:  # a view: (B, gx, gy, gz, E) is the channels-last layout of (B, E, gx, gy, gz)
            return tokens.reshape(b, *grid, e).permute(0, 4, 1, 2, 3)
        return tokens.transpose(1, 2).reshape(b, e, *grid)  # (B, N, E) -> (B, E, gx, gy, gz)

    # ------------------------------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        grid = tuple(s // self.patch_size for s in x.shape[2:])
        cl = self.channels_last
        x = to_channels_last(x) if cl else x.contiguous()
        last, hidden = self.vit(x)  # (B, N, E), [(B, N, E)] * num_layers
        if self.variant == "paper":
            return self._decode_paper(x, last, hidden, grid, cl)
        return self._decode_tutorial(x, last, hidden, grid, cl)

    def _decode_paper(self, x: torch.Tensor, last: torch.Tensor, hidden: List[torch.Tensor], grid, cl: bool
                      ) -> torch.Tensor:
        s1, s2, s3 = (hidden[i - 1] for i in self.skip_layers)
        enc1 = self.encoder1(x)  # (B, f, X, Y, Z)
        enc2 = self.encoder2(self._grid(s1, grid, cl))  # (B, 2f, X/2, Y/2, Z/2)
        enc3 = self.encoder3(self._grid(s2, grid, cl))  # (B, 4f, X/4, ...)
        enc4 = self.encoder4(self._grid(s3, grid, cl))  # (B, 8f, X/8, ...)
        d = self.decoder5(self._grid(last, grid, cl), enc4)  # (B, 8f, X/8, ...)
        d = self.decoder4(d, enc3)  # (B, 4f, X/4, ...)
        d = self.decoder3(d, enc2)  # (B, 2f, X/2, ...)
        d = self.decoder2(d, enc1)  # (B, f, X, Y, Z)
        return self.out(d)  # (B, K, X, Y, Z)

    def _decode_tutorial(self, x: torch.Tensor, last: torch.Tensor, hidden: List[torch.Tensor], grid, cl: bool
                         ) -> torch.Tensor:
        z3, z6, z9 = (self._grid(hidden[i - 1], grid, cl) for i in self.skip_layers[:3])
        z12 = self._grid(last, grid, cl)  # the deepest skip, through the encoder's final LayerNorm
        z12 = self.decoder12_upsampler(z12)  # (B, 512, 2g)
        z9 = self.decoder9_upsampler(torch.cat([self.decoder9(z9), z12], dim=1))  # (B, 256, 4g)
        z6 = self.decoder6_upsampler(torch.cat([self.decoder6(z6), z9], dim=1))  # (B, 128, 8g)
        z3 = self.decoder3_upsampler(torch.cat([self.decoder3(z3), z6], dim=1))  # (B, 64, 16g)
        return self.decoder0_header(torch.cat([self.decoder0(x), z3], dim=1))  # (B, K, X, Y, Z)

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Attention weights ``(B, H, N, N)`` of every transformer block (manual attention path)."""
        self.check_input(x)
        return self.vit.attention_maps(x)
