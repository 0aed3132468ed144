"""Small in-memory cases, a crop sampler and a no-op augmenter for the training tests."""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
import torch

from unetr.config import Plan, TrainConfig, preset

ROI = (32, 32, 32)


def make_cases(n: int = 6, shape=(40, 36, 44), seed: int = 0) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """Noisy images with a bright box (class 1) and a dark ball (class 2)."""
    rng = np.random.default_rng(seed)
    cases = {}
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    for i in range(n):
        label = np.zeros(shape, np.uint8)
        c = rng.integers(10, np.array(shape) - 10)
        label[tuple(slice(int(ci) - 5, int(ci) + 5) for ci in c)] = 1
        c2 = rng.integers(8, np.array(shape) - 8)
        label[((grid - c2[:, None, None, None]) ** 2).sum(0) < 36] = 2
        image = rng.normal(0, 0.3, shape).astype(np.float32) + np.choose(label, [0.0, 1.0, -1.0]).astype(np.float32)
        cases[f"case{i:02d}"] = (image[None], label)
    return cases


class DictLoader:
    """A picklable case loader over a dict."""

    def __init__(self, cases):
        self.cases = cases

    def __call__(self, case_id):
        return self.cases[case_id]


def simple_sampler(image, label, roi, num_samples, pos_fraction, generator):
    """Random crops (positive centres for a share of them), without padding."""
    out_i, out_l = [], []
    fg = np.argwhere(label > 0)
    for k in range(num_samples):
        if k < round(num_samples * pos_fraction) and len(fg):
            centre = fg[generator.integers(len(fg))]
            start = [int(np.clip(c - r // 2, 0, s - r)) for c, r, s in zip(centre, roi, label.shape)]
        else:
            start = [int(generator.integers(0, s - r + 1)) for r, s in zip(roi, label.shape)]
        sl = tuple(slice(s, s + r) for s, r in zip(start, roi))
        out_i.append(np.asarray(image[(slice(None),) + sl]))
        out_l.append(np.asarray(label[sl])[None])
    return np.stack(out_i), np.stack(out_l)


def flip_augmenter(images, labels, generator, **kwargs):
    """Random flips along X drawn from ``generator`` (enough to exercise the generator plumbing)."""
    if torch.rand((), generator=generator, device=images.device) < kwargs.get("flip_prob", 0.0):
        return images.flip(2), labels.flip(2)
    return images, labels


def tiny_setup(**train):
    plan = Plan(roi=ROI, num_classes=3, class_names=("background", "box", "ball"), channel_names=("img",),
                intensity="zscore", preset="tiny")
    model_cfg = preset("tiny", in_channels=1, out_channels=3, img_size=ROI)
    base = dict(iterations=6, val_every=3, checkpoint_every=2, log_every=1, samples_per_volume=2, lr=1e-3,
                warmup_iterations=2, num_workers=0, seed=0, device="cpu", precision="fp32", tensorboard=False)
    base.update(train)
    return plan, model_cfg, TrainConfig(**base)
