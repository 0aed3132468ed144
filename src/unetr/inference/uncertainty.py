"""The uncertainty maps of an ensemble (``unetr predict --uncertainty``), on the preprocessed grid: the entropy
of the mean probabilities, or the disagreement of the predictions with the ensemble's argmax.

Example:
    >>> result = ensemble_probabilities(loaders, image, 3, votes=True)   # doctest: +SKIP
    >>> u = uncertainty_map(result, "disagreement")   # (X, Y, Z) in [0, 1]   # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # the result type only: ensemble.py imports this module
    from unetr.inference.ensemble import EnsembleResult

UNCERTAINTY = ("entropy", "disagreement")


def entropy_map(mean: torch.Tensor) -> torch.Tensor:
    """The entropy of the mean probabilities ``(K, X, Y, Z)`` divided by ``log K``: ``(X, Y, Z)`` in [0, 1]
    (0: every prediction certain of one class; 1: uniform)."""
    k = mean.shape[0]
    plogp = torch.where(mean > 0, mean * torch.log(mean.clamp_min(1e-30)), torch.zeros((), dtype=mean.dtype))
    return (-plogp.sum(0) / math.log(k)).clamp_(0.0, 1.0)


def disagreement_map(votes: torch.Tensor, labels: torch.Tensor, count: int) -> torch.Tensor:
    """The fraction ``(X, Y, Z)`` of the ``count`` predictions whose argmax is not the ensemble's ``labels``."""
    agree = votes.gather(0, labels[None].long())[0].float()  # (X, Y, Z)
    return 1.0 - agree / count


def uncertainty_map(result: EnsembleResult, kind: str) -> torch.Tensor:
    """``entropy`` (:func:`entropy_map`) or ``disagreement`` (:func:`disagreement_map`), on the preprocessed grid."""
    if kind == "entropy":
        return entropy_map(result.mean)
    if kind == "disagreement":
        if result.votes is None:
            raise ValueError("disagreement needs the votes (ensemble_probabilities(votes=True))")
        return disagreement_map(result.votes, result.mean.max(0).indices, result.count)
    raise ValueError(f"uncertainty must be one of {UNCERTAINTY}, got {kind!r}")


__all__ = ["UNCERTAINTY", "disagreement_map", "entropy_map", "uncertainty_map"]
