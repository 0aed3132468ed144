"""Export a trained model to ONNX or TorchScript, and check that the export computes what PyTorch does; or
write the one-file model package (``zip``) that ``unetr predict -m`` reads on another machine.

The exported graph takes one window ``(B, C, *roi)`` and returns logits ``(B, K, *roi)``; the sliding
window, pre- and post-processing stay outside: the run's ``config.json`` (model and plan) is written beside
the export as ``<export file name>.json`` (``model.onnx`` -> ``model.onnx.json``; each export of a run has its
own, so the ONNX and the TorchScript exports of one run can sit side by side). Export writes only these two files
and replaces neither when it exists, unless asked to (``overwrite``); it never replaces the run's own files. ONNX needs the optional extra ``unetr[export]`` (onnx, onnxruntime) for the check.

The ``zip`` format (:mod:`unetr.package`) holds every member of a run or a folder of folds (safetensors),
the plan, the class names, the post-processing, the versions and a checksum of each member; after writing,
each member is read back through its checksum and compared with the source weights, tensor by tensor.

Example:
    >>> export_model("runs/spleen", format="onnx")   # doctest: +SKIP
    ExportResult(path=PosixPath('runs/spleen/model.onnx'), max_abs_diff=2.1e-06, ...)
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple, Union

import torch

from unetr.errors import UnetrError
from unetr.fsutil import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
FORMATS = ("onnx", "torchscript", "zip")


@dataclass(frozen=True)
class ExportResult:
    """The exported file and how far its outputs are from PyTorch's on a random window."""

    path: Path
    format: str
    max_abs_diff: float
    max_abs_logit: float


def _export_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path, opset: int) -> bool:
    """Export with a dynamic batch axis when the graph allows it, else with the example's fixed batch.

    Returns:
        True when the batch axis is dynamic.
    """

    def export(dynamic: bool) -> None:
        kwargs = dict(input_names=["image"], output_names=["logits"], opset_version=opset)
        if dynamic:
            kwargs["dynamic_axes"] = {"image": {0: "batch"}, "logits": {0: "batch"}}
        try:
            torch.onnx.export(model, (example,), str(path), dynamo=False, **kwargs)
        except TypeError:  # torch versions without the `dynamo` switch
            torch.onnx.export(model, (example,), str(path), **kwargs)

    try:
        export(dynamic=True)
        return True
    except Exception as e:  # noqa: BLE001 - the exporter raises many types; a static graph often still works
        log.warning("ONNX export with a dynamic batch failed (%s); exporting with batch %d", str(e).splitlines()[0][:120],
                    example.shape[0])
        export(dynamic=False)
        return False


def _run_onnx(path: Path, example: torch.Tensor) -> torch.Tensor:
    try:
        import onnxruntime as ort
    except ImportError:
        raise UnetrError("checking an ONNX export needs onnxruntime: pip install 'unetr[export]' "
                         "(or pass --no-check)") from None
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = sess.run(["logits"], {"image": example.numpy()})
    return torch.from_numpy(out)


def config_path_for(export: PathLike) -> Path:
    """The ``.json`` written beside an export: ``model.onnx`` -> ``model.onnx.json`` (the whole file name: two
    exports of one run never share it, as ``model.onnx`` and ``model.torchscript.pt`` did ``model.json``)."""
    export = Path(export)
    return export.with_name(export.name + ".json")


def export_model(
    model_path: PathLike,
    out: Optional[PathLike] = None,
    *,
    format: str = "onnx",
    check: bool = True,
    atol: float = 1e-3,
    opset: int = 17,
    batch: int = 2,
    overwrite: bool = False,
) -> ExportResult:
    """Export the model of a run directory (or checkpoint) and check the export against PyTorch.

    Args:
        model_path: a run directory or a checkpoint file (see :func:`unetr.model.load_model`).
        out: the file to write (default ``<run>/model.onnx`` or ``<run>/model.torchscript.pt``).
        format: ``onnx`` or ``torchscript``.
        check: run the export (onnxruntime / ``torch.jit.load``) on a random ``(batch, C, *roi)`` window and
            compare with the PyTorch model; a difference above ``atol`` raises and leaves no file.
        atol: the largest absolute difference of the logits accepted.
        opset: the ONNX opset.
        batch: windows in the check (a batch of 2 also checks the dynamic batch axis of ONNX; when the model's
            graph cannot have a dynamic batch, the ONNX file takes batch 1 and the check uses 1).
        overwrite: replace an existing export and its ``.json`` (never the run's own files).

    Returns:
        An :class:`ExportResult`.

    Raises:
        ValueError: unknown format. UnetrError: the export's outputs differ from PyTorch's.
    """
    from unetr.model import load_model

    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if format == "zip":
        return export_package(model_path, out, overwrite=overwrite, check=check)
    model_path = Path(model_path)
    model, info = load_model(model_path, map_location="cpu")
    model.eval()
    if hasattr(model, "channels_last"):  # layout switches do not trace to ONNX; the maths is the same
        model.channels_last = False
    cfg = info["model"]
    roi = tuple(int(s) for s in cfg["img_size"])
    base = model_path if model_path.is_dir() else model_path.parent
    target, sidecar = _export_paths(model_path, base, out, format, overwrite)
    g = torch.Generator().manual_seed(0)
    trace_input = torch.randn((1, int(cfg["in_channels"])) + roi, generator=g)
    check_input = torch.randn((batch, int(cfg["in_channels"])) + roi, generator=g)
    with atomic_path(target, target.suffix) as tmp:
        with torch.no_grad():
            if not _write_export(model, trace_input, tmp, format, opset):
                check_input = check_input[:1]  # the graph's batch is fixed at 1
            diff, scale = float("nan"), float("nan")
            if check:
                diff, scale = _check_export(model, tmp, check_input, format, atol)
    cfg_src = base / "config.json"
    doc = json.loads(cfg_src.read_text()) if cfg_src.is_file() else {"model": cfg}
    atomic_write_text(sidecar, json.dumps({**doc, "export": {"format": format, "file": target.name}}, indent=2) + "\n")
    log.debug("wrote %s (%s); max |export - PyTorch| = %.3g on logits up to %.3g", target, format, diff, scale)
    return ExportResult(target, format, diff, scale)


