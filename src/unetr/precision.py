"""The one autocast helper that training and inference share (imports torch only)."""

from __future__ import annotations

import contextlib

import torch


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """An autocast context for ``bf16``/``fp16``, a no-op for ``fp32`` (``precision`` already resolved)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` where the device computes it natively (CUDA with bf16, CPUs with AVX-512 BF16 or
    AMX), else ``fp16`` on CUDA, else ``fp32``; other names are returned as they are."""
    if name not in ("auto", "bf16", "fp16", "fp32"):
        raise ValueError(f"precision must be auto, bf16, fp16 or fp32, got {name!r}")
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu":
        try:
            return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
        except (AttributeError, RuntimeError):
            return "fp32"
    return "fp32"
