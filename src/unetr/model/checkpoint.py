"""Saving and loading models: our run directories, safetensors files, and MONAI/tutorial ``.pt``/``.pth`` files.

Nothing here executes code from a file: safetensors holds only tensors, and ``.pt``/``.pth`` files are read
with ``torch.load(weights_only=True)``, which refuses pickles that would construct arbitrary objects.

Our safetensors files describe themselves: their metadata holds one key, ``unetr``, whose JSON value is
``{"format": "unetr-run", "model": <ModelConfig>}`` (one key, because safetensors writes several in no fixed
order and a file would then differ from run to run), so a ``model.safetensors`` copied out of its run
directory loads as the same network, and its ``img_size`` is the ROI it was trained at. Only weights without a stored config (MONAI's,
the tutorial's) have their architecture read from the tensors, and then every setting is logged, the
assumed ones marked as such (:func:`unetr.model.convert.infer_model_config`).
"""

from __future__ import annotations

import json
import logging
import math
import pickle
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from unetr.config import ModelConfig
from unetr.errors import CheckpointError
from unetr.fsutil import atomic_path, atomic_write_text
from unetr.model.convert import convert_state_dict, cube_root, infer_model_config, unwrap_state_dict
from unetr.model.unetr import UNETR
from unetr.model.vit import resample_position_embedding

log = logging.getLogger(__name__)

RUN_FORMAT = "unetr-run"
RUN_VERSION = 1
METADATA_KEY = "unetr"
PathLike = Union[str, Path]
_RUN_SETTINGS = ("img_size", "dropout", "checkpointing")  # how a model runs, not which weights it has


def build_model(config: ModelConfig, *, channels_last: bool = True) -> UNETR:
    """The one bridge from a :class:`ModelConfig` to a :class:`UNETR` module."""
    return UNETR(**config.to_dict(), channels_last=channels_last)


def save_safetensors(path: PathLike, model_or_state: Union[nn.Module, Dict[str, torch.Tensor]],
                     metadata: Optional[Dict[str, str]] = None, *, config: Optional[ModelConfig] = None) -> None:
    """Write the (unwrapped) model's state dict to a safetensors file, atomically.

    Args:
        path: the file.
        model_or_state: a module (DDP-wrapped or not) or a state dict.
        metadata: string pairs stored in the file's header.
        config: the model's config, stored in the header (key ``unetr``) so that :func:`load_model` builds the
            network from it instead of reading it from the tensors.
    """
    from safetensors.torch import save_file

    if isinstance(model_or_state, nn.Module):
        sd = getattr(model_or_state, "module", model_or_state).state_dict()  # DDP unwrapped
    else:
        sd = model_or_state
    metadata = dict(metadata or {})
    if config is not None:
        metadata[METADATA_KEY] = json.dumps({"format": RUN_FORMAT, "model": config.to_dict()})
    sd = {k: v.detach().contiguous().cpu() for k, v in sd.items()}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(sd, str(tmp), metadata=metadata)


def save_run(run_dir: PathLike, model: nn.Module, config: ModelConfig, plan: Optional[dict] = None,
             extra: Optional[dict] = None) -> Path:
    """Write ``model.safetensors`` (with the model config in its metadata) and ``config.json`` (model config,
    plan, extra) into a run directory."""
    run_dir = Path(run_dir)
    save_safetensors(run_dir / "model.safetensors", model, config=config)
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