def _export_paths(model_path: Path, base: Path, out: Optional[PathLike], format: str,
                  overwrite: bool) -> Tuple[Path, Path]:
    """The export's file and its ``.json``, refused when either is one of the model's own files, or exists
    (unless ``overwrite``)."""
    target = Path(out) if out is not None else base / ("model.onnx" if format == "onnx" else "model.torchscript.pt")
    sidecar = config_path_for(target)
    protected = {p.resolve() for p in (base / "config.json", base / "model.safetensors", base / "last.pt", model_path)}
    for path in (target, sidecar):
        if path.resolve() in protected:
            raise UnetrError(f"{path}: this is the model's own file; export to another name (-o)")
        if path.exists() and not overwrite:
            raise UnetrError(f"{path}: exists; export elsewhere or add --overwrite to replace it")
    return target, sidecar


def _write_export(model: torch.nn.Module, example: torch.Tensor, path: Path, format: str, opset: int) -> bool:
    """Write ``model`` traced on ``example`` to ``path`` as ONNX or TorchScript.

    Returns:
        True when the export's batch axis is dynamic (always for TorchScript; see :func:`_export_onnx`).
    """
    with warnings.catch_warnings():
        # What the tracer warns of is what the export is: a graph for windows of the traced size (the
        # model's input checks and layout branch are fixed for it; the check below runs the export), and
        # instance norms that use each window's statistics in eval mode too, as the model does.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*TrainingMode\.EVAL, but operator 'instance_norm'")
        if format == "onnx":
            return _export_onnx(model, example, path, opset)
        traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, str(path))
    return True


def _check_export(model: torch.nn.Module, path: Path, example: torch.Tensor, format: str,
                  atol: float) -> Tuple[float, float]:
    """Run the export at ``path`` and ``model`` on ``example``: ``(max |export - PyTorch|, max |PyTorch|)`` of
    the logits.

    Raises:
        UnetrError: another output shape, or a difference above ``atol``.
    """
    ref = model(example)
    if format == "onnx":
        got = _run_onnx(path, example)
    else:
        got = torch.jit.load(str(path), map_location="cpu")(example)
    if got.shape != ref.shape:
        raise UnetrError(f"the {format} export returns shape {tuple(got.shape)}, PyTorch {tuple(ref.shape)}")
    diff = float((got - ref).abs().max())
    scale = float(ref.abs().max())
    if not diff <= atol:
        raise UnetrError(f"the {format} export differs from PyTorch by up to {diff:.3g} (> {atol})")
    return diff, scale


def export_package(model_path: PathLike, out: Optional[PathLike] = None, *, overwrite: bool = False,
                   check: bool = True) -> ExportResult:
    """Write a run or a folder of folds as one package (:func:`unetr.package.write_package`).

    Args:
        model_path: a run directory or a folder of folds.
        out: the zip (default ``<model_path>/<folder name>.unetr.zip``).
        overwrite: replace an existing package.
        check: read every member back from the zip (through its checksum) and compare it with the source
            weights; a difference raises and leaves no file.

    Returns:
        An :class:`ExportResult` (``max_abs_diff``: the largest difference of any weight, 0 when exact).
    """
    from safetensors.torch import load

    from unetr.package import open_model, read_package, write_package

    source = open_model(model_path)
    base = Path(model_path)
    target = Path(out) if out is not None else base / f"{base.resolve().name}.unetr.zip"
    write_package(target, [source], overwrite=overwrite)
    diff = 0.0
    if check:
        try:
            for a, b in zip(source.members, read_package(target).members):
                sa, sb = load(a.read_bytes()), load(b.read_bytes())
                if sa.keys() != sb.keys():
                    raise UnetrError(f"{target}: member {b.name} holds other tensors than {a.name}")
                diff = max([diff] + [float((sa[k].float() - sb[k].float()).abs().max()) for k in sa if sa[k].numel()])
            if diff != 0.0:
                raise UnetrError(f"{target}: the packaged weights differ from the run's by up to {diff:.3g}")
        except BaseException:
            target.unlink(missing_ok=True)
            raise
    log.debug("wrote %s: %d member(s)%s", target, len(source.members), ", checked" if check else "")
    return ExportResult(target, "zip", diff if check else float("nan"), float("nan"))


__all__ = ["export_model", "export_package", "ExportResult", "FORMATS"]
