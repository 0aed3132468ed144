"""The transformer encoder: patch embedding, feed-forward, pre-norm block, and the encoder that returns skips."""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from unetr.model.attention import Attention


class Patchify(nn.Module):
    """``(B, C, X, Y, Z) -> (B, N, P*P*P*C)``: non-overlapping cubes, flattened as ``(p1 p2 p3 c)``.

    Tokens are ordered with X slowest and Z fastest, like ``Conv3d(...).flatten(2)``.
    """

    def __init__(self, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, X, Y, Z = x.shape
        p = self.patch_size
        x = x.reshape(b, c, X // p, p, Y // p, p, Z // p, p)  # (B, C, gx, p1, gy, p2, gz, p3)
        x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # (B, gx, gy, gz, p1, p2, p3, C)
        return x.reshape(b, (X // p) * (Y // p) * (Z // p), p * p * p * c)  # (B, N, p1 p2 p3 C)


def resample_position_embedding(pe: torch.Tensor, grid_from: Sequence[int], grid_to: Sequence[int]) -> torch.Tensor:
    """A position embedding ``(1, N, E)`` learnt on the patch grid ``grid_from``, trilinearly resampled to
    ``grid_to``: ``(1, N', E)``. On the same grid it is ``pe`` itself.

    Used for inputs whose patch grid differs from the trained one, and for checkpoints of another ROI.
    """
    grid_from, grid_to = tuple(grid_from), tuple(grid_to)
    if grid_from == grid_to:
        return pe
    if math.prod(grid_from) != pe.shape[1]:
        raise ValueError(f"a position embedding of {pe.shape[1]} tokens does not fit the patch grid {grid_from}")
    e = pe.shape[-1]
    x = pe.reshape(1, *grid_from, e).permute(0, 4, 1, 2, 3)  # (1, E, gx, gy, gz)
    x = F.interpolate(x, size=grid_to, mode="trilinear", align_corners=False)  # (1, E, gx', gy', gz')
    return x.flatten(2).transpose(1, 2)  # (1, N', E)


class PatchEmbedding(nn.Module):
    """Patches to tokens plus a learnable position embedding; MONAI's ``PatchEmbeddingBlock`` names.

    Args:
        in_channels: image channels C.
        img_size: the ROI the position embedding is learnt for.
        patch_size: cube edge P.
        hidden_size: token width E.
        proj_type: ``conv`` (a strided Conv3d) or ``perceptron`` (a Linear over flattened patches).
        dropout: dropout after adding the position embedding.

    For an input whose patch grid differs from the trained one, the position embedding is resampled
    trilinearly to the new grid (so a model trained at 96³ can run on 128³ windows).
    """

    def __init__(self, *, in_channels: int, img_size: Sequence[int], patch_size: int, hidden_size: int,
                 proj_type: str = "conv", dropout: float = 0.0) -> None:
        super().__init__()
        if proj_type not in ("conv", "perceptron"):
            raise ValueError(f"proj_type must be 'conv' or 'perceptron', got {proj_type!r}")
        for s in img_size:
            if s % patch_size:
                raise ValueError(f"img_size {tuple(img_size)} is not a multiple of patch_size {patch_size}")
        self.in_channels = in_channels
        self.patch_size = patch_size
        self.proj_type = proj_type
        self.grid = tuple(s // patch_size for s in img_size)
        n_patches = math.prod(self.grid)
        if proj_type == "conv":
            self.patch_embeddings = nn.Conv3d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)
        else:
            self.patch_embeddings = nn.Sequential(Patchify(patch_size), nn.Linear(in_channels * patch_size**3, hidden_size))
        self.position_embeddings = nn.Parameter(torch.zeros(1, n_patches, hidden_size))
        self.dropout = nn.Dropout(dropout)
        nn.init.trunc_normal_(self.position_embeddings, std=0.02, a=-2.0, b=2.0)

    def position_embedding_for(self, grid: Tuple[int, int, int]) -> torch.Tensor:
        """The position embedding ``(1, N, E)`` for a patch grid, interpolated if it is not the trained one."""
        return resample_position_embedding(self.position_embeddings, self.grid, grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = tuple(s // self.patch_size for s in x.shape[2:])
        if self.proj_type == "conv":
            # A stride-P, kernel-P convolution is one GEMM over the flattened cubes: (B, N, C·P³) @ (C·P³, E).
            conv = self.patch_embeddings
            b, c, X, Y, Z = x.shape
            p = self.patch_size
            cubes = x.reshape(b, c, X // p, p, Y // p, p, Z // p, p).permute(0, 2, 4, 6, 1, 3, 5, 7)
            cubes = cubes.reshape(b, -1, c * p**3)  # (B, N, C p1 p2 p3), the weight's order
            x = F.linear(cubes, conv.weight.reshape(conv.out_channels, -1), conv.bias)  # (B, N, E)
        else:
            x = self.patch_embeddings(x)  # (B, C, X, Y, Z) -> (B, N, E)
        return self.dropout(x + self.position_embedding_for(grid))


class MLP(nn.Module):
    """Feed-forward ``Linear -> act -> dropout -> Linear -> dropout`` with MONAI's names (``linear1/2``)."""

    def __init__(self, *, hidden_size: int, mlp_dim: int, act: str = "gelu", dropout: float = 0.0) -> None:
        super().__init__()
        if act not in ("gelu", "relu"):
            raise ValueError(f"act must be 'gelu' or 'relu', got {act!r}")
        self.linear1 = nn.Linear(hidden_size, mlp_dim)
        self.linear2 = nn.Linear(mlp_dim, hidden_size)
        self.act = nn.GELU() if act == "gelu" else nn.ReLU()
        self.drop1 = nn.Dropout(dropout)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.linear2(self.drop1(self.act(self.linear1(x)))))  # (B, N, E)


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, *, hidden_size: int, mlp_dim: int, num_heads: int, dropout: float = 0.0,
                 qkv_bias: bool = False, act: str = "gelu", norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, eps=norm_eps)
        self.attn = Attention(hidden_size=hidden_size, num_heads=num_heads, qkv_bias=qkv_bias, dropout=dropout)
        self.norm2 = nn.LayerNorm(hidden_size, eps=norm_eps)
        self.mlp = MLP(hidden_size=hidden_size, mlp_dim=mlp_dim, act=act, dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))

    def forward_with_weights(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        y, w = self.attn.forward_with_weights(self.norm1(x))
        x = x + y
        return x + self.mlp(self.norm2(x)), w


class ViT(nn.Module):
    """The encoder: patch embedding, ``num_layers`` blocks and a final LayerNorm (MONAI's ``ViT`` names).

    ``forward`` returns ``(norm(last), hidden)`` where ``hidden[i]`` is the output of block ``i + 1``,
    ``(B, N, E)`` each. Setting ``checkpointing = True`` recomputes the blocks in the backward pass.
    """

    def __init__(self, *, in_channels: int, img_size: Sequence[int], patch_size: int = 16, hidden_size: int = 768,
                 mlp_dim: int = 3072, num_layers: int = 12, num_heads: int = 12, proj_type: str = "conv",
                 dropout: float = 0.0, qkv_bias: bool = False, act: str = "gelu", norm_eps: float = 1e-5,
                 checkpointing: bool = False) -> None:
        super().__init__()
        self.patch_embedding = PatchEmbedding(in_channels=in_channels, img_size=img_size, patch_size=patch_size,
                                              hidden_size=hidden_size, proj_type=proj_type, dropout=dropout)
        self.blocks = nn.ModuleList(
            Block(hidden_size=hidden_size, mlp_dim=mlp_dim, num_heads=num_heads, dropout=dropout, qkv_bias=qkv_bias,
                  act=act, norm_eps=norm_eps)
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(hidden_size, eps=norm_eps)
        self.checkpointing = checkpointing
        self.apply(_init_vit_weights)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        x = self.patch_embedding(x)  # (B, C, X, Y, Z) -> (B, N, E)
        hidden = []
        for blk in self.blocks:
            if self.checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
            hidden.append(x)
        return self.norm(x), hidden

    def __prepare_scriptable__(self) -> ViT:
        """``torch.jit.script`` calls this first (on every submodule of a UNETR too): say why it cannot work
        and what does, instead of a compiler error deep inside a layer."""
        raise NotImplementedError(
            "UNETR cannot be compiled with torch.jit.script (which PyTorch deprecates): its forward pass "
            "adapts to the input's patch grid and takes CPU kernels and autograd functions TorchScript cannot "
            "compile. Export by tracing instead: `unetr export --format torchscript` (torch.jit.trace), "
            "`unetr export --format onnx`, or torch.export.export(model, (x,))."
        )

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Attention weights of every block, ``(B, H, N, N)`` each, through the manual attention path."""
        x = self.patch_embedding(x)
        maps = []
        for blk in self.blocks:
            x, w = blk.forward_with_weights(x)
            maps.append(w)
        return maps


def _init_vit_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02, a=-2.0, b=2.0)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
