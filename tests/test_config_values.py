"""Values from --set and YAML arrive as their field's type, or fail with one line naming key, type and value."""

import pytest

from unetr.config import ModelConfig, Plan, TrainConfig, coerce_fields, parse_set


@pytest.mark.parametrize("item, key, expected", [
    ("lr=1e-4", "lr", 1e-4),                 # YAML 1.1 reads 1e-4 as a string
    ("lr=3", "lr", 3.0),
    ("channels_last=false", "channels_last", False),
    ("channels_last=1", "channels_last", True),
    ("tensorboard=No", "tensorboard", False),
    ("batch_size=2", "batch_size", 2),
    ("iterations=2.0", "iterations", 2),
])
def test_train_values_are_converted(item, key, expected):
    cfg = TrainConfig.from_dict(parse_set([item]))
    value = getattr(cfg, key)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("item, message", [
    ("batch_size=1.5", "batch_size: expected int, got 1.5"),
    ("channels_last=maybe", "channels_last: expected bool, got 'maybe'"),
    ("lr=fast", "lr: expected float, got 'fast'"),
    ("device=0", "device: expected str, got 0"),
    ("precison=bf16", "did you mean precision"),
])
def test_bad_values_name_key_type_and_value(item, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        TrainConfig.from_dict(parse_set([item]))


def test_tuples_and_nested_sections():
    plan = coerce_fields(Plan, parse_set(["roi=[64,64,32]", "target_spacing=1.5"]), "plan.")
    assert plan == {"roi": (64, 64, 32), "target_spacing": 1.5}
    assert Plan(**plan).target_spacing == (1.5, 1.5, 1.5)
    with pytest.raises(ValueError, match=r"plan\.roi: expected 3 values"):
        coerce_fields(Plan, {"roi": [64, 64]}, "plan.")
    with pytest.raises(ValueError, match=r"unknown ModelConfig field model\.bogus"):
        coerce_fields(ModelConfig, {"bogus": 1}, "model.")
    assert coerce_fields(ModelConfig, {"dropout": "0.1", "res_block": "false"}) == {"dropout": 0.1, "res_block": False}


def test_yaml_file_values(tmp_path):
    from unetr.config import load_yaml

    (tmp_path / "train.yaml").write_text("lr: 1e-4\nweight_decay: 1e-5\nchannels_last: false\n")
    cfg = TrainConfig.from_dict(load_yaml(tmp_path / "train.yaml"))
    assert cfg.lr == 1e-4 and cfg.weight_decay == 1e-5 and cfg.channels_last is False
