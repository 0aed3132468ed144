"""Multi-head self-attention with a fused path (SDPA) and a manual path that returns the weights."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head self-attention over tokens ``(B, N, E)``.

    Parameter names follow MONAI's ``SABlock`` (``qkv``, ``out_proj``), and the ``qkv`` output is laid out
    as ``(3, heads, head_dim)`` like MONAI's, so its weights load unchanged.

    Args:
        hidden_size: token width E.
        num_heads: heads H; ``E % H == 0``.
        qkv_bias: bias in the query/key/value projection.
        dropout: dropout on the attention weights and on the output; only active in training mode
            (SDPA cannot see the module's mode, so its ``dropout_p`` is gated on ``self.training`` here).

    Example:
        >>> attn = Attention(hidden_size=64, num_heads=4)
        >>> attn(torch.randn(2, 10, 64)).shape
        torch.Size([2, 10, 64])
    """

    def __init__(self, *, hidden_size: int, num_heads: int, qkv_bias: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout must be in [0, 1], got {dropout}")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.scale = self.head_dim**-0.5
        self.dropout = dropout
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=qkv_bias)
        self.out_proj = nn.Linear(hidden_size, hidden_size)
        self.drop_weights = nn.Dropout(dropout)
        self.drop_output = nn.Dropout(dropout)

    def _heads(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, _ = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim)  # (B, N, 3, H, Dh)
        qkv = qkv.permute(2, 0, 3, 1, 4)  # (3, B, H, N, Dh)
        return qkv[0], qkv[1], qkv[2]

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        b, h, n, d = x.shape
        x = x.transpose(1, 2).reshape(b, n, h * d)  # (B, H, N, Dh) -> (B, N, E)
        return self.drop_output(self.out_proj(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, E) -> (B, N, E)`` through ``F.scaled_dot_product_attention``."""
        q, k, v = self._heads(x)  # (B, H, N, Dh) each
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, scale=self.scale)  # (B, H, N, Dh)
        return self._merge(y)

    def forward_with_weights(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The same computation written out, also returning the attention weights ``(B, H, N, N)``.

        The weights are those before dropout (what attention-map pictures want).
        """
        q, k, v = self._heads(x)
        weights = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)  # (B, H, N, N)
        y = self.drop_weights(weights) @ v  # (B, H, N, Dh)
        return self._merge(y), weights


def manual_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: Optional[float] = None) -> torch.Tensor:
    """Reference scaled dot-product attention, ``(B, H, N, Dh) -> (B, H, N, Dh)`` (no dropout)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return torch.softmax((q @ k.transpose(-2, -1)) * scale, dim=-1) @ v
