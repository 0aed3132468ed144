"""Prediction of files: model + plan -> preprocess -> sliding window -> exact inverse -> NIfTI.

The label map written for each input has the input's shape and affine (qform/sform included), so it
overlays the image in any viewer. Files are written under a temporary name and renamed, so a file under
its final name is always complete; an interrupted run continues where it stopped (finished cases are
skipped unless ``overwrite``).

Example:
    >>> model, plan = load_predictor("runs/spleen")                       # doctest: +SKIP
    >>> results = predict_files(model, plan, ["img.nii.gz"], "preds/")    # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from unetr.accel import check_compiler, compile_model, device_defaults, full_batches
from unetr.config import InferConfig, Plan
from unetr.device import autocast, explain_precision, resolve_device
from unetr.errors import CheckpointError, UnetrError, out_of_memory
from unetr.inference.inputs import case_name, check_output_folder, find_inputs, output_paths
from unetr.inference.postprocess import keep_largest_component
from unetr.inference.sliding_window import count_windows, sliding_window

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
MIRRORINGS: Tuple[Tuple[int, ...], ...] = ((), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4))


# ------------------------------------------------------------------------------------------ model


def load_predictor(
    model_path: PathLike, *, plan: Optional[Plan] = None, device: Union[str, torch.device] = "cpu",
    **model_overrides,
) -> Tuple[torch.nn.Module, Plan]:
    """Load a model and the plan its inputs need.

    Args:
        model_path: a run directory, or a checkpoint file (ours, MONAI's or the tutorial's).
        plan: the preprocessing for a bare checkpoint (one without a plan); a run's own plan wins
            otherwise.
        device: where the model goes.
        **model_overrides: ModelConfig fields for bare checkpoints (``img_size``, ``num_heads``).

    Returns:
        ``(model in eval mode, plan)``.

    Raises:
        CheckpointError: the file is not a model, or a bare checkpoint came without a plan.
    """
    from unetr.model import load_model

    try:
        model, info = load_model(model_path, map_location=device, **model_overrides)
    except (CheckpointError, FileNotFoundError):
        raise
    except Exception as e:  # noqa: BLE001 - anything else means "not a model" to the user
        raise CheckpointError(f"{model_path}: not a model checkpoint ({type(e).__name__}: {e})") from None
    if info.get("plan"):
        run_plan = Plan.from_dict(info["plan"])
        if plan is not None:
            log.warning("%s has its own plan; the preprocessing options given are ignored", model_path)
        plan = run_plan
    if plan is None:
        raise CheckpointError(
            f"{model_path}: a bare checkpoint has no plan; give the preprocessing "
            "(--spacing, --window or --intensity, --roi, --out-channels)"
        )
    mcfg = info["model"]
    if int(mcfg["out_channels"]) != plan.num_classes:
        raise CheckpointError(f"{model_path}: the model has {mcfg['out_channels']} outputs, the plan "
                              f"{plan.num_classes} classes")
    if int(mcfg["in_channels"]) != plan.in_channels:
        raise CheckpointError(f"{model_path}: the model takes {mcfg['in_channels']} channels, the plan "
                              f"{plan.in_channels}")
    return model, plan


def make_predictor(
    model: torch.nn.Module, device: torch.device, precision: str = "auto", tta: bool = False
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The window function for :func:`sliding_window`: logits ``(B, K, *roi)`` in float32.

    With ``tta`` the logits are averaged over the 8 mirrorings of the three spatial axes.
    """
    flips = MIRRORINGS if tta else ((),)

    def predict(x: torch.Tensor) -> torch.Tensor:  # (B, C, *roi) -> (B, K, *roi)
        total: Optional[torch.Tensor] = None
        with torch.inference_mode(), autocast(device, precision):
            for axes in flips:
                xi = torch.flip(x, axes) if axes else x
                yi = model(xi).float()
                yi = torch.flip(yi, axes) if axes else yi
                total = yi if total is None else total + yi
        assert total is not None
        return total / len(flips)

    return predict


def window_settings(config: InferConfig, device: torch.device) -> dict:
    """The sliding window's keyword arguments for ``config`` on ``device``: blending, windows per batch and
    where the sums are kept, with ``auto`` and 0 meaning :func:`unetr.accel.device_defaults` for the device
    (the single model and the ensemble both take them from here)."""
    auto = device_defaults(device.type, os.cpu_count() or 1)
    if config.accum_device != "auto":
        accum = resolve_device(config.accum_device)
    else:
        accum = device if auto.accum_on_device else torch.device("cpu")
    return dict(overlap=config.overlap, mode=config.mode, sigma_scale=config.sigma_scale,
                batch_size=config.sw_batch_size or auto.sw_batch_size, device=device, accum_device=accum,
                accum_dtype=torch.float16 if config.accum_fp16 else torch.float32)


