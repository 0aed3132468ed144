"""The UNETR module: shapes, parameter counts, equality with MONAI's UNETR, errors."""

import pytest
import torch

from unetr.config import ModelConfig, preset
from unetr.model import UNETR, build_model

monai_nets = pytest.importorskip("monai.networks.nets")

SMALL = dict(hidden_size=96, mlp_dim=192, num_heads=4)  # MONAI's UNETR always has 12 layers and skips 4/7/10


def _monai_and_ours(in_ch=1, out_ch=3, img=(32, 32, 48), feature_size=8, proj_type="conv", norm="instance",
                    res_block=True, conv_block=True):
    m = monai_nets.UNETR(in_channels=in_ch, out_channels=out_ch, img_size=img, feature_size=feature_size,
                         proj_type=proj_type, norm_name=norm, res_block=res_block, conv_block=conv_block, **SMALL)
    ours = UNETR(in_channels=in_ch, out_channels=out_ch, img_size=img, feature_size=feature_size, proj_type=proj_type,
                 norm=norm, res_block=res_block, conv_block=conv_block, **SMALL)
    return m, ours


def _copy(monai_model, ours):
    sd = {k: v for k, v in monai_model.state_dict().items() if "cross_attn" not in k}
    ours.load_state_dict(sd, strict=True)


def _rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(proj_type="perceptron"),
        dict(res_block=False),
        dict(norm="batch"),
        dict(conv_block=False),
        dict(in_ch=2, img=(48, 32, 64)),
    ],
    ids=["default", "perceptron", "plain-blocks", "batchnorm", "no-conv-block", "2ch-noncubic"],
)
def test_equals_monai_on_shared_weights(kw):
    m, ours = _monai_and_ours(**kw)
    _copy(m, ours)
    m.eval()
    ours.eval()
    x = torch.randn(2, kw.get("in_ch", 1), *kw.get("img", (32, 32, 48)))
    with torch.no_grad():
        expected, got = m(x), ours(x)
    assert got.shape == expected.shape == (2, 3, *x.shape[2:])
    assert _rel_err(got, expected) <= 1e-5


def test_equals_monai_in_training_mode_batchnorm():
    """Batch statistics (train mode) and the backward pass agree too."""
    m, ours = _monai_and_ours(norm="batch")
    _copy(m, ours)
    x = torch.randn(2, 1, 32, 32, 48)
    a, b = m(x), ours(x)
    assert _rel_err(b, a) <= 1e-5
    a.square().mean().backward()
    b.square().mean().backward()
    # Whole-gradient relative error: single entries of deep gradients are ill-conditioned (cancellation),
    # so the layouts' different summation orders move some by 1e-3 of the max; a wrong graph moves it by O(1).
    named = dict(ours.named_parameters())
    ga = torch.cat([p.grad.flatten() for n, p in m.named_parameters() if "cross_attn" not in n])
    gb = torch.cat([named[n].grad.flatten() for n, p in m.named_parameters() if "cross_attn" not in n])
    assert ((ga - gb).norm() / ga.norm()).item() <= 1e-3


def test_paper_parameter_count_matches_monai_forward_parameters():
    ours = build_model(preset("paper", in_channels=1, out_channels=14, img_size=(96, 96, 96)))
    m = monai_nets.UNETR(in_channels=1, out_channels=14, img_size=96)
    dead = sum(p.numel() for n, p in m.named_parameters() if "cross_attn" in n)
    n_ours = sum(p.numel() for p in ours.parameters())
    assert n_ours == 92_784_046
    assert n_ours == sum(p.numel() for p in m.parameters()) - dead
    # every parameter of ours takes part in the forward pass (gets a gradient)
    small = UNETR(in_channels=1, out_channels=3, img_size=(32, 32, 32), **SMALL, feature_size=8)
    small(torch.randn(1, 1, 32, 32, 32)).sum().backward()
    assert [n for n, p in small.named_parameters() if p.grad is None] == []


def test_tutorial_preset_has_the_seed_parameter_count():
    model = build_model(preset("tutorial", in_channels=4, out_channels=3, img_size=(128, 128, 128)))
    assert sum(p.numel() for p in model.parameters()) == 148_955_299


def test_tutorial_variant_every_parameter_is_used():
    cfg = preset("tutorial", in_channels=2, out_channels=3, img_size=(32, 32, 48), hidden_size=64, mlp_dim=64,
                 num_heads=4, num_layers=4, skip_layers=(1, 2, 3, 4))
    model = build_model(cfg)
    out = model(torch.randn(2, 2, 32, 32, 48))
    assert out.shape == (2, 3, 32, 32, 48)
    out.sum().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


@pytest.mark.parametrize("name", ["paper", "small", "tiny"])
def test_presets_build_and_run_on_a_non_cubic_input(name):
    kw = {} if name != "paper" else SMALL
    model = build_model(preset(name, in_channels=1, out_channels=2, img_size=(32, 32, 48), **kw)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 32, 32, 48)).shape == (1, 2, 32, 32, 48)


