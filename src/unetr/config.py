"""Configuration: frozen dataclasses, model presets, and the one check of model arguments.

It imports only :mod:`unetr.settings` (typed values, JSON/YAML files; re-exported here), so every other
module may import it.

- :class:`ModelConfig` describes a network (see :func:`unetr.model.build_model`).
- :class:`Plan` describes how a dataset is preprocessed (spacing, ROI, intensities, classes).
- :class:`TrainConfig` and :class:`InferConfig` hold the training and inference settings.

Every dataclass has ``to_dict()`` / ``from_dict()``; ``from_dict`` rejects unknown keys with a
``ValueError`` naming them, so a typo in a YAML file or a ``--set key=value`` never passes silently.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, replace
from typing import Any, Optional, Sequence, Tuple, TypeVar, Union

from unetr.settings import coerce_fields, load_json, load_yaml, parse_set, save_json  # noqa: F401 (re-exported)

T = TypeVar("T")

VARIANTS = ("paper", "tutorial")
NORMS = ("instance", "batch")
PROJ_TYPES = ("conv", "perceptron")
MLP_ACTS = ("gelu", "relu")
INTENSITY_SCHEMES = ("ct_window", "ct_zscore", "zscore")
MODALITIES = ("CT", "MR", "OTHER")
GEOMETRIES = ("extent", "monai")


def _as_tuple(value: Any, n: int, name: str) -> Tuple[int, ...]:
    if isinstance(value, (int, float)):
        value = (value,) * n
    value = tuple(value)
    if len(value) != n:
        raise ValueError(f"{name} must have {n} values, got {value!r}")
    return value


class _DictMixin:
    """``to_dict`` / ``from_dict`` / ``replace`` shared by the configuration dataclasses."""

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))  # tuples -> lists, plain JSON types

    @classmethod
    def from_dict(cls: type[T], data: dict) -> T:
        return cls(**coerce_fields(cls, data))  # type: ignore[call-arg]

    def replace(self: T, **changes: Any) -> T:
        return replace(self, **changes)  # type: ignore[type-var]


@dataclass(frozen=True)
class ModelConfig(_DictMixin):
    """The network. ``variant='paper'`` is MONAI's UNETR; ``'tutorial'`` is tamasino52/UNETR's network (the single-file code of the popular Chinese walk-through).

    Attributes:
        in_channels: image channels (modalities).
        out_channels: classes, background included.
        img_size: the ROI the model is built for; the position embedding is interpolated for other sizes.
        patch_size: edge of the cubic patches (16 in the paper).
        hidden_size: token width E.
        mlp_dim: width of the feed-forward layer.
        num_layers: transformer blocks.
        num_heads: attention heads; must divide ``hidden_size``.
        skip_layers: the 1-based transformer blocks whose outputs feed the decoder, shallow to deep.
            ``paper`` uses (4, 7, 10) plus the normed output of the last block (MONAI's indices 3, 6, 9);
            ``tutorial`` uses (3, 6, 9, 12).
        feature_size: decoder width at full resolution (``paper`` only).
        norm: decoder normalisation, ``instance`` or ``batch`` (``paper`` only; ``tutorial`` is batch).
        res_block: residual decoder blocks (``paper`` only).
        conv_block: convolutions in the encoder-side up-sampling paths (``paper`` only).
        proj_type: patch embedding: ``conv`` or ``perceptron`` (a linear layer over flattened patches).
        qkv_bias: bias in the query/key/value projection.
        dropout: dropout rate in the transformer.
        mlp_act: ``gelu`` (paper) or ``relu`` (tutorial).
        norm_eps: LayerNorm epsilon.
        checkpointing: recompute transformer blocks in the backward pass to save memory.
    """

    in_channels: int = 1
    out_channels: int = 14
    img_size: Tuple[int, int, int] = (96, 96, 96)
    variant: str = "paper"
    patch_size: int = 16
    hidden_size: int = 768
    mlp_dim: int = 3072
    num_layers: int = 12
    num_heads: int = 12
    skip_layers: Tuple[int, ...] = (4, 7, 10)
    feature_size: int = 16
    norm: str = "instance"
    res_block: bool = True
    conv_block: bool = True
    proj_type: str = "conv"
    qkv_bias: bool = False
    dropout: float = 0.0
    mlp_act: str = "gelu"
    norm_eps: float = 1e-5
    checkpointing: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "img_size", _as_tuple(self.img_size, 3, "img_size"))
        object.__setattr__(self, "skip_layers", tuple(int(s) for s in self.skip_layers))
        check_model_args(
            in_channels=self.in_channels, out_channels=self.out_channels, img_size=self.img_size,
            variant=self.variant, patch_size=self.patch_size, hidden_size=self.hidden_size, mlp_dim=self.mlp_dim,
            num_layers=self.num_layers, num_heads=self.num_heads, skip_layers=self.skip_layers,
            feature_size=self.feature_size, norm=self.norm, proj_type=self.proj_type, dropout=self.dropout,
            mlp_act=self.mlp_act,
        )


def check_model_args(*, in_channels: int, out_channels: int, img_size: Sequence[int], variant: str,
                     patch_size: int, hidden_size: int, mlp_dim: int, num_layers: int, num_heads: int,
                     skip_layers: Sequence[int], feature_size: int, norm: str, proj_type: str, dropout: float,
                     mlp_act: str) -> None:
    """Raise ``ValueError`` for arguments no UNETR can be built with.

    The one check of model arguments: :class:`ModelConfig` runs it on construction and
    :class:`unetr.model.UNETR` on its keyword arguments, so both accept exactly the same networks. The
    arguments are those of :class:`ModelConfig` (see there); the rest (biases, epsilons, switches) take any
    value.
    """
    positive = dict(in_channels=in_channels, out_channels=out_channels, patch_size=patch_size,
                    hidden_size=hidden_size, mlp_dim=mlp_dim, num_layers=num_layers, num_heads=num_heads,
                    feature_size=feature_size)
    for name, value in positive.items():
        if int(value) < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if len(img_size) != 3:
        raise ValueError(f"img_size must have 3 values, got {tuple(img_size)!r}")
    for name, value, allowed in (("variant", variant, VARIANTS), ("norm", norm, NORMS),
                                 ("proj_type", proj_type, PROJ_TYPES), ("mlp_act", mlp_act, MLP_ACTS)):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
    if not 0.0 <= dropout <= 1.0:
        raise ValueError(f"dropout must be in [0, 1], got {dropout}")
    if any(s % patch_size for s in img_size):
        raise ValueError(f"img_size {tuple(img_size)} is not a multiple of patch_size {patch_size}")
    _check_skip_layers(variant, tuple(skip_layers), num_layers)
    if variant == "paper" and patch_size != 16:
        # encoder2 up-samples the token grid 3 times by 2 and decoder2 once more: 16 = 2**4 in all.
        raise ValueError(f"the paper decoder up-samples 4 times by 2: patch_size must be 16, got {patch_size}")


def _check_skip_layers(variant: str, skip_layers: Tuple[int, ...], num_layers: int) -> None:
    n_skips = 3 if variant == "paper" else 4
    if len(skip_layers) != n_skips:
        raise ValueError(f"variant {variant!r} needs {n_skips} skip_layers, got {skip_layers}")
    if list(skip_layers) != sorted(set(skip_layers)) or not all(1 <= s <= num_layers for s in skip_layers):
        raise ValueError(f"skip_layers must be increasing block numbers in 1..{num_layers}, got {skip_layers}")
    if variant == "tutorial" and skip_layers[-1] != num_layers:
        raise ValueError(f"the tutorial decoder takes the last block as its deepest skip: skip_layers must end "
                         f"with num_layers {num_layers}, got {skip_layers}")


# Presets: the architecture; channels, classes and ROI are filled in per dataset.
PRESETS: dict = {
    # The paper's network as MONAI implements it: ViT-B/16, feature size 16, residual decoder, instance norm.
    "paper": dict(variant="paper"),
    # tamasino52/UNETR's network (the tutorial): Conv+BN+ReLU decoder, ReLU FFN of 2048, skips 3/6/9/12.
    "tutorial": dict(
        variant="tutorial", mlp_dim=2048, mlp_act="relu", skip_layers=(3, 6, 9, 12), qkv_bias=True,
        dropout=0.1, norm_eps=1e-6, norm="batch",
    ),
    # Same architecture as `paper`, narrower and shallower: trains on a CPU in minutes.
    "small": dict(variant="paper", hidden_size=384, mlp_dim=1536, num_heads=6, num_layers=8, skip_layers=(2, 4, 6),
                  feature_size=16),
    "tiny": dict(variant="paper", hidden_size=192, mlp_dim=384, num_heads=4, num_layers=4, skip_layers=(1, 2, 3),
                 feature_size=8),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """Return the :class:`ModelConfig` of a preset, with keyword overrides.

    Example:
        >>> preset("paper", in_channels=1, out_channels=14).hidden_size
        768
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return ModelConfig(**{**PRESETS[name], **overrides})


@dataclass(frozen=True)
class Plan(_DictMixin):
    """How a dataset is preprocessed; written once as ``plan.json`` and read by preprocess, train and predict.

    Attributes:
        target_spacing: voxel spacing in mm (x, y, z) after resampling, in RAS orientation.
        roi: the patch size the model trains on (multiple of 16).
        in_channels / num_classes: image channels and label classes (background included).
        class_names: one name per class, background first.
        channel_names: one name per channel (``CT``, ``T1`` ...).
        intensity: ``ct_window`` (clip to [a_min, a_max] and scale to [b_min, b_max], the paper's CT scheme),
            ``ct_zscore`` (clip to the foreground percentiles, then z-score with the dataset's foreground
            mean/std, as nnU-Net does for CT), or ``zscore`` (per channel and case over non-zero voxels, MRI).
        window: (a_min, a_max, b_min, b_max) for ``ct_window``; clip bounds and mean/std go in ``ct_stats``.
        ct_stats: per channel (lo, hi, mean, std) for ``ct_zscore``.
        crop_foreground: crop each case to its non-zero bounding box before resampling.
        image_order: spline order for image resampling (1 linear, 3 cubic).
        preset: the model preset trained on this plan.
        label_resample: ``onehot`` (each class mask resampled linearly, then argmax; smoother, as nnU-Net)
            or ``nearest`` (MONAI's ``Spacingd`` mode for labels).
        geometry: where the resampled grid lies. ``extent`` (nnU-Net's convention): crop to the body, then
            resample the crop so that it keeps its physical extent (the spacing comes within half a voxel
            of the target). ``monai`` (MONAI's ``Spacingd`` then ``CropForegroundd``): the first voxel's
            centre is kept, the spacing is the target exactly, the crop comes after resampling, and a
            prediction goes back as MONAI's ``Invertd`` takes it (logits, zero-padded, linear, border
            clamped): the same label maps as a MONAI pipeline, for models trained in one.
        modality: ``CT``, ``MR`` or ``OTHER``, as the dataset names it, as its intensities show, or as set
            (``--modality``); ``intensity="auto"`` follows it (:func:`unetr.data.plan.make_plan`).
        modality_reason: why (the dataset's words, the fingerprint's evidence, or the override).
    """

    target_spacing: Tuple[float, float, float] = (1.5, 1.5, 2.0)
    roi: Tuple[int, int, int] = (96, 96, 96)
    in_channels: int = 1
    num_classes: int = 2
    class_names: Tuple[str, ...] = ("background", "foreground")
    channel_names: Tuple[str, ...] = ("CT",)
    intensity: str = "ct_window"
    window: Tuple[float, float, float, float] = (-175.0, 250.0, 0.0, 1.0)
    ct_stats: Tuple[Tuple[float, float, float, float], ...] = ()
    crop_foreground: bool = True
    image_order: int = 1
    preset: str = "paper"
    label_resample: str = "onehot"
    geometry: str = "extent"
    modality: str = "CT"
    modality_reason: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "target_spacing", tuple(float(s) for s in _as_tuple(self.target_spacing, 3, "target_spacing")))
        object.__setattr__(self, "roi", tuple(int(s) for s in _as_tuple(self.roi, 3, "roi")))
        object.__setattr__(self, "class_names", tuple(self.class_names))
        object.__setattr__(self, "channel_names", tuple(self.channel_names))
        object.__setattr__(self, "window", tuple(float(v) for v in self.window))
        object.__setattr__(self, "ct_stats", tuple(tuple(float(v) for v in s) for s in self.ct_stats))
        if any(s <= 0 for s in self.target_spacing):
            raise ValueError(f"target_spacing must be positive, got {self.target_spacing}")
        if any(r < 16 or r % 16 for r in self.roi):
            raise ValueError(f"roi must be multiples of 16 (the patch size), got {self.roi}")
        if self.intensity not in INTENSITY_SCHEMES:
            raise ValueError(f"intensity must be one of {INTENSITY_SCHEMES}, got {self.intensity!r}")
        if len(self.window) != 4 or self.window[0] >= self.window[1]:
            raise ValueError(f"window must be (a_min, a_max, b_min, b_max) with a_min < a_max, got {self.window}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be at least 2 (background and one class), got {self.num_classes}")
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"class_names has {len(self.class_names)} names for {self.num_classes} classes")
        if len(self.channel_names) != self.in_channels:
            raise ValueError(f"channel_names has {len(self.channel_names)} names for {self.in_channels} channels")
        if self.intensity == "ct_zscore" and len(self.ct_stats) != self.in_channels:
            raise ValueError("intensity 'ct_zscore' needs ct_stats (lo, hi, mean, std) for every channel")
        if self.image_order not in (0, 1, 2, 3):
            raise ValueError(f"image_order must be 0..3, got {self.image_order}")
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        if self.label_resample not in ("onehot", "nearest"):
            raise ValueError(f"label_resample must be 'onehot' or 'nearest', got {self.label_resample!r}")
        if self.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {self.modality!r}")
        if self.geometry not in GEOMETRIES:
            raise ValueError(f"geometry must be one of {GEOMETRIES}, got {self.geometry!r}")
        if self.geometry == "monai" and self.image_order != 1:
            raise ValueError(f"geometry 'monai' resamples images linearly (image_order 1), got {self.image_order}")

    def model_config(self, **overrides: Any) -> ModelConfig:
        """The model this plan trains: its preset with the plan's channels, classes and ROI."""
        return preset(self.preset, in_channels=self.in_channels, out_channels=self.num_classes, img_size=self.roi,
                      **overrides)


