"""The training batches: seeds, the patch source and its loader.

Everything random in a step is a pure function of ``(seed, rank, micro-step)``: which cases are drawn,
where the crops are taken (``np.random.Generator``) and how they are augmented (``torch.Generator``). A run
resumed from ``last.pt`` therefore sees exactly the batches an uninterrupted run would have seen, whatever
the number of data-loader workers, and on one CPU process it ends with the same weights.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch

from unetr.accel import device_defaults
from unetr.config import TrainConfig

CaseLoader = Callable[[str], Tuple[np.ndarray, np.ndarray]]
"""``case_id -> (image (C, X, Y, Z) float32, label (X, Y, Z) integer)``; memory-mapped arrays are fine."""
CropSampler = Callable[..., Tuple[np.ndarray, np.ndarray]]
"""``(image, label, roi, num_samples, pos_fraction, generator) -> ((N, C, *roi), (N, 1, *roi))``."""
Augmenter = Callable[..., Tuple[torch.Tensor, torch.Tensor]]
"""``(images, labels, generator, **probabilities) -> (images, labels)`` on batched tensors."""


# ------------------------------------------------------------------------------------------- seeds


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from non-negative integers (``seed, rank, step``), well mixed by ``SeedSequence``.

    ``SeedSequence`` pads its entropy with zeros, so trailing zero parts do not change the seed: each use
    ends its parts with its own non-zero tag (1 loader, 2 augmentation, 3 in-model randomness).
    """
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint32).astype(np.uint64)
               .dot(np.array([1, 1 << 32], dtype=np.uint64)) & np.uint64((1 << 63) - 1))


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed Python and NumPy's global generators from torch's worker seed.

    The patches themselves do not depend on these (each step seeds its own generator), but any library
    code that reaches for a global generator stays reproducible.
    """
    s = torch.initial_seed() % (1 << 32)
    random.seed(s)
    np.random.seed(s)


# ------------------------------------------------------------------------------------------- cases and crops


class PatchSource(torch.utils.data.Dataset):
    """Item ``m`` is the crops of micro-step ``m`` on this rank, a pure function of ``(seed, rank, m)``.

    Cases are drawn epoch by epoch from a permutation seeded by ``(seed, epoch)`` that all ranks share; the
    ``r``-th rank takes the draws ``(m * world_size + r) * volumes + j``, so ranks see different cases.

    Args:
        load: reads one case (see :data:`CaseLoader`); must be picklable for worker processes.
        case_ids: training cases.
        roi: crop size (x, y, z).
        volumes: volumes per micro-step (``TrainConfig.batch_size``).
        samples_per_volume: crops per volume.
        pos_fraction: fraction of crops centred on foreground.
        seed: run seed.
        rank / world_size: this process and the number of processes.
        sampler: the crop sampler (default :func:`unetr.data.sampling.sample_crops`).
        sampler_kwargs: extra keyword arguments of the sampler (``class_balanced=True``).

    Returns (per item):
        ``images (volumes * samples_per_volume, C, *roi)`` float32 and labels ``(N, 1, *roi)`` uint8.
    """

    def __init__(self, load: CaseLoader, case_ids: Sequence[str], roi: Sequence[int], *, volumes: int,
                 samples_per_volume: int, pos_fraction: float, seed: int, rank: int = 0, world_size: int = 1,
                 sampler: Optional[CropSampler] = None, sampler_kwargs: Optional[dict] = None,
                 length: int = 1 << 62) -> None:
        if not case_ids:
            raise ValueError("PatchSource needs at least one case")
        self.load = load
        self.case_ids = list(case_ids)
        self.roi = tuple(int(r) for r in roi)
        self.volumes = int(volumes)
        self.samples_per_volume = int(samples_per_volume)
        self.pos_fraction = float(pos_fraction)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.sampler = sampler
        self.sampler_kwargs = dict(sampler_kwargs or {})
        self.length = int(length)

    def __len__(self) -> int:
        return self.length

    def case_of_draw(self, draw: int) -> str:
        """The case of global draw number ``draw`` (epoch-wise permutations)."""
        n = len(self.case_ids)
        epoch, pos = divmod(draw, n)
        perm = np.random.default_rng([self.seed, 7919, epoch]).permutation(n)
        return self.case_ids[int(perm[pos])]

    def __getitem__(self, micro_step: int) -> Tuple[torch.Tensor, torch.Tensor]:
        sampler = self.sampler
        if sampler is None:
            from unetr.data.sampling import sample_crops as sampler
        images, labels = [], []
        for j in range(self.volumes):
            draw = (micro_step * self.world_size + self.rank) * self.volumes + j
            image, label = self.load(self.case_of_draw(draw))
            rng = np.random.default_rng([self.seed, self.rank, micro_step, j])
            im, lb = sampler(image, label, self.roi, self.samples_per_volume, self.pos_fraction, rng,
                             **self.sampler_kwargs)
            images.append(np.asarray(im, dtype=np.float32))
            labels.append(np.asarray(lb, dtype=np.uint8))
        return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


class CachedCases:
    """A picklable :data:`CaseLoader` over the preprocessed cache (:func:`unetr.data.cache.load_cached`)."""

    def __init__(self, cache_dir: os.PathLike) -> None:
        self.cache_dir = Path(cache_dir)

    def __call__(self, case_id: str) -> Tuple[np.ndarray, np.ndarray]:
        from unetr.data.cache import load_cached

        image, label, _ = load_cached(self.cache_dir, case_id)
        return image, label


# ------------------------------------------------------------------------------------------- the loader


def train_batches(load: CaseLoader, case_ids: Sequence[str], roi: Sequence[int], cfg: TrainConfig, *,
                  start: int, rank: int, world_size: int, device: torch.device,
                  sampler: Optional[CropSampler] = None) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """The micro-batches of iterations ``start .. cfg.iterations - 1`` on this rank, in order.

    One :class:`PatchSource` item per micro-step (``cfg.accumulate`` per iteration), loaded by
    ``cfg.num_workers`` processes (``-1``: the device's default, :func:`unetr.accel.device_defaults`); the items
    do not depend on the number of workers.

    Yields:
        ``images (N, C, *roi)`` float32 and ``labels (N, 1, *roi)`` uint8 on the CPU (pinned for GPUs),
        ``N = cfg.batch_size * cfg.samples_per_volume``.
    """
    options = {"class_balanced": True} if cfg.class_balanced else {}
    if cfg.image_threshold is not None:
        options["image_threshold"] = cfg.image_threshold
    source = PatchSource(load, case_ids, roi, volumes=cfg.batch_size, samples_per_volume=cfg.samples_per_volume,
                         pos_fraction=cfg.pos_fraction, seed=cfg.seed, rank=rank, world_size=world_size,
                         sampler=sampler, sampler_kwargs=options or None)
    g = torch.Generator().manual_seed(derive_seed(cfg.seed, rank, 1))
    local = min(world_size, max(torch.cuda.device_count(), 1)) if device.type == "cuda" else world_size
    auto = device_defaults(device.type, os.cpu_count() or 1, local)  # processes on this node: one per GPU
    workers = auto.num_workers if cfg.num_workers == -1 else cfg.num_workers
    loader = torch.utils.data.DataLoader(
        source, batch_size=None, sampler=range(start * cfg.accumulate, cfg.iterations * cfg.accumulate),
        num_workers=workers, worker_init_fn=seed_worker, generator=g, pin_memory=auto.pin_memory,
        persistent_workers=False, prefetch_factor=4 if workers else None,
    )
    yield from loader  # the sampler already spans the whole run


def augment_kwargs(cfg: TrainConfig) -> dict:
    """The keyword arguments of the augmenter (:func:`unetr.data.sampling.augment`) from the settings."""
    return dict(flip_prob=cfg.flip_prob, rot90_prob=cfg.rot90_prob, scale_prob=cfg.scale_intensity_prob,
                shift_prob=cfg.shift_intensity_prob, factor=cfg.intensity_factor, extra=cfg.extra_augment)


def augment_seed(seed: int, rank: int, micro_step: int) -> int:
    """The seed of the augmentation generator at ``micro_step`` on ``rank``."""
    return derive_seed(seed, rank, micro_step, 2)


__all__ = ["Augmenter", "CachedCases", "CaseLoader", "CropSampler", "PatchSource", "augment_kwargs", "augment_seed",
           "derive_seed", "seed_worker", "train_batches"]
