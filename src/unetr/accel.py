"""How the work runs fast on a device: the defaults chosen per device, and ``torch.compile``.

:func:`device_defaults` is the one place where the device decides a setting the user left at ``auto``: the
decoder's layout, windows per forward pass, where the sliding-window sums live, whether the volume is copied
to the device once, pinned memory and asynchronous copies, and data-loader workers. It is a pure function of
the device type and the CPU count, so every branch is tested on a CPU-only machine; each choice states its
reason next to it, and ``benchmarks/gpu_check.py`` (section 5) measures each on a GPU.

:func:`compile_model` wraps a model in ``torch.compile`` (inductor). Before the first compilation it compiles
a one-line function on the device, so a missing compiler (a C++ compiler on CPUs, Triton on CUDA GPUs) is one
:class:`CompilerUnavailableError` before any work, not a traceback minutes later. Under compilation the model
takes its plain PyTorch operators (:func:`unetr.model.ops.exporting`): inductor fuses those itself, and the
dispatch-mode query of the CPU paths would break the graph at every layer.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Union

import torch
from torch import nn

from unetr.errors import UnetrError

GPU_TYPES = ("cuda",)  # device types that get the GPU defaults (one process per GPU, data copied over a bus)
MAX_GPU_WORKERS = 4


@dataclass(frozen=True)
class DeviceDefaults:
    """The settings a device type gets when the user leaves them at ``auto`` (see :func:`device_defaults`).

    Attributes:
        channels_last: the decoder's activations in ``channels_last_3d`` (``TrainConfig.channels_last``).
        sw_batch_size: windows per forward pass in prediction (``InferConfig.sw_batch_size=0``).
        accum_on_device: the sliding-window sums on the model's device, not the host
            (``InferConfig.accum_device='auto'``).
        volume_on_device: prediction copies the preprocessed volume to the device once, and the windows are
            cut there (instead of stacking each batch of windows on the host and copying it).
        pin_memory: the training loader returns page-locked batches. The training step copies batches with
            ``non_blocking=True`` on every device: from page-locked memory to a GPU the copy then returns at
            once (ordered on the stream); from pageable memory, or to the CPU, the flag changes nothing.
        num_workers: data-loader processes per training process (``TrainConfig.num_workers=-1``).
    """

    channels_last: bool
    sw_batch_size: int
    accum_on_device: bool
    volume_on_device: bool
    pin_memory: bool
    num_workers: int


def device_defaults(device_type: str, cpu_count: int, processes: int = 1) -> DeviceDefaults:
    """The defaults for ``device_type`` (``cpu``, ``cuda`` ...) on a machine with ``cpu_count`` cores shared by
    ``processes`` training processes (one per GPU under torchrun).

    Example:
        >>> device_defaults("cuda", cpu_count=16).sw_batch_size
        4
    """
    if cpu_count < 1 or processes < 1:
        raise ValueError(f"cpu_count and processes must be positive, got {cpu_count} and {processes}")
    gpu = device_type in GPU_TYPES
    return DeviceDefaults(
        # Channels-last everywhere. CPUs: oneDNN convolves NDHWC without reordering around each call (measured
        # in benchmarks/RESULTS.md). GPUs: cuDNN's tensor-core 3D convolutions in bf16/fp16 take NDHWC
        # natively; channels-first input is transposed around each call. gpu_check section 2 (training
        # rows) and section 5 (forward) time both layouts.
        channels_last=True,
        # CPUs: 1, unchanged. One 96³ window of the paper network gives every core work, and a batch multiplies
        # the activations' memory (on the 2 shared cores here 1 and 2 were within noise; the tiny preset at
        # 32³ does gain: 1.1 s at 4 against 1.7 s at 1 in gpu_check --quick). GPUs: 4. One window is 216
        # tokens and a few 96³ feature maps, too little work to fill a large GPU, and memory is plentiful;
        # gpu_check section 5 times 1, 2, 4 and 8 with their peak memory.
        sw_batch_size=4 if gpu else 1,
        # Sums on the model's device. On a GPU they take (K+1)·96·Y·Z floats (1.5 GB for 14 classes at
        # 512x512), while host sums would copy every window's K·96³ logits (48 MB in fp32) over the bus and add
        # them with the CPU's bandwidth (gpu_check section 5 times both). `--accum-device cpu` remains for GPUs
        # too small for the sums.
        accum_on_device=True,
        # GPUs: one copy of the volume (C·X·Y·Z floats, ~100 MB for a CT) instead of a host-side stack and a
        # copy per batch of windows. On a CPU the device is the host: nothing to copy.
        volume_on_device=gpu,
        # GPUs: page-locked batches are copied by DMA while the CPU goes on (non_blocking), instead of through
        # a staging buffer with the host waiting; CPUs: there is no copy.
        pin_memory=gpu,
        # CPUs: none. The step's threads keep the cores busy, the crops cost milliseconds in the training
        # process, and a worker only takes a core from the threads (benchmarks/RESULTS.md, "CPU defaults": one
        # worker never helped, on either kind of CPU). GPUs: up to 4 per process, one core per process left
        # for its own loop. One worker samples and augments the 4 crops of a 96³ step in ~6 ms
        # (benchmarks/RESULTS.md, this project's 2-core CPU), well under a GPU's training step; the others
        # hide cold reads of the memory-mapped cache. gpu_check section 4 measures the workers needed.
        num_workers=min(MAX_GPU_WORKERS, max(1, cpu_count // processes - 1)) if gpu else 0,
    )


# ------------------------------------------------------------------------------------------- torch.compile


class CompilerUnavailableError(UnetrError):
    """``torch.compile`` cannot compile on this device (no C++ compiler, no Triton, an unsupported GPU)."""


def _probe(x: torch.Tensor) -> torch.Tensor:
    return x * 2.0 + 1.0


@functools.lru_cache(maxsize=8)
def _check_compiler(device: torch.device) -> None:
    try:
        torch.compile(_probe, dynamic=False)(torch.ones(8, device=device))
    except Exception as e:  # noqa: BLE001 - whatever the compiler raises, the user gets one line
        inner = getattr(e, "inner_exception", None) or e  # dynamo wraps the backend's error
        first = (str(inner).strip().splitlines() or [""])[0][:200]
        need = {"cpu": "a C++ compiler (g++)", "cuda": "Triton (pip install triton) and compute capability 7.0+"
                }.get(device.type, f"inductor support for {device.type}")
        raise CompilerUnavailableError(
            f"--compile: torch.compile cannot compile for {device} ({type(inner).__name__}: {first}); it needs "
            f"{need}. Run without --compile.") from None


def check_compiler(device: Union[str, torch.device]) -> None:
    """Compile a one-line function on ``device`` (once per process and device).

    Raises:
        CompilerUnavailableError: the compiler is missing or fails, in one line.
    """
    _check_compiler(torch.device(device))


def compile_model(model: nn.Module, device: Union[str, torch.device]) -> nn.Module:
    """``torch.compile(model)`` with inductor and static shapes, after :func:`check_compiler`.

    Static shapes: training sees one batch shape, prediction one window shape (short batches are padded,
    :func:`full_batches`), so one graph each, with the kernels specialised for it. The compiled code is kept
    per process and shared by every model of the same architecture, so compiling the same model again (per
    case in prediction) costs nothing. The first call compiles: minutes on a small CPU (tests/test_compile.py),
    on a GPU as gpu_check's compiled rows measure.
    """
    check_compiler(device)
    options = None
    if torch.device(device).type == "cpu" and torch.backends.cpu.get_cpu_capability() == "AVX2":
        # Inductor's vectorised loop tails on AVX2 (masked loads, emulated there) make NaNs in the channels-last
        # UNETR with one thread (torch 2.13; tests/test_compile.py reproduces it under ATEN_CPU_CAPABILITY=avx2).
        # Plain loops for the tails: the same numbers as eager.
        options = {"cpp.enable_loop_tail_vec": False}
    return torch.compile(model, dynamic=False, options=options)


def full_batches(predictor: Callable[[torch.Tensor], torch.Tensor], size: int
                 ) -> Callable[[torch.Tensor], torch.Tensor]:
    """``predictor`` on batches padded with zero windows to ``size``, the padding cut from the output.

    The last batch of windows of a slab is often short; a compiled predictor would compile a second graph for
    it. Windows are independent in evaluation, so the padding does not change the others' outputs.

    Args:
        predictor: windows ``(B, C, *roi)`` to outputs ``(B, K, *roi)``.
        size: the batch every call gets (``B <= size``).
    """
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")

    def padded(x: torch.Tensor) -> torch.Tensor:  # (B, C, *roi) -> (B, K, *roi)
        b = x.shape[0]
        if b >= size:
            return predictor(x)
        fill = x.new_zeros((size - b, *x.shape[1:]))
        return predictor(torch.cat([x, fill]))[:b]

    return padded


__all__ = ["CompilerUnavailableError", "DeviceDefaults", "GPU_TYPES", "check_compiler", "compile_model",
           "device_defaults", "full_batches"]
