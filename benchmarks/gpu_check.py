"""The one-shot GPU check: correctness, speed against MONAI, torchrun, data loading and the device defaults, in
one command.

Run on a machine with a GPU (about five minutes on one H200, of which the ``--compile`` rows' compilations take
a few):

    python benchmarks/gpu_check.py

and as a smoke run on the CPU (what the test suite runs, so the script is known to work before a GPU is lent):

    python benchmarks/gpu_check.py --device cpu --quick --results /tmp/RESULTS-gpu.md

It prints a table per section and writes ``benchmarks/RESULTS-gpu.md`` (or ``--results``), naming the card,
driver, torch and CUDA:

1. correctness: forward and backward of the ``tiny`` and ``paper`` presets on the device against the CPU's fp32
   reference, in fp32, bf16 and fp16 autocast, channels-last on and off; ``predict_volume`` of a 512x512x120 CT
   on the device gives the CPU's labels;
2. speed against MONAI's UNETR on the same device with the same weights: forward at 96^3 (batch 1 and 4), a
   training step (4 crops of 96^3, Dice+CE, AdamW) in bf16 and fp16, channels-last and -first, and compiled as
   ``unetr train --compile`` compiles it (channels-last), and sliding-window prediction of a 512x512x120 CT file to file against MONAI's chain, with the
   peak GPU memory of each;
3. a two-iteration ``torchrun`` run on every visible GPU (NCCL; two gloo processes on a CPU), with the loss and
   weights equal across ranks;
4. data loading: whether the patch sampler and the augmentation keep a training step fed, and how many loader
   workers that takes (against the default number);
5. the defaults ``unetr.accel.device_defaults`` picks for the device, each against its alternatives: the
   decoder's layout, windows per forward pass, the sliding-window sums on the device or the host, the volume
   copied once or windows per batch, pinned and non_blocking copies of a training batch, and ``predict
   --compile``.

Every row is independent: an error is reported in its row and the script goes on. Each section has a time
budget (``--budget-s`` in all); rows that would start after it are listed as skipped. The exit status is 1
when a correctness check failed or raised, else 0. Timings are medians of alternating repeats, with
``torch.cuda.synchronize`` around each; ratios are MONAI / unetr.

Only unetr's public API is used (``build_model``/``preset``, ``predict_volume``/``predict_case``,
``unetr.training.fit``, ``DiceCELoss``, ``PatchSource``, ``unetr.device``); MONAI's inference chain and the CT
phantom come from ``bench_infer.py``, MONAI's UNETR with other skip blocks from ``bench_train.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import datetime
import hashlib
import json
import logging
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))  # the other benchmarks' helpers (bench_infer, bench_train)

log = logging.getLogger("gpu_check")

K = 14  # classes of the speed and correctness models (BTCV's 13 organs and background)
CASE_CLASSES = ("background", "organ1", "organ2", "organ3")  # the synthetic cases of sections 3 and 4
WINDOW = (-175.0, 250.0)  # CT window (HU) of the prediction check's input

PASS, FAIL, ERROR, SKIPPED = "pass", "FAIL", "error", "skipped"
MEASURED, MET, NOT_MET, NA = "measured", "met", "not met", "n/a"

# Relative L2 errors (logits, parameter gradients) allowed against the CPU's fp32, per precision. About 4x
# what the CPU's own autocast gives against its fp32 with random weights (tiny and paper at 32^3: bf16 1.1e-2
# and 0.19, fp16 1.4e-3 and 0.07; fp32 in another layout 1e-6); a layout or kernel bug gives errors near 1.
TOLERANCE = {"fp32": (1e-4, 1e-3), "bf16": (5e-2, 0.5), "fp16": (1e-2, 0.25)}
MIN_LABEL_DICE = 0.999  # the equal-labels pair (fp32, TF32 off on both sides), per class
NEAR_TIE = 1e-3  # a voxel whose CPU top-2 probabilities are closer than this may take either label
TRAIN_TARGET, PREDICT_TARGET = 1.5, 3.0  # the targets on a GPU (MONAI / unetr)

SECTIONS = {
    1: ("1. Correctness: the device against the CPU's fp32 reference", ("measured", "criterion")),
    2: ("2. Speed: unetr against MONAI's UNETR on the same device and weights",
        ("unetr", "MONAI", "MONAI / unetr", "peak memory unetr / MONAI", "target")),
    3: ("3. torchrun: two iterations on every visible GPU", ("measured", "criterion")),
    4: ("4. Data loading: does the sampler keep a training step fed?", ("measured", "criterion")),
    5: ("5. Defaults: does each `auto` choice of unetr.accel.device_defaults win on this device?",
        ("default", "measured", "criterion")),
}
# Seconds per section on an H200, scaled to add up to --budget-s. A section may use what the ones before it
# left; a row that starts before the deadline runs to its end, hence the margin under five minutes.
SHARES = {1: 70.0, 2: 110.0, 3: 45.0, 4: 25.0, 5: 40.0}


@dataclass(frozen=True)
class Sizes:
    """What the sections run: the real run (an H200 in under five minutes) or ``--quick`` (a CPU smoke run).

    Attributes:
        roi: edge of the cubic windows and crops.
        correctness_presets: the presets section 1 checks (the others are listed as skipped).
        speed_preset: the model of sections 2 to 4.
        predict_preset: the model of the ``predict_volume`` check (its CPU reference must stay short).
        ct_shape: the CT phantom (voxels at 0.8 x 0.8 x 2.5 mm).
        case_shape: the preprocessed synthetic cases of sections 3 and 4.
        crops: crops per training step.
        forward_batches: batch sizes of the forward rows.
        sw_batches: windows per forward pass timed in section 5.
        check_batch: batch of the forward/backward checks.
        repeats: timed repeats per side after one warm-up.
        prediction_rounds: at most this many alternating rounds of the four prediction pipelines.
        sampler_seconds: how long the sampler and the fed training loop are timed.
    """

    roi: int
    correctness_presets: Tuple[str, ...]
    speed_preset: str
    predict_preset: str
    ct_shape: Tuple[int, int, int]
    case_shape: Tuple[int, int, int]
    crops: int = 4
    forward_batches: Tuple[int, ...] = (1, 4)
    check_batch: int = 2
    repeats: int = 5
    prediction_rounds: int = 3
    sampler_seconds: float = 3.0
    sw_batches: Tuple[int, ...] = (1, 2, 4, 8)


FULL = Sizes(roi=96, correctness_presets=("tiny", "paper"), speed_preset="paper", predict_preset="tiny",
             ct_shape=(512, 512, 120), case_shape=(226, 166, 150))
QUICK = Sizes(roi=32, correctness_presets=("tiny",), speed_preset="tiny", predict_preset="tiny",
              ct_shape=(96, 96, 40), case_shape=(64, 64, 48), check_batch=1, repeats=2, prediction_rounds=1,
              sampler_seconds=1.0, sw_batches=(1, 4))
CHECKED_PRESETS = ("tiny", "paper")


# ============================================================================================ the table


@dataclass
class Outcome:
    """What one row found: a status, its cells (by column name) and a note."""

    status: str
    cells: Dict[str, str] = field(default_factory=dict)
    note: str = ""


@dataclass
class Row:
    section: int
    what: str
    outcome: Outcome
    check: bool  # a correctness check: a FAIL or an error makes the exit status 1


class Budget:
    """A deadline in seconds from now."""

    def __init__(self, seconds: float) -> None:
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()

    def spent(self) -> bool:
        return self.left() <= 0



class Recorder:
    """Runs the rows, turning an exception or a spent budget into a row, and keeps them in order."""

    def __init__(self) -> None:
        self.rows: List[Row] = []

    def run(self, section: int, what: str, fn: Callable[[], Outcome], *, check: bool, budget: Budget) -> None:
        """One row: ``fn()`` gives its outcome."""
        self.run_many(section, [(what, check)], lambda: {what: fn()}, budget=budget)

    def run_many(self, section: int, rows: Sequence[Tuple[str, bool]],
                 fn: Callable[[], Dict[str, Outcome]], *, budget: Budget) -> None:
        """Rows measured together (one alternating timing run): ``fn()`` gives an outcome per row name."""
        if budget.spent():
            for what, check in rows:
                self.rows.append(Row(section, what, Outcome(SKIPPED, note="the section's time budget was spent"),
                                     check))
            return
        t = time.perf_counter()
        log.info("section %d: %s", section, rows[0][0] if len(rows) == 1 else f"{rows[0][0]} (+{len(rows) - 1})")
        try:
            found = fn()
        except Exception as e:  # noqa: BLE001 - every row is independent: report and go on
            log.exception("section %d: %s failed", section, rows[0][0])
            msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300]
            found = {what: Outcome(ERROR, note=msg) for what, _ in rows}
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        for what, check in rows:
            self.rows.append(Row(section, what, found.get(what, Outcome(ERROR, note="no result")), check))
        log.info("section %d: done in %.1f s", section, time.perf_counter() - t)

    def failed(self) -> List[Row]:
        """The correctness checks that failed or raised."""
        return [r for r in self.rows if r.check and r.outcome.status in (FAIL, ERROR)]


class Lazy:
    """A value computed on first use and kept; an exception is kept too, so dependent rows all report it."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn, self.done, self.value, self.error = fn, False, None, None

    def __call__(self) -> Any:
        if not self.done:
            try:
                self.value = self.fn()
            except Exception as e:  # noqa: BLE001 - raised again below, to every user
                self.error = e
            self.done = True
        if self.error is not None:
            raise self.error
        return self.value


