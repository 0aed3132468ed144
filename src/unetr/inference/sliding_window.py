"""Sliding-window inference over a 3D volume with any predictor callable.

This module imports nothing from the package. Its pieces are small pure functions (window placement, the
importance map) and one loop, :func:`sliding_window`.

How the loop bounds memory: windows are visited in slabs of equal start along the first spatial axis
(X). Once every window of a slab has been added, no later window touches the voxels in front of the next
slab's start, so those voxels are final: they are divided by the summed weights and written out (as
probabilities, or as the argmax only) and the accumulator rolls forward. The float accumulators therefore
hold only ``roi[0]`` planes, never the whole volume:

    accumulators  = (K + 1) * roi_x * Y * Z * bytes(accum_dtype)
    argmax output = X * Y * Z * 1 byte (uint8 labels when K <= 256)
    probabilities = K * X * Y * Z * bytes(out_dtype)   (only when asked for)
    windows       = 2 * batch_size * (C + K) * prod(roi) * 4 bytes (input and output of one batch)

Example: a 512x512x300 volume, 14 classes, ROI 96, fp32 accumulators and the argmax output needs
15 * 96 * 512 * 512 * 4 B = 1.5 GB for the sums and 79 MB for the labels, against 15 * 512 * 512 * 300 * 4 B
= 4.7 GB for a full-volume accumulator (MONAI's), which also keeps a 4.4 GB probability volume.

The result equals MONAI's ``sliding_window_inference`` with the same ROI, overlap, mode and sigma scale
(window placement, padding of small volumes, Gaussian map and its 1e-3 floor are the same definitions).
"""

from __future__ import annotations

import functools
import math
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

Predictor = Callable[[torch.Tensor], torch.Tensor]
DeviceLike = Union[str, torch.device, None]

_MIN_WEIGHT = 1e-3  # floor of the importance map, so border voxels are never divided by ~0