def predict_volume(
    model: torch.nn.Module,
    image: Union[np.ndarray, torch.Tensor],
    roi: Sequence[int],
    config: Optional[InferConfig] = None,
    *,
    probabilities: bool = False,
    progress: Optional[Callable[[int], None]] = None,
    sink: Optional[Callable[[torch.Tensor], None]] = None,
) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Segment one preprocessed volume.

    Args:
        model: maps ``(B, C, *roi)`` to logits ``(B, K, *roi)``.
        image: preprocessed ``(C, X, Y, Z)``.
        roi: the window (the model's ``img_size``).
        config: overlap, blending, batch, TTA, precision, devices, compile (what ``auto`` and 0 mean on the
            device: :func:`unetr.accel.device_defaults`).
        probabilities: also return the softmax probabilities (the float volume is then held).
        progress: called with the number of windows done.
        sink: instead of labels, hand the blended logits to ``sink`` slab by slab (``(K, n, Y, Z)``, in
            order along X; see :class:`unetr.inference.soft_inverse.SoftInverse`) and return ``(None, None)``.

    Returns:
        ``(labels (X, Y, Z) uint8 on the CPU, probabilities (K, X, Y, Z) float16 or None)``.
    """
    config = config or InferConfig()
    device = resolve_device(config.device)
    common = window_settings(config, device)
    batch = common["batch_size"]
    x = torch.as_tensor(np.ascontiguousarray(image) if isinstance(image, np.ndarray) else image)
    if x.dim() != 4:
        raise ValueError(f"image must be (C, X, Y, Z), got shape {tuple(x.shape)}")
    if device_defaults(device.type, os.cpu_count() or 1).volume_on_device and common["accum_device"] == device:
        x = x.to(device)  # one copy; the windows are cut on the device
    fn = make_predictor(compile_model(model, device) if config.compile else model, device, config.precision,
                        config.tta)
    if config.compile:
        fn = full_batches(fn, batch)  # one compiled graph: a slab's short last batch is padded
    common.update(progress=progress)
    if sink is not None:
        sliding_window(x, fn, roi, output="stream", sink=lambda slab: sink(slab.cpu()), **common)
        return None, None
    if not probabilities:
        labels = sliding_window(x, fn, roi, output="argmax", **common)  # (X, Y, Z)
        return labels.cpu(), None
    logits = sliding_window(x, fn, roi, output="probabilities", out_dtype=torch.float32, **common)  # (K, X, Y, Z)
    probs = torch.softmax(logits, 0).to(torch.float16).cpu()
    return logits.max(0).indices.to(torch.uint8).cpu(), probs


# ------------------------------------------------------------------------------------------ files


@dataclass
class CaseResult:
    """What happened to one case."""

    case: str
    status: str  # done | skipped | failed
    output: Optional[Path] = None
    seconds: float = 0.0
    shape: Tuple[int, ...] = ()
    classes: List[int] = field(default_factory=list)
    message: str = ""

    def line(self) -> str:
        if self.status == "done":
            return (f"{self.case}: {'x'.join(map(str, self.shape))}, {self.seconds:.1f} s, "
                    f"classes {self.classes or 'none'} -> {self.output}")
        if self.status == "skipped":
            return f"{self.case}: skipped ({self.output} exists; --overwrite to redo)"
        return f"{self.case}: FAILED: {self.message}"

    @classmethod
    def finished(cls, case: str, output: Path, t0: float, labels: np.ndarray) -> CaseResult:
        """A case whose label map ``labels`` was written to ``output``, timed from ``time.perf_counter()``
        ``t0``."""
        classes = [int(c) for c in np.unique(labels) if c != 0]
        return cls(case, "done", output, time.perf_counter() - t0, tuple(labels.shape), classes)


def _progress_bar(total: int, desc: str, leave: bool, position: int):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return contextlib.nullcontext(None)
    return tqdm(total=total, desc=desc, leave=leave, position=position, unit="case" if leave else "win",
                disable=None, dynamic_ncols=True)


def predict_case(
    model: torch.nn.Module,
    plan: Plan,
    files: Sequence[PathLike],
    out_dir: PathLike,
    config: Optional[InferConfig] = None,
    *,
    name: Optional[str] = None,
    probabilities: bool = False,
    overwrite: bool = False,
    window_progress: bool = False,
    postprocess: Optional[Callable[[np.ndarray, Sequence[float]], np.ndarray]] = None,
) -> CaseResult:
    """Predict one case from its files and write ``<out_dir>/<name>.nii.gz`` (and ``_probabilities``).

    Args:
        model: the network (eval mode, on ``config.device``).
        plan: the preprocessing the model was trained with.
        files: the case's image file, or one file per channel.
        out_dir: output folder.
        config: sliding-window and post-processing settings.
        name: case name (default: from the first file).
        probabilities: also write softmax probabilities ``(X, Y, Z, K)`` (computed and held as float16,
            stored as float32 because NIfTI-1 readers have no float16 type).
        overwrite: redo a case whose output exists.
        window_progress: show a progress bar over the windows.
        postprocess: ``(labels, spacing) -> labels`` on the input file's grid (e.g. a run's
            :class:`unetr.inference.postprocess.PostProcessing`), after ``largest_component``.

    Returns:
        A :class:`CaseResult`; problems with the input are reported there (status ``failed``), not raised.
    """
    from unetr.data.preprocess import preprocess_image_file

    config = config or InferConfig()
    files = [Path(f) for f in files]
    name = name or case_name(files[0])
    out, prob_out = output_paths(name, out_dir, probabilities=True)
    if not overwrite and out.exists() and (not probabilities or prob_out.exists()):
        return CaseResult(name, "skipped", out)
    t0 = time.perf_counter()
    try:
        image, record = preprocess_image_file(files, plan)
        labels_np, probs = _segment(model, plan, image, record, config, name=name, probabilities=probabilities,
                                    window_progress=window_progress)
        del image
        if config.largest_component:
            keep_largest_component(labels_np)
        if postprocess is not None:
            labels_np = postprocess(labels_np, record.geometry.spacing)
        _write_case(out, prob_out, labels_np, probs, record)
    except (UnetrError, ValueError, OSError, RuntimeError, MemoryError) as e:  # the other cases go on
        return CaseResult(name, "failed", message=failure_text(e), seconds=time.perf_counter() - t0)
    return CaseResult.finished(name, out, t0, labels_np)


def _segment(model: torch.nn.Module, plan: Plan, image: np.ndarray, record, config: InferConfig, *, name: str,
             probabilities: bool, window_progress: bool) -> Tuple[np.ndarray, Optional[torch.Tensor]]:
    """The label map of a preprocessed case on its input file's grid, and (when asked for) its softmax
    probabilities ``(K, X, Y, Z)`` float16 on the preprocessed grid (else None)."""
    from unetr.data.preprocess import invert_to_original

    roi = tuple(int(r) for r in getattr(model, "img_size", plan.roi))
    n_win = count_windows(image.shape[1:], roi, config.overlap)
    with _progress_bar(n_win, name, False, 1) if window_progress else contextlib.nullcontext(None) as bar:
        tick = bar.update if bar is not None else None
        if config.inverse == "soft":  # the logits stream into the inverse; no float volume is held
            return _soft_segment(model, plan, image, record, roi, config, probabilities=probabilities, tick=tick)
        # argmax on the preprocessed grid, then the label map goes back
        labels, probs = predict_volume(model, image, roi, config, probabilities=probabilities, progress=tick)
        labels_np = invert_to_original(labels.numpy(), record, is_label=True)
        del labels
    return labels_np, probs


def _soft_segment(model: torch.nn.Module, plan: Plan, image: np.ndarray, record, roi: Tuple[int, ...],
                  config: InferConfig, *, probabilities: bool, tick: Optional[Callable[[int], None]]
                  ) -> Tuple[np.ndarray, Optional[torch.Tensor]]:
    """:func:`_segment` with the logits streamed, slab by slab, into the soft inverse (``--inverse soft``)."""
    from unetr.inference.soft_inverse import SoftInverse

    probs = None
    inverse = SoftInverse(record, plan.num_classes)
    filled = 0

    def keep_probabilities(slab: torch.Tensor) -> None:  # ... unless asked for
        nonlocal filled
        probs[:, filled:filled + slab.shape[1]] = torch.softmax(slab, 0)
        filled += slab.shape[1]
        inverse.push(slab)

    if probabilities:
        probs = torch.empty((plan.num_classes, *image.shape[1:]), dtype=torch.float16)
    predict_volume(model, image, roi, config, sink=keep_probabilities if probabilities else inverse.push,
                   progress=tick)
    return inverse.result(), probs


def _write_case(out: Path, prob_out: Path, labels: np.ndarray, probs: Optional[torch.Tensor], record) -> None:
    """Write a case's probabilities (when there are any) on its input file's grid, then its label map."""
    from unetr.data.io import write_image, write_label
    from unetr.data.preprocess import invert_to_original

    geom = record.geometry
    out.parent.mkdir(parents=True, exist_ok=True)
    if probs is not None:
        p = invert_to_original(probs.float().numpy(), record, is_label=False)  # (K, X, Y, Z)
        write_image(prob_out, p, geom, dtype="float32")  # NIfTI-1 (nibabel) has no float16 code
        del p
    write_label(out, labels, geom)  # last: its existence marks the case as finished


def failure_text(e: BaseException) -> str:
    """One line for a case that failed: how much memory it asked for and what lowers it, a full disk and its
    file, or the error's own message."""
    import errno

    needed = out_of_memory(e)
    if needed is not None:
        return (f"out of memory ({f'an allocation of {needed} failed' if needed else e}); lower --batch, add "
                "--accum-fp16 or --accum-device cpu, or use --inverse labels")
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return f"disk full writing {e.filename or 'the prediction'}"
    return str(e) or type(e).__name__


