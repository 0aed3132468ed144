"""Checkpoints: every MONAI generation, the tutorial's names, our run directories, and unsafe files."""

import math
import os

import pytest
import torch

from unetr.config import preset
from unetr.errors import CheckpointError
from unetr.model import build_model, load_model, save_run
from unetr.model.convert import tutorial_to_ours, unwrap_state_dict

monai_nets = pytest.importorskip("monai.networks.nets")

SMALL = dict(hidden_size=96, mlp_dim=192, num_heads=4)
IMG = (32, 32, 32)


def _monai(proj_type="conv"):
    torch.manual_seed(3)
    return monai_nets.UNETR(in_channels=1, out_channels=3, img_size=IMG, feature_size=8, proj_type=proj_type,
                            **SMALL).eval()


def _canonical(m):
    """MONAI 0.9-1.3 layout: no cross-attention keys at all."""
    return {k: v.clone() for k, v in m.state_dict().items() if "cross_attn" not in k}


def _gen_1_6(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def _gen_1_4(m):
    sd = _canonical(m)
    e = SMALL["hidden_size"]
    for i in range(12):
        p = f"vit.blocks.{i}."
        sd[p + "norm_cross_attn.weight"] = torch.ones(e)
        sd[p + "norm_cross_attn.bias"] = torch.zeros(e)
        for n in ("to_q", "to_k", "to_v"):
            sd[p + f"cross_attn.{n}.weight"] = torch.randn(e, e)
        sd[p + "cross_attn.out_proj.weight"] = torch.randn(e, e)
        sd[p + "cross_attn.out_proj.bias"] = torch.randn(e)
    return sd


def _gen_0_8(m):
    """MONAI <= 0.8 (the official BTCV checkpoint): cls_token and unused conv3 in same-width residual blocks."""
    sd = _canonical(m)
    sd["vit.patch_embedding.cls_token"] = torch.zeros(1, 1, SMALL["hidden_size"])
    for k in ("encoder2.blocks.0.1", "encoder2.blocks.1.1", "encoder3.blocks.0.1"):
        c = sd[f"{k}.conv1.conv.weight"].shape[0]
        sd[f"{k}.conv3.conv.weight"] = torch.randn(c, c, 1, 1, 1)
    return sd


@pytest.mark.parametrize("proj_type", ["conv", "perceptron"])
@pytest.mark.parametrize("generation", [_gen_0_8, _canonical, _gen_1_4, _gen_1_6], ids=["0.8", "0.9-1.3", "1.4-1.5", "1.6"])
@pytest.mark.parametrize("wrap", ["bare", "state_dict+module", "backbone"])
def test_monai_generations_load_and_give_monai_outputs(tmp_path, generation, proj_type, wrap):
    m = _monai(proj_type)
    sd = generation(m)
    if wrap == "state_dict+module":
        obj = {"epoch": 10, "best_acc": 0.8, "state_dict": {"module." + k: v for k, v in sd.items()}}
    elif wrap == "backbone":
        obj = {"backbone." + k: v for k, v in sd.items()}
    else:
        obj = sd
    path = tmp_path / "UNETR_model_best_acc.pth"
    torch.save(obj, path)
    model, info = load_model(path, num_heads=4)
    assert info["source"] == "monai"
    assert info["model"]["proj_type"] == proj_type and info["model"]["feature_size"] == 8
    assert tuple(info["model"]["img_size"]) == IMG
    x = torch.randn(1, 1, *IMG)
    with torch.no_grad():
        torch.testing.assert_close(model(x), m(x), rtol=1e-5, atol=1e-5)


def test_generation_0_8_keys_are_what_monai_refuses():
    """Sanity: current MONAI refuses the <=0.8 layout that we load (research-contributions#170)."""
    m = _monai()
    with pytest.raises(RuntimeError, match="cls_token"):
        m.load_state_dict(_gen_0_8(m), strict=True)


def test_position_embedding_is_resampled_for_another_roi(tmp_path):
    m = _monai()
    torch.save(_canonical(m), tmp_path / "m.pt")
    model, _ = load_model(tmp_path / "m.pt", num_heads=4, img_size=(48, 48, 32))
    assert model.vit.patch_embedding.position_embeddings.shape == (1, 3 * 3 * 2, 96)
    with torch.no_grad():
        assert model(torch.randn(1, 1, 48, 48, 32)).shape == (1, 3, 48, 48, 32)


def test_architecture_mismatch_lists_keys_and_shapes(tmp_path):
    m = _monai()
    sd = _canonical(m)
    del sd["out.conv.conv.bias"]
    sd["decoder9.extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "m.pt")
    target = build_model(preset("paper", in_channels=1, out_channels=5, img_size=IMG, feature_size=8, **SMALL))
    from unetr.model import load_weights
    from unetr.model.checkpoint import read_checkpoint

    with pytest.raises(CheckpointError) as e:
        load_weights(target, read_checkpoint(tmp_path / "m.pt"), source="m.pt")
    msg = str(e.value)
    assert "missing keys (1): out.conv.conv.bias" in msg
    assert "unexpected keys (1): decoder9.extra.weight" in msg
    assert "out.conv.conv.weight: checkpoint (3, 8, 1, 1, 1) vs model (5, 8, 1, 1, 1)" in msg


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('UNETR_EVIL_MARKER', '/tmp/unetr_evil_marker')}",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("UNETR_EVIL_MARKER", str(marker))
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Evil()}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_model(path)
    assert not marker.exists()


