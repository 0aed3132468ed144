"""Import of MONAI UNETR state dicts of every generation, and of the tutorial's (tamasino52) state dicts.

What each generation adds to the canonical MONAI 0.9–1.3 layout (which is ours for ``variant="paper"``):

- MONAI 0.6–0.8 (the official BTCV ``UNETR_model_best_acc.pth``): ``vit.patch_embedding.cls_token``, and a
  ``conv3`` and a ``norm3`` in every residual block, also where the input and output widths agree and they
  are built but never used (``norm3`` has keys only with batch norm: instance norm keeps no state).
- MONAI 1.4–1.5: a whole unused cross-attention per block (``cross_attn.*``, ``norm_cross_attn.*``).
- MONAI 1.6: ``norm_cross_attn.*`` per block (unused).

Every one of these keys is dead (it takes no part in the forward pass), so dropping it changes no output.
What the weights do not fix (the number of attention heads, the ROI of a non-cubic model) is reported by
:func:`infer_model_config` as an assumption, never silently.
Checkpoints may also be wrapped (``{"state_dict": ...}``, ``{"model": ...}``) and carry a ``module.``
(DataParallel/DDP) or ``backbone.`` prefix.
"""

from __future__ import annotations

import re
from typing import Dict, Mapping, Optional, Tuple

import torch

from unetr.errors import CheckpointError

StateDict = Dict[str, torch.Tensor]

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "weights")
_PREFIXES = ("module.", "backbone.", "model.", "_orig_mod.")
_DEAD = re.compile(r"(^vit\.patch_embedding\.cls_token$)|(\.cross_attn\.)|(\.norm_cross_attn\.)")


def unwrap_state_dict(obj: object) -> StateDict:
    """Find the tensor dict inside a loaded checkpoint and strip ``module.``/``backbone.`` prefixes."""
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError("the checkpoint holds no state dict (expected a dict of tensors, or one under "
                              f"one of the keys {', '.join(_WRAPPER_KEYS)})")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError("the checkpoint holds no tensors: it is not a model")
    changed = True
    while changed:  # prefixes can stack: module.backbone.vit...
        changed = False
        for p in _PREFIXES:
            if all(k.startswith(p) for k in tensors):
                tensors = {k[len(p):]: v for k, v in tensors.items()}
                changed = True
    return tensors


def detect_format(sd: Mapping[str, torch.Tensor]) -> str:
    """``monai`` (paper variant, any generation), ``tutorial`` (tamasino52 names) or ``unetr-tutorial`` (ours)."""
    if any(k.startswith("transformer.layer.") or k.startswith("transformer.embeddings.") for k in sd):
        return "tutorial"
    if any(k.startswith("decoder0_header.") for k in sd):
        return "unetr-tutorial"
    if any(k.startswith("vit.") for k in sd) and any(k.startswith("encoder1.") for k in sd):
        return "monai"
    raise CheckpointError("unrecognised checkpoint: its keys are neither a (MONAI) UNETR's nor the tutorial's "
                          f"(first keys: {', '.join(list(sd)[:5])})")


