"""What a model is (``unetr info``): architecture, input and preprocessing, classes, members, post-processing,
cross-validation figures and versions, read from a run, a folder of folds, a package or a checkpoint without
running anything.

Example:
    >>> print(describe_model("runs/spleen"))   # doctest: +SKIP
    model: runs/spleen (run directory)
    ...
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import torch

from unetr.config import ModelConfig

PathLike = Union[str, Path]


def _params(model_cfg: dict) -> int:
    from unetr.model import build_model

    with torch.device("meta"):
        return sum(p.numel() for p in build_model(ModelConfig.from_dict(model_cfg)).parameters())


def _architecture(m: dict) -> str:
    if m.get("variant") == "tutorial":
        head = "UNETR (tutorial variant)"
    else:
        head = (f"UNETR (paper variant), {m['norm']} norm, {'residual' if m['res_block'] else 'plain'} decoder blocks, "
                f"feature size {m['feature_size']}")
    return (f"{head}; ViT hidden {m['hidden_size']}, {m['num_layers']} layers, {m['num_heads']} heads, MLP "
            f"{m['mlp_dim']}, patch {m['patch_size']}, skips {tuple(m['skip_layers'])}; {_params(m) / 1e6:.2f}M "
            "parameters")


def describe_model(path: PathLike) -> str:
    """What a model is (``unetr info``): architecture, input and preprocessing, classes, members,
    post-processing, cross-validation figures and versions (a package's), read without running anything.

    Args:
        path: a run directory, a folder of folds, a package, or a checkpoint file.
    """
    from unetr.package import is_package, open_model, shared_plan

    p = Path(path)
    if p.is_file() and not is_package(p):
        from unetr.model import load_model

        _, info = load_model(p)
        lines = [f"model: {p} (checkpoint from {info['source']})", f"architecture: {_architecture(info['model'])}",
                 f"input: {info['model']['in_channels']} channel(s), ROI {tuple(info['model']['img_size'])}; "
                 f"{info['model']['out_channels']} outputs"]
        if info.get("plan"):
            lines.append(f"classes: {list(info['plan']['class_names'])}")
        return "\n".join(lines)
    src = open_model(p)
    plan = shared_plan(src.members)
    kinds = {"run": "run directory", "folds": f"folder of {len(src.members)} folds", "package": "package"}
    lines = [f"model: {p} ({kinds[src.kind]})"]
    archs = sorted({_architecture(m.model) for m in src.members})
    lines += [f"architecture: {a}" for a in archs]
    lines.append(f"input: {plan['in_channels']} channel(s) {list(plan['channel_names'])}, spacing "
                 f"{' x '.join(f'{v:g}' for v in plan['target_spacing'])} mm, intensity {plan['intensity']}"
                 + (f" window {tuple(plan['window'])}" if plan['intensity'] == "ct_window" else "")
                 + f", geometry {plan['geometry']}, crop to the body: {'yes' if plan['crop_foreground'] else 'no'}")
    lines.append("classes: " + ", ".join(f"{i} {n}" for i, n in enumerate(plan["class_names"])))
    lines.append(f"members ({len(src.members)}): " + ", ".join(
        f"{m.name} (ROI {'x'.join(str(r) for r in m.model['img_size'])}"
        + (f", sha256 {m.sha256[:12]}" if m.sha256 else "")
        + (f", {m.weights.name}" if m.weights is not None else "") + ")" for m in src.members))
    if src.postprocessing:
        from unetr.inference.postprocess import PostProcessing

        pp = PostProcessing.from_dict(src.postprocessing)
        after = pp.record.get("dice_after", {}).get("mean")
        before = pp.record.get("dice_before", {}).get("mean")
        lines.append(f"post-processing: {pp.describe(plan['class_names'])}"
                     + (f" (cross-validated mean Dice {before} -> {after})" if before is not None else ""))
    else:
        lines.append("post-processing: none decided (unetr cv decides it)")
    if src.cv:
        classes = src.cv.get("classes", {})
        per = ", ".join(f"{n} {v['dice']['mean']:.3f}" for n, v in classes.items() if v["dice"]["mean"] is not None)
        mean = src.cv.get("mean_dice")
        lines.append(f"cross-validation: mean Dice {mean if mean is None else round(mean, 4)} over "
                     f"{src.cv.get('cases')} case(s) ({per})")
    if src.versions:
        lines.append("made with: " + ", ".join(f"{k} {v}" for k, v in src.versions.items()))
    return "\n".join(lines)


__all__ = ["describe_model"]