def test_position_embedding_is_interpolated_for_other_sizes():
    model = UNETR(in_channels=1, out_channels=2, img_size=(32, 32, 32), **SMALL, feature_size=8).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 48, 32, 64)).shape == (1, 2, 48, 32, 64)
        # on the trained grid the interpolation is the identity
        pe = model.vit.patch_embedding
        assert torch.equal(pe.position_embedding_for(pe.grid), pe.position_embeddings)


def test_one_position_embedding_resampler_for_inputs_and_checkpoints():
    """A model run on another grid and a model loaded for that grid see the same position embedding."""
    from unetr.model import load_weights
    from unetr.model.vit import resample_position_embedding

    small = UNETR(in_channels=1, out_channels=2, img_size=(32, 32, 32), **SMALL, feature_size=8)
    large = UNETR(in_channels=1, out_channels=2, img_size=(48, 32, 64), **SMALL, feature_size=8)
    load_weights(large, small.state_dict())
    on_the_fly = small.vit.patch_embedding.position_embedding_for((3, 2, 4))
    assert torch.equal(large.vit.patch_embedding.position_embeddings.detach(), on_the_fly.detach())
    pe = torch.arange(8.0).reshape(1, 8, 1).expand(1, 8, 3)  # a linear ramp along Z on a 2x2x2 grid
    up = resample_position_embedding(pe, (2, 2, 2), (2, 2, 4))
    assert up.shape == (1, 16, 3) and torch.equal(up[0, :4, 0], torch.tensor([0.0, 0.25, 0.75, 1.0]))
    with pytest.raises(ValueError, match="8 tokens"):
        resample_position_embedding(pe, (2, 2, 3), (2, 2, 2))


def test_checkpointing_gives_the_same_gradients():
    torch.manual_seed(1)
    a = UNETR(in_channels=1, out_channels=2, img_size=(32, 32, 32), **SMALL, feature_size=8)
    b = UNETR(in_channels=1, out_channels=2, img_size=(32, 32, 32), **SMALL, feature_size=8, checkpointing=True)
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 1, 32, 32, 32)
    a(x).square().mean().backward()
    b(x).square().mean().backward()
    for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-6, msg=n)
    assert b.checkpointing and not a.checkpointing


def test_attention_maps_have_one_map_per_block():
    model = UNETR(in_channels=1, out_channels=2, img_size=(32, 32, 48), **SMALL, feature_size=8).eval()
    maps = model.attention_maps(torch.randn(1, 1, 32, 32, 48))
    assert len(maps) == 12
    assert maps[0].shape == (1, 4, 12, 12)
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(1, 4, 12))


@pytest.mark.parametrize(
    "shape,match",
    [((1, 2, 32, 32, 32), "input channel"), ((1, 1, 32, 32, 40), "multiple of the patch size"),
     ((1, 32, 32, 32), r"\(B, C, X, Y, Z\)")],
)
def test_bad_inputs_raise_value_errors(shape, match):
    model = UNETR(in_channels=1, out_channels=2, img_size=(32, 32, 32), **SMALL, feature_size=8)
    with pytest.raises(ValueError, match=match):
        model(torch.randn(*shape))


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(hidden_size=100, num_heads=12), "divisible"),
        (dict(img_size=(96, 96, 90)), "multiple of patch_size"),
        (dict(img_size=(96, 96)), "3 values"),
        (dict(variant="swin"), "variant"),
        (dict(norm="group"), "norm"),
        (dict(skip_layers=(4, 7)), "skip_layers"),
        (dict(skip_layers=(7, 4, 10)), "skip_layers"),
        (dict(skip_layers=(4, 7, 13)), "skip_layers"),
        (dict(proj_type="linear"), "proj_type"),
        (dict(mlp_act="swish"), "mlp_act"),
        (dict(dropout=1.5), "dropout"),
        (dict(out_channels=0), "out_channels"),
        (dict(feature_size=0), "feature_size"),
        (dict(patch_size=32, img_size=(96, 96, 96)), "patch_size must be 16"),  # ModelConfig once let 32 pass
        (dict(variant="tutorial", skip_layers=(3, 6, 9, 11)), "deepest skip"),  # UNETR alone refused this
    ],
)
def test_bad_arguments_raise_the_same_error_in_config_and_model(kw, match):
    with pytest.raises(ValueError, match=match) as from_config:
        ModelConfig(**kw)
    with pytest.raises(ValueError, match=match) as from_model:
        UNETR(**{"in_channels": 1, "out_channels": 2, **kw})
    assert str(from_config.value) == str(from_model.value)


def test_unknown_preset_and_config_round_trip():
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge")
    cfg = preset("tutorial", in_channels=4, out_channels=3, img_size=(128, 128, 128))
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown ModelConfig field"):
        ModelConfig.from_dict({**cfg.to_dict(), "hiden_size": 3})
