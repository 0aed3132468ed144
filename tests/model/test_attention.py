"""Attention: the SDPA path and the manual path agree; dropout only in training mode."""

import pytest
import torch

from unetr.model.attention import Attention, manual_attention


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_sdpa_and_manual_paths_agree(qkv_bias):
    attn = Attention(hidden_size=64, num_heads=4, qkv_bias=qkv_bias).eval()
    x = torch.randn(2, 27, 64)
    fused = attn(x)
    manual, weights = attn.forward_with_weights(x)
    torch.testing.assert_close(fused, manual, rtol=1e-5, atol=1e-6)
    assert weights.shape == (2, 4, 27, 27)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 27))


def test_manual_attention_matches_sdpa_functional():
    q, k, v = (torch.randn(2, 3, 10, 8) for _ in range(3))
    torch.testing.assert_close(manual_attention(q, k, v), torch.nn.functional.scaled_dot_product_attention(q, k, v))


def test_dropout_is_off_in_eval_and_on_in_training():
    attn = Attention(hidden_size=32, num_heads=2, dropout=0.5)
    x = torch.randn(1, 16, 32)
    attn.eval()
    torch.testing.assert_close(attn(x), attn(x))
    attn.train()
    assert not torch.allclose(attn(x), attn(x))


def test_head_layout_matches_monai_sablock():
    sab = pytest.importorskip("monai.networks.blocks").SABlock(hidden_size=48, num_heads=4, dropout_rate=0.0)
    ours = Attention(hidden_size=48, num_heads=4)
    ours.load_state_dict({k: v for k, v in sab.state_dict().items()}, strict=True)
    x = torch.randn(2, 9, 48)
    torch.testing.assert_close(ours.eval()(x), sab.eval()(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kw,match", [(dict(hidden_size=30, num_heads=4), "divisible"),
                                      (dict(hidden_size=32, num_heads=4, dropout=-0.1), "dropout")])
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        Attention(**kw)
