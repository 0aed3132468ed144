"""The private PyTorch APIs the model uses, in one place, behind one version check.

The CPU kernels (:mod:`unetr.model.cpu_kernels`) call three ATen operators that are not part of PyTorch's
public Python API, and the model asks one private function whether a dispatch mode is active:

- ``aten::mkldnn_convolution``: oneDNN's convolution, called directly;
- ``aten::native_batch_norm.out`` / ``aten::native_batch_norm_backward.out``: batch norm's kernels writing
  into given tensors (instance norm of a channels-last volume, one case at a time);
- ``torch.utils._python_dispatch._get_current_dispatch_mode``: whether a Python dispatch mode (FLOP
  counting, fake tensors) is active, which knows ``aten::convolution`` but not the oneDNN operator.

Such operators change their signatures or semantics between minor releases without notice. They are used
only when :func:`private_apis_available` says so: the running torch lies in :data:`TESTED_TORCH` (the range
``pyproject.toml`` declares and the test suite runs) and every operator has the schema the calls below were
written for. Otherwise the model takes its generic paths (public operators only) on every device, and a
warning says so once.
"""

from __future__ import annotations

import functools
import logging
from typing import List, Optional, Sequence, Tuple

import torch

log = logging.getLogger(__name__)

# [lowest, first untested) (major, minor): keep equal to pyproject.toml's torch requirement (a test checks).
TESTED_TORCH: Tuple[Tuple[int, int], Tuple[int, int]] = ((2, 13), (2, 14))

# The schemas the calls in this module were written against (torch 2.13).
_SCHEMAS = {
    ("mkldnn_convolution", "default"):
        "aten::mkldnn_convolution(Tensor self, Tensor weight, Tensor? bias, SymInt[] padding, SymInt[] stride, "
        "SymInt[] dilation, SymInt groups) -> Tensor",
    ("native_batch_norm", "out"):
        "aten::native_batch_norm.out(Tensor input, Tensor? weight, Tensor? bias, Tensor? running_mean, "
        "Tensor? running_var, bool training, float momentum, float eps, *, Tensor(a!) out, Tensor(b!) save_mean, "
        "Tensor(c!) save_invstd) -> (Tensor(a!), Tensor(b!), Tensor(c!))",
    ("native_batch_norm_backward", "out"):
        "aten::native_batch_norm_backward.out(Tensor grad_out, Tensor input, Tensor? weight, Tensor? running_mean, "
        "Tensor? running_var, Tensor? save_mean, Tensor? save_invstd, bool train, float eps, bool[3] output_mask, *, "
        "Tensor(a!) out0, Tensor(b!) out1, Tensor(c!) out2) -> (Tensor(a!), Tensor(b!), Tensor(c!))",
}

try:
    from torch.utils._python_dispatch import _get_current_dispatch_mode
except ImportError:  # pragma: no cover - only on a torch outside the tested range
    _get_current_dispatch_mode = None


def _schema(name: str, overload: str) -> Optional[str]:
    packet = getattr(torch.ops.aten, name, None)
    op = getattr(packet, overload, None) if packet is not None else None
    return None if op is None else str(op._schema)


def unavailable_reasons() -> List[str]:
    """Why the private APIs cannot be used with the running torch (empty when they can)."""
    reasons = []
    low, high = TESTED_TORCH
    if not low <= torch.__version__ < high:
        reasons.append(f"torch {torch.__version__} is outside the tested range "
                       f">={low[0]}.{low[1]},<{high[0]}.{high[1]}")
    for (name, overload), want in _SCHEMAS.items():
        got = _schema(name, overload)
        if got != want:
            reasons.append(f"aten::{name}.{overload} is {'missing' if got is None else 'changed: ' + got}")
    if _get_current_dispatch_mode is None:
        reasons.append("torch.utils._python_dispatch._get_current_dispatch_mode is missing")
    return reasons


@functools.cache
def private_apis_available() -> bool:
    """Whether the CPU kernels may call the private operators (decided once per process)."""
    reasons = unavailable_reasons()
    if reasons:
        log.warning("unetr: CPU fast paths off, the model runs its generic paths (%s)", "; ".join(reasons))
    return not reasons


def dispatch_mode_active() -> bool:
    """Whether a Python dispatch mode (``FlopCounterMode``, fake tensors ...) is active."""
    return _get_current_dispatch_mode is not None and _get_current_dispatch_mode() is not None


def mkldnn_convolution(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], padding: Sequence[int],
                       stride: Sequence[int], dilation: Sequence[int], groups: int) -> torch.Tensor:
    """oneDNN's convolution, as ``F.conv3d`` takes its arguments (autograd-aware)."""
    return torch.ops.aten.mkldnn_convolution(x, weight, bias, padding, stride, dilation, groups)


def batch_norm_into(v: torch.Tensor, eps: float, out: torch.Tensor, save_mean: torch.Tensor,
                    save_invstd: torch.Tensor) -> None:
    """Training-mode batch norm of ``v`` ``(N, C)`` without affine or running statistics, written into ``out``
    ``(N, C)``; the statistics ``(C,)`` go to ``save_mean`` and ``save_invstd``."""
    torch.ops.aten.native_batch_norm.out(v, None, None, None, None, True, 0.0, eps,
                                         out=out, save_mean=save_mean, save_invstd=save_invstd)


def batch_norm_backward_into(grad: torch.Tensor, v: torch.Tensor, mean: torch.Tensor, invstd: torch.Tensor,
                             eps: float, grad_input: torch.Tensor, scratch: torch.Tensor) -> None:
    """The input gradient of :func:`batch_norm_into` written into ``grad_input`` ``(N, C)``; ``scratch``
    ``(2, C)`` receives the (unused) weight and bias gradients that the ``out=`` form always writes."""
    torch.ops.aten.native_batch_norm_backward.out(
        grad, v, None, None, None, mean, invstd, True, eps, [True, True, True],
        out0=grad_input, out1=scratch[0], out2=scratch[1])


__all__ = [
    "TESTED_TORCH", "batch_norm_backward_into", "batch_norm_into", "dispatch_mode_active",
    "mkldnn_convolution", "private_apis_available", "unavailable_reasons",
]
