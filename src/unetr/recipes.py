"""Named training recipes: the settings of a published script, as plan, model and training overrides.

``btcv`` is the UNETR/BTCV ``main.py`` of Project-MONAI's research-contributions (the paper's official
code) with its default arguments and its transforms; ``docs/recipe.md`` lists every setting there, its value,
ours, and the option that sets it. The script counts in epochs (one pass over the training cases, one volume
per step); the recipe keeps those counts in :class:`unetr.config.TrainConfig`'s ``epochs``,
``warmup_epochs`` and ``val_every_epochs``, which :func:`resolve_epochs` turns into iterations once the
number of training cases is known.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping

from unetr.config import TrainConfig

EPOCH_FIELDS = {"epochs": "iterations", "warmup_epochs": "warmup_iterations", "val_every_epochs": "val_every"}
"""Each epoch count of :class:`TrainConfig` and the iteration count it sets."""


@dataclass(frozen=True)
class Recipe:
    """A published configuration.

    Attributes:
        name: ``--recipe NAME``.
        source: where the values come from.
        plan: :class:`unetr.config.Plan` fields.
        model: :class:`unetr.config.ModelConfig` fields (over the plan's preset).
        train: :class:`unetr.config.TrainConfig` fields, epoch counts included.
    """

    name: str
    source: str
    plan: Mapping[str, Any] = field(default_factory=dict)
    model: Mapping[str, Any] = field(default_factory=dict)
    train: Mapping[str, Any] = field(default_factory=dict)


BTCV = Recipe(
    name="btcv",
    source="Project-MONAI/research-contributions, UNETR/BTCV/main.py and utils/data_utils.py (default arguments)",
    plan=dict(
        target_spacing=(1.5, 1.5, 2.0),  # Spacingd pixdim (space_x, space_y, space_z)
        roi=(96, 96, 96),  # roi_x, roi_y, roi_z
        intensity="ct_window", window=(-175.0, 250.0, 0.0, 1.0),  # ScaleIntensityRanged a_min a_max b_min b_max
        crop_foreground=True,  # CropForegroundd(source_key="image"): voxels above a_min once scaled
        geometry="monai",  # Orientationd, Spacingd, then CropForegroundd on the resampled grid
        label_resample="nearest", image_order=1,  # Spacingd mode=("bilinear", "nearest")
        preset="paper",
    ),
    # pos_embed="perceptron" (the official checkpoint's); the rest of main.py's UNETR(...) is the paper preset:
    # feature_size 16, hidden_size 768, mlp_dim 3072, num_heads 12, instance norm, res_block, conv_block, dropout 0
    model=dict(proj_type="perceptron"),
    train=dict(
        epochs=5000, warmup_epochs=50, val_every_epochs=100,  # max_epochs, warmup_epochs, val_every
        batch_size=1, samples_per_volume=4, pos_fraction=0.5, image_threshold=0.0,  # RandCropByPosNegLabeld
        flip_prob=0.2, rot90_prob=0.2, scale_intensity_prob=0.1, shift_intensity_prob=0.1, intensity_factor=0.1,
        extra_augment=False, class_balanced=False,
        lr=1e-4, weight_decay=1e-5, min_lr=0.0, grad_clip=0.0, accumulate=1,  # AdamW, warmup_cosine
        dice_weight=1.0, ce_weight=1.0, include_background=True, smooth_nr=0.0, smooth_dr=1e-6,  # DiceCELoss
        squared_pred=True, batch_dice=False, label_smoothing=0.0,
        decay_all=True,  # torch.optim.AdamW(model.parameters(), ...): every parameter decayed
        val_overlap=0.5, val_mode="constant",  # sliding_window_inference(overlap=infer_overlap), its default mode
    ),
)

RECIPES: Dict[str, Recipe] = {BTCV.name: BTCV}


def get_recipe(name: str) -> Recipe:
    """The recipe of that name; ``ValueError`` naming the known ones otherwise."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return RECIPES[name]


def train_settings(recipe: Recipe, given: Mapping[str, Any]) -> dict:
    """The recipe's training fields under the user's ``given`` ones: an iteration count the user gives
    (``--iterations``) replaces the recipe's epoch count for it."""
    out = {k: v for k, v in recipe.train.items() if not (k in EPOCH_FIELDS and EPOCH_FIELDS[k] in given)}
    out.update(given)
    return out


def iterations_per_epoch(num_cases: int, batch_size: int = 1, world_size: int = 1) -> int:
    """Optimizer steps in one pass over ``num_cases`` training cases, ``batch_size`` volumes per step on each
    of ``world_size`` processes (a ``DataLoader`` that keeps its last short batch, as the BTCV script's)."""
    if num_cases < 1 or batch_size < 1 or world_size < 1:
        raise ValueError(f"need positive counts, got {num_cases} case(s), batch {batch_size}, {world_size} process(es)")
    return math.ceil(num_cases / (batch_size * world_size))


def resolve_epochs(cfg: TrainConfig, num_cases: int, world_size: int = 1) -> TrainConfig:
    """``cfg`` with its epoch counts (``epochs``, ``warmup_epochs``, ``val_every_epochs``, when > 0) turned
    into the iteration counts they stand for (:func:`iterations_per_epoch`); unchanged without them."""
    steps = iterations_per_epoch(num_cases, cfg.batch_size, world_size)
    changes = {EPOCH_FIELDS[k]: getattr(cfg, k) * steps for k in EPOCH_FIELDS if getattr(cfg, k) > 0}
    return cfg.replace(**changes) if changes else cfg


__all__ = ["Recipe", "BTCV", "RECIPES", "EPOCH_FIELDS", "get_recipe", "train_settings", "iterations_per_epoch",
           "resolve_epochs"]
