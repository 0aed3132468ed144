"""Inference: the sliding window (any predictor) and prediction of files with a trained model."""

from unetr.inference.sliding_window import (
    count_windows,
    importance_map,
    sliding_window,
    window_grid,
    window_starts,
)

__all__ = ["sliding_window", "window_starts", "window_grid", "importance_map", "count_windows"]