# ============================================================================================ helpers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def strict_fp32() -> Iterator[None]:
    """TF32 off for matmuls and cuDNN convolutions (PyTorch lets cuDNN use TF32 by default), restored after."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def alternate(fns: Dict[str, Callable[[], Any]], repeats: int, device: torch.device,
              budget: Budget) -> Tuple[Dict[str, float], int]:
    """Medians in seconds of ``repeats`` alternating rounds after one warm-up call each; fewer rounds (at least
    one) when the budget runs out. Returns the medians and the number of rounds."""
    for f in fns.values():
        f()
    sync(device)
    times: Dict[str, List[float]] = {k: [] for k in fns}
    for r in range(repeats):
        if r and budget.spent():
            break
        for k in (list(fns) if r % 2 == 0 else list(reversed(fns))):
            sync(device)
            t = time.perf_counter()
            fns[k]()
            sync(device)
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}, len(times[next(iter(fns))])


@contextlib.contextmanager
def peak_memory(device: torch.device, into: Dict[str, float], key: str) -> Iterator[None]:
    """Puts the peak GPU memory (GiB) allocated inside the block, above what was allocated before it, in
    ``into[key]`` (the largest of several blocks with one key); nothing on a CPU."""
    if device.type != "cuda":
        yield
        return
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    yield
    sync(device)
    into[key] = max(into.get(key, 0.0), (torch.cuda.max_memory_allocated(device) - base) / 2**30)


def peak_memories(fns: Dict[str, Callable[[], Any]], device: torch.device) -> Dict[str, float]:
    """The peak GPU memory (GiB) of one more call of each function; empty on a CPU (no extra calls)."""
    mem: Dict[str, float] = {}
    if device.type == "cuda":
        for k, f in fns.items():
            with peak_memory(device, mem, k):
                f()
    return mem


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """``|a - b| / |b|`` in float64 (NaN or inf when ``a`` has them)."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def seconds(t: float) -> str:
    return f"{t * 1e3:.1f} ms" if t < 1 else f"{t:.2f} s"


def gib_pair(mem: Dict[str, float], a: str, b: str) -> str:
    return f"{mem[a]:.2f} / {mem[b]:.2f} GiB" if a in mem and b in mem else "—"