@dataclass(frozen=True)
class TrainConfig(_DictMixin):
    """Training settings. The defaults are the paper's official recipe per step (crops, augmentation, loss,
    optimizer); its counts in epochs and its MONAI-specific choices come with ``--recipe btcv``
    (:mod:`unetr.recipes`; every setting and the difference: ``docs/recipe.md``)."""

    iterations: int = 25000
    val_every: int = 500
    checkpoint_every: int = 500
    checkpoint_minutes: float = 10.0  # also write last.pt when this long has passed since the last one (0: off)
    batch_size: int = 1  # volumes per step; each gives `samples_per_volume` crops
    samples_per_volume: int = 4
    pos_fraction: float = 0.5  # pos=1, neg=1
    lr: float = 1e-4
    weight_decay: float = 1e-5
    warmup_iterations: int = 50
    min_lr: float = 0.0
    grad_clip: float = 0.0
    accumulate: int = 1
    precision: str = "auto"  # auto | bf16 | fp16 | fp32
    flip_prob: float = 0.2
    rot90_prob: float = 0.2
    scale_intensity_prob: float = 0.1
    shift_intensity_prob: float = 0.1
    intensity_factor: float = 0.1
    extra_augment: bool = False  # nnU-Net style rotation/scaling and Gaussian noise
    dice_weight: float = 1.0
    ce_weight: float = 1.0
    include_background: bool = True
    val_overlap: float = 0.5
    val_sw_batch: int = 4
    num_workers: int = -1  # loader processes; -1 (auto): none on CPUs, up to 4 per GPU (unetr.accel.device_defaults)
    seed: int = 0
    fold: Union[int, str] = 0  # the validation fold of splits.json, or "all" (every case trains, no validation)
    num_folds: int = 5
    checkpointing: bool = False
    channels_last: bool = True  # the decoder's activation layout (oneDNN and cuDNN convolve NDHWC natively; accel)
    compile: bool = False  # torch.compile the training step's forward (inductor); off until gpu_check measures it
    device: str = "auto"
    smooth_nr: float = 1e-5  # Dice smoothing, numerator
    smooth_dr: float = 1e-5  # Dice smoothing, denominator
    batch_dice: bool = False  # one Dice per class over the batch instead of per sample
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    log_every: int = 50  # a metrics.csv row (train loss, lr) every N iterations, besides validations
    tensorboard: bool = True  # also log to run_dir/tensorboard when tensorboard is installed
    pad_to_roi: bool = True  # pad images smaller than the ROI; when False such images are an error
    class_balanced: bool = False  # foreground crops centred on a class drawn uniformly (rare classes get crops)
    image_threshold: Optional[float] = None  # background crop centres only where the image is above it (BTCV: 0)
    epochs: int = 0  # > 0: `iterations` is this many passes over the training cases (unetr.recipes.resolve_epochs)
    warmup_epochs: int = 0  # > 0: `warmup_iterations` in passes over the training cases
    val_every_epochs: int = 0  # > 0: `val_every` in passes over the training cases
    squared_pred: bool = False  # Dice denominator over squared probabilities (MONAI's squared_pred; BTCV: true)
    decay_all: bool = False  # weight decay on every parameter, norms, biases and embeddings included (BTCV: true)
    val_mode: str = "gaussian"  # validation window blending: gaussian | constant (BTCV: constant)

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"iterations must be positive, got {self.iterations}")
        if self.val_mode not in ("gaussian", "constant"):
            raise ValueError(f"val_mode must be 'gaussian' or 'constant', got {self.val_mode!r}")
        for name in ("epochs", "warmup_epochs", "val_every_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be non-negative (0: counted in iterations), got {getattr(self, name)}")
        for name in ("val_every", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.checkpoint_minutes >= 0:
            raise ValueError(f"checkpoint_minutes must be 0 (off) or positive, got {self.checkpoint_minutes}")
        if self.num_workers < -1:
            raise ValueError(f"num_workers must be -1 (auto) or non-negative, got {self.num_workers}")
        if self.warmup_iterations < 0 or self.seed < 0:
            raise ValueError("warmup_iterations and seed must be non-negative")
        if isinstance(self.fold, str) and self.fold.strip().isdigit():
            object.__setattr__(self, "fold", int(self.fold))
        if self.fold != "all" and (isinstance(self.fold, bool) or not isinstance(self.fold, int) or self.fold < 0):
            raise ValueError(f"fold must be a fold number (0, 1, ...) or 'all', got {self.fold!r}")
        if self.num_folds < 2:
            raise ValueError(f"num_folds must be at least 2, got {self.num_folds}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.dice_weight < 0 or self.ce_weight < 0 or self.dice_weight + self.ce_weight == 0:
            raise ValueError(f"dice_weight and ce_weight must be non-negative and not both 0, got "
                             f"{self.dice_weight}, {self.ce_weight}")
        if self.precision not in ("auto", "bf16", "fp16", "fp32"):
            raise ValueError(f"precision must be auto, bf16, fp16 or fp32, got {self.precision!r}")
        if not 0.0 <= self.pos_fraction <= 1.0:
            raise ValueError(f"pos_fraction must be in [0, 1], got {self.pos_fraction}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.accumulate < 1 or self.batch_size < 1 or self.samples_per_volume < 1:
            raise ValueError("accumulate, batch_size and samples_per_volume must be at least 1")
        if not 0.0 <= self.val_overlap < 1.0:
            raise ValueError(f"val_overlap must be in [0, 1), got {self.val_overlap}")


@dataclass(frozen=True)
class InferConfig(_DictMixin):
    """Sliding-window inference settings."""

    overlap: float = 0.5
    mode: str = "gaussian"  # gaussian | constant
    sigma_scale: float = 0.125
    sw_batch_size: int = 0  # windows per forward pass; 0 (auto): 1 on CPUs, 4 on GPUs (unetr.accel.device_defaults)
    tta: bool = False
    precision: str = "auto"
    device: str = "auto"
    largest_component: bool = False
    accum_device: str = "auto"  # where the sliding-window sums live: auto (the model's device; accel) | cpu | cuda
    accum_fp16: bool = False  # half-precision sums (half the memory, ~1e-3 relative error)
    inverse: str = "soft"  # soft: scores back to the input grid, argmax there | labels: argmax, then the label map
    compile: bool = False  # torch.compile the window predictor (inductor); off until gpu_check measures it

    def __post_init__(self) -> None:
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.mode not in ("gaussian", "constant"):
            raise ValueError(f"mode must be 'gaussian' or 'constant', got {self.mode!r}")
        if self.sw_batch_size < 0:
            raise ValueError(f"sw_batch_size must be 0 (auto) or positive, got {self.sw_batch_size}")
        if self.precision not in ("auto", "bf16", "fp16", "fp32"):
            raise ValueError(f"precision must be auto, bf16, fp16 or fp32, got {self.precision!r}")
        if self.inverse not in ("soft", "labels"):
            raise ValueError(f"inverse must be 'soft' or 'labels', got {self.inverse!r}")


__all__ = [
    "ModelConfig", "Plan", "TrainConfig", "InferConfig", "PRESETS", "preset", "save_json",
    "load_json", "load_yaml", "parse_set", "coerce_fields", "field",
]
