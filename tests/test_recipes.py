"""`--recipe btcv`: the BTCV script's settings, its epochs counted in iterations for the dataset at hand."""

import pytest

from unetr.config import ModelConfig, Plan, TrainConfig, preset
from unetr.recipes import BTCV, get_recipe, iterations_per_epoch, resolve_epochs, train_settings


@pytest.mark.parametrize("cases,batch,world,steps", [(24, 1, 1, 24), (24, 1, 2, 12), (25, 1, 2, 13), (24, 2, 1, 12),
                                                     (1, 1, 8, 1)])
def test_iterations_per_epoch(cases, batch, world, steps):
    assert iterations_per_epoch(cases, batch, world) == steps


@pytest.mark.parametrize("args", [(0, 1, 1), (4, 0, 1), (4, 1, 0)])
def test_iterations_per_epoch_bad_counts(args):
    with pytest.raises(ValueError, match="positive"):
        iterations_per_epoch(*args)


def test_btcv_epochs_become_iterations_for_the_dataset_size():
    """BTCV's dataset_0.json trains on 24 volumes, one per step: 5000 epochs = 120,000 iterations, the 50
    warm-up epochs 1,200 iterations (not 50), validation every 100 epochs = every 2,400 iterations."""
    cfg = TrainConfig.from_dict(train_settings(BTCV, {}))
    done = resolve_epochs(cfg, 24)
    assert (done.iterations, done.warmup_iterations, done.val_every) == (120_000, 1_200, 2_400)
    assert resolve_epochs(cfg, 24, world_size=4).warmup_iterations == 300  # 6 steps per epoch on 4 processes
    assert resolve_epochs(TrainConfig(), 24) == TrainConfig()  # no epoch counts: unchanged


def test_given_iterations_replace_the_recipes_epochs():
    settings = train_settings(BTCV, {"iterations": 10, "lr": 3e-4})
    assert "epochs" not in settings and settings["warmup_epochs"] == 50 and settings["lr"] == 3e-4
    done = resolve_epochs(TrainConfig.from_dict(settings), 4)
    assert (done.iterations, done.warmup_iterations, done.val_every) == (10, 200, 400)


def test_btcv_recipe_is_the_scripts_configuration():
    """The values of research-contributions' UNETR/BTCV main.py (argparse defaults) and its transforms."""
    plan = Plan(**BTCV.plan)
    assert plan.target_spacing == (1.5, 1.5, 2.0) and plan.roi == (96, 96, 96)
    assert (plan.intensity, plan.window, plan.crop_foreground) == ("ct_window", (-175.0, 250.0, 0.0, 1.0), True)
    assert (plan.geometry, plan.label_resample, plan.image_order) == ("monai", "nearest", 1)
    model = preset(plan.preset, **BTCV.model)
    assert model == ModelConfig(proj_type="perceptron", feature_size=16, hidden_size=768, mlp_dim=3072, num_heads=12,
                                norm="instance", res_block=True, conv_block=True, dropout=0.0, out_channels=14)
    cfg = TrainConfig.from_dict(train_settings(BTCV, {}))
    assert (cfg.epochs, cfg.warmup_epochs, cfg.val_every_epochs) == (5000, 50, 100)
    assert (cfg.batch_size, cfg.samples_per_volume, cfg.pos_fraction, cfg.image_threshold) == (1, 4, 0.5, 0.0)
    assert (cfg.flip_prob, cfg.rot90_prob, cfg.scale_intensity_prob, cfg.shift_intensity_prob,
            cfg.intensity_factor) == (0.2, 0.2, 0.1, 0.1, 0.1)
    assert (cfg.lr, cfg.weight_decay, cfg.decay_all, cfg.min_lr) == (1e-4, 1e-5, True, 0.0)
    assert (cfg.squared_pred, cfg.smooth_nr, cfg.smooth_dr, cfg.include_background) == (True, 0.0, 1e-6, True)
    assert (cfg.val_overlap, cfg.val_mode) == (0.5, "constant") and not cfg.extra_augment


def test_unknown_recipe():
    with pytest.raises(ValueError, match="unknown recipe 'nnunet'; choose one of btcv"):
        get_recipe("nnunet")
