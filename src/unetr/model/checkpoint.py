"""Saving and loading models: our run directories, safetensors files, and MONAI/tutorial ``.pt``/``.pth`` files.

Nothing here executes code from a file: safetensors holds only tensors, and ``.pt``/``.pth`` files are read
with ``torch.load(weights_only=True)``, which refuses pickles that would construct arbitrary objects.
"""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch
from torch import nn

from unetr.config import ModelConfig
from unetr.errors import CheckpointError
from unetr.fsutil import atomic_path, atomic_write_text
from unetr.model.convert import convert_state_dict, infer_model_kwargs, unwrap_state_dict
from unetr.model.unetr import UNETR
from unetr.model.vit import resample_position_embedding

log = logging.getLogger(__name__)

RUN_FORMAT = "unetr-run"
RUN_VERSION = 1
PathLike = Union[str, Path]


def build_model(config: ModelConfig, *, channels_last: bool = True) -> UNETR:
    """The one bridge from a :class:`ModelConfig` to a :class:`UNETR` module."""
    return UNETR(**config.to_dict(), channels_last=channels_last)


def save_safetensors(path: PathLike, model_or_state: Union[nn.Module, Dict[str, torch.Tensor]],
                     metadata: Optional[Dict[str, str]] = None) -> None:
    """Write the (unwrapped) model's state dict to a safetensors file, atomically."""
    from safetensors.torch import save_file

    sd = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    sd = {k: v.detach().contiguous().cpu() for k, v in sd.items()}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(sd, str(tmp), metadata=metadata)


def save_run(run_dir: PathLike, model: nn.Module, config: ModelConfig, plan: Optional[dict] = None,
             extra: Optional[dict] = None) -> Path:
    """Write ``model.safetensors`` and ``config.json`` (model config, plan, extra) into a run directory."""
    run_dir = Path(run_dir)
    model = getattr(model, "module", model)  # DDP
    save_safetensors(run_dir / "model.safetensors", model, metadata={"format": RUN_FORMAT})
    doc: Dict[str, Any] = {"format": RUN_FORMAT, "version": RUN_VERSION, "model": config.to_dict()}
    if plan is not None:
        doc["plan"] = plan
    doc.update(extra or {})
    atomic_write_text(run_dir / "config.json", json.dumps(doc, indent=2) + "\n")
    return run_dir


def read_checkpoint(path: PathLike) -> Dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` or ``.pt``/``.pth``/``.bin`` file, unwrapped; never runs code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines()]
        detail = " ".join(ln for ln in lines if "GLOBAL" in ln or ln.startswith("Unsupported"))
        if "GLOBAL" in detail:
            raise CheckpointError(f"{path}: refused: the file holds objects other than tensors and plain values, "
                                  f"and loading them could run code ({detail.strip()[:200]})") from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({detail.strip()[:200]})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({str(e).splitlines()[0][:200]})") from None
    try:
        return unwrap_state_dict(obj)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None


def load_weights(model: UNETR, state: Dict[str, torch.Tensor], source: str = "checkpoint") -> UNETR:
    """Load a (MONAI, tutorial or our) state dict into ``model``; dead keys dropped, ROI differences resampled."""
    target = model.state_dict()
    try:
        sd = convert_state_dict(state, target)
    except CheckpointError as e:
        raise CheckpointError(f"{source}: {e}") from None
    key = "vit.patch_embedding.position_embeddings"
    if sd[key].shape != target[key].shape:
        n_from = sd[key].shape[1]
        g = round(n_from ** (1 / 3))
        if g**3 != n_from:
            raise CheckpointError(f"{source}: position embedding of {n_from} tokens is not a cube; give img_size")
        sd[key] = resample_position_embedding(sd[key], (g, g, g), model.vit.patch_embedding.grid)
    model.load_state_dict(sd, strict=True)
    return model


def load_model(path: PathLike, *, map_location: Union[str, torch.device] = "cpu",
               **overrides: Any) -> Tuple[UNETR, Dict[str, Any]]:
    """Load a model from a run directory, a safetensors file or a MONAI/tutorial ``.pt``/``.pth`` file.

    Args:
        path: a run directory (``config.json`` + ``model.safetensors``) or a checkpoint file.
        map_location: device of the returned model.
        **overrides: :class:`ModelConfig` fields to set (``img_size=(96, 96, 96)``, ``num_heads=...``); for bare
            checkpoints the rest is read from the weights.

    Returns:
        ``(model, info)``: the model in eval mode and a dict with ``model`` (the ModelConfig as a dict),
        ``plan`` (or ``None``) and ``source``.

    Example:
        >>> model, info = load_model("runs/spleen")  # doctest: +SKIP
    """
    path = Path(path)
    doc: Dict[str, Any] = {}
    if path.is_dir():
        cfg_path, weights = path / "config.json", path / "model.safetensors"
        if not cfg_path.is_file() or not weights.is_file():
            raise CheckpointError(f"{path}: not a run directory (needs config.json and model.safetensors)")
        doc = _read_json(cfg_path)
    else:
        weights = path
        side = path.parent / "config.json"
        if path.suffix == ".safetensors" and side.is_file():
            doc = _read_json(side)
    state = read_checkpoint(weights)
    if "model" in doc:
        try:
            cfg = ModelConfig.from_dict({**doc["model"], **overrides})
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: bad model config: {e}") from None
        source = "unetr"
    else:
        kw = infer_model_kwargs(state)
        kw.update(overrides)
        try:
            cfg = ModelConfig(**kw)
        except ValueError as e:
            raise CheckpointError(f"{path}: cannot build a model for this checkpoint: {e}") from None
        source = "monai" if kw.get("variant") == "paper" else "tutorial"
    model = load_weights(build_model(cfg), state, source=str(path))
    model.to(map_location).eval()
    return model, {"model": cfg.to_dict(), "plan": doc.get("plan"), "source": source, "config": doc}


def _read_json(path: Path) -> Dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable config ({e})") from None