def window_starts(size: int, roi: int, overlap: float) -> List[int]:
    """Start indices of the windows along one axis.

    The step is ``int(roi * (1 - overlap))`` (at least 1); the first window starts at 0 and the last one
    ends flush with the border. A volume no larger than the ROI gets one window at 0.

    Args:
        size: length of the axis (after any padding to the ROI).
        roi: window length along the axis.
        overlap: fraction of the window shared with its neighbour, in [0, 1).

    Returns:
        Increasing start indices; ``starts[-1] + roi == size`` when ``size >= roi``.

    Example:
        >>> window_starts(10, 4, 0.5)
        [0, 2, 4, 6]
    """
    if roi < 1 or size < 1:
        raise ValueError(f"size and roi must be positive, got size={size}, roi={roi}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if size <= roi:
        return [0]
    step = max(int(roi * (1.0 - overlap)), 1)
    n = math.ceil((size - roi) / step) + 1
    return [min(i * step, size - roi) for i in range(n)]


def window_grid(shape: Sequence[int], roi: Sequence[int], overlap: float) -> List[Tuple[int, int, int]]:
    """All window corners for a volume of ``shape`` (X, Y, Z), X slowest; see :func:`window_starts`."""
    axes = [window_starts(int(s), int(r), overlap) for s, r in zip(shape, roi)]
    return [(x, y, z) for x in axes[0] for y in axes[1] for z in axes[2]]


@functools.lru_cache(maxsize=16)
def _importance_map_np(roi: Tuple[int, int, int], mode: str, sigma_scale: float) -> np.ndarray:
    if mode == "constant":
        return np.ones(roi, dtype=np.float32)
    w = np.ones((), dtype=np.float64)
    for n in roi:
        x = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
        g = np.exp(-(x**2) / (2.0 * (n * sigma_scale) ** 2))  # 1D Gaussian, peak 1 at the centre
        w = np.multiply.outer(w, g)
    w = np.maximum(w, max(float(w.min()), _MIN_WEIGHT)).astype(np.float32)
    w.setflags(write=False)
    return w


def importance_map(roi: Sequence[int], mode: str = "gaussian", sigma_scale: float = 0.125) -> torch.Tensor:
    """Weights of the voxels of one window (cached, pure).

    Args:
        roi: window size (x, y, z).
        mode: ``gaussian`` (a separable Gaussian centred on the window, sigma = ``sigma_scale * roi``,
            peak 1, floored at 1e-3) or ``constant`` (all ones).
        sigma_scale: sigma as a fraction of the window size; 0.125 (ROI/8) as in nnU-Net and MONAI.

    Returns:
        float32 tensor of shape ``roi`` (a fresh copy; the cache is never exposed).
    """
    if mode not in ("gaussian", "constant"):
        raise ValueError(f"mode must be 'gaussian' or 'constant', got {mode!r}")
    if sigma_scale <= 0:
        raise ValueError(f"sigma_scale must be positive, got {sigma_scale}")
    roi_t = tuple(int(r) for r in roi)
    if len(roi_t) != 3 or min(roi_t) < 1:
        raise ValueError(f"roi must be three positive sizes, got {tuple(roi)}")
    return torch.from_numpy(_importance_map_np(roi_t, mode, float(sigma_scale)).copy())


def _pad_to_roi(x: torch.Tensor, roi: Sequence[int]) -> Tuple[torch.Tensor, List[Tuple[int, int]]]:
    """Zero-pad each spatial axis that is shorter than the ROI, half before and the rest after."""
    pads = []
    for s, r in zip(x.shape[-3:], roi):
        d = max(int(r) - int(s), 0)
        pads.append((d // 2, d - d // 2))
    if any(p for pair in pads for p in pair):
        flat = [p for pair in reversed(pads) for p in pair]  # F.pad wants the last axis first
        x = F.pad(x, flat, mode="constant", value=0.0)
    return x, pads


@torch.no_grad()
def sliding_window(
    image: torch.Tensor,
    predictor: Predictor,
    roi: Sequence[int],
    *,
    overlap: float = 0.5,
    mode: str = "gaussian",
    sigma_scale: float = 0.125,
    batch_size: int = 4,
    device: DeviceLike = None,
    accum_device: DeviceLike = None,
    accum_dtype: torch.dtype = torch.float32,
    output: str = "probabilities",
    out_dtype: torch.dtype = torch.float32,
    progress: Optional[Callable[[int], None]] = None,
    sink: Optional[Callable[[torch.Tensor], None]] = None,
) -> Optional[torch.Tensor]:
    """Run ``predictor`` on overlapping windows of ``image`` and blend the outputs.

    Args:
        image: one volume ``(C, X, Y, Z)`` or a batch of one ``(1, C, X, Y, Z)``.
        predictor: maps windows ``(B, C, *roi)`` to outputs ``(B, K, *roi)`` (logits or probabilities;
            they are averaged as given).
        roi: window size (x, y, z).
        overlap: fraction shared by neighbouring windows, in [0, 1).
        mode: blending weights, ``gaussian`` or ``constant`` (see :func:`importance_map`).
        sigma_scale: Gaussian sigma as a fraction of ``roi``.
        batch_size: windows per predictor call.
        device: where windows are sent for the predictor (default: the image's device).
        accum_device: where the sums live (default: the image's device); e.g. model on GPU, sums on CPU.
        accum_dtype: dtype of the sums (float32, or float16 to halve their memory).
        output: ``probabilities`` returns the blended outputs ``(K, X, Y, Z)`` in ``out_dtype``;
            ``argmax`` returns only the class map ``(X, Y, Z)`` (uint8 when K <= 256, else int64) and never
            holds the full float volume; ``stream`` hands each finished slab of blended outputs
            ``(K, n, Y, Z)`` float32, in order along X, to ``sink`` and returns None.
        out_dtype: dtype of the returned blended outputs (``probabilities`` only).
        progress: called with the number of windows done after each batch (e.g. ``tqdm.update``).
        sink: receives the slabs of ``output='stream'`` (e.g. :class:`unetr.inference.soft_inverse.SoftInverse`).

    Returns:
        ``(K, X, Y, Z)`` blended outputs or ``(X, Y, Z)`` labels, on ``accum_device``, with the image's
        spatial shape (padding for volumes smaller than the ROI is removed).
    """
    # One long function on purpose: the rolling accumulators (acc, cnt, base) are shared by the window loop
    # and emit(); split apart they would need a class whose state is only meaningful mid-loop.
    if image.dim() == 5:
        if image.shape[0] != 1:
            raise ValueError(f"sliding_window takes one volume at a time, got a batch of {image.shape[0]}")
        image = image[0]
    if image.dim() != 4:
        raise ValueError(f"image must be (C, X, Y, Z) or (1, C, X, Y, Z), got shape {tuple(image.shape)}")
    roi = tuple(int(r) for r in roi)
    if len(roi) != 3 or min(roi) < 1:
        raise ValueError(f"roi must be three positive sizes, got {roi}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if output not in ("probabilities", "argmax", "stream"):
        raise ValueError(f"output must be 'probabilities', 'argmax' or 'stream', got {output!r}")
    if (output == "stream") != (sink is not None):
        raise ValueError("output='stream' needs a sink, and a sink needs output='stream'")
    device = torch.device(device) if device is not None else image.device
    accum_device = torch.device(accum_device) if accum_device is not None else image.device

    orig_shape = tuple(image.shape[1:])
    image, pads = _pad_to_roi(image, roi)
    shape = tuple(image.shape[1:])  # (X, Y, Z) padded
    weights = importance_map(roi, mode, sigma_scale)
    w_run = weights.to(device)[None, None]  # (1, 1, *roi)
    w_acc = weights.to(device=accum_device, dtype=accum_dtype)  # (*roi)
    corners = window_grid(shape, roi, overlap)
    x_starts = sorted({c[0] for c in corners})

    rx = roi[0]
    acc: Optional[torch.Tensor] = None  # (K, rx, Y, Z): sums for planes [base, base + rx)
    cnt = torch.zeros((1, rx) + shape[1:], dtype=accum_dtype, device=accum_device)  # (1, rx, Y, Z)
    result: Optional[torch.Tensor] = None
    crop = tuple(slice(lo, lo + n) for (lo, _), n in zip(pads, orig_shape))  # padded -> original

    def emit(lo: int, hi: int) -> None:
        """Finalise planes [lo, hi) (padded coordinates) held at acc[:, lo - base : hi - base]."""
        nonlocal result
        assert acc is not None
        o_lo, o_hi = max(lo, crop[0].start), min(hi, crop[0].stop)
        if o_lo >= o_hi:
            return
        a, b = o_lo - base, o_hi - base
        yz = (crop[1], crop[2])
        sums = acc[(slice(None), slice(a, b)) + yz]  # (K, b - a, Y, Z)
        dst = slice(o_lo - crop[0].start, o_hi - crop[0].start)
        if output == "argmax":  # the weight sum is one positive number per voxel: it cannot change the argmax
            if result is None:
                k = sums.shape[0]
                result = torch.empty(orig_shape, dtype=torch.uint8 if k <= 256 else torch.int64, device=accum_device)
            # max().indices: argmax's first-maximum index, 4-5x faster than argmax over a leading dim on CPUs
            result[dst] = sums.max(0).indices.to(result.dtype)
            return
        blended = sums.float() / cnt[(slice(None), slice(a, b)) + yz].float()  # (K, b - a, Y, Z)
        if sink is not None:  # output == "stream"
            sink(blended)
            return
        if result is None:
            result = torch.empty((sums.shape[0],) + orig_shape, dtype=out_dtype, device=accum_device)
        result[:, dst] = blended.to(result.dtype)

    base = x_starts[0]
    done = 0
    for i, xs in enumerate(x_starts):
        if xs != base:  # roll the accumulators forward to start at xs
            shift = xs - base
            assert acc is not None and 0 < shift <= rx
            keep = rx - shift
            if keep > 0:
                acc[:, :keep] = acc[:, shift:].clone()
                cnt[:, :keep] = cnt[:, shift:].clone()
            acc[:, keep:] = 0
            cnt[:, keep:] = 0
            base = xs
        slab = [c for c in corners if c[0] == xs]
        for j in range(0, len(slab), batch_size):
            chunk = slab[j : j + batch_size]
            windows = torch.stack(
                [image[:, x : x + roi[0], y : y + roi[1], z : z + roi[2]] for x, y, z in chunk]
            ).to(device)  # (B, C, *roi)
            out = predictor(windows)  # (B, K, *roi)
            if not isinstance(out, torch.Tensor) or out.dim() != 5 or tuple(out.shape[2:]) != roi:
                got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ValueError(f"predictor must return (B, K, {roi[0]}, {roi[1]}, {roi[2]}), got {got}")
            out = (out.float() * w_run).to(device=accum_device, dtype=accum_dtype)  # (B, K, *roi)
            if acc is None:
                acc = torch.zeros((out.shape[1], rx) + shape[1:], dtype=accum_dtype, device=accum_device)
            for b, (_, y, z) in enumerate(chunk):
                acc[:, :, y : y + roi[1], z : z + roi[2]] += out[b]
                cnt[0, :, y : y + roi[1], z : z + roi[2]] += w_acc
            done += len(chunk)
            if progress is not None:
                progress(len(chunk))
        nxt = x_starts[i + 1] if i + 1 < len(x_starts) else shape[0]
        emit(xs, nxt)
    assert done == len(corners) and (result is not None or output == "stream")
    return result


def count_windows(shape: Sequence[int], roi: Sequence[int], overlap: float) -> int:
    """Number of windows :func:`sliding_window` runs for a volume of ``shape`` (X, Y, Z)."""
    padded = [max(int(s), int(r)) for s, r in zip(shape, roi)]
    return len(window_grid(padded, roi, overlap))


__all__ = ["sliding_window", "window_starts", "window_grid", "importance_map", "count_windows", "Predictor"]
