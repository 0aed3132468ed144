"""Checkpoints: every MONAI release's layout, the tutorial's names, our run directories, and unsafe files.

MONAI 1.6.1 (installed) is the reference network; the layouts of the other releases are built from its
state dict by the key changes between releases:

========  ===================================================================================================
releases  what the state dict holds beyond the layout of 0.9-1.3
========  ===================================================================================================
0.6-0.8   ``vit.patch_embedding.cls_token``; a ``conv3`` and a ``norm3`` in every residual block, also where
          widths agree and they are unused (``norm3`` has keys only with batch norm)
0.9-1.3   nothing (conv3/norm3 only where used, no cls_token, no cross-attention)
1.4-1.5   a whole unused cross-attention per transformer block (``cross_attn.*``, ``norm_cross_attn.*``)
1.6       ``norm_cross_attn.*`` per transformer block (unused)
========  ===================================================================================================
"""

import functools
import math
import os

import pytest
import torch

from unetr.config import preset
from unetr.errors import CheckpointError
from unetr.model import build_model, load_model, save_run
from unetr.model.convert import (
    clean_monai,
    has_residual_blocks,
    infer_model_config,
    tutorial_to_ours,
    unwrap_state_dict,
)

monai_nets = pytest.importorskip("monai.networks.nets")

SMALL = dict(hidden_size=96, mlp_dim=192, num_heads=4)
IMG = (32, 32, 32)


@functools.cache
def _monai(proj_type="conv", norm="instance", res_block=True, in_channels=1, feature_size=8, img=IMG):
    """MONAI's UNETR in eval mode; batch norms get random statistics and affine parameters, so that a
    norm loaded wrongly (or not at all) changes the output."""
    g = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    m = monai_nets.UNETR(in_channels=in_channels, out_channels=3, img_size=img, feature_size=feature_size,
                         proj_type=proj_type, norm_name=norm, res_block=res_block, **SMALL).eval()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm3d):
                c = mod.num_features
                mod.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
                mod.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                mod.weight.copy_(torch.rand(c, generator=g) + 0.5)
                mod.bias.copy_(torch.rand(c, generator=g) - 0.5)
    return m


def _canonical(m):
    """MONAI 0.9-1.3: no cross-attention keys at all."""
    return {k: v.clone() for k, v in m.state_dict().items() if "cross_attn" not in k}