def synthetic_case(shape: Sequence[int], seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """A preprocessed-looking case: ``(1, X, Y, Z)`` float32 noise with three brighter ellipsoids, and their
    ``(X, Y, Z)`` uint8 labels 1..3."""
    rng = np.random.default_rng(seed)
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    label = np.zeros(shape, np.uint8)
    for c in range(1, len(CASE_CLASSES)):
        centre = rng.uniform(0.25, 0.75, 3) * np.array(shape)
        radii = rng.uniform(0.08, 0.2, 3) * np.array(shape)
        label[sum(((g - m) / r) ** 2 for g, m, r in zip(grid, centre, radii)) <= 1] = c
    image = rng.normal(0.0, 0.1, shape).astype(np.float32) + label.astype(np.float32) * 0.25
    return image[None], label


def machine(device: torch.device) -> Dict[str, str]:
    """The card, driver, CUDA, torch and MONAI versions (or the CPU on a CPU run)."""
    info = {"torch": torch.__version__, "python": platform.python_version()}
    try:
        import monai

        info["MONAI"] = monai.__version__
    except ImportError:
        info["MONAI"] = "not installed"
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(card=p.name, capability=f"{p.major}.{p.minor}", memory=f"{p.total_memory / 2**30:.0f} GiB",
                    driver=_driver_version(), cuda=str(torch.version.cuda),
                    cudnn=str(torch.backends.cudnn.version()), gpus=str(torch.cuda.device_count()))
    else:
        cpu = platform.processor() or platform.machine()
        with contextlib.suppress(OSError, StopIteration):
            with open("/proc/cpuinfo") as f:
                cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
        info.update(cpu=cpu, cores=str(os.cpu_count()), threads=str(torch.get_num_threads()))
    return info


def _driver_version() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (no nvidia-smi)"


@dataclass
class Context:
    """What every section needs: the device, the sizes, a work folder and the CT phantom (written once)."""

    device: torch.device
    sizes: Sizes
    work: Path
    quick: bool
    ct: Lazy = field(init=False)

    def __post_init__(self) -> None:
        def write_ct() -> Path:
            import bench_infer

            path = self.work / "ct.nii.gz"
            bench_infer.make_ct(path, shape=self.sizes.ct_shape)
            return path

        self.ct = Lazy(write_ct)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


# ============================================================================================ models


def monai_twin(cfg: Any) -> Tuple[torch.nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
    """MONAI's UNETR with the architecture of a ``paper``-variant :class:`ModelConfig`, and its forward (its own
    modules in its own order; blocks truncated and other skips for presets other than ``paper``)."""
    from bench_train import _monai_forward
    from monai.networks.nets import UNETR as MonaiUNETR

    m = MonaiUNETR(in_channels=cfg.in_channels, out_channels=cfg.out_channels, img_size=cfg.img_size,
                   feature_size=cfg.feature_size, hidden_size=cfg.hidden_size, mlp_dim=cfg.mlp_dim,
                   num_heads=cfg.num_heads, proj_type=cfg.proj_type, norm_name=cfg.norm, conv_block=cfg.conv_block,
                   res_block=cfg.res_block, dropout_rate=0.0, qkv_bias=cfg.qkv_bias)
    skips = [s - 1 for s in cfg.skip_layers]  # MONAI's hidden_states_out indices
    if cfg.num_layers != 12 or skips != [3, 6, 9]:
        m.vit.blocks = m.vit.blocks[: cfg.num_layers]
        return m, _monai_forward(m, skips)
    return m, m


def twins(cfg: Any, device: torch.device) -> Tuple[Dict[bool, torch.nn.Module], torch.nn.Module, Callable]:
    """Our UNETR in both layouts and MONAI's, all with MONAI's seeded weights, on ``device``.

    Returns:
        ``({channels_last: ours}, MONAI's module, MONAI's forward)``.
    """
    from unetr import build_model

    torch.manual_seed(0)
    theirs, forward = monai_twin(cfg)
    state = {k: v for k, v in theirs.state_dict().items() if "cross_attn" not in k}  # MONAI-only, unused
    ours = {}
    for cl in (True, False):
        m = build_model(cfg, channels_last=cl)
        m.load_state_dict(state)
        ours[cl] = m.to(device)
    return ours, theirs.to(device), forward


def train_step(forward: Callable, params: torch.nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable,
               device: torch.device, precision: str) -> Callable[[torch.Tensor, torch.Tensor], float]:
    """One training step ``step(images (B, 1, *roi), labels (B, 1, *roi))``: autocast forward, loss, backward,
    optimizer step, gradients zeroed; fp16 with a gradient scaler (as ``unetr train`` and MONAI's AMP recipe)."""
    from unetr.device import autocast

    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    params.train()

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        with autocast(device, precision):
            logits = forward(x)  # (B, K, X, Y, Z)
        loss = loss_fn(logits, y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def ours_step(model: torch.nn.Module, device: torch.device, precision: str, compiled: bool = False) -> Callable:
    """What ``unetr train`` runs: unetr's Dice+CE and its (fused) AdamW, lr 1e-4, weight decay 1e-5; with
    ``compiled``, the forward compiled as ``unetr train --compile`` compiles it."""
    from unetr.accel import compile_model
    from unetr.training import DiceCELoss, build_optimizer

    opt = build_optimizer(model, lr=1e-4, weight_decay=1e-5, device=device)
    forward = compile_model(model, device) if compiled else model
    return train_step(forward, model, opt, DiceCELoss(), device, precision)


def monai_step(module: torch.nn.Module, forward: Callable, device: torch.device, precision: str) -> Callable:
    """MONAI's tutorial recipe: its DiceCELoss (one-hot, softmax) on float logits and torch's AdamW."""
    from monai.losses import DiceCELoss

    loss = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.AdamW(module.parameters(), lr=1e-4, weight_decay=1e-5)
    return train_step(forward, module, opt, lambda logits, y: loss(logits.float(), y), device, precision)


# ============================================================================================ 1. correctness


def forward_backward(model: torch.nn.Module, x: torch.Tensor, w: torch.Tensor, device: torch.device,
                     precision: str) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Logits ``(B, K, *roi)`` and the gradient of ``sum(logits * w)`` for every parameter, on the CPU in fp32.

    The loss is a fixed random projection scaled to unit size, so fp16 gradients neither underflow nor overflow
    without a scaler.
    """
    from unetr.device import autocast

    model.zero_grad(set_to_none=True)
    with autocast(device, precision):
        logits = model(x.to(device))  # (B, K, X, Y, Z)
    (logits.float() * w.to(device)).sum().backward()
    grads = {n: p.grad.detach().float().cpu() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach().float().cpu(), grads


def reference(name: str, sizes: Sizes) -> Dict[str, Any]:
    """The CPU fp32 reference of a preset: channels-first (PyTorch's plain layout), seeded weights and inputs."""
    from unetr import build_model, preset

    roi = (sizes.roi,) * 3
    cfg = preset(name, in_channels=1, out_channels=K, img_size=roi)
    torch.manual_seed(0)
    model = build_model(cfg, channels_last=False).train()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(sizes.check_batch, 1, *roi, generator=g)
    w = torch.randn(sizes.check_batch, K, *roi, generator=g) / math.sqrt(K * math.prod(roi))
    logits, grads = forward_backward(model, x, w, torch.device("cpu"), "fp32")
    return {"cfg": cfg, "state": model.state_dict(), "x": x, "w": w, "logits": logits, "grads": grads}


def check_forward_backward(ref: Dict[str, Any], model: torch.nn.Module, device: torch.device,
                           precision: str) -> Outcome:
    with strict_fp32():
        logits, grads = forward_backward(model, ref["x"], ref["w"], device, precision)
    if set(grads) != set(ref["grads"]):
        return Outcome(FAIL, note=f"gradients for {len(grads)} of {len(ref['grads'])} parameters")
    names = sorted(ref["grads"])
    e_logits = rel_l2(logits, ref["logits"])
    e_grads = rel_l2(torch.cat([grads[n].reshape(-1) for n in names]),
                     torch.cat([ref["grads"][n].reshape(-1) for n in names]))
    tol_l, tol_g = TOLERANCE[precision]
    ok = e_logits <= tol_l and e_grads <= tol_g  # False for NaN
    return Outcome(PASS if ok else FAIL, {"measured": f"logits {e_logits:.1e}, gradients {e_grads:.1e}",
                                          "criterion": f"≤ {tol_l:g}, ≤ {tol_g:g}"})


def check_prediction(ctx: Context) -> Outcome:
    """``predict_volume`` of the CT (its own grid, CT window) on the device against the CPU, both fp32."""
    from unetr import build_model, preset
    from unetr.config import InferConfig
    from unetr.data.io import read_image
    from unetr.inference.predict import predict_volume

    roi = (ctx.sizes.roi,) * 3
    image, _ = read_image(ctx.ct())
    image = np.clip((image - WINDOW[0]) / (WINDOW[1] - WINDOW[0]), 0.0, 1.0)  # (1, X, Y, Z) float32
    torch.manual_seed(0)
    model = build_model(preset(ctx.sizes.predict_preset, in_channels=1, out_channels=K, img_size=roi)).eval()
    on_device = copy.deepcopy(model).to(ctx.device)
    with strict_fp32():
        ref, probs = predict_volume(model, image, roi, InferConfig(device="cpu", precision="fp32"),
                                    probabilities=True)
        labels, _ = predict_volume(on_device, image, roi, InferConfig(device=str(ctx.device), precision="fp32"))
    differ = labels != ref  # (X, Y, Z)
    n, total = int(differ.sum()), differ.numel()
    margin = 0.0
    if n:
        top2 = probs[:, differ].float().topk(2, dim=0).values  # (2, n)
        margin = float((top2[0] - top2[1]).max())
    ok = labels.shape == ref.shape and (n == 0 or (margin < NEAR_TIE and n / total < 1e-4))
    measured = f"equal on {100 * (1 - n / total):.4f} % of {total:,} voxels"
    if n:
        measured += f"; the {n} others are near-ties (largest CPU top-2 margin {margin:.1e})"
    return Outcome(PASS if ok else FAIL, {"measured": measured,
                                          "criterion": f"all equal but near-ties (margin < {NEAR_TIE:.0e}), < 0.01 %"},
                   note=f"`{ctx.sizes.predict_preset}` preset, seeded, {roi[0]}³ windows")


def section_correctness(rec: Recorder, ctx: Context, budget: Budget) -> None:
    from unetr import build_model

    for name in CHECKED_PRESETS:
        ref = Lazy(lambda name=name: reference(name, ctx.sizes))
        for cl in (True, False):
            model = Lazy(lambda cl=cl, ref=ref: _loaded(build_model(ref()["cfg"], channels_last=cl), ref(), ctx.device))
            for precision in ("fp32", "bf16", "fp16"):
                what = f"`{name}` forward+backward, {precision}, channels-{'last' if cl else 'first'}"
                if name not in ctx.sizes.correctness_presets:
                    rec.rows.append(Row(1, what, Outcome(SKIPPED, note="--quick checks the tiny preset only"), True))
                    continue
                rec.run(1, what, lambda m=model, r=ref, p=precision: check_forward_backward(r(), m(), ctx.device, p),
                        check=True, budget=budget)
    shape = "x".join(map(str, ctx.sizes.ct_shape))
    rec.run(1, f"`predict_volume` of a {shape} CT: the device's labels against the CPU's (fp32)",
            lambda: check_prediction(ctx), check=True, budget=budget)


def _loaded(model: torch.nn.Module, ref: Dict[str, Any], device: torch.device) -> torch.nn.Module:
    model.load_state_dict(ref["state"])
    return model.to(device).train()


# ============================================================================================ 2. speed


def forward_row(models: Lazy, ctx: Context, batch: int, precision: str, budget: Budget) -> Outcome:
    from unetr.device import autocast

    ours, theirs, forward = models()
    ours[True].eval()
    theirs.eval()
    x = torch.randn(batch, 1, *(ctx.sizes.roi,) * 3, device=ctx.device)

    def run(f: Callable) -> Callable[[], None]:
        def go() -> None:
            with torch.inference_mode(), autocast(ctx.device, precision):
                f(x)
        return go

    fns = {"unetr": run(ours[True]), "MONAI": run(forward)}
    t, n = alternate(fns, ctx.sizes.repeats, ctx.device, budget)
    mem = peak_memories(fns, ctx.device)
    return Outcome(MEASURED, {"unetr": seconds(t["unetr"]), "MONAI": seconds(t["MONAI"]),
                              "MONAI / unetr": f"{t['MONAI'] / t['unetr']:.2f}x",
                              "peak memory unetr / MONAI": gib_pair(mem, "unetr", "MONAI"), "target": "—"},
                   note=f"medians of {n}; unetr channels-last")


def train_names(precision: str) -> Dict[Tuple[bool, bool], str]:
    """Row names of the training steps by ``(channels_last, compiled)``; compiled in the default layout only
    (each compilation takes a minute or more)."""
    return {(cl, comp): f"training step, {precision}, channels-{'last' if cl else 'first'}"
                        f"{', --compile' if comp else ''}" for cl, comp in ((True, False), (False, False), (True, True))}


COMPILE_ON_CPU = "compiling takes minutes on a CPU; tests/test_compile.py checks --compile there"


def train_rows(models: Lazy, ctx: Context, precision: str, budget: Budget) -> Dict[str, Outcome]:
    """All the training-step variants of one precision against MONAI's step, alternating; a compiled step's
    first call (the compilation) is timed apart."""
    from unetr.device import resolve_precision

    names = train_names(precision)
    if not ctx.cuda and precision == "fp16":
        note = "fp16 training needs CUDA (`unetr train` refuses it on a CPU)"
        return {n: Outcome(NA, note=note) for n in names.values()}
    ours, theirs, forward = models()
    g = torch.Generator().manual_seed(0)
    roi = (ctx.sizes.roi,) * 3
    x = torch.rand(ctx.sizes.crops, 1, *roi, generator=g).to(ctx.device)
    y = torch.randint(0, K, (ctx.sizes.crops, 1, *roi), generator=g).to(ctx.device)
    steps = {"MONAI": monai_step(theirs, forward, ctx.device, precision)}
    compile_s: Dict[str, float] = {}
    for (cl, comp), name in names.items():
        if comp and not ctx.cuda:
            continue
        steps[name] = ours_step(ours[cl], ctx.device, precision, compiled=comp)
        if comp:
            t0 = time.perf_counter()
            steps[name](x, y)
            sync(ctx.device)
            compile_s[name] = time.perf_counter() - t0
    fns = {k: (lambda s=s: s(x, y)) for k, s in steps.items()}
    t, n = alternate(fns, ctx.sizes.repeats, ctx.device, budget)
    mem = peak_memories(fns, ctx.device)
    out = {}
    for (cl, comp), name in names.items():
        if name not in t:
            out[name] = Outcome(NA, {"unetr": "—", "MONAI": seconds(t["MONAI"])}, note=COMPILE_ON_CPU)
            continue
        ratio = t["MONAI"] / t[name]
        default = precision == resolve_precision("auto", ctx.device) and cl and not comp  # `unetr train`
        target = "—"
        if default:
            target = (f"≥ {TRAIN_TARGET}x: {MET if ratio >= TRAIN_TARGET else NOT_MET}" if ctx.cuda
                      else f"≥ {TRAIN_TARGET}x on a GPU (not judged on a CPU)")
        note = f"{ctx.sizes.crops} crops; medians of {n}"
        if name in compile_s:
            note += f"; the first step compiled for {compile_s[name]:.0f} s"
        out[name] = Outcome(MEASURED, {"unetr": seconds(t[name]), "MONAI": seconds(t["MONAI"]),
                                       "MONAI / unetr": f"{ratio:.2f}x",
                                       "peak memory unetr / MONAI": gib_pair(mem, name, "MONAI"), "target": target},
                            note=note)
    return out


def prediction_rows(ctx: Context, budget: Budget) -> Dict[str, Outcome]:
    """The CT file to file: unetr's pipelines (``predict_case``) against MONAI's chain, alternating rounds."""
    import bench_infer

    names = prediction_names(ctx.sizes)
    ct, run, dev = ctx.ct(), ctx.work / "run", str(ctx.device)
    if not (run / "config.json").exists():
        bench_infer.make_run(run, roi=(ctx.sizes.roi,) * 3, preset_name=ctx.sizes.speed_preset)
    sides: Dict[str, Tuple[Callable[[Path], dict], bool]] = {  # name -> (run into a folder, strict fp32)
        "unetr": (lambda out: bench_infer.child_ours(ct, out, run, "unetr", None, "auto", device=dev), False),
        "monai": (lambda out: bench_infer.child_monai(ct, out, run, "unetr", crop=False, device=dev), False),
        "unetr-monai": (lambda out: bench_infer.child_ours(ct, out, run, "unetr", "monai", "fp32", device=dev), True),
        "monai+crop": (lambda out: bench_infer.child_monai(ct, out, run, "unetr", crop=True, device=dev), True),
    }
    times: Dict[str, List[float]] = {s: [] for s in sides}
    mem: Dict[str, float] = {}
    outputs: Dict[str, Path] = {}
    for r in range(ctx.sizes.prediction_rounds):
        t_round = time.perf_counter()
        for s in (list(sides) if r % 2 == 0 else list(reversed(sides))):
            fn, strict = sides[s]
            with strict_fp32() if strict else contextlib.nullcontext(), peak_memory(ctx.device, mem, s):
                res = fn(ctx.work / f"pred_{s}")
            times[s].append(res["seconds"])
            outputs[s] = Path(res["output"])
        if budget.left() < time.perf_counter() - t_round:  # another round would overrun
            break
    t = {s: statistics.median(v) for s, v in times.items()}
    agree = bench_infer.agreement(outputs["unetr-monai"], outputs["monai+crop"], K)
    equal = agree["min"] >= MIN_LABEL_DICE

    def row(ours: str, theirs: str, judged: bool) -> Outcome:
        ratio = t[theirs] / t[ours]
        target = "—"
        if judged:
            target = (f"≥ {PREDICT_TARGET}x at equal labels: "
                      f"{MET if ratio >= PREDICT_TARGET and equal else NOT_MET}" if ctx.cuda
                      else f"≥ {PREDICT_TARGET}x on a GPU (not judged on a CPU)")
        return Outcome(MEASURED, {"unetr": seconds(t[ours]), "MONAI": seconds(t[theirs]),
                                  "MONAI / unetr": f"{ratio:.2f}x", "peak memory unetr / MONAI": gib_pair(mem, ours, theirs),
                                  "target": target}, note=rounds(len(times[ours])))

    return {
        names[0]: row("unetr", "monai", False),
        names[1]: row("unetr-monai", "monai+crop", True),
        names[2]: Outcome(PASS if equal else FAIL, {"MONAI / unetr": "—"},
                          note=f"Dice per class between the two label maps: min {agree['min']:.6f}, mean "
                               f"{agree['mean']:.6f} (criterion ≥ {MIN_LABEL_DICE})"),
    }


def rounds(n: int) -> str:
    return "one round" if n == 1 else f"medians of {n} alternating rounds"


def prediction_names(sizes: Sizes) -> Tuple[str, str, str]:
    shape = "x".join(map(str, sizes.ct_shape))
    return (f"prediction of a {shape} CT, file to file: `unetr predict` (its defaults) against MONAI's chain",
            "the same at equal labels: `unetr predict --geometry monai` against MONAI's chain with "
            "CropForegroundd, both fp32 with TF32 off",
            "labels of the equal-labels pair agree")


def section_speed(rec: Recorder, ctx: Context, budget: Budget) -> None:
    from unetr import preset

    cfg = preset(ctx.sizes.speed_preset, in_channels=1, out_channels=K, img_size=(ctx.sizes.roi,) * 3)
    models = Lazy(lambda: twins(cfg, ctx.device))
    roi = ctx.sizes.roi
    for batch in ctx.sizes.forward_batches:
        for precision in ("fp32", "bf16"):
            rec.run(2, f"forward `{ctx.sizes.speed_preset}` {roi}³, batch {batch}, {precision}",
                    lambda b=batch, p=precision: forward_row(models, ctx, b, p, budget), check=False, budget=budget)
    for precision in ("bf16", "fp16"):
        rows = [(n, False) for n in train_names(precision).values()]
        rec.run_many(2, rows, lambda p=precision: train_rows(models, ctx, p, budget), budget=budget)
    names = prediction_names(ctx.sizes)
    rec.run_many(2, [(names[0], False), (names[1], False), (names[2], True)],
                 lambda: prediction_rows(ctx, budget), budget=budget)


# ============================================================================================ 3. torchrun


def ddp_worker(out: Path, device_name: str, sizes: Sizes) -> None:
    """One torchrun rank: two iterations of :func:`unetr.training.fit` on in-memory synthetic cases, then the
    loss of the trained weights on one batch that every rank shares, the weights' hash and the hashes of the
    crops this rank trained on, into ``out/rank<R>.json``."""
    from unetr.config import Plan, TrainConfig
    from unetr.fsutil import atomic_write_text
    from unetr.training import DiceCELoss, fit
    from unetr.training import distributed as D

    env = D.setup(device_name)
    roi = (sizes.roi,) * 3
    cases = {f"case{i}": synthetic_case(sizes.case_shape, seed=i) for i in range(4)}
    plan = Plan(roi=roi, num_classes=len(CASE_CLASSES), class_names=CASE_CLASSES, preset=sizes.speed_preset)
    cfg = TrainConfig(iterations=2, val_every=2, checkpoint_every=2, log_every=1, warmup_iterations=1,
                      samples_per_volume=sizes.crops, num_workers=0, device=device_name, tensorboard=False)
    seen: List[str] = []

    def on_step(iteration: int, images: torch.Tensor, labels: torch.Tensor) -> None:
        seen.append(hashlib.sha1(images.detach().cpu().numpy().tobytes()).hexdigest())

    result = fit(run_dir=out / "run", train_ids=sorted(cases), val_ids=[], load=cases.__getitem__, plan=plan,
                 model_cfg=plan.model_config(), cfg=cfg, env=env, progress=False, on_step=on_step)
    model = result.model.eval()
    g = torch.Generator().manual_seed(123)  # the same batch on every rank
    x = torch.rand(2, 1, *roi, generator=g)
    y = torch.randint(0, len(CASE_CLASSES), (2, 1, *roi), generator=g)
    with torch.no_grad(), strict_fp32():
        loss = float(DiceCELoss()(model(x.to(env.device)).float(), y.to(env.device)))
    h = hashlib.sha1()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
    atomic_write_text(out / f"rank{env.rank}.json", json.dumps(
        {"rank": env.rank, "world_size": env.world_size, "device": str(env.device), "loss": loss,
         "weights": h.hexdigest(), "batches": seen}))
    D.teardown(env)


def run_torchrun(cmd: List[str], env: Dict[str, str], timeout: float) -> Tuple[int, str]:
    """Run ``cmd`` in its own process group; on timeout the whole group (torchrun and its ranks) is killed."""
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        return 124, out
    return p.returncode, out


def torchrun_names(n: int, cuda: bool) -> Tuple[str, str]:
    where = f"{n} GPU{'s' if n > 1 else ''} (NCCL)" if cuda else f"{n} CPU processes (gloo)"
    return f"two iterations of `fit` under torchrun on {where}", "loss and weights equal across ranks"


def torchrun_rows(ctx: Context, n: int, budget: Budget) -> Dict[str, Outcome]:
    run_name, equal_name = torchrun_names(n, ctx.cuda)
    out = ctx.work / "torchrun"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
           str(Path(__file__).resolve()), "--ddp-worker", str(out), "--device", "cuda" if ctx.cuda else "cpu"]
    if ctx.quick:
        cmd.append("--quick")
    env = dict(os.environ)
    if not ctx.cuda:
        env["OMP_NUM_THREADS"] = "1"  # two processes on the CPU's cores
    t = time.perf_counter()
    rc, text = run_torchrun(cmd, env, timeout=max(budget.left(), 30.0))
    wall = time.perf_counter() - t
    ranks = [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]
    if rc != 0 or len(ranks) != n:
        tail = " | ".join(text.strip().splitlines()[-3:])[-300:]
        why = "timed out" if rc == 124 else f"exit status {rc}"
        return {run_name: Outcome(FAIL, {"measured": f"{len(ranks)} of {n} ranks finished"}, note=f"{why}: {tail}"),
                equal_name: Outcome(SKIPPED, note="the run did not finish")}
    losses = [r["loss"] for r in ranks]
    train_loss = []
    with contextlib.suppress(OSError, KeyError, ValueError):
        with open(out / "run" / "metrics.csv", newline="") as f:
            train_loss = [float(row["train_loss"]) for row in csv.DictReader(f)]
    finite = all(math.isfinite(v) for v in losses + train_loss)
    rows = {run_name: Outcome(PASS if finite and len(train_loss) == 2 else FAIL,
                              {"measured": f"train loss {', '.join(f'{v:.4f}' for v in train_loss)} (rank 0's "
                                           f"metrics.csv); {wall:.0f} s with start-up",
                               "criterion": "finishes; 2 finite losses logged"},
                              note=f"`{ctx.sizes.speed_preset}` preset, {ctx.sizes.crops} crops of "
                                   f"{ctx.sizes.roi}³ per rank and step")}
    if n < 2:
        rows[equal_name] = Outcome(SKIPPED, {"measured": f"loss {losses[0]:.6f} on one rank"},
                                   note="one GPU visible: nothing to compare across ranks")
        return rows
    same_weights = len({r["weights"] for r in ranks}) == 1
    same_loss = max(losses) - min(losses) <= 1e-6 * max(abs(v) for v in losses)
    own_crops = len(set().union(*(set(r["batches"]) for r in ranks))) == sum(len(r["batches"]) for r in ranks)
    rows[equal_name] = Outcome(
        PASS if same_weights and same_loss and own_crops else FAIL,
        {"measured": f"loss on a shared batch {', '.join(f'{v:.6f}' for v in losses)}; weights "
                     f"{'identical' if same_weights else 'DIFFER'}; crops {'disjoint' if own_crops else 'SHARED'}",
         "criterion": "equal loss (1e-6 relative), identical weights, each rank its own crops"})
    return rows


def section_torchrun(rec: Recorder, ctx: Context, budget: Budget) -> None:
    n = torch.cuda.device_count() if ctx.cuda else 2
    run_name, equal_name = torchrun_names(n, ctx.cuda)
    rec.run_many(3, [(run_name, True), (equal_name, True)], lambda: torchrun_rows(ctx, n, budget), budget=budget)


# ============================================================================================ 4. data loading


def data_rows(ctx: Context, budget: Budget) -> Dict[str, Outcome]:
    """The sampler's crops per second in one worker, the augmentation's and the step's time on the device, the
    workers that needs, and a DataLoader with that many workers feeding real steps."""
    from unetr import build_model, preset
    from unetr.accel import device_defaults
    from unetr.config import TrainConfig
    from unetr.data.sampling import augment
    from unetr.device import resolve_precision
    from unetr.training import PatchSource

    names = data_names()
    sizes, device = ctx.sizes, ctx.device
    roi = (sizes.roi,) * 3
    cases = {"ct": synthetic_case(sizes.case_shape, seed=0)}
    source = PatchSource(cases.__getitem__, ["ct"], roi, volumes=1, samples_per_volume=sizes.crops,
                         pos_fraction=0.5, seed=0)
    # the sampler alone, as one worker runs it
    source[0]
    t, n = time.perf_counter(), 0
    while n < 3 or time.perf_counter() - t < sizes.sampler_seconds:
        source[n + 1]
        n += 1
    crops_per_s = n * sizes.crops / (time.perf_counter() - t)
    # the augmentation on the device (it runs in the training loop, after the loader)
    tc = TrainConfig()
    aug = dict(flip_prob=tc.flip_prob, rot90_prob=tc.rot90_prob, scale_prob=tc.scale_intensity_prob,
               shift_prob=tc.shift_intensity_prob, factor=tc.intensity_factor, extra=tc.extra_augment)
    images, labels = (v.to(device) for v in source[0])
    gen = torch.Generator(device=device).manual_seed(0)
    t_aug, _ = alternate({"augment": lambda: augment(images, labels, gen, **aug)}, 10, device, budget)
    # the training step it has to feed: unetr's defaults on this device
    precision = resolve_precision("auto", device)
    torch.manual_seed(0)
    model = build_model(preset(sizes.speed_preset, in_channels=1, out_channels=len(CASE_CLASSES), img_size=roi))
    step = ours_step(model.to(device), device, precision)
    t_step, _ = alternate({"step": lambda: step(images, labels)}, 3, device, budget)
    period = t_step["step"] + t_aug["augment"]
    needed = sizes.crops / period
    workers = max(1, math.ceil(needed / crops_per_s))
    cores = os.cpu_count() or 1
    auto = device_defaults(device.type, cores).num_workers  # what `unetr train` takes (num_workers -1)
    fed = fed_steps(source, step, augment, aug, workers, device, sizes.sampler_seconds * 2)
    keeps_up = fed <= 1.1 * period
    return {
        names[0]: Outcome(MEASURED, {"measured": f"{crops_per_s:.1f} crops/s ({sizes.crops} crops of {roi[0]}³ "
                                                 f"in {seconds(sizes.crops / crops_per_s)})"},
                          note="PatchSource + sample_crops on an in-memory case of "
                               f"{'x'.join(map(str, sizes.case_shape))}"),
        names[1]: Outcome(MEASURED, {"measured": f"{seconds(t_aug['augment'])} per batch of {sizes.crops}"},
                          note="unetr.data.sampling.augment with TrainConfig's defaults, in the training loop"),
        names[2]: Outcome(MEASURED, {"measured": f"{seconds(t_step['step'])} per step: {needed:.1f} crops/s needed"},
                          note=f"`{sizes.speed_preset}` (unetr's defaults: {precision}, channels-last)"),
        names[3]: Outcome(MET if workers <= auto else NOT_MET,
                          {"measured": f"{workers} (of {cores} cores); the default (`num_workers` -1) gives {auto}",
                           "criterion": "≤ the default"}),
        names[4]: Outcome(MET if keeps_up else NOT_MET,
                          {"measured": f"a step every {seconds(fed)} fed by {workers} worker(s), "
                                       f"{seconds(period)} with the batch at hand",
                           "criterion": "within 10 %"},
                          note="" if ctx.cuda else "on a CPU the workers share the cores with the step"),
    }


def fed_steps(source: Any, step: Callable, augment: Callable, aug: dict, workers: int, device: torch.device,
              duration: float) -> float:
    """Seconds per training step when a DataLoader with ``workers`` processes feeds it (as ``fit`` builds it)."""
    loader = torch.utils.data.DataLoader(source, batch_size=None, sampler=range(1, 10**6), num_workers=workers,
                                         pin_memory=device.type == "cuda", prefetch_factor=4)
    gen = torch.Generator(device=device).manual_seed(1)
    it = iter(loader)
    try:
        for _ in range(2):  # workers started, queue primed, kernels warm
            x, y = (v.to(device, non_blocking=True) for v in next(it))
            step(*augment(x, y, gen, **aug))
        sync(device)
        t, n = time.perf_counter(), 0
        while n < 3 or time.perf_counter() - t < duration:
            x, y = (v.to(device, non_blocking=True) for v in next(it))
            step(*augment(x, y, gen, **aug))
            n += 1
        sync(device)
        return (time.perf_counter() - t) / n
    finally:
        del it  # shuts the workers down


def data_names() -> Tuple[str, ...]:
    return ("patch sampler, one worker", "augmentation on the device", "training step to feed",
            "loader workers needed", "DataLoader feeding the step")


def section_data(rec: Recorder, ctx: Context, budget: Budget) -> None:
    rec.run_many(4, [(n, False) for n in data_names()], lambda: data_rows(ctx, budget), budget=budget)


# ============================================================================================ 5. defaults


def defaults_names() -> Tuple[str, ...]:
    return ("channels-last decoder (`TrainConfig.channels_last`, `build_model`)",
            "windows per forward pass (`InferConfig.sw_batch_size` 0)",
            "sliding-window sums on the device (`InferConfig.accum_device` auto)",
            "prediction copies the volume to the device once",
            "pinned memory and non_blocking copies of a training batch",
            "`unetr predict --compile`")


def _fastest(t: Dict[Any, float], default: Any) -> str:
    """MET when the default's time is within 5 % of the fastest alternative's."""
    return MET if t[default] <= 1.05 * min(t.values()) else NOT_MET


def defaults_rows(ctx: Context, budget: Budget) -> Dict[str, Outcome]:
    """Each device default of :func:`unetr.accel.device_defaults` against its alternatives, on the speed preset:
    the decoder's layout (forward), windows per batch, where the sums live, the volume's copy and ``--compile``
    (``predict_volume`` of the CT), and the copy of a training batch."""
    from unetr import build_model, preset
    from unetr.accel import device_defaults
    from unetr.config import InferConfig
    from unetr.data.io import read_image
    from unetr.device import autocast
    from unetr.inference.predict import make_predictor, predict_volume
    from unetr.inference.sliding_window import sliding_window

    names = defaults_names()
    device, sizes = ctx.device, ctx.sizes
    auto = device_defaults(device.type, os.cpu_count() or 1)
    roi = (sizes.roi,) * 3
    torch.manual_seed(0)
    cfg = preset(sizes.speed_preset, in_channels=1, out_channels=K, img_size=roi)
    models = {cl: build_model(cfg, channels_last=cl).eval() for cl in (True, False)}
    models[False].load_state_dict(models[True].state_dict())
    for m in models.values():
        m.to(device)
    model = models[auto.channels_last]
    out: Dict[str, Outcome] = {}
    on_cpu = "on a CPU the device is the host: nothing to copy"

    # the decoder's layout: one forward of a default batch of windows
    x = torch.randn(auto.sw_batch_size, 1, *roi, device=device)

    def forward(m: torch.nn.Module) -> Callable[[], None]:
        def go() -> None:
            with torch.inference_mode(), autocast(device, "auto"):
                m(x)
        return go

    t, n = alternate({cl: forward(m) for cl, m in models.items()}, sizes.repeats, device, budget)
    out[names[0]] = Outcome(_fastest(t, auto.channels_last), {
        "default": "channels-last" if auto.channels_last else "channels-first",
        "measured": f"forward of {auto.sw_batch_size} window(s): channels-last {seconds(t[True])}, "
                    f"channels-first {seconds(t[False])}",
        "criterion": "the default within 5 % of the fastest"},
        note=f"`{sizes.speed_preset}` {roi[0]}³, auto precision; medians of {n}; training: section 2")

    # prediction of the CT (its own grid, CT window)
    image, _ = read_image(ctx.ct())
    image = np.clip((image - WINDOW[0]) / (WINDOW[1] - WINDOW[0]), 0.0, 1.0)  # (1, X, Y, Z) float32
    shape = "x".join(map(str, image.shape[1:]))

    def predict(**kw: Any) -> Callable[[], None]:
        return lambda: predict_volume(model, image, roi, InferConfig(device=str(device), **kw))

    batches = {b: predict(sw_batch_size=b) for b in sizes.sw_batches}
    t, n = alternate(batches, 2, device, budget)
    mem = peak_memories(batches, device)
    per = ", ".join(f"{b}: {seconds(t[b])}" + (f" ({mem[b]:.1f} GiB)" if b in mem else "") for b in batches)
    out[names[1]] = Outcome(_fastest(t, auto.sw_batch_size) if auto.sw_batch_size in t else MEASURED,
                            {"default": str(auto.sw_batch_size), "measured": per,
                             "criterion": "the default within 5 % of the fastest"},
                            note=f"`predict_volume` of a {shape} CT, {roi[0]}³ windows; medians of {n}")

    if not ctx.cuda:
        out[names[2]] = Outcome(NA, {"default": "the device"}, note=on_cpu)
        out[names[3]] = Outcome(NA, {"default": "no"}, note=on_cpu)
        out[names[4]] = Outcome(NA, {"default": "no"}, note=on_cpu)
        out[names[5]] = Outcome(NA, {"default": "off"}, note=COMPILE_ON_CPU)
        return out

    sums = {"device": predict(accum_device=str(device)), "cpu": predict(accum_device="cpu")}
    t, n = alternate(sums, 2, device, budget)
    out[names[2]] = Outcome(_fastest(t, "device"), {
        "default": "the device", "measured": f"on the device {seconds(t['device'])}, on the host {seconds(t['cpu'])}",
        "criterion": "the default within 5 % of the fastest"}, note=f"the {shape} CT; medians of {n}")

    fn = make_predictor(model, device, "auto")
    host = torch.from_numpy(np.ascontiguousarray(image))
    common = dict(batch_size=auto.sw_batch_size, device=device, accum_device=device, output="argmax")
    copies = {"once": lambda: sliding_window(host.to(device), fn, roi, **common),
              "per batch": lambda: sliding_window(host, fn, roi, **common)}
    t, n = alternate(copies, 2, device, budget)
    out[names[3]] = Outcome(_fastest(t, "once"), {
        "default": "yes", "measured": f"volume copied once {seconds(t['once'])}, windows copied per batch "
                                      f"{seconds(t['per batch'])}",
        "criterion": "the default within 5 % of the fastest"}, note=f"the {shape} CT; medians of {n}")

    g = torch.Generator().manual_seed(0)
    xb = torch.rand(sizes.crops, 1, *roi, generator=g)  # a training batch as the loader gives it
    yb = torch.randint(0, K, (sizes.crops, 1, *roi), generator=g, dtype=torch.uint8)
    xp, yp = xb.pin_memory(), yb.pin_memory()
    returned: List[float] = []

    def pinned() -> None:
        t0 = time.perf_counter()
        xp.to(device, non_blocking=True), yp.to(device, non_blocking=True)
        returned.append(time.perf_counter() - t0)

    t, n = alternate({"pinned": pinned, "pageable": lambda: (xb.to(device), yb.to(device))}, sizes.repeats, device,
                     budget)
    out[names[4]] = Outcome(_fastest(t, "pinned"), {
        "default": "yes", "measured": f"pinned {seconds(t['pinned'])} (the host free after "
                                      f"{seconds(statistics.median(returned))}), pageable {seconds(t['pageable'])}",
        "criterion": "the default within 5 % of the fastest"},
        note=f"{sizes.crops} crops of {roi[0]}³ and their labels, to the device and synchronised; medians of {n}")

    compiled = predict(compile=True)
    t0 = time.perf_counter()
    compiled()
    sync(device)
    first = time.perf_counter() - t0
    t, n = alternate({"compiled": compiled, "eager": predict()}, 2, device, budget)
    out[names[5]] = Outcome(MEASURED, {
        "default": "off", "measured": f"compiled {seconds(t['compiled'])}, eager {seconds(t['eager'])}; the first "
                                      f"call compiled for {first:.0f} s",
        "criterion": "— (off until measured)"}, note=f"the {shape} CT; medians of {n}")
    return out


def section_defaults(rec: Recorder, ctx: Context, budget: Budget) -> None:
    rec.run_many(5, [(n, False) for n in defaults_names()], lambda: defaults_rows(ctx, budget), budget=budget)


# ============================================================================================ the report


def render(rec: Recorder, ctx: Context, info: Dict[str, str], command: str, wall: float) -> str:
    """RESULTS-gpu.md: a header naming the machine (or saying no GPU has run it), a table per section, notes."""
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# GPU check (benchmarks/gpu_check.py)", ""]
    if ctx.cuda:
        lines += [f"Run on **{info['card']}** (compute capability {info['capability']}, {info['memory']}, "
                  f"{info['gpus']} visible), driver {info['driver']}, torch {info['torch']}, CUDA {info['cuda']}, "
                  f"cuDNN {info['cudnn']}, MONAI {info['MONAI']}; {today}; {wall:.0f} s in all.", ""]
    else:
        lines += ["**Not yet run on a GPU.** The figures below are a CPU smoke run (`--device cpu"
                  f"{' --quick' if ctx.quick else ''}`), which shows that every section runs; they are not a "
                  "benchmark.", "",
                  f"Smoke run on {info['cpu']} ({info['cores']} cores, torch threads: {info['threads']}), torch "
                  f"{info['torch']}, MONAI {info['MONAI']}; {today}; {wall:.0f} s in all.", ""]
    failed = rec.failed()
    checks = [r for r in rec.rows if r.check]
    lines += [f"Command: `{command}`. Correctness checks: {sum(r.outcome.status == PASS for r in checks)} pass, "
              f"{len(failed)} failed, {sum(r.outcome.status == SKIPPED for r in checks)} skipped.", ""]
    for section, (title, columns) in SECTIONS.items():
        rows = [r for r in rec.rows if r.section == section]
        if not rows:
            continue
        lines += [f"## {title}", "", "| what | status | " + " | ".join(columns) + " | notes |",
                  "|---|---|" + "---|" * len(columns) + "---|"]
        for r in rows:
            cells = [r.outcome.cells.get(c, "—") for c in columns]
            lines.append(f"| {r.what} | {r.outcome.status} | " + " | ".join(cells) + f" | {r.outcome.note} |")
        lines.append("")
    lines += [
        "## Notes", "",
        "- Correctness: random-projection loss `sum(logits * w)` (w scaled to unit size, so fp16 needs no "
        "scaler); relative L2 errors of the logits and of all parameter gradients against the CPU's fp32 in "
        "PyTorch's plain (channels-first) layout, TF32 off. Tolerances are about 4x what the CPU's own bf16/fp16 "
        "autocast gives with random weights.",
        "- Speed: medians of alternating repeats after one warm-up each, `torch.cuda.synchronize` around each "
        "call; MONAI's UNETR carries the same seeded weights as ours; peak memory is the most allocated during one "
        "call above what was allocated before it (weights and optimizer state excluded). Training: unetr's "
        "Dice+CE and fused AdamW against MONAI's DiceCELoss and torch's AdamW, a gradient scaler in fp16 on both.",
        "- Prediction: one process for all pipelines (unetr's `keep_freed_memory` then also serves MONAI); times "
        "from reading the file to the written label map; `unetr` runs its defaults (auto precision), MONAI fp32.",
        "- `--compile` (`TrainConfig.compile`, `InferConfig.compile`; off by default until these rows measure it): "
        "the compiled rows compile as `unetr train/predict --compile` do (`unetr.accel.compile_model`: inductor, "
        "static shapes); the first call, which compiles, is timed apart and left out of the medians. On a CPU "
        "they are not run (compiling takes minutes there; `tests/test_compile.py` checks the results).",
        "- Defaults (section 5): each `auto` choice of `unetr.accel.device_defaults` (whose comments give the "
        "reasons) against its alternatives; a default is met when it is within 5 % of the fastest. Loader "
        "workers: section 4.",
        "",
    ]
    return "\n".join(lines)


# ============================================================================================ main


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto | cuda | cuda:N | cpu")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: the CPU smoke run (tiny preset, 32³ windows, "
                                                          "a small CT)")
    ap.add_argument("--results", type=Path, default=HERE / "RESULTS-gpu.md", help="the Markdown file to write")
    ap.add_argument("--work", type=Path, help="working folder (default: a temporary one, removed at the end)")
    ap.add_argument("--budget-s", type=float, default=sum(SHARES.values()),
                    help="seconds for the sections run, shared out in proportion (default: %(default)s)")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; 1 is fastest on a CPU "
                    "shared with other jobs)")
    ap.add_argument("--sections", type=int, nargs="+", default=sorted(SECTIONS), choices=sorted(SECTIONS))
    ap.add_argument("--ddp-worker", type=Path, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def command_line(args: argparse.Namespace) -> str:
    """The command as RESULTS-gpu.md names it (without the machine's own paths)."""
    parts = ["python benchmarks/gpu_check.py"]
    if args.device != "auto":
        parts.append(f"--device {args.device}")
    if args.quick:
        parts.append("--quick")
    if args.threads is not None:
        parts.append(f"--threads {args.threads}")
    if args.budget_s != sum(SHARES.values()):
        parts.append(f"--budget-s {args.budget_s:g}")
    if sorted(args.sections) != sorted(SECTIONS):
        parts.append("--sections " + " ".join(map(str, args.sections)))
    return " ".join(parts)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.ddp_worker:
        ddp_worker(args.ddp_worker, args.device, sizes)
        return 0
    from unetr.device import resolve_device

    try:
        device = resolve_device(args.device)
    except ValueError as e:
        print(f"gpu_check: {e}", file=sys.stderr)
        return 2
    if args.budget_s <= 0:
        print(f"gpu_check: --budget-s must be positive, got {args.budget_s}", file=sys.stderr)
        return 2
    if args.threads is not None:
        if args.threads < 1:
            print(f"gpu_check: --threads must be at least 1, got {args.threads}", file=sys.stderr)
            return 2
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    warnings.filterwarnings("ignore", module="monai")
    warnings.filterwarnings("ignore", category=FutureWarning)
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    ctx = Context(device, sizes, work, args.quick)
    t0 = time.perf_counter()
    scale = args.budget_s / sum(SHARES[s] for s in args.sections)
    rec = Recorder()
    runners = {1: section_correctness, 2: section_speed, 3: section_torchrun, 4: section_data, 5: section_defaults}
    try:
        deadline = 0.0  # seconds after t0
        for s in args.sections:
            deadline += SHARES[s] * scale
            runners[s](rec, ctx, Budget(t0 + deadline - time.perf_counter()))
            if ctx.cuda:
                torch.cuda.empty_cache()
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    text = render(rec, ctx, machine(device), command_line(args), time.perf_counter() - t0)
    from unetr.fsutil import atomic_write_text

    args.results.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.results, text)
    print(text)
    print(f"wrote {args.results}", file=sys.stderr)
    failed = rec.failed()
    for r in failed:
        print(f"gpu_check: FAILED: {r.what}: {r.outcome.status} {r.outcome.note}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
