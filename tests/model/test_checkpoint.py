"""Self-describing checkpoints: the model config travels in the safetensors metadata; bare weights have every
setting logged; a model loads at another ROI from the grid it was trained on."""

import json
import logging
import shutil

import pytest
import torch

from unetr.config import ModelConfig, preset
from unetr.errors import CheckpointError
from unetr.model import build_model, load_model, save_run, save_safetensors
from unetr.model.checkpoint import read_metadata
from unetr.model.vit import resample_position_embedding

PE = "vit.patch_embedding.position_embeddings"


def _tiny(img_size, **kw):
    torch.manual_seed(1)
    cfg = preset("tiny", in_channels=1, out_channels=3, img_size=img_size, **kw)
    return cfg, build_model(cfg).eval()


def test_the_safetensors_file_alone_rebuilds_the_model(tmp_path):
    """The tiny preset has 4 heads, which no weight shape shows (192 wide: 3 heads of 64 or 12 of 16)."""
    cfg, model = _tiny((32, 32, 32))
    save_run(tmp_path / "run", model, cfg)
    meta = read_metadata(tmp_path / "run" / "model.safetensors")
    assert list(meta) == ["unetr"]  # one key: safetensors writes several in no fixed order
    assert json.loads(meta["unetr"]) == {"format": "unetr-run", "model": cfg.to_dict()}
    alone = tmp_path / "elsewhere" / "tiny.safetensors"  # no config.json beside it
    alone.parent.mkdir()
    shutil.copy(tmp_path / "run" / "model.safetensors", alone)
    loaded, info = load_model(alone)
    assert info["source"] == "unetr" and info["model"] == cfg.to_dict()
    assert loaded.vit.blocks[0].attn.num_heads == 4
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_the_same_weights_give_the_same_file(tmp_path):
    """Byte for byte: safetensors writes several metadata keys in an order that changes from one save to the
    next (even within a process), so the config travels under one key."""
    cfg, model = _tiny((32, 32, 48))
    for i in range(8):
        save_run(tmp_path / str(i), model, cfg)
    files = {(tmp_path / str(i) / "model.safetensors").read_bytes() for i in range(8)}
    assert len(files) == 1


def test_save_safetensors_with_a_config_and_ddp_wrapper(tmp_path):
    cfg, model = _tiny((32, 32, 48))

    class Wrapper(torch.nn.Module):  # DDP's shape: the network under .module
        def __init__(self, module):
            super().__init__()
            self.module = module

    save_safetensors(tmp_path / "m.safetensors", Wrapper(model), config=cfg)
    loaded, info = load_model(tmp_path / "m.safetensors")
    assert ModelConfig.from_dict(info["model"]) == cfg
    assert set(loaded.state_dict()) == set(model.state_dict())


def test_the_stored_config_wins_over_a_stale_config_json(tmp_path, caplog):
    cfg, model = _tiny((32, 32, 32))
    save_run(tmp_path, model, cfg)
    doc = json.loads((tmp_path / "config.json").read_text())
    doc["model"]["num_heads"] = 3
    (tmp_path / "config.json").write_text(json.dumps(doc))
    with caplog.at_level(logging.WARNING):
        loaded, info = load_model(tmp_path)
    assert info["model"]["num_heads"] == 4 and "another model" in caplog.text


def test_an_override_of_a_stored_setting_is_said(tmp_path, caplog):
    cfg, model = _tiny((32, 32, 32))
    save_run(tmp_path, model, cfg)
    with caplog.at_level(logging.WARNING):
        _, info = load_model(tmp_path, num_heads=2)
    assert info["model"]["num_heads"] == 2 and "num_heads=2 (stored 4)" in caplog.text


