"""The run directory's resume state: one typed state, the on-disk format of earlier versions, the generators."""

import math
import random

import numpy as np
import pytest
import torch
from train_helpers import tiny_setup

from unetr.errors import UnetrError
from unetr.model import build_model
from unetr.training.optim import build_optimizer
from unetr.training.resume import (
    Progress,
    ResumeState,
    RngState,
    describe_last,
    load_resume,
    restore_resume,
    save_resume,
    stored_config,
)
from unetr.training.run_dir import RunSettingsError, run_config, settings_differences

# the keys of last.pt as every earlier version wrote and read them, in order
LAST_KEYS = ["format", "version", "iteration", "world_size", "model", "optimizer", "scheduler", "scaler", "best_dice",
             "best_iteration", "loss_sum", "loss_count", "seconds", "rng", "sampler", "config"]


def _parts(**train):
    plan, model_cfg, cfg = tiny_setup(**train)
    model = build_model(model_cfg)
    optimizer = build_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay, device=torch.device("cpu"))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return model, optimizer, scaler, run_config(model_cfg, plan, cfg)


def _state(model, optimizer, scaler, config, iteration=4) -> ResumeState:
    return ResumeState(progress=Progress(iteration, 0.25, 3, 1.5, 2), seconds=12.5, world_size=1,
                       model=model.state_dict(), optimizer=optimizer.state_dict(), scaler=scaler.state_dict(),
                       rng=RngState.capture(torch.device("cpu")), config=config)


def test_last_pt_keeps_the_format_earlier_versions_read(tmp_path):
    model, optimizer, scaler, config = _parts(iterations=6, accumulate=2)
    save_resume(tmp_path / "last.pt", _state(model, optimizer, scaler, config))
    raw = torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=True)
    assert list(raw) == LAST_KEYS
    assert raw["format"] == "unetr-last" and raw["version"] == 1 and raw["iteration"] == 4
    assert raw["scheduler"] == {"kind": "warmup_cosine", "step": 4, "total": 6, "warmup": 2, "base_lr": 1e-3,
                                "min_lr": config["train"]["min_lr"]}
    assert raw["sampler"] == {"seed": 0, "micro_step": 8}
    assert set(raw["rng"]) == {"python", "numpy", "torch"}  # no CUDA state on a CPU run
    assert (raw["best_dice"], raw["best_iteration"], raw["loss_sum"], raw["loss_count"], raw["seconds"]) == (
        0.25, 3, 1.5, 2, 12.5)


def test_resume_state_round_trip(tmp_path):
    model, optimizer, scaler, config = _parts()
    state = _state(model, optimizer, scaler, config)
    save_resume(tmp_path / "last.pt", state)
    back = load_resume(tmp_path / "last.pt")
    assert back.progress == state.progress and back.seconds == 12.5 and back.world_size == 1
    assert back.config == config and back.model.keys() == state.model.keys()
    assert all(torch.equal(back.model[k], v) for k, v in state.model.items())
    assert torch.equal(back.rng.torch, state.rng.torch)


def test_load_refuses_other_files(tmp_path):
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(UnetrError, match="not a unetr resume checkpoint"):
        load_resume(tmp_path / "other.pt")


def test_restore_puts_back_weights_and_refuses_another_roi(tmp_path):
    model, optimizer, scaler, config = _parts()
    save_resume(tmp_path / "last.pt", _state(model, optimizer, scaler, config))
    fresh, fresh_opt, fresh_scaler, _ = _parts()
    with torch.no_grad():
        next(fresh.parameters()).add_(1.0)
    state = restore_resume(tmp_path / "last.pt", model=fresh, optimizer=fresh_opt, scaler=fresh_scaler,
                           config=config, world_size=1, device=torch.device("cpu"))
    assert state.progress.iteration == 4
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    other = dict(config, plan=dict(config["plan"], roi=[48, 48, 48]))
    with pytest.raises(RunSettingsError, match=r"plan.roi \[32, 32, 32\] -> \[48, 48, 48\]"):
        restore_resume(tmp_path / "last.pt", model=fresh, optimizer=fresh_opt, scaler=fresh_scaler, config=other,
                       world_size=1, device=torch.device("cpu"))


