"""Ensembles: the softmax probabilities of several networks averaged before the argmax in the input's space.

Memory: the members run one after another and stream into **one** accumulator on the preprocessed grid, so
an ensemble needs what one model needs plus that accumulator, whatever the number of members::

    image (preprocessed, once)     C * X' * Y' * Z' * 4 B
    accumulator                    K * X' * Y' * Z' * 4 B   (the probability sums, float32)
    one member's sliding window    its (K + 1) * roi_x * Y' * Z' rolling sums, one model's weights
    votes (--uncertainty disagreement only)   K * X' * Y' * Z' * 1 B

Holding every member's probabilities instead costs ``M * K * X' * Y' * Z' * 4 B`` (``benchmarks/bench_ensemble.py``
measures both). The image is read and preprocessed once for all members, and the mean goes back to the input
file's grid through the streamed soft inverse, where the argmax is taken: for the ``extent`` geometry the
same path as one model's prediction, with the mean of the members' probabilities in place of one model's.

Mirroring (``tta``) counts each mirrored prediction as one more set of probabilities in the mean.

Example:
    >>> source = open_model("runs/spleen")                         # doctest: +SKIP
    >>> predict_ensemble_files(source.members, plan, "imagesTs", "preds")   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from unetr.config import InferConfig, ModelConfig, Plan
from unetr.device import autocast, resolve_device
from unetr.errors import CheckpointError, UnetrError
from unetr.inference.inputs import case_name
from unetr.inference.predict import (
    MIRRORINGS,
    CaseResult,
    cases_of_rank,
    failure_text,
    run_cases,
    window_settings,
)
from unetr.inference.sliding_window import sliding_window
from unetr.inference.uncertainty import UNCERTAINTY, uncertainty_map
from unetr.package import Member

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
ModelLoader = Callable[[], nn.Module]


# ------------------------------------------------------------------------------------------ members


def load_member(member: Member, device: Union[str, torch.device] = "cpu") -> nn.Module:
    """Build a member's network and load its weights (safetensors only: nothing in the file runs).

    Raises:
        CheckpointError: a package member that fails its checksum, or weights that do not fit the config.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load, load_file

    from unetr.model import build_model, load_weights

    where = str(member.weights) if member.weights is not None else f"{member.package}: member {member.name}"
    try:
        cfg = ModelConfig.from_dict(member.model)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: bad model config ({e})") from None
    try:
        state = load_file(str(member.weights)) if member.weights is not None else load(member.read_bytes())
    except (SafetensorError, OSError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{where}: not a readable safetensors file ({e})") from None
    model = load_weights(build_model(cfg), state, source=where)
    return model.to(device).eval()


def member_loaders(members: Sequence[Member], device: Union[str, torch.device]) -> List[ModelLoader]:
    """One loader per member: each builds its network when called (members are never held together)."""
    return [lambda m=m: load_member(m, device) for m in members]


# ------------------------------------------------------------------------------------------ volumes


def _predictor(model: nn.Module, device: torch.device, precision: str, axes: Tuple[int, ...]
               ) -> Callable[[torch.Tensor], torch.Tensor]:
    """Windows ``(B, C, *roi)`` -> logits ``(B, K, *roi)`` float32 of ``model`` seeing them mirrored along
    ``axes`` (and mirrored back)."""

    def predict(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), autocast(device, precision):
            xi = torch.flip(x, axes) if axes else x
            y = model(xi).float()  # (B, K, *roi)
        return torch.flip(y, axes) if axes else y

    return predict


def softmax_(logits: torch.Tensor) -> torch.Tensor:
    """The softmax over the first axis of ``logits`` ``(K, ...)``, computed in place (no second volume)."""
    logits.sub_(logits.amax(0, keepdim=True)).exp_()
    return logits.div_(logits.sum(0, keepdim=True))


def stream_probabilities(model: nn.Module, image: torch.Tensor, config: InferConfig,
                         sink: Callable[[int, torch.Tensor], None], *, axes: Tuple[int, ...] = (),
                         progress: Optional[Callable[[int], None]] = None) -> None:
    """One member's softmax probabilities on the preprocessed grid, slab by slab along X:
    ``sink(x0, probabilities (K, n, Y, Z) float32 on the CPU)``.

    Args:
        model: maps windows ``(B, C, *roi)`` to logits; its ``img_size`` is the window.
        image: preprocessed ``(C, X, Y, Z)``.
        config: overlap, blending, batch, precision, devices (its ``tta`` is not used here: see ``axes``).
        axes: mirror the windows along these axes of ``(B, C, X, Y, Z)`` (2, 3, 4).
    """
    device = resolve_device(config.device)
    roi = tuple(int(r) for r in model.img_size)
    pos = 0

    def take(slab: torch.Tensor) -> None:
        # (K, n, Y, Z) blended logits: a fresh tensor the window loop never reads again, so the softmax may
        # overwrite it (one slab less in memory)
        nonlocal pos
        probs = softmax_(slab.float().cpu())
        sink(pos, probs)
        pos += probs.shape[1]

    sliding_window(image, _predictor(model, device, config.precision, axes), roi, output="stream", sink=take,
                   progress=progress, **window_settings(config, device))
    assert pos == image.shape[1]


def member_probabilities(model: nn.Module, image: torch.Tensor, config: Optional[InferConfig] = None, *,
                         axes: Tuple[int, ...] = ()) -> torch.Tensor:
    """One member's probabilities ``(K, X, Y, Z)`` float32 on the preprocessed grid, whole (what the
    ensemble adds up, slab by slab; the hold-all reference and the tests use it)."""
    config = config or InferConfig()
    out: List[torch.Tensor] = []
    stream_probabilities(model, image, config, lambda x0, p: out.append(p), axes=axes)
    return torch.cat(out, 1)


@dataclass
class EnsembleResult:
    """The mean probabilities on the preprocessed grid and what the uncertainty needs.

    Attributes:
        mean: ``(K, X, Y, Z)`` float32, the mean over the ``count`` predictions.
        votes: ``(K, X, Y, Z)`` uint8, how many predictions had each class as their argmax (or None).
        count: predictions averaged (members x mirrorings).
    """

    mean: torch.Tensor
    votes: Optional[torch.Tensor]
    count: int


def ensemble_probabilities(loaders: Iterable[ModelLoader], image: Union[np.ndarray, torch.Tensor], num_classes: int,
                           config: Optional[InferConfig] = None, *, votes: bool = False,
                           progress: Optional[Callable[[int], None]] = None) -> EnsembleResult:
    """The mean softmax probabilities of every member (and mirroring, with ``config.tta``) on the
    preprocessed grid, summed member by member into one float32 accumulator in member order.

    Args:
        loaders: build each member's network when called; a network is dropped before the next is built.
        image: preprocessed ``(C, X, Y, Z)``.
        num_classes: K.
        config: sliding-window settings (``tta``: also every mirroring of each member).
        votes: also count each prediction's argmax per class (for the disagreement).
        progress: called with the windows done.

    Returns:
        An :class:`EnsembleResult`.
    """
    config = config or InferConfig()
    x = torch.as_tensor(np.ascontiguousarray(image) if isinstance(image, np.ndarray) else image)
    if x.dim() != 4:
        raise ValueError(f"image must be (C, X, Y, Z), got shape {tuple(x.shape)}")
    acc = torch.zeros((num_classes, *x.shape[1:]), dtype=torch.float32)  # (K, X, Y, Z)
    count_votes = torch.zeros((num_classes, *x.shape[1:]), dtype=torch.uint8) if votes else None
    mirrorings = MIRRORINGS if config.tta else ((),)
    count = 0

    def add(x0: int, probs: torch.Tensor) -> None:  # (K, n, Y, Z)
        if probs.shape[0] != num_classes:
            raise UnetrError(f"a member returns {probs.shape[0]} classes, the plan has {num_classes}")
        acc[:, x0:x0 + probs.shape[1]] += probs
        if count_votes is not None:
            arg = probs.max(0).indices  # (n, Y, Z)
            count_votes[:, x0:x0 + probs.shape[1]].scatter_add_(0, arg[None].long(),
                                                                torch.ones_like(arg[None], dtype=torch.uint8))

    for load in loaders:
        model = load()
        for axes in mirrorings:
            if count == 255 and count_votes is not None:
                raise ValueError("the disagreement counts at most 255 predictions (members x mirrorings)")
            stream_probabilities(model, x, config, add, axes=axes, progress=progress)
            count += 1
        del model
    if count == 0:
        raise ValueError("an ensemble needs at least one member")
    acc.div_(count)
    return EnsembleResult(acc, count_votes, count)


def labels_in_input_space(mean: torch.Tensor, record) -> np.ndarray:
    """The argmax of the mean probabilities ``(K, X', Y', Z')``, taken on the input file's grid through the
    streamed soft inverse (the whole mean is handed over at once, so the result never depends on slabs)."""
    from unetr.inference.soft_inverse import SoftInverse

    inverse = SoftInverse(record, mean.shape[0], probabilities=True)
    inverse.push(mean)
    return inverse.result()


# ------------------------------------------------------------------------------------------ files


Postprocess = Callable[[np.ndarray, Sequence[float]], np.ndarray]


def predict_ensemble_case(
    loaders: Sequence[ModelLoader],
    plan: Plan,
    files: Sequence[PathLike],
    out_dir: PathLike,
    config: Optional[InferConfig] = None,
    *,
    name: Optional[str] = None,
    uncertainty: Optional[str] = None,
    probabilities: bool = False,
    postprocess: Optional[Postprocess] = None,
    overwrite: bool = False,
) -> CaseResult:
    """Predict one case with an ensemble and write ``<name>.nii.gz`` (and the extras asked for).

    Args:
        loaders: the members (:func:`member_loaders`); they share ``plan``.
        plan: the preprocessing of every member.
        files: the case's image file(s).
        out_dir: output folder.
        config: sliding-window settings (``tta`` mirrors each member too).
        uncertainty: also write ``<name>_uncertainty.nii.gz`` (float32 in [0, 1]): ``entropy`` of the mean
            probabilities over ``log K``, or ``disagreement``, the fraction of predictions whose argmax differs
            from the ensemble's.
        probabilities: also write ``<name>.npz``: ``probabilities`` ``(K, X, Y, Z)`` float16 on the input
            file's grid (compressed), with ``affine`` and ``class_names``.
        postprocess: applied to the label map on the input file's grid (with its spacing).
        overwrite: redo a case whose outputs exist.

    Returns:
        A :class:`CaseResult`; problems with the input are reported there (status ``failed``), not raised.
    """
    from unetr.data.io import write_image, write_label
    from unetr.data.preprocess import invert_to_original, preprocess_image_file

    config = config or InferConfig()
    files = [Path(f) for f in files]
    name = name or case_name(files[0])
    out_dir = Path(out_dir)
    outputs = ensemble_outputs(name, out_dir, uncertainty=uncertainty, probabilities=probabilities)
    if not overwrite and all(p.exists() for p in outputs):
        return CaseResult(name, "skipped", outputs[0])
    t0 = time.perf_counter()
    try:
        image, record = preprocess_image_file(files, plan)
        result = ensemble_probabilities(loaders, image, plan.num_classes, config,
                                        votes=uncertainty == "disagreement")
        del image
        labels = labels_in_input_space(result.mean, record)
        geom = record.geometry
        if postprocess is not None:
            labels = postprocess(labels, geom.spacing)
        out_dir.mkdir(parents=True, exist_ok=True)
        if uncertainty is not None:
            u = uncertainty_map(result, uncertainty)  # (X', Y', Z')
            u_in = invert_to_original(u[None].numpy(), record, is_label=False, background=False)[0]
            write_image(out_dir / f"{name}_uncertainty.nii.gz", u_in, geom, dtype="float32")
            del u, u_in
        if probabilities:
            _write_probabilities(out_dir / f"{name}.npz", invert_to_original(result.mean.numpy(), record,
                                                                              is_label=False), geom, plan)
        del result
        write_label(outputs[0], labels, geom)  # last: its existence marks the case as finished
    except (UnetrError, ValueError, OSError, RuntimeError, MemoryError) as e:  # the other cases go on
        return CaseResult(name, "failed", message=failure_text(e), seconds=time.perf_counter() - t0)
    return CaseResult.finished(name, outputs[0], t0, labels)


def _write_probabilities(path: Path, probs: np.ndarray, geom, plan: Plan) -> None:
    """``probs`` ``(K, X, Y, Z)`` as float16 in a compressed ``.npz`` (with the affine and class names)."""
    from unetr.fsutil import atomic_write

    data = probs.astype(np.float16)
    atomic_write(path, lambda f: np.savez_compressed(f, probabilities=data, affine=np.asarray(geom.affine),
                                                     class_names=np.array(plan.class_names)))


def ensemble_outputs(name: str, out_dir: PathLike, *, uncertainty: Optional[str] = None,
                     probabilities: bool = False) -> List[Path]:
    """The files :func:`predict_ensemble_case` writes for case ``name`` (the label map first)."""
    out_dir = Path(out_dir)
    return ([out_dir / f"{name}.nii.gz"] + ([out_dir / f"{name}_uncertainty.nii.gz"] if uncertainty else [])
            + ([out_dir / f"{name}.npz"] if probabilities else []))


def predict_ensemble_files(
    loaders: Sequence[ModelLoader],
    plan: Plan,
    inputs: Union[PathLike, Sequence[PathLike]],
    out_dir: PathLike,
    config: Optional[InferConfig] = None,
    *,
    uncertainty: Optional[str] = None,
    probabilities: bool = False,
    postprocess: Optional[Postprocess] = None,
    overwrite: bool = False,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
) -> List[CaseResult]:
    """Predict every case of ``inputs`` with the ensemble (this rank takes every ``world_size``-th case).

    See :func:`predict_ensemble_case` for the arguments; a failed case does not stop the others.
    """
    if uncertainty is not None and uncertainty not in UNCERTAINTY:
        raise ValueError(f"uncertainty must be one of {UNCERTAINTY}, got {uncertainty!r}")
    cases = cases_of_rank(inputs, plan.in_channels, out_dir, False, rank, world_size)
    return run_cases(cases, lambda name, files: predict_ensemble_case(
        loaders, plan, files, out_dir, config, name=name, uncertainty=uncertainty, probabilities=probabilities,
        postprocess=postprocess, overwrite=overwrite), progress)


__all__ = ["EnsembleResult", "ensemble_outputs", "ensemble_probabilities", "labels_in_input_space", "load_member",
           "member_loaders", "member_probabilities", "predict_ensemble_case", "predict_ensemble_files",
           "stream_probabilities"]
