"""Where the work runs and in which precision: the one device resolver and the one autocast helper that
training, validation and prediction share (imports torch only).

``auto`` precision is bf16 only where the hardware computes bf16 natively: CPUs with AVX-512 BF16 or AMX
(oneDNN emulates bf16 on other AVX-512 CPUs, several times slower than fp32), and GPUs of compute capability
8.0 or newer (Ampere on; ``torch.cuda.is_bf16_supported()`` also counts emulation on V100/T4). Elsewhere
it is fp16 on CUDA (with the gradient scaler in training) and fp32 on CPUs.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from typing import Tuple

import torch

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> the local GPU when there is one, else the CPU; ``cuda`` -> ``cuda:<local_rank>``;
    ``cuda:N``, ``cpu`` and ``mps`` as given. Raises ``ValueError`` for an unknown or unavailable device."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but no CUDA GPU is available")
        return torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)
    if name in ("cpu", "mps"):
        return torch.device(name)
    raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, got {name!r}")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset:
    """The CPU's feature flags as Linux reports them (empty elsewhere)."""
    if not sys.platform.startswith("linux"):
        return frozenset()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16(device: torch.device) -> Tuple[bool, str]:
    """Whether ``device`` computes bf16 natively, and the reason in words."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        name = torch.cuda.get_device_name(device)
        if major >= 8:
            return True, f"{name} (compute capability {major}.{minor}) has native bf16"
        return False, f"{name} (compute capability {major}.{minor}) emulates bf16"
    if device.type == "cpu":
        flags = cpu_flags()
        native = sorted(flags & {"avx512_bf16", "amx_bf16"})
        if native:
            return True, f"the CPU has {' and '.join(native)}"
        if "avx512f" in flags:
            return False, "the CPU has AVX-512 but no AVX-512 BF16 or AMX (bf16 would be emulated)"
        return False, "the CPU has no native bf16 (no AVX-512 BF16 or AMX)"
    return False, f"no native bf16 test for {device.type}"


def resolve_precision(name: str, device: torch.device, *, allow_fp16: bool = True) -> str:
    """``auto`` -> ``bf16`` where ``device`` computes it natively, else ``fp16`` on CUDA (when
    ``allow_fp16``), else ``fp32``; other names are returned as they are."""
    return explain_precision(name, device, allow_fp16=allow_fp16)[0]


def explain_precision(name: str, device: torch.device, *, allow_fp16: bool = True) -> Tuple[str, str]:
    """:func:`resolve_precision` and why, as a phrase for the log."""
    if name not in PRECISIONS:
        raise ValueError(f"precision must be auto, bf16, fp16 or fp32, got {name!r}")
    if name != "auto":
        return name, "asked for"
    native, why = native_bf16(device)
    if native:
        return "bf16", why
    if device.type == "cuda" and allow_fp16:
        return "fp16", why
    return "fp32", why


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """An autocast context for ``bf16``/``fp16``, a no-op for ``fp32``. ``auto`` is resolved first (bf16 where
    native, else fp32: fp16 only on request, since inference has no gradient scaler to need it)."""
    if precision == "auto":
        precision = resolve_precision("auto", device, allow_fp16=False)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


__all__ = ["PRECISIONS", "autocast", "cpu_flags", "explain_precision", "native_bf16", "resolve_device",
           "resolve_precision"]