def test_rng_state_survives_a_file(tmp_path):
    cpu = torch.device("cpu")
    saved = RngState.capture(cpu)
    torch.save(saved.to_dict(), tmp_path / "rng.pt")
    draws = (random.random(), float(np.random.random()), float(torch.rand(())))
    RngState.from_dict(torch.load(tmp_path / "rng.pt", weights_only=True)).restore(cpu)
    assert (random.random(), float(np.random.random()), float(torch.rand(()))) == draws


def test_progress_counts_and_never_takes_nan_as_best():
    p = Progress()
    p.step_done(2.0)
    p.step_done(4.0)
    assert p.iteration == 2 and p.take_mean_loss() == 3.0 and (p.loss_sum, p.loss_count) == (0.0, 0)
    assert p.take_mean_loss() == 0.0  # no step since: nothing to average
    assert not p.improves(math.nan) and p.best_iteration == 0
    assert p.improves(0.0) and p.best_iteration == 2  # any Dice beats the start
    assert not p.improves(0.0) and p.improves(0.5) and p.best_dice == 0.5


def test_describe_last(tmp_path):
    assert describe_last(tmp_path / "last.pt") == "none written yet"
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    assert describe_last(tmp_path / "last.pt") == f"{tmp_path / 'last.pt'} (iteration ?)"


@pytest.mark.parametrize("section, key, value, refused", [
    ("train", "iterations", 50, False),  # a longer run continues
    ("train", "val_every", 7, False),
    ("train", "checkpoint_every", 9, False),
    ("train", "checkpoint_minutes", 1.0, False),
    ("train", "num_workers", 3, False),
    ("model", "checkpointing", True, False),  # memory, not the model
    ("train", "lr", 3e-4, True),  # optimizer
    ("train", "weight_decay", 0.1, True),
    ("train", "dice_weight", 0.5, True),  # loss
    ("train", "seed", 3, True),
    ("train", "flip_prob", 0.0, True),
    ("model", "hidden_size", 96, True),  # model
    ("plan", "target_spacing", [2.0, 2.0, 2.0], True),  # plan
    ("data", "train", ["a", "b"], True),  # data
])
def test_settings_a_rerun_may_change(section, key, value, refused):
    _, _, _, config = _parts()
    config["data"] = {"train": ["a", "b", "c"], "validation": ["d"]}
    changed = settings_differences(config, {**config, section: {**config[section], key: value}})
    assert bool(changed) == refused
    assert not refused or changed[0].startswith(f"{section}.{key}")


def test_older_runs_are_compared_on_what_they_recorded():
    _, _, _, config = _parts()
    newer = {**config, "data": {"train": ["a"], "validation": []}}  # no data section before
    assert settings_differences(config, newer) == []
    older = {**config, "train": {k: v for k, v in config["train"].items() if k != "class_balanced"}}
    assert settings_differences(older, config) == []  # a setting added since keeps its default


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_a_damaged_last_pt_says_so_and_how_to_start_over(tmp_path, damage):
    model, optimizer, scaler, config = _parts()
    path = tmp_path / "last.pt"
    save_resume(path, _state(model, optimizer, scaler, config))
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00junk" * 100, "empty": b""}[damage])
    with pytest.raises(UnetrError, match="truncated or corrupt.*--restart"):
        load_resume(path)
    with pytest.raises(UnetrError, match="truncated or corrupt"):
        stored_config(tmp_path)


def test_stored_config_prefers_last_pt_then_config_json(tmp_path):
    import json

    assert stored_config(tmp_path) is None
    model, optimizer, scaler, config = _parts()
    (tmp_path / "config.json").write_text(json.dumps({**config, "train": {**config["train"], "lr": 0.5}}))
    assert stored_config(tmp_path)[0]["train"]["lr"] == 0.5
    save_resume(tmp_path / "last.pt", _state(model, optimizer, scaler, config))
    got, where = stored_config(tmp_path)
    assert where == tmp_path / "last.pt" and got == config