def test_bare_weights_log_every_setting_and_take_overrides(tmp_path, caplog):
    monai_nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    m = monai_nets.UNETR(in_channels=1, out_channels=3, img_size=32, feature_size=8, hidden_size=96, mlp_dim=192,
                         num_heads=4, res_block=False).eval()
    torch.save({"state_dict": m.state_dict()}, tmp_path / "monai.pth")
    with caplog.at_level(logging.INFO, logger="unetr.model.checkpoint"):
        _, info = load_model(tmp_path / "monai.pth")
    lines = {ln.split()[0]: ln for ln in caplog.text.splitlines() if ln.startswith("  ")}
    assert set(lines) == set(ModelConfig.__dataclass_fields__)  # every setting, one line each
    assert "assumed" in lines["num_heads"] and "12" in lines["num_heads"]  # MONAI's default, said to be a guess
    assert "assumed" in lines["img_size"] and "(32, 32, 32)" in lines["img_size"]
    assert "read from the weights" in lines["res_block"] and "False" in lines["res_block"]
    assert "read from the weights" in lines["hidden_size"]
    assert info["model"]["num_heads"] == 12
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="unetr.model.checkpoint"):
        model, info = load_model(tmp_path / "monai.pth", num_heads=4)
    assert info["model"]["num_heads"] == 4
    assert [ln for ln in caplog.text.splitlines() if ln.startswith("  num_heads")][0].endswith("given")
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), m(x), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------ ROI: the grid the weights were trained on


def test_a_non_cubic_run_loads_at_another_window(tmp_path):
    """The demo's 64×64×48 crop (a 4×4×3 grid of 48 tokens, no cube) run at 96³."""
    cfg, model = _tiny((64, 64, 48))
    save_run(tmp_path, model, cfg)
    loaded, info = load_model(tmp_path, img_size=(96, 96, 96))
    assert tuple(info["model"]["img_size"]) == (96, 96, 96) and info["trained_img_size"] == [64, 64, 48]
    want = resample_position_embedding(model.state_dict()[PE], (4, 4, 3), (6, 6, 6))
    torch.testing.assert_close(loaded.state_dict()[PE], want, rtol=0, atol=0)
    with torch.no_grad():
        assert loaded(torch.randn(1, 1, 96, 96, 96)).shape == (1, 3, 96, 96, 96)


def test_a_cube_count_of_tokens_is_not_taken_for_a_cube(tmp_path):
    """32×64×128 is a 2×4×8 grid of 64 tokens; at 64³ (4×4×4, also 64 tokens) it must be resampled, not reused."""
    cfg, model = _tiny((32, 64, 128))
    save_run(tmp_path, model, cfg)
    loaded, _ = load_model(tmp_path, img_size=(64, 64, 64))
    stored = model.state_dict()[PE]
    want = resample_position_embedding(stored, (2, 4, 8), (4, 4, 4))
    got = loaded.state_dict()[PE]
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert not torch.equal(got, stored)
    # at its own ROI nothing is resampled
    same, _ = load_model(tmp_path)
    assert torch.equal(same.state_dict()[PE], stored)


def test_bare_non_cubic_weights_need_their_training_roi(tmp_path):
    monai_nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    m = monai_nets.UNETR(in_channels=1, out_channels=3, img_size=(32, 32, 48), feature_size=8, hidden_size=96,
                         mlp_dim=192, num_heads=4).eval()
    torch.save(m.state_dict(), tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="12 tokens, which is no cube.*trained at"):
        load_model(tmp_path / "m.pt", num_heads=4)
    model, info = load_model(tmp_path / "m.pt", num_heads=4, img_size=(32, 32, 48))
    assert info["trained_img_size"] == [32, 32, 48]
    x = torch.randn(1, 1, 32, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(model(x), m(x), rtol=1e-5, atol=1e-5)


def test_weights_that_do_not_fit_their_stated_roi_are_refused(tmp_path):
    from unetr.model import load_weights

    cfg, model = _tiny((32, 32, 48))
    with pytest.raises(CheckpointError, match="not the 2×2×2 patch grid"):
        load_weights(build_model(cfg), model.state_dict(), trained_img_size=(32, 32, 32))
