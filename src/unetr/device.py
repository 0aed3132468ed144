"""Where the work runs and in which precision: the one device resolver and the one autocast helper that
training, validation and prediction share (imports torch only).

``auto`` precision is bf16 only where the hardware computes bf16 natively: CPUs with AVX-512 BF16 or AMX
(oneDNN emulates bf16 on other AVX-512 CPUs, several times slower than fp32), and GPUs of compute capability
8.0 or newer (Ampere on; ``torch.cuda.is_bf16_supported()`` also counts emulation on V100/T4). Elsewhere
it is fp16 on CUDA (with the gradient scaler in training) and fp32 on CPUs.

A CPU's flags are not the whole story: the kernel libraries of this process can be held below the CPU's
instruction set (``ONEDNN_MAX_CPU_ISA=AVX2`` for oneDNN, ``ATEN_CPU_CAPABILITY=avx2`` for PyTorch's own
kernels), and then bf16 is emulated, many times slower than fp32 (benchmarks/RESULTS.md), even on an AVX-512
BF16 CPU. :func:`isa_restriction` reads both (the variables are the libraries' own settings, read here only to
know what they do), so ``auto`` is fp32 in such a process too.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from typing import Mapping, Optional, Tuple

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


# oneDNN's CPU ISA names (ONEDNN_MAX_CPU_ISA, or DNNL_MAX_CPU_ISA before oneDNN 2.0), lowest first; from
# AVX512_CORE_BF16 on, its kernels have bf16 dot products (AVX2_VNNI_2 only converts bf16).
ONEDNN_ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
               "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16", "AVX10_1_512_AMX", "AVX512_CORE_AMX",
               "AVX10_1_512_AMX_FP16", "AVX512_CORE_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2", "ALL", "DEFAULT")
ONEDNN_BF16_ISAS = frozenset(ONEDNN_ISAS[ONEDNN_ISAS.index("AVX512_CORE_BF16"):])


def isa_restriction(environ: Mapping[str, str], aten_capability: str) -> Optional[str]:
    """Why this process's kernel libraries cannot use the CPU's bf16 instructions, or None when nothing holds
    them back.

    Args:
        environ: the process environment (``os.environ``); oneDNN reads ``ONEDNN_MAX_CPU_ISA`` (or the older
            ``DNNL_MAX_CPU_ISA``) from it at its first use.
        aten_capability: PyTorch's dispatch level, ``torch.backends.cpu.get_cpu_capability()`` ("AVX512",
            "AVX2", "DEFAULT", ...; below the CPU's when ``ATEN_CPU_CAPABILITY`` lowers it).

    Returns:
        A phrase naming the restriction, e.g. ``"ONEDNN_MAX_CPU_ISA=AVX2 holds oneDNN below AVX512_CORE_BF16"``.
    """
    reasons = []
    for var in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        value = environ.get(var, "").strip()
        if value:
            if value.upper() in ONEDNN_ISAS and value.upper() not in ONEDNN_BF16_ISAS:
                reasons.append(f"{var}={value} holds oneDNN below AVX512_CORE_BF16")
            break  # oneDNN reads the first one set
    cap = aten_capability.strip().upper()
    if cap and not cap.startswith("AVX512"):
        reasons.append(f"PyTorch's kernels run at {aten_capability}, ATEN_CPU_CAPABILITY="
                       f"{environ.get('ATEN_CPU_CAPABILITY', 'unset')}")
    return "; ".join(reasons) or None


def cpu_summary() -> str:
    """The CPU for a benchmark table: its model name, its vector and bf16 flags, PyTorch's kernel level and
    any oneDNN restriction of this process (e.g. ``AMD EPYC 9B14; flags avx2 avx512_bf16 avx512f fma;
    PyTorch kernels AVX512``)."""
    name = "unknown CPU"
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/cpuinfo") as f:
                name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), name)
        except OSError:
            pass
    flags = sorted(f for f in cpu_flags() if f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16"))
    parts = [name, f"flags {' '.join(flags) or 'unknown'}", f"PyTorch kernels {torch.backends.cpu.get_cpu_capability()}"]
    parts += [f"{v}={os.environ[v]}" for v in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA") if os.environ.get(v)]
    return "; ".join(parts)


def native_bf16(device: torch.device) -> Tuple[bool, str]:
    """Whether ``device`` computes bf16 natively in this process, and the reason in words.

    On a CPU: the CPU has AVX-512 BF16 or AMX and neither oneDNN nor PyTorch's kernels are held below
    AVX-512 in this process (:func:`isa_restriction`).
    """
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        name = torch.cuda.get_device_name(device)
        if major >= 8:
            return True, f"{name} (compute capability {major}.{minor}) has native bf16"
        return False, f"{name} (compute capability {major}.{minor}) emulates bf16"
    if device.type == "cpu":
        flags = cpu_flags()
        native = sorted(flags & {"avx512_bf16", "amx_bf16"})
        held = isa_restriction(os.environ, torch.backends.cpu.get_cpu_capability()) if native else None
        if held:
            return False, f"the CPU has {' and '.join(native)} but {held} (bf16 would be emulated)"
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


__all__ = ["ONEDNN_ISAS", "PRECISIONS", "autocast", "cpu_flags", "cpu_summary", "explain_precision", "isa_restriction",
           "native_bf16", "resolve_device", "resolve_precision"]