def read_metadata(path: PathLike) -> Dict[str, str]:
    """The string pairs in a safetensors file's header (empty for other files and for none)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return {}
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def stored_model_config(path: PathLike) -> Optional[Dict[str, Any]]:
    """The model config stored in a safetensors file written by this package, or None for bare weights."""
    meta = read_metadata(path)
    if METADATA_KEY not in meta:
        return None
    try:
        doc = json.loads(meta[METADATA_KEY])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: the model config in the file's metadata is not JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != RUN_FORMAT or not isinstance(doc.get("model"), dict):
        raise CheckpointError(f"{path}: the file's metadata holds no {RUN_FORMAT} model config")
    return doc["model"]


def load_weights(model: UNETR, state: Dict[str, torch.Tensor], source: str = "checkpoint", *,
                 trained_img_size: Optional[Sequence[int]] = None) -> UNETR:
    """Load a (MONAI, tutorial or our) state dict into ``model``; dead keys dropped, the position embedding
    resampled when the model's ROI is not the one the weights were trained at.

    Args:
        model: the network to fill.
        state: its weights, in any layout :func:`unetr.model.convert.convert_state_dict` reads.
        source: names the weights in messages.
        trained_img_size: the ROI the weights were trained at (a run's stored ``img_size``). The position
            embedding is resampled from its patch grid, whatever its token count. When omitted, the weights
            are taken as trained at the model's ROI if the token counts agree, else on a cubic grid.

    Raises:
        CheckpointError: the weights do not fit the model, or their training grid cannot be known.
    """
    target = model.state_dict()
    try:
        sd = convert_state_dict(state, target)
    except CheckpointError as e:
        raise CheckpointError(f"{source}: {e}") from None
    key = "vit.patch_embedding.position_embeddings"
    patch = model.vit.patch_embedding
    grid_to = patch.grid
    n_from = int(sd[key].shape[1])
    if trained_img_size is not None:
        grid_from = tuple(int(s) // patch.patch_size for s in trained_img_size)
        if math.prod(grid_from) != n_from:
            raise CheckpointError(f"{source}: the position embedding holds {n_from} tokens, not the "
                                  f"{'×'.join(map(str, grid_from))} patch grid of its training ROI "
                                  f"{tuple(trained_img_size)}")
    elif n_from == math.prod(grid_to):
        grid_from = grid_to
    else:
        g = cube_root(n_from)
        if g is None:
            raise CheckpointError(f"{source}: the position embedding holds {n_from} tokens, which is no cube: "
                                  "give the ROI the weights were trained at (img_size)")
        grid_from = (g, g, g)
    sd[key] = resample_position_embedding(sd[key], grid_from, grid_to)
    model.load_state_dict(sd, strict=True)
    return model


def load_model(path: PathLike, *, map_location: Union[str, torch.device] = "cpu",
               **overrides: Any) -> Tuple[UNETR, Dict[str, Any]]:
    """Load a model from a run directory, a safetensors file or a MONAI/tutorial ``.pt``/``.pth`` file.

    The architecture comes from the config stored with the weights (the safetensors metadata, else the run's
    ``config.json``); only bare weights have it read from their tensors, with every setting logged and the
    ones the tensors cannot fix (``num_heads``, a non-cubic ``img_size``) marked as assumed.

    Args:
        path: a run directory (``config.json`` + ``model.safetensors``) or a checkpoint file.
        map_location: device of the returned model.
        **overrides: :class:`ModelConfig` fields to set. ``img_size`` is the ROI to run at: the position
            embedding is resampled from the stored training ROI (for bare weights: from ``img_size`` itself
            when the token counts agree, else from the cube of the token count). For bare weights the
            others (``num_heads=...``, ``res_block=...``) replace what would be read or assumed.

    Returns:
        ``(model, info)``: the model in eval mode and a dict with ``model`` (the ModelConfig as a dict),
        ``trained_img_size``, ``plan`` (or ``None``), ``source`` (``unetr``, ``monai`` or ``tutorial``) and
        ``config`` (the run's ``config.json``, or ``{}``).

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
    stored = stored_model_config(weights)
    if stored is not None and isinstance(doc.get("model"), dict) and doc["model"] != stored:
        log.warning("%s: config.json describes another model than the one stored with the weights; using the "
                    "weights' own", path)
    stored = stored if stored is not None else doc.get("model")
    if stored is not None:
        try:
            trained = ModelConfig.from_dict(stored)
            cfg = trained.replace(**overrides)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: bad model config: {e}") from None
        was = trained.to_dict()
        changed = {k: v for k, v in cfg.to_dict().items() if k not in _RUN_SETTINGS and v != was[k]}
        if changed:
            log.warning("%s: overriding the stored model config: %s", path,
                        ", ".join(f"{k}={v} (stored {was[k]})" for k, v in changed.items()))
        source = "unetr"
    else:
        trained, cfg = _bare_config(state, overrides, str(path))
        source = "monai" if cfg.variant == "paper" else "tutorial"
    model = load_weights(build_model(cfg), state, source=str(path), trained_img_size=trained.img_size)
    model.to(map_location).eval()
    return model, {"model": cfg.to_dict(), "trained_img_size": list(trained.img_size), "plan": doc.get("plan"),
                   "source": source, "config": doc}


def _bare_config(state: Dict[str, torch.Tensor], overrides: Dict[str, Any], source: str
                 ) -> Tuple[ModelConfig, ModelConfig]:
    """``(the config the weights were trained with, the config to build)`` for weights without a stored
    config: read from the tensors, overridden by ``overrides``; every setting is logged with its origin."""
    try:
        kw, assumed = infer_model_config(state)
    except CheckpointError as e:
        raise CheckpointError(f"{source}: {e}") from None
    given = dict(overrides)
    run_at = given.pop("img_size", None)
    n = int(state_tokens(state))
    if run_at is not None:
        run_at = tuple(int(s) for s in (run_at if isinstance(run_at, (list, tuple)) else (run_at,) * 3))
        patch = int(given.get("patch_size", kw["patch_size"]))
        if math.prod(s // patch for s in run_at) == n:  # the weights fit this ROI as they are
            kw["img_size"] = run_at
            assumed["img_size"] = f"taken as the ROI given, whose patch grid holds the position embedding's {n} tokens"
    if "img_size" not in kw:
        raise CheckpointError(f"{source}: the position embedding holds {n} tokens, which is no cube and not the "
                              "patch grid of the ROI given: give the ROI the weights were trained at (img_size, "
                              "--roi)")
    try:
        trained = ModelConfig(**{**kw, **given})
        cfg = trained.replace(img_size=run_at) if run_at is not None else trained
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: cannot build a model for these weights: {e}") from None
    log.info("%s", describe_bare_config(source, trained, kw, assumed, given))
    if cfg.img_size != trained.img_size:
        log.info("%s: the position embedding is resampled from ROI %s to %s", source, trained.img_size, cfg.img_size)
    return trained, cfg


def state_tokens(state: Dict[str, torch.Tensor]) -> int:
    """The number of tokens of a state dict's position embedding (any supported layout)."""
    for key in ("vit.patch_embedding.position_embeddings", "transformer.embeddings.position_embeddings"):
        if key in state:
            return int(state[key].shape[1])
    raise CheckpointError("the checkpoint has no position embedding")


def describe_bare_config(source: str, cfg: ModelConfig, read: Dict[str, Any], assumed: Dict[str, str],
                         given: Dict[str, Any]) -> str:
    """Every setting of a model built for bare weights, one line each, with where it came from: ``weights``
    (fixed by the tensors), ``assumed`` (with why; override it if wrong), ``given`` or ``default``."""
    kind = "MONAI" if cfg.variant == "paper" else "tutorial"
    lines = [f"{source}: {kind} weights without a stored model config; the network is built with:"]
    for name, value in cfg.to_dict().items():
        shown = tuple(value) if isinstance(value, list) else value
        if name in given:
            origin = "given"
        elif name in assumed:
            origin = f"assumed: {assumed[name]} (set {name} if it differs)"
        elif name in read:
            origin = "read from the weights"
        else:
            origin = "default"
        lines.append(f"  {name:<13} {str(shown):<15} {origin}")
    return "\n".join(lines)


def _read_json(path: Path) -> Dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable config ({e})") from None
