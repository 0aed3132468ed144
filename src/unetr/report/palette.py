"""The class colours shared by the PNG overlays and the HTML viewer.

A fixed list, so that a class keeps its colour from one report to the next and the PNGs and the page agree.
The first seven are the Okabe–Ito colours (told apart with the common colour-vision deficiencies); the rest
were picked one at a time as the saturated hue farthest in CIELAB from all earlier ones. Every colour is
saturated enough to stand out on a grey image, and no two are closer than ΔE*ab 25 (neighbouring classes
40); ``tests/test_report_palette.py`` holds the list to that.
"""

from __future__ import annotations

from typing import List

import numpy as np

PALETTE = (
    "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#CC79A7", "#0072B2", "#D55E00", "#6000FF", "#00FF00", "#FF00DF",
    "#FF0060", "#9BFF8C", "#004DCC", "#FFB78C", "#808C2A", "#00FFFF", "#8C432A", "#C68CFF", "#008C00", "#FF0000",
)
"""Colours of classes 1, 2, ... (class ``k`` takes ``PALETTE[(k - 1) % 20]``); background has none."""

DISAGREEMENT = {"fp": "#FF2D2D", "fn": "#2D7BFF", "swap": "#FFE14D"}
"""The viewer's disagreement mode: false positive, false negative, and a voxel of one class taken for another."""


def class_hex(num_classes: int) -> List[str]:
    """Hex colours of classes ``0..K-1``; background (class 0) is ``#000000`` and is never drawn."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    return ["#000000"] + [PALETTE[(k - 1) % len(PALETTE)] for k in range(1, num_classes)]


def hex_to_rgb(color: str) -> np.ndarray:
    """``"#RRGGBB"`` as floats in [0, 1], shape ``(3,)``."""
    if len(color) != 7 or color[0] != "#":
        raise ValueError(f"colour must look like '#RRGGBB', got {color!r}")
    return np.array([int(color[i:i + 2], 16) / 255.0 for i in (1, 3, 5)])


def class_colors(num_classes: int) -> np.ndarray:
    """RGBA colours ``(K, 4)`` of classes ``0..K-1`` for matplotlib: background transparent, then :data:`PALETTE`."""
    hexes = class_hex(max(num_classes, 1))
    colors = np.ones((len(hexes), 4))
    colors[:, :3] = [hex_to_rgb(h) for h in hexes]
    colors[0] = (0.0, 0.0, 0.0, 0.0)
    return colors


__all__ = ["PALETTE", "DISAGREEMENT", "class_hex", "class_colors", "hex_to_rgb"]
