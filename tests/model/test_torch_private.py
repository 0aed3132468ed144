"""The private PyTorch APIs: available on the tested torch, refused (generic paths) outside it."""

import logging
import re
from pathlib import Path

import pytest
import torch

from unetr.model import cpu_kernels as K
from unetr.model import torch_private as P
from unetr.model.layout import to_channels_last
from unetr.model.ops import instance_norm

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


@pytest.fixture
def fresh_check(monkeypatch):
    """Forget the cached decision before and after the test."""
    P.private_apis_available.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    P.private_apis_available.cache_clear()


def test_available_on_the_tested_torch():
    assert P.unavailable_reasons() == []
    assert P.private_apis_available()


def test_pyproject_declares_the_tested_range():
    deps = re.search(r"^dependencies = \[(.*?)^\]", PYPROJECT.read_text(), re.S | re.M).group(1)
    torch_req = re.search(r'"torch([^"]*)"', deps).group(1)
    (lo_major, lo_minor), (hi_major, hi_minor) = P.TESTED_TORCH
    assert torch_req == f">={lo_major}.{lo_minor},<{hi_major}.{hi_minor}"
    assert P.TESTED_TORCH[0] <= torch.__version__ < P.TESTED_TORCH[1]  # the suite runs inside it


def test_another_torch_version_turns_the_fast_paths_off(fresh_check, caplog):
    fresh_check.setattr(P, "TESTED_TORCH", ((1, 0), (2, 0)))
    with caplog.at_level(logging.WARNING, logger="unetr.model.torch_private"):
        assert not K.fast_paths_enabled("cpu")
        assert not K.fast_paths_enabled("cpu")  # decided once: one warning
    assert len(caplog.records) == 1 and "outside the tested range >=1.0,<2.0" in caplog.text
    calls = []
    fresh_check.setattr(K, "instance_norm_cl", lambda *a, **k: calls.append(a))
    x = to_channels_last(torch.randn(1, 3, 4, 4, 4))
    torch.testing.assert_close(instance_norm(x), torch.nn.functional.instance_norm(x.contiguous()),
                               rtol=1e-5, atol=1e-5)
    assert calls == []  # the generic path ran


def test_a_changed_operator_schema_turns_the_fast_paths_off(fresh_check):
    key = ("native_batch_norm", "out")
    fresh_check.setitem(P._SCHEMAS, key, P._SCHEMAS[key].replace("float eps", "float epsilon"))
    reasons = P.unavailable_reasons()
    assert len(reasons) == 1 and reasons[0].startswith("aten::native_batch_norm.out is changed")
    assert not P.private_apis_available()
    fresh_check.setitem(P._SCHEMAS, ("no_such_operator", "default"), "aten::no_such_operator() -> Tensor")
    assert "aten::no_such_operator.default is missing" in P.unavailable_reasons()