def tutorial_to_ours(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """Rename a tamasino52-style state dict to ours: ``transformer.*`` → ``vit.*``, q/k/v fused into ``qkv``."""
    out: StateDict = {}
    layer_keys: Dict[int, Dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        if k.startswith("transformer.embeddings.patch_embeddings."):
            out["vit.patch_embedding.patch_embeddings." + k.rsplit(".", 1)[1]] = v
        elif k == "transformer.embeddings.position_embeddings":
            out["vit.patch_embedding.position_embeddings"] = v
        elif k.startswith("transformer.encoder_norm."):
            out["vit.norm." + k.rsplit(".", 1)[1]] = v
        elif k.startswith("transformer.layer."):
            i, rest = k[len("transformer.layer."):].split(".", 1)
            layer_keys.setdefault(int(i), {})[rest] = v
        else:
            out[k] = v  # the decoder keeps the tutorial's names
    names = {"attention_norm": "norm1", "mlp_norm": "norm2", "attn.out": "attn.out_proj", "mlp.w_1": "mlp.linear1",
             "mlp.w_2": "mlp.linear2"}
    for i, keys in layer_keys.items():
        for part in ("weight", "bias"):
            qkv = [keys.pop(f"attn.{n}.{part}", None) for n in ("query", "key", "value")]
            if all(t is not None for t in qkv):
                out[f"vit.blocks.{i}.attn.qkv.{part}"] = torch.cat(qkv, dim=0)  # (3E, E): rows (qkv, head, d)
        for rest, v in keys.items():
            mod, part = rest.rsplit(".", 1)
            if mod not in names:
                out[f"transformer.layer.{i}.{rest}"] = v  # reported as unexpected
            else:
                out[f"vit.blocks.{i}.{names[mod]}.{part}"] = v
    return out


def dead_projections(sd: Mapping[str, torch.Tensor]) -> Tuple[str, ...]:
    """The residual blocks (key prefixes) whose ``conv3``/``norm3`` are built but unused: MONAI 0.6–0.8 made
    them in every residual block, and a block uses them only to project between different widths.

    A UNETR residual block has stride 1, so its projection is dead exactly when it maps C channels to C:
    a ``conv3`` weight of shape ``(C, C, 1, 1, 1)``.
    """
    dead = []
    for k, v in sd.items():
        if k.endswith(".conv3.conv.weight") and v.ndim == 5 and v.shape[0] == v.shape[1] and v.shape[2:] == (1, 1, 1):
            dead.append(k[: -len(".conv3.conv.weight")])
    return tuple(sorted(dead))


def clean_monai(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """Drop the dead keys of older and newer MONAI generations: ``cls_token``, cross-attention, and the
    unused ``conv3``/``norm3`` of same-width residual blocks (:func:`dead_projections`).

    A projection between different widths is used, so it is kept: loading a residual checkpoint into a
    plain-block model then fails on its keys instead of silently dropping the residual paths.
    """
    dead = tuple(p + s for p in dead_projections(sd) for s in (".conv3.", ".norm3."))
    return {k: v for k, v in sd.items() if not _DEAD.search(k) and not k.startswith(dead)}


def has_residual_blocks(sd: Mapping[str, torch.Tensor]) -> bool:
    """Whether a ``paper`` state dict has residual decoder blocks, decided from its keys.

    The up-sampling blocks (``decoder2``–``decoder5``) join a skip to the up-sampled features, so their conv
    block maps 2F channels to F: a residual one always carries the 1×1×1 projection ``conv3``, a plain one
    never does (whatever ``in_channels`` and ``feature_size`` are).
    """
    return any(re.match(r"decoder\d+\.conv_block\.conv3\.", k) for k in sd)


def cube_root(n: int) -> Optional[int]:
    """The integer whose cube is ``n``, or None when ``n`` is no cube."""
    g = round(n ** (1 / 3))
    return g if g**3 == n else None


def default_num_heads(hidden_size: int) -> int:
    """The head count assumed for weights that do not store it: MONAI's default of 12 where it divides the
    width, else heads of width 64 (the ViT convention), else one head."""
    if hidden_size % 12 == 0:
        return 12
    return hidden_size // 64 if hidden_size % 64 == 0 else 1


def infer_model_config(sd: Mapping[str, torch.Tensor]) -> Tuple[dict, Dict[str, str]]:
    """What the weights of a ``paper``/``tutorial`` UNETR (ours, MONAI's or the tutorial's names) say about
    its architecture, and what they cannot say.

    Returns:
        ``(kwargs, assumed)``: keyword arguments for :class:`unetr.config.ModelConfig`, and for each field
        the weights do not fix, the reason its value was taken. ``num_heads`` is never stored in weights;
        ``img_size`` is the cube of the position embedding's token count when that is a cube, and absent
        (in ``kwargs``) when it is not.

    Raises:
        CheckpointError: the state dict is not a UNETR's.
    """
    fmt = detect_format(sd)
    if fmt == "tutorial":
        sd = tutorial_to_ours(sd)
    sd = clean_monai(sd)
    kw: dict = {}
    assumed: Dict[str, str] = {}
    pe = sd.get("vit.patch_embedding.position_embeddings")
    if pe is None:
        raise CheckpointError("the checkpoint has no vit.patch_embedding.position_embeddings")
    n, hidden = int(pe.shape[1]), int(pe.shape[2])
    kw["hidden_size"] = hidden
    tutorial = fmt in ("tutorial", "unetr-tutorial")
    try:
        stem = sd["decoder0.0.block.0.block.weight" if tutorial else "encoder1.layer.conv1.conv.weight"]
    except KeyError as e:
        raise CheckpointError(f"the checkpoint has no {e.args[0]} (the decoder's first convolution)") from None
    kw["in_channels"] = int(stem.shape[1])
    w = sd.get("vit.patch_embedding.patch_embeddings.weight")
    if w is not None and w.ndim == 5:  # (E, C, P, P, P)
        kw.update(proj_type="conv", patch_size=int(w.shape[2]))
    elif "vit.patch_embedding.patch_embeddings.1.weight" in sd:
        width = int(sd["vit.patch_embedding.patch_embeddings.1.weight"].shape[1])  # P³·C
        patch = cube_root(width // kw["in_channels"]) if width % kw["in_channels"] == 0 else None
        if patch is None:
            raise CheckpointError(f"the perceptron patch embedding takes {width} values per patch, which is no "
                                  f"cube times the {kw['in_channels']} input channel(s)")
        kw.update(proj_type="perceptron", patch_size=patch)
    else:
        raise CheckpointError("the checkpoint has no patch embedding weights")
    g = cube_root(n)
    if g is not None:
        kw["img_size"] = (g * kw["patch_size"],) * 3
        assumed["img_size"] = (f"the position embedding's {n} tokens taken as a {g}×{g}×{g} patch grid; the weights "
                               "do not store the training ROI")
    else:
        assumed["img_size"] = (f"unknown: the position embedding's {n} tokens are no cube, and the weights do not "
                               "store the training ROI")
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"vit\.blocks\.(\d+)\.", k))}
    kw["num_layers"] = len(blocks)
    kw["mlp_dim"] = int(sd["vit.blocks.0.mlp.linear1.weight"].shape[0])
    kw["qkv_bias"] = "vit.blocks.0.attn.qkv.bias" in sd
    kw["num_heads"] = default_num_heads(hidden)
    assumed["num_heads"] = "not stored in weights; " + ("MONAI's default" if kw["num_heads"] == 12 else
                                                         f"heads of width {hidden // kw['num_heads']}")
    if tutorial:
        kw.update(variant="tutorial", out_channels=int(sd["decoder0_header.2.block.weight"].shape[0]),
                  mlp_act="relu", norm_eps=1e-6, norm="batch", skip_layers=_tutorial_skips(kw["num_layers"]))
        assumed["skip_layers"] = "the tutorial's: every quarter of the blocks"
        return kw, assumed
    kw["variant"] = "paper"
    kw["feature_size"] = int(stem.shape[0])
    kw["out_channels"] = int(sd["out.conv.conv.weight"].shape[0])
    kw["norm"] = "batch" if "encoder1.layer.norm1.running_mean" in sd else "instance"
    kw["conv_block"] = "encoder2.blocks.0.0.conv.weight" in sd
    kw["res_block"] = has_residual_blocks(sd)
    L = kw["num_layers"]
    if L == 12:
        kw["skip_layers"] = (4, 7, 10)  # MONAI's UNETR: the outputs of blocks 4, 7 and 10 (its indices 3, 6, 9)
    else:
        kw["skip_layers"] = tuple(max(1, round(L * f)) for f in (1 / 4, 1 / 2, 3 / 4))
        assumed["skip_layers"] = f"MONAI's UNETR has 12 blocks; for {L}, the quarter points"
    return kw, assumed


def _tutorial_skips(num_layers: int) -> Tuple[int, ...]:
    q = num_layers // 4
    return (q, 2 * q, 3 * q, num_layers)


def convert_state_dict(sd: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> StateDict:
    """Map a checkpoint's state dict onto a target model's keys (ours), dropping dead keys.

    Raises:
        CheckpointError: listing the missing keys, the unexpected keys and the wrong shapes.
    """
    fmt = detect_format(sd)
    if fmt == "tutorial":
        sd = tutorial_to_ours(sd)
    sd = clean_monai(sd)
    check_compatible(sd, target)
    return dict(sd)


def check_compatible(sd: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> None:
    missing = sorted(set(target) - set(sd))
    unexpected = sorted(set(sd) - set(target))
    shapes = sorted(f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(target[k].shape)}"
                    for k in set(sd) & set(target) if tuple(sd[k].shape) != tuple(target[k].shape))
    # Position embeddings of another ROI are resampled, not refused.
    shapes = [s for s in shapes if not s.startswith("vit.patch_embedding.position_embeddings:")]
    if missing or unexpected or shapes:
        parts = ["the checkpoint does not fit the model:"]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", shapes)):
            if items:
                shown = items[:12] + ([f"... and {len(items) - 12} more"] if len(items) > 12 else [])
                parts.append(f"  {title} ({len(items)}): " + ", ".join(shown))
        raise CheckpointError("\n".join(parts))
