"""The training batches: seeds, the patch source (a pure function of seed, rank and micro-step), the loader."""

import pytest
import torch
from train_helpers import ROI, DictLoader, make_cases, simple_sampler, tiny_setup

from unetr.training.batches import PatchSource, augment_kwargs, derive_seed, train_batches

CASES = make_cases()
IDS = sorted(CASES)


def test_patch_source_is_a_pure_function_of_the_step_and_rank():
    kw = dict(volumes=2, samples_per_volume=2, pos_fraction=0.5, seed=3, sampler=simple_sampler)
    a = PatchSource(DictLoader(CASES), IDS, ROI, rank=0, world_size=2, **kw)
    b = PatchSource(DictLoader(CASES), IDS, ROI, rank=1, world_size=2, **kw)
    x0, y0 = a[5]
    assert x0.shape == (4, 1, *ROI) and y0.shape == (4, 1, *ROI) and y0.dtype == torch.uint8
    torch.testing.assert_close(a[5][0], x0)
    assert not torch.equal(b[5][0], x0)
    # every case is drawn once per epoch of len(IDS) draws, across ranks
    assert sorted(a.case_of_draw(d) for d in range(len(IDS))) == IDS


def test_patch_source_needs_cases():
    with pytest.raises(ValueError, match="at least one case"):
        PatchSource(DictLoader(CASES), [], ROI, volumes=1, samples_per_volume=1, pos_fraction=0.5, seed=0)


def test_patch_source_passes_sampler_options():
    seen = {}

    def sampler(image, label, roi, n, pos_fraction, rng, **kwargs):
        seen.update(kwargs)
        return simple_sampler(image, label, roi, n, pos_fraction, rng)

    src = PatchSource(DictLoader(CASES), IDS, ROI, volumes=1, samples_per_volume=1, pos_fraction=1.0, seed=0,
                      sampler=sampler, sampler_kwargs={"class_balanced": True})
    src[0]
    assert seen == {"class_balanced": True}


def test_derive_seed_mixes_every_part():
    seeds = {derive_seed(0), derive_seed(1), derive_seed(0, 1), derive_seed(1, 0, 1), derive_seed(0, 1, 1),
             derive_seed(0, 0, 5, 2), derive_seed(0, 0, 6, 2)}
    assert len(seeds) == 7 and all(0 <= s < 1 << 63 for s in seeds)
    assert derive_seed(3, 1, 7) == derive_seed(3, 1, 7)
    assert derive_seed(3, 1) == derive_seed(3, 1, 0)  # trailing zeros do not count: hence the non-zero tags


@pytest.mark.parametrize("accumulate", [1, 2])
def test_train_batches_start_at_the_resumed_micro_step(accumulate):
    _, _, cfg = tiny_setup(iterations=4, accumulate=accumulate, batch_size=1, samples_per_volume=2)
    source = PatchSource(DictLoader(CASES), IDS, ROI, volumes=1, samples_per_volume=2, pos_fraction=cfg.pos_fraction,
                         seed=cfg.seed, sampler=simple_sampler)
    batches = list(train_batches(DictLoader(CASES), IDS, ROI, cfg, start=2, rank=0, world_size=1,
                                 device=torch.device("cpu"), sampler=simple_sampler))
    assert len(batches) == (4 - 2) * accumulate  # the micro-steps of iterations 2 and 3
    for m, (images, labels) in enumerate(batches, start=2 * accumulate):
        assert images.shape == (2, 1, *ROI) and labels.shape == (2, 1, *ROI) and labels.dtype == torch.uint8
        torch.testing.assert_close(images, source[m][0])
        assert torch.equal(labels, source[m][1])


def test_augment_kwargs_follow_the_settings():
    _, _, cfg = tiny_setup(flip_prob=0.25, rot90_prob=0.5, scale_intensity_prob=0.125, shift_intensity_prob=0.75)
    kw = augment_kwargs(cfg)
    assert (kw["flip_prob"], kw["rot90_prob"], kw["scale_prob"], kw["shift_prob"]) == (0.25, 0.5, 0.125, 0.75)
    assert kw["factor"] == cfg.intensity_factor and kw["extra"] == cfg.extra_augment
