"""unetr.device: the ISA restriction of the kernel libraries turns ``auto`` precision to fp32."""

import os
import subprocess
import sys

import pytest
import torch

from unetr import device as D


@pytest.mark.parametrize("environ, aten", [({}, "AVX512"), ({"ONEDNN_MAX_CPU_ISA": "avx512_core_amx"}, "AVX512"),
                                           ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, "AVX512"),
                                           ({"ONEDNN_MAX_CPU_ISA": "DEFAULT"}, "AVX512"),
                                           ({"ONEDNN_MAX_CPU_ISA": "not-an-isa"}, "AVX512")])
def test_no_restriction(environ, aten):
    assert D.isa_restriction(environ, aten) is None


@pytest.mark.parametrize("environ, aten, names", [
    ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, "AVX512", ["ONEDNN_MAX_CPU_ISA=AVX2"]),
    ({"ONEDNN_MAX_CPU_ISA": "avx512_core"}, "AVX512", ["ONEDNN_MAX_CPU_ISA=avx512_core"]),
    ({"DNNL_MAX_CPU_ISA": "AVX2_VNNI"}, "AVX512", ["DNNL_MAX_CPU_ISA=AVX2_VNNI"]),
    ({"ATEN_CPU_CAPABILITY": "avx2"}, "AVX2", ["AVX2", "ATEN_CPU_CAPABILITY=avx2"]),
    ({"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}, "AVX2", ["oneDNN", "PyTorch"]),
])
def test_restriction_is_named(environ, aten, names):
    why = D.isa_restriction(environ, aten)
    assert why is not None and all(n in why for n in names), why


def test_onednn_reads_the_first_variable_set():
    # ONEDNN_MAX_CPU_ISA wins over the older name, as in oneDNN
    assert D.isa_restriction({"ONEDNN_MAX_CPU_ISA": "ALL", "DNNL_MAX_CPU_ISA": "AVX2"}, "AVX512") is None


@pytest.mark.parametrize("restricted", [False, True])
def test_auto_precision_on_a_bf16_cpu(monkeypatch, restricted):
    """Both branches on a stand-in AVX-512 BF16 CPU: bf16 unless the process holds the ISA below AVX-512."""
    monkeypatch.setattr(D, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    if restricted:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    else:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    cpu = torch.device("cpu")
    precision, why = D.explain_precision("auto", cpu)
    assert precision == ("fp32" if restricted else "bf16")
    assert ("ONEDNN_MAX_CPU_ISA=AVX2" in why) == restricted and "avx512_bf16" in why
    assert D.native_bf16(cpu)[0] is not restricted
    assert D.resolve_precision("bf16", cpu) == "bf16"  # asked for is asked for


def test_cpu_without_bf16_is_fp32(monkeypatch):
    monkeypatch.setattr(D, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert D.explain_precision("auto", torch.device("cpu")) == ("fp32", "the CPU has no native bf16 (no AVX-512 BF16 "
                                                                        "or AMX)")


def test_restricted_process_resolves_fp32():
    """A real process under both restrictions: PyTorch reports AVX2 and ``auto`` is fp32 on any x86 CPU."""
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip("not an x86 CPU with AVX2: ATEN_CPU_CAPABILITY=avx2 means nothing here")
    code = ("import torch; from unetr.device import explain_precision; "
            "print(torch.backends.cpu.get_cpu_capability(), *explain_precision('auto', torch.device('cpu')), sep='|')")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    capability, precision, _ = out.strip().split("|")
    assert (capability, precision) == ("AVX2", "fp32")
