"""Attention maps of a run's transformer on one case, packed for the HTML viewer.

The case is preprocessed exactly as for prediction (the run's plan), one window of the model's input size
is cut around the largest structure of the label map (the centre of the volume without one), and
:meth:`unetr.model.UNETR.attention_maps` gives every block's attention weights. The page gets, per block,
the weights averaged over heads: for any patch it picks (the query), how much that patch attends to every
other patch; and how much attention each patch receives on average. Each row is stretched from its weakest
(0) to its strongest patch (255), so that the structure of a nearly even row still shows.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Optional, Sequence, Tuple, Union

import numpy as np

if TYPE_CHECKING:  # torch is imported where the model runs, so that the page can be written without it
    import torch

from unetr.report.png import focus_point
from unetr.report.volumes import encode

log = logging.getLogger(__name__)

PathLike = Union[str, Path]


def crop_window(volume: np.ndarray, centre: Sequence[int], size: Sequence[int]) -> Tuple[np.ndarray, Tuple[int, ...]]:
    """The window of ``size`` around ``centre``, kept inside the volume; axes shorter than ``size`` are
    zero-padded after their end (as sliding-window inference pads).

    Args:
        volume: ``(C, X, Y, Z)``.
        centre: ``(x, y, z)`` voxel.
        size: ``(wx, wy, wz)`` window.

    Returns:
        ``(window (C, wx, wy, wz), start (x0, y0, z0))``.
    """
    if volume.ndim != 4:
        raise ValueError(f"volume must be (C, X, Y, Z), got shape {volume.shape}")
    start = tuple(int(min(max(c - w // 2, 0), max(n - w, 0))) for c, w, n in zip(centre, size, volume.shape[1:]))
    sl = tuple(slice(s, s + w) for s, w in zip(start, size))
    win = volume[(slice(None), *sl)]
    pad = [(0, 0)] + [(0, w - n) for w, n in zip(size, win.shape[1:])]
    return np.pad(win, pad), start


def head_mean_attention(maps: Sequence[torch.Tensor]) -> np.ndarray:
    """Per-block attention averaged over heads: a list of ``(1, H, N, N)`` -> ``(L, N, N)`` float32."""
    import torch

    if not maps:
        raise ValueError("no attention maps (a model without transformer blocks?)")
    return torch.stack([m[0].float().mean(0) for m in maps]).cpu().numpy()  # (L, N, N)


def stretch_rows(a: np.ndarray) -> np.ndarray:
    """Each row (last axis) stretched from its minimum (0) to its maximum (255), as uint8; a flat row is 0."""
    lo = a.min(axis=-1, keepdims=True)
    span = a.max(axis=-1, keepdims=True) - lo
    return np.round(255.0 * (a - lo) / np.where(span > 0, span, 1.0)).astype(np.uint8)


def _flat(a: np.ndarray) -> str:
    """Encode an array's bytes in C order (row after row), as a ``(n, 1, 1)`` volume."""
    return encode(np.ascontiguousarray(a).reshape(-1, 1, 1))


def attention_payload(weights: np.ndarray, window: np.ndarray, label: Optional[np.ndarray], *, case: str,
                      patch_size: int, spacing: Sequence[float], start: Sequence[int]) -> Dict[str, object]:
    """Pack head-averaged attention and its window for the page.

    Args:
        weights: ``(L, N, N)`` attention, row ``q`` of block ``l`` summing to 1; tokens ordered with X slowest
            and Z fastest over the patch grid.
        window: ``(X, Y, Z)`` the preprocessed image window the model saw.
        label: ``(X, Y, Z)`` the label map on the same window, or None.
        case: the case name.
        patch_size: the edge of a patch in voxels.
        spacing: voxel size of the preprocessed grid (mm).
        start: where the window starts in the preprocessed volume.
    """
    grid = [n // patch_size for n in window.shape]
    n_tok = int(np.prod(grid))
    if weights.ndim != 3 or weights.shape[1:] != (n_tok, n_tok):
        raise ValueError(f"weights must be (L, {n_tok}, {n_tok}) for a {tuple(window.shape)} window, got {weights.shape}")
    lo, hi = np.percentile(window, [0.5, 99.5])
    grey = np.round(255.0 * np.clip((window - lo) / max(hi - lo, 1e-6), 0, 1)).astype(np.uint8)
    received = weights.mean(axis=1)  # (L, N): the mean attention each key gets over all queries
    point = focus_point(label) if label is not None and label.any() else tuple(n // 2 for n in window.shape)
    return {
        "case": case, "shape": list(window.shape), "spacing": [float(s) for s in spacing], "grid": grid,
        "patch": int(patch_size), "layers": int(weights.shape[0]), "start": [int(s) for s in start],
        "image": encode(grey), "label": None if label is None else encode(label.astype(np.uint8)),
        "weights": _flat(stretch_rows(weights)),  # (L, N, N) in C order: [layer][query][key]
        "received": _flat(stretch_rows(received)),  # (L, N): [layer][key]
        "point": [int(p) for p in point],
    }


def attention_for_case(run_dir: PathLike, image_paths: Union[PathLike, Sequence[PathLike]],
                       label_path: Optional[PathLike] = None, *, case: str, device: str = "cpu") -> Dict[str, object]:
    """Run a trained model's transformer on one window of a case and pack its attention for the page.

    Args:
        run_dir: a run directory (its plan preprocesses the case).
        image_paths: the case's image file (or one per channel).
        label_path: a label map on the image's grid (reference or prediction) to centre the window on.
        case: the case name shown with the maps.
        device: where the model runs.

    Returns:
        The dict of :func:`attention_payload`, plus ``heads``.
    """
    import torch

    from unetr.config import Plan
    from unetr.data.preprocess import preprocess_files
    from unetr.errors import CheckpointError
    from unetr.model import load_model

    model, info = load_model(run_dir, map_location=device)
    if not info.get("plan"):
        raise CheckpointError(f"{run_dir}: no plan, so the case cannot be preprocessed for the model")
    plan = Plan.from_dict(info["plan"])
    image, label, record = preprocess_files(image_paths, plan, label_path)  # (C, X, Y, Z), (X, Y, Z) or None, record
    roi = tuple(int(s) for s in model.img_size)
    centre = focus_point(label) if label is not None and label.any() else tuple(n // 2 for n in image.shape[1:])
    window, start = crop_window(image, centre, roi)  # (C, *roi)
    lab_win = None if label is None else crop_window(label[None], centre, roi)[0][0]
    with torch.inference_mode():
        maps = model.attention_maps(torch.from_numpy(np.ascontiguousarray(window))[None].to(device))
    weights = head_mean_attention(maps)  # (L, N, N)
    out = attention_payload(weights, window[0], lab_win, case=case, patch_size=model.patch_size,
                            spacing=record.spacing, start=start)
    out["heads"] = int(maps[0].shape[1])
    log.info("attention maps of %s: %d blocks x %d heads over %d patches", case, len(maps), out["heads"],
             weights.shape[-1])
    return out


__all__ = ["crop_window", "head_mean_attention", "stretch_rows", "attention_payload", "attention_for_case"]