@pytest.mark.parametrize("content,match", [(b"not a checkpoint at all", "not a readable"),
                                            (None, "no tensors")])
def test_files_that_are_not_models(tmp_path, content, match):
    path = tmp_path / "x.pt"
    if content is None:
        torch.save({"epoch": 3, "lr": 0.1}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        load_model(path)


def test_run_directory_round_trip(tmp_path):
    cfg = preset("tiny", in_channels=2, out_channels=3, img_size=(32, 32, 48))
    model = build_model(cfg).eval()
    save_run(tmp_path / "run", model, cfg, plan={"roi": [32, 32, 48]})
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json", "model.safetensors"]
    loaded, info = load_model(tmp_path / "run")
    assert info["plan"] == {"roi": [32, 32, 48]} and info["source"] == "unetr"
    x = torch.randn(1, 2, 32, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    # the safetensors file alone works too (config.json beside it is read)
    loaded2, _ = load_model(tmp_path / "run" / "model.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(loaded2(x), model(x), rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="not a run directory"):
        load_model(tmp_path)


def _to_tutorial_names(sd):
    """Our tutorial state dict under tamasino52's names (separate query/key/value)."""
    out = {}
    names = {"norm1": "attention_norm", "norm2": "mlp_norm", "attn.out_proj": "attn.out", "mlp.linear1": "mlp.w_1",
             "mlp.linear2": "mlp.w_2"}
    for k, v in sd.items():
        if k.startswith("vit.patch_embedding.patch_embeddings."):
            out["transformer.embeddings.patch_embeddings." + k.rsplit(".", 1)[1]] = v
        elif k == "vit.patch_embedding.position_embeddings":
            out["transformer.embeddings.position_embeddings"] = v
        elif k.startswith("vit.norm."):
            out["transformer.encoder_norm." + k.rsplit(".", 1)[1]] = v
        elif k.startswith("vit.blocks."):
            i, rest = k[len("vit.blocks."):].split(".", 1)
            mod, part = rest.rsplit(".", 1)
            if mod == "attn.qkv":
                for n, t in zip(("query", "key", "value"), v.chunk(3, dim=0)):
                    out[f"transformer.layer.{i}.attn.{n}.{part}"] = t
            else:
                out[f"transformer.layer.{i}.{names[mod]}.{part}"] = v
        else:
            out[k] = v
    return out


def _reference_tutorial_encoder(sd, x, num_heads, layers):
    """Independent re-statement of the tutorial's encoder on its own key names (separate q, k, v)."""
    f = torch.nn.functional
    t = f.conv3d(x, sd["transformer.embeddings.patch_embeddings.weight"], sd["transformer.embeddings.patch_embeddings.bias"],
                 stride=16).flatten(2).transpose(-1, -2) + sd["transformer.embeddings.position_embeddings"]
    outs = []
    for i in range(layers):
        p = f"transformer.layer.{i}."
        h = t
        y = f.layer_norm(t, t.shape[-1:], sd[p + "attention_norm.weight"], sd[p + "attention_norm.bias"], eps=1e-6)
        q, k, v = (f.linear(y, sd[p + f"attn.{n}.weight"], sd[p + f"attn.{n}.bias"]) for n in ("query", "key", "value"))
        b, n, e = q.shape
        q, k, v = (z.view(b, n, num_heads, e // num_heads).permute(0, 2, 1, 3) for z in (q, k, v))
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(e // num_heads), -1) @ v
        y = f.linear(a.permute(0, 2, 1, 3).reshape(b, n, e), sd[p + "attn.out.weight"], sd[p + "attn.out.bias"])
        t = y + h
        h = t
        y = f.layer_norm(t, t.shape[-1:], sd[p + "mlp_norm.weight"], sd[p + "mlp_norm.bias"], eps=1e-6)
        y = f.linear(torch.relu(f.linear(y, sd[p + "mlp.w_1.weight"], sd[p + "mlp.w_1.bias"])),
                     sd[p + "mlp.w_2.weight"], sd[p + "mlp.w_2.bias"])
        t = y + h
        outs.append(t)
    return outs


def test_tutorial_state_dict_loads_into_the_tutorial_preset(tmp_path):
    cfg = preset("tutorial", in_channels=2, out_channels=3, img_size=(32, 32, 32), hidden_size=64, mlp_dim=128,
                 num_heads=4, num_layers=4, skip_layers=(1, 2, 3, 4))
    src = build_model(cfg).eval()
    tut = _to_tutorial_names(src.state_dict())
    assert "transformer.layer.0.attn.query.weight" in tut
    torch.save({"state_dict": tut}, tmp_path / "tamasino.pth")
    model, info = load_model(tmp_path / "tamasino.pth", num_heads=4)
    assert info["source"] == "tutorial"
    x = torch.randn(1, 2, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), src(x), rtol=0, atol=0)
        # the fused qkv reproduces the tutorial's separate query/key/value attention
        _, hidden = model.vit(x)
        ref = _reference_tutorial_encoder(tut, x, num_heads=4, layers=4)
    for got, want in zip(hidden, ref):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert set(tutorial_to_ours(tut)) == set(src.state_dict())


def test_unwrap_rejects_empty_and_finds_nested():
    with pytest.raises(CheckpointError):
        unwrap_state_dict({})
    sd = unwrap_state_dict({"model": {"module.backbone.vit.x": torch.zeros(1)}})
    assert list(sd) == ["vit.x"]
