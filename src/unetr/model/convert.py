"""Import of MONAI UNETR state dicts of every generation, and of the tutorial's (tamasino52) state dicts.

What each generation adds to the canonical MONAI 0.9–1.3 layout (which is ours for ``variant="paper"``):

- MONAI ≤ 0.8 (the official BTCV ``UNETR_model_best_acc.pth``): ``vit.patch_embedding.cls_token`` and a
  ``conv3`` in residual blocks whose input and output widths agree (built but never used).
- MONAI 1.4–1.5: a whole unused cross-attention per block (``cross_attn.*``, ``norm_cross_attn.*``).
- MONAI 1.6: ``norm_cross_attn.*`` per block (unused).

Every one of these keys is dead (it takes no part in the forward pass), so dropping it changes no output.
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


def clean_monai(sd: Mapping[str, torch.Tensor], expected: Optional[Mapping[str, torch.Tensor]] = None) -> StateDict:
    """Drop the dead keys of older/newer MONAI generations.

    A ``conv3`` key is dropped only when the target model has no such key (the blocks where MONAI ≤ 0.8 built
    it without using it); with ``expected=None`` every ``conv3`` of a same-width block is kept.
    """
    out = {}
    for k, v in sd.items():
        if _DEAD.search(k):
            continue
        if expected is not None and ".conv3." in k and k not in expected:
            continue
        out[k] = v
    return out


def infer_model_kwargs(sd: Mapping[str, torch.Tensor]) -> dict:
    """Read what the weights fix about a ``paper``/``tutorial`` architecture (ours or MONAI's names).

    Returns keyword arguments for :class:`unetr.config.ModelConfig`; ``num_heads`` and the exact ``img_size``
    of non-cubic models cannot be read from weights (cubic ``img_size`` is read from the position embedding,
    heads default to 12 for E=768 and E/64 otherwise).
    """
    fmt = detect_format(sd)
    if fmt == "tutorial":
        sd = tutorial_to_ours(sd)
    sd = clean_monai(sd)
    kw: dict = {}
    pe = sd.get("vit.patch_embedding.position_embeddings")
    if pe is None:
        raise CheckpointError("the checkpoint has no vit.patch_embedding.position_embeddings")
    n, hidden = pe.shape[1], pe.shape[2]
    kw["hidden_size"] = int(hidden)
    if "vit.patch_embedding.patch_embeddings.weight" in sd and sd["vit.patch_embedding.patch_embeddings.weight"].ndim == 5:
        w = sd["vit.patch_embedding.patch_embeddings.weight"]  # (E, C, P, P, P)
        kw.update(proj_type="conv", in_channels=int(w.shape[1]), patch_size=int(w.shape[2]))
    elif "vit.patch_embedding.patch_embeddings.1.weight" in sd:
        w = sd["vit.patch_embedding.patch_embeddings.1.weight"]  # (E, P³ C)
        patch = 16
        kw.update(proj_type="perceptron", patch_size=patch, in_channels=int(w.shape[1]) // patch**3)
    else:
        raise CheckpointError("the checkpoint has no patch embedding weights")
    g = round(n ** (1 / 3))
    if g**3 == n:
        kw["img_size"] = (g * kw["patch_size"],) * 3
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"vit\.blocks\.(\d+)\.", k))}
    kw["num_layers"] = len(blocks)
    kw["mlp_dim"] = int(sd["vit.blocks.0.mlp.linear1.weight"].shape[0])
    kw["qkv_bias"] = "vit.blocks.0.attn.qkv.bias" in sd
    kw["num_heads"] = 12 if hidden == 768 else max(1, hidden // 64)
    if fmt in ("tutorial", "unetr-tutorial"):
        kw.update(variant="tutorial", out_channels=int(sd["decoder0_header.2.block.weight"].shape[0]),
                  in_channels=int(sd["decoder0.0.block.0.block.weight"].shape[1]), mlp_act="relu", norm_eps=1e-6,
                  norm="batch", skip_layers=_tutorial_skips(kw["num_layers"]))
        return kw
    kw["variant"] = "paper"
    kw["feature_size"] = int(sd["encoder1.layer.conv1.conv.weight"].shape[0])
    kw["out_channels"] = int(sd["out.conv.conv.weight"].shape[0])
    kw["norm"] = "batch" if "encoder1.layer.norm1.running_mean" in sd else "instance"
    kw["conv_block"] = "encoder2.blocks.0.0.conv.weight" in sd
    # A residual stem has a 1×1×1 projection whenever its widths differ; a plain one never has.
    kw["res_block"] = "encoder1.layer.conv3.conv.weight" in sd or kw["in_channels"] == kw["feature_size"]
    L = kw["num_layers"]
    kw["skip_layers"] = (4, 7, 10) if L == 12 else tuple(max(1, round(L * f)) for f in (1 / 4, 1 / 2, 3 / 4))
    return kw


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
    sd = clean_monai(sd, expected=target)
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