def predict_files(
    model: torch.nn.Module,
    plan: Plan,
    inputs: Union[PathLike, Sequence[PathLike]],
    out_dir: PathLike,
    config: Optional[InferConfig] = None,
    *,
    probabilities: bool = False,
    overwrite: bool = False,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    postprocess: Optional[Callable[[np.ndarray, Sequence[float]], np.ndarray]] = None,
) -> List[CaseResult]:
    """Predict every case of ``inputs`` into ``out_dir``; this rank takes every ``world_size``-th case.

    Args:
        model: the network (eval mode, on ``config.device``).
        plan: the preprocessing the model was trained with.
        inputs: ``FILE | FOLDER | GLOB`` or a list of them (see :func:`unetr.inference.inputs.find_inputs`).
        out_dir: output folder.
        config: sliding-window and post-processing settings.
        probabilities: also write the probabilities (see :func:`predict_case`).
        overwrite: redo finished cases.
        rank / world_size: this process's share under ``torchrun``.
        progress: progress bars over cases and windows.
        postprocess: applied to each label map (see :func:`predict_case`).

    Returns:
        One :class:`CaseResult` per case of this rank; a failed case does not stop the others.
    """
    config = config or InferConfig()
    cases = cases_of_rank(inputs, plan.in_channels, out_dir, probabilities, rank, world_size)
    if config.compile:  # a missing compiler is one error now, not a failure per case
        check_compiler(resolve_device(config.device))
    if rank == 0:
        device = resolve_device(config.device)
        precision, why = explain_precision(config.precision, device, allow_fp16=False)  # as autocast() resolves it
        log.info("precision %s on %s: %s", precision, device, why)
    return run_cases(cases, lambda name, files: predict_case(
        model, plan, files, out_dir, config, name=name, probabilities=probabilities, overwrite=overwrite,
        window_progress=progress, postprocess=postprocess), progress)


def cases_of_rank(inputs: Union[PathLike, Sequence[PathLike]], in_channels: int, out_dir: PathLike,
                  probabilities: bool, rank: int, world_size: int) -> List[Tuple[str, List[Path]]]:
    """This rank's share (every ``world_size``-th) of the cases of ``inputs``, after the output folder was
    checked for every case (:func:`unetr.inference.inputs.check_output_folder`)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    all_cases = find_inputs(inputs, in_channels)
    check_output_folder(all_cases, out_dir, probabilities)
    return all_cases[rank::world_size]


def run_cases(cases: Sequence[Tuple[str, List[Path]]], predict_one: Callable[[str, List[Path]], CaseResult],
              progress: bool) -> List[CaseResult]:
    """``predict_one(name, files)`` of every case in order, each result logged (a failure as an error), under a
    progress bar over the cases when ``progress``; a failed case does not stop the others."""
    results: List[CaseResult] = []
    with _progress_bar(len(cases), "cases", True, 0) if progress else contextlib.nullcontext(None) as bar:
        for name, files in cases:
            r = predict_one(name, files)
            (log.error if r.status == "failed" else log.info)(r.line())
            results.append(r)
            if bar is not None:
                bar.update(1)
    return results