def _layout_1_6(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def _layout_1_4(m):
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


def _layout_0_6(m):
    """MONAI 0.6-0.8 (the official BTCV checkpoint): cls_token, and conv3 + norm3 in every residual block."""
    sd = _canonical(m)
    sd["vit.patch_embedding.cls_token"] = torch.zeros(1, 1, SMALL["hidden_size"])
    batch = any(k.endswith("running_mean") for k in sd)
    residual = any(".conv3." in k for k in sd)
    blocks = [k[: -len(".conv1.conv.weight")] for k in sd if k.endswith(".conv1.conv.weight")]
    for b in blocks if residual else []:
        if f"{b}.conv3.conv.weight" in sd:
            continue
        c_out, c_in = sd[f"{b}.conv1.conv.weight"].shape[:2]
        sd[f"{b}.conv3.conv.weight"] = torch.randn(c_out, c_in, 1, 1, 1)
        if batch:
            norm = torch.nn.BatchNorm3d(c_out)
            with torch.no_grad():
                norm.running_mean.normal_()
                norm.weight.normal_()
            sd.update({f"{b}.norm3.{k}": v for k, v in norm.state_dict().items()})
    return sd


LAYOUTS = {"0.6-0.8": _layout_0_6, "0.9-1.3": _canonical, "1.4-1.5": _layout_1_4, "1.6": _layout_1_6}


def _wrap(sd, wrap):
    if wrap == "state_dict":  # as the official BTCV checkpoint: {"epoch", "best_acc", "state_dict"}
        return {"epoch": 10, "best_acc": 0.8, "state_dict": sd}
    if wrap == "module":  # saved from DataParallel / DDP without unwrapping
        return {"module." + k: v for k, v in sd.items()}
    return sd


@pytest.mark.parametrize("wrap", ["bare", "state_dict", "module"])
@pytest.mark.parametrize("res_block", [True, False], ids=["res", "plain"])
@pytest.mark.parametrize("norm", ["instance", "batch"])
@pytest.mark.parametrize("proj_type", ["conv", "perceptron"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_monai_layout_loads_and_gives_monai_outputs(tmp_path, layout, proj_type, norm, res_block, wrap):
    m = _monai(proj_type, norm, res_block)
    sd = LAYOUTS[layout](m)
    path = tmp_path / "UNETR_model_best_acc.pth"
    torch.save(_wrap(sd, wrap), path)
    model, info = load_model(path, num_heads=4)
    assert info["source"] == "monai"
    got = {k: info["model"][k] for k in ("proj_type", "norm", "res_block", "feature_size", "patch_size")}
    assert got == dict(proj_type=proj_type, norm=norm, res_block=res_block, feature_size=8, patch_size=16)
    assert tuple(info["model"]["img_size"]) == IMG
    x = torch.randn(1, 1, *IMG)
    with torch.no_grad():
        torch.testing.assert_close(model(x), m(x), rtol=1e-5, atol=1e-5)


def test_the_0_6_layout_is_what_monai_refuses():
    """Sanity: current MONAI refuses the 0.6-0.8 layout that we load (research-contributions#170)."""
    m = _monai(norm="batch")
    with pytest.raises(RuntimeError, match="cls_token") as e:
        m.load_state_dict(_layout_0_6(m), strict=True)
    assert "encoder2.blocks.0.1.norm3.running_mean" in str(e.value)  # the unused norm3 of batch norm


@pytest.mark.parametrize("layout", ["0.6-0.8", "1.6"])
@pytest.mark.parametrize("res_block", [True, False], ids=["res", "plain"])
def test_residual_blocks_are_read_from_the_keys_when_widths_agree(tmp_path, layout, res_block):
    """in_channels == feature_size: a plain-block checkpoint is not taken for a residual one."""
    m = _monai(norm="batch", res_block=res_block, in_channels=8, feature_size=8)
    sd = LAYOUTS[layout](m)
    assert has_residual_blocks(clean_monai(sd)) is res_block
    torch.save(sd, tmp_path / "m.pt")
    model, info = load_model(tmp_path / "m.pt", num_heads=4)
    assert info["model"]["res_block"] is res_block and info["model"]["in_channels"] == 8
    x = torch.randn(1, 8, *IMG)
    with torch.no_grad():
        torch.testing.assert_close(model(x), m(x), rtol=1e-5, atol=1e-5)


def test_only_unused_projections_are_dropped():
    """A square conv3 (C -> C) is dead and dropped with its norm3; a projection between widths is kept."""
    sd = _layout_0_6(_monai(norm="batch"))
    kept = clean_monai(sd)
    assert "encoder2.blocks.0.1.conv3.conv.weight" not in kept
    assert not any(k.startswith("encoder2.blocks.0.1.norm3.") for k in kept)
    assert "decoder2.conv_block.conv3.conv.weight" in kept and "decoder2.conv_block.norm3.running_var" in kept
    assert "encoder1.layer.conv3.conv.weight" in kept  # 1 -> 8 channels: used


@pytest.mark.parametrize("res_block,missing_or_unexpected", [(True, "unexpected keys"), (False, "missing keys")])
def test_a_res_block_override_against_the_weights_is_refused(tmp_path, res_block, missing_or_unexpected):
    m = _monai(res_block=res_block)
    torch.save(_canonical(m), tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match=missing_or_unexpected) as e:
        load_model(tmp_path / "m.pt", num_heads=4, res_block=not res_block)
    assert "decoder2.conv_block.conv3.conv.weight" in str(e.value)
    model, info = load_model(tmp_path / "m.pt", num_heads=4, res_block=res_block)  # agreeing is fine
    assert info["model"]["res_block"] is res_block


def test_what_the_weights_cannot_say_is_marked_assumed():
    kw, assumed = infer_model_config(_canonical(_monai()))
    assert set(assumed) == {"num_heads", "img_size"}
    assert kw["num_heads"] == 12 and "MONAI's default" in assumed["num_heads"]
    assert kw["img_size"] == IMG and "2×2×2" in assumed["img_size"]
    # the perceptron's patch size comes from its width and the stem's channels, not a fixed 16
    kw, _ = infer_model_config(_canonical(_monai("perceptron", in_channels=2)))
    assert (kw["patch_size"], kw["in_channels"], kw["proj_type"]) == (16, 2, "perceptron")


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
