"""Validation during training: sliding-window segmentation of the validation cases and their Dice.

The voxels are counted in torch, where the prediction is; the Dice of the counts and the mean over the
foreground classes are the package's single rules, :func:`unetr.metrics.dice_from_confusion` and
:func:`unetr.metrics.mean_foreground`, so a validation Dice means what an evaluation Dice means.
"""

from __future__ import annotations

from typing import List, Sequence

import numpy as np
import torch
from torch import nn

from unetr.device import autocast
from unetr.metrics import dice_from_confusion
from unetr.training import distributed as D
from unetr.training.batches import CaseLoader


def confusion_matrix_torch(pred: torch.Tensor, ref: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Voxel counts ``C[p, r]`` of predicted class ``p`` against reference class ``r``, counted in torch.

    The layout of :func:`unetr.metrics.confusion_matrix` (rows prediction, columns reference), on the
    device of the inputs, so counts of several cases and ranks can be summed before one transfer.

    Args:
        pred: ``(X, Y, Z)`` predicted labels in ``[0, K)``.
        ref: ``(X, Y, Z)`` reference labels in ``[0, K)``.
        num_classes: K, background included.

    Returns:
        ``(K, K)`` int64.
    """
    k = num_classes
    idx = pred.reshape(-1).long() * k + ref.reshape(-1).long()
    return torch.bincount(idx, minlength=k * k).reshape(k, k)  # (prediction, reference)


@torch.no_grad()
def validate(model: nn.Module, case_ids: Sequence[str], load: CaseLoader, *, roi: Sequence[int], num_classes: int,
             env: D.DistEnv, precision: str, overlap: float = 0.5, sw_batch: int = 4, mode: str = "gaussian",
             progress: bool = False) -> List[float]:
    """Sliding-window Dice per class over ``case_ids``, from voxel counts summed over the cases (and ranks).

    Each rank segments the cases ``case_ids[rank::world_size]``; the counts are summed over ranks. ``mode``
    blends the windows (:func:`unetr.inference.sliding_window`: ``gaussian`` or ``constant``).

    Returns:
        Dice per class (background first), NaN where a class is absent from predictions and references.
    """
    from tqdm.auto import tqdm

    from unetr.inference import sliding_window

    device = env.device
    was_training = model.training
    model.eval()

    def predictor(x: torch.Tensor) -> torch.Tensor:
        with autocast(device, precision):
            return model(x).float()  # (B, K, *roi)

    counts = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    mine = list(case_ids)[env.rank::env.world_size]
    for cid in tqdm(mine, desc="validation", leave=False, disable=not progress, dynamic_ncols=True):
        image, label = load(cid)
        img = torch.from_numpy(np.array(image, dtype=np.float32))  # (C, X, Y, Z), a writable copy
        pred = sliding_window(img, predictor, roi, overlap=overlap, mode=mode, batch_size=sw_batch, device=device,
                              accum_device=device, output="argmax")  # (X, Y, Z)
        lab = torch.from_numpy(np.asarray(label).astype(np.int64))
        if lab.max() >= num_classes or lab.min() < 0:
            raise ValueError(f"validation case {cid}: labels outside [0, {num_classes})")
        counts += confusion_matrix_torch(pred.cpu(), lab, num_classes)
    counts = D.all_reduce_sum(counts.to(device), env).cpu()
    model.train(was_training)
    return dice_from_confusion(counts.numpy()).tolist()


__all__ = ["confusion_matrix_torch", "validate"]
