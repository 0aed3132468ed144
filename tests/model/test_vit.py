"""The encoder's position embedding on other grids, and the routes out of Python: torch.export here, tracing
and ONNX in tests/test_export.py, and a refusal from torch.jit.script that names them."""

import pytest
import torch

from unetr.config import preset
from unetr.model import build_model
from unetr.model.vit import resample_position_embedding


def test_resampling_follows_the_true_grid():
    """A (2, 4, 8) grid whose values are their own Z index resamples to (4, 4, 4) with Z still varying fastest."""
    z = torch.arange(8.0).repeat(2 * 4)  # token (x, y, z) -> z, X slowest and Z fastest
    pe = z[None, :, None].repeat(1, 1, 3)  # (1, 64, E=3)
    out = resample_position_embedding(pe, (2, 4, 8), (4, 4, 4))
    grid = out[0, :, 0].reshape(4, 4, 4)
    assert torch.all(grid[:, :, 1:] > grid[:, :, :-1])  # increasing along Z ...
    assert torch.equal(grid[0], grid[3]) and torch.equal(grid[:, 0], grid[:, 3])  # ... and constant along X, Y
    assert resample_position_embedding(pe, (2, 4, 8), (2, 4, 8)) is pe


def test_resampling_refuses_a_grid_of_another_size():
    with pytest.raises(ValueError, match="64 tokens does not fit the patch grid"):
        resample_position_embedding(torch.zeros(1, 64, 3), (3, 3, 3), (4, 4, 4))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model(preset("tiny", in_channels=1, out_channels=3, img_size=(32, 32, 48))).eval()


def test_torch_jit_script_says_what_works_instead(tiny):
    with pytest.raises(NotImplementedError, match="torch.jit.trace") as e:
        torch.jit.script(tiny)
    assert "onnx" in str(e.value) and "torch.export" in str(e.value)
    with pytest.raises(NotImplementedError, match="torch.jit.script"):
        torch.jit.script(tiny.vit)


def test_torch_export_matches_eager(tiny):
    x = torch.randn(1, 1, 32, 32, 48)
    program = torch.export.export(tiny, (x,))
    y = torch.randn(1, 1, 32, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(y), tiny(y), rtol=1e-4, atol=1e-4)
