"""``--compile`` (torch.compile with inductor, on the CPU here) and the defaults each device type gets.

The compiled model is the ``tiny`` preset made smaller (hidden 48, 3 blocks: the paper decoder needs three
skips) at a 32³ ROI, so that inductor compiles it in minutes on a small CPU; every compiled test shares the
two graphs it compiles (the training step's forward and backward in the fit, the evaluation forward in
prediction): torch keeps compiled code per process for every model of the same architecture.

Tolerances, fp32, relative L2 (norm of the difference over the norm of the reference), measured over seeds
with a margin: logits 1e-5 from eager and from float64 (measured ~1e-6: inductor fuses and reorders float
sums); all parameter gradients together 2e-5 from float64 (measured ~2e-6) and 1e-3 from eager, whose CPU
kernels are themselves up to 6e-4 from float64 for some seeds (the decoder's gradients are ill-conditioned;
tests/model/test_generic_paths.py allows the same 1e-3); the training loss of each of the two iterations
1e-5 (metrics.csv keeps 6 digits; the second loss follows one AdamW step on those gradients).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from unetr.accel import DeviceDefaults, compile_model, device_defaults, full_batches
from unetr.config import InferConfig, Plan, TrainConfig, parse_set, preset
from unetr.inference.predict import make_predictor, predict_volume
from unetr.model import build_model, load_model
from unetr.training import batches as B
from unetr.training import fit

ROI = (32, 32, 32)
CLASSES = ("background", "box", "ball")
PLAN = Plan(roi=ROI, num_classes=3, class_names=CLASSES, channel_names=("CT",), intensity="ct_window",
            window=(-100.0, 300.0, 0.0, 1.0), preset="tiny")
MODEL = preset("tiny", in_channels=1, out_channels=3, img_size=ROI, hidden_size=48, mlp_dim=96, num_heads=4,
               num_layers=3, skip_layers=(1, 2, 3))
TOL_LOGITS, TOL_GRADS, TOL_GRADS_64, TOL_LOSS = 1e-5, 1e-3, 2e-5, 1e-5


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).norm() / want.double().norm()).item()


# ------------------------------------------------------------------------------------------- the defaults


@pytest.mark.parametrize("cores", [1, 2, 16, 128])
def test_cpu_defaults_are_the_cpu_behaviour_of_before(cores):
    # the behaviour of before, but no loader worker: on a CPU it only took a core from the step's threads
    assert device_defaults("cpu", cores) == DeviceDefaults(
        channels_last=True, sw_batch_size=1, accum_on_device=True, volume_on_device=False, pin_memory=False,
        num_workers=0)


@pytest.mark.parametrize("cores, processes, workers", [
    (16, 1, 4),  # capped: one worker keeps a step fed from memory, the rest hide disk reads
    (4, 1, 3),  # one core left for the training process itself
    (2, 1, 1),
    (1, 1, 1),  # at least one, so the step never samples its own crops
    (64, 8, 4),
    (16, 8, 1),  # 2 cores per GPU process
])
def test_gpu_defaults(cores, processes, workers):
    d = device_defaults("cuda", cores, processes)
    assert d == DeviceDefaults(channels_last=True, sw_batch_size=4, accum_on_device=True, volume_on_device=True,
                               pin_memory=True, num_workers=workers)


@pytest.mark.parametrize("cores, processes", [(0, 1), (4, 0)])
def test_defaults_reject_no_cores_or_processes(cores, processes):
    with pytest.raises(ValueError, match="cpu_count and processes"):
        device_defaults("cuda", cores, processes)


def test_config_fields_default_off_and_auto():
    assert TrainConfig().compile is False and InferConfig().compile is False
    assert TrainConfig().num_workers == -1 and InferConfig().sw_batch_size == 0
    assert TrainConfig.from_dict(parse_set(["compile=true"])).compile is True
    with pytest.raises(ValueError, match="num_workers must be -1"):
        TrainConfig(num_workers=-2)


@pytest.fixture
def loader_args(monkeypatch):
    """The keyword arguments ``train_batches`` gives its DataLoader (which is not run)."""
    seen = {}

    def fake_loader(source, **kwargs):
        seen.update(kwargs)
        return iter(())

    monkeypatch.setattr(torch.utils.data, "DataLoader", fake_loader)

    def args(device: str, **cfg) -> dict:
        list(B.train_batches(lambda cid: None, ["a"], ROI, TrainConfig(**cfg), start=0, rank=0, world_size=1,
                             device=torch.device(device)))
        return dict(seen)

    return args


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_the_loader_takes_the_device_defaults(loader_args, device):
    want = device_defaults(device, os.cpu_count() or 1)
    got = loader_args(device)
    assert got["num_workers"] == want.num_workers and got["pin_memory"] is want.pin_memory
    assert loader_args(device, num_workers=1)["num_workers"] == 1  # an explicit number wins


def test_prediction_takes_the_device_defaults(monkeypatch):
    import unetr.inference.predict as P

    seen = {}

    def fake_window(x, fn, roi, **kwargs):
        seen.update(kwargs, image_device=x.device)
        return torch.zeros(x.shape[1:], dtype=torch.uint8)

    monkeypatch.setattr(P, "sliding_window", fake_window)
    image = np.zeros((1, 40, 36, 20), np.float32)
    predict_volume(torch.nn.Identity(), image, ROI, InferConfig(device="cpu"))
    assert seen["batch_size"] == 1 and seen["accum_device"] == torch.device("cpu")
    assert seen["image_device"] == torch.device("cpu")
    predict_volume(torch.nn.Identity(), image, ROI, InferConfig(device="cpu", sw_batch_size=3))
    assert seen["batch_size"] == 3


def test_full_batches_pads_short_batches_and_cuts_the_padding():
    calls = []

    def predictor(x):  # (B, C, *roi) -> (B, 2, *roi): a different value per window
        calls.append(x.shape[0])
        return torch.cat([x, x * 2], 1) + torch.arange(x.shape[0]).view(-1, 1, 1, 1, 1)

    padded = full_batches(predictor, 4)
    x = torch.randn(3, 1, 2, 3, 4)
    assert torch.equal(padded(x), predictor(x)) and calls == [4, 3]
    assert padded(torch.randn(4, 1, 2, 3, 4)).shape == (4, 2, 2, 3, 4) and calls[-1] == 4
    with pytest.raises(ValueError, match="size must be positive"):
        full_batches(predictor, 0)


# ------------------------------------------------------------------------------------------- a missing compiler


@pytest.mark.slow
@pytest.mark.parametrize("command", ["train", "predict"])
def test_a_missing_compiler_is_one_line_before_any_work(tmp_path, command):
    """Inductor compiles CPU kernels with the C++ compiler ``CXX`` names (g++ by default): a missing one is one
    line and exit status 2, before the dataset is read or the model loaded (neither exists here)."""
    args = {"train": ["train", str(tmp_path / "no-dataset"), "-o", str(tmp_path / "run")],
            "predict": ["predict", "-m", str(tmp_path / "no-run"), "-i", str(tmp_path / "x.nii.gz"), "-o",
                        str(tmp_path / "out")]}[command]
    env = {**os.environ, "CXX": str(tmp_path / "no-such-g++"), "OMP_NUM_THREADS": "1",
           "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}  # nothing compiled before: the compiler runs
    p = subprocess.run([sys.executable, "-m", "unetr", *args, "--device", "cpu", "--compile"], env=env,
                       capture_output=True, text=True, timeout=300)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, p.stderr[-2000:]
    assert f"unetr {command}: error: --compile: torch.compile cannot compile for cpu" in lines[0]
    assert "g++" in lines[0] and "Run without --compile" in lines[0]


# ------------------------------------------------------------------------------------------- compiled on the CPU


def _cases(n: int = 3, shape=(40, 36, 44)):
    """In-memory cases: noisy images with a bright box (class 1) and a dark ball (class 2)."""
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    cases = {}
    for i in range(n):
        label = np.zeros(shape, np.uint8)
        c = rng.integers(10, np.array(shape) - 10)
        label[tuple(slice(int(ci) - 5, int(ci) + 5) for ci in c)] = 1
        c2 = rng.integers(8, np.array(shape) - 8)
        label[((grid - c2[:, None, None, None]) ** 2).sum(0) < 36] = 2
        image = rng.normal(0, 0.3, shape) + np.choose(label, [0.0, 1.0, -1.0])
        cases[f"case{i}"] = (image[None].astype(np.float32), label)
    return cases


def _losses(run_dir: Path):
    with open(run_dir / "metrics.csv", newline="") as f:
        return [float(r["train_loss"]) for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def fits(tmp_path_factory):
    """Two iterations of ``fit`` from the same seed, eager and with ``compile=True`` (fp32, 2 crops a step);
    returns their run directories and the graph breaks torch.compile met."""
    from torch._dynamo.utils import counters

    cases = _cases()
    runs = {}
    counters.clear()
    for compiled in (False, True):
        cfg = TrainConfig(iterations=2, val_every=2, checkpoint_every=2, log_every=1, samples_per_volume=2, lr=1e-3,
                          warmup_iterations=0, num_workers=0, seed=0, device="cpu", precision="fp32",
                          tensorboard=False, compile=compiled)
        runs[compiled] = tmp_path_factory.mktemp("compiled" if compiled else "eager")
        fit(run_dir=runs[compiled], train_ids=sorted(cases), val_ids=[], load=cases.__getitem__, plan=PLAN,
            model_cfg=MODEL, cfg=cfg, progress=False)
    return runs, dict(counters["graph_break"])


@pytest.mark.slow
def test_a_compiled_fit_has_the_losses_of_an_eager_one_in_one_graph(fits):
    runs, breaks = fits
    eager, compiled = _losses(runs[False]), _losses(runs[True])
    assert len(eager) == len(compiled) == 2
    for a, b in zip(compiled, eager):
        assert abs(a - b) <= TOL_LOSS * abs(b), (compiled, eager)
    assert not breaks  # the model compiles whole: no CPU kernel or dispatch query splits it


@pytest.mark.slow
def test_the_compiled_training_forward_and_backward_equal_eager(fits):
    """The training step's graphs (those the fit compiled: same architecture, shapes and mode) against eager
    and against float64."""
    torch.manual_seed(1)
    model = build_model(MODEL).train()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 1, *ROI, generator=g)
    w = torch.randn(2, 3, *ROI, generator=g)  # a random projection of the logits as the loss

    def run(forward, m, dtype=torch.float32):
        m.zero_grad(set_to_none=True)
        logits = forward(x.to(dtype))
        (logits * w.to(dtype)).sum().backward()
        return logits.detach(), torch.cat([p.grad.reshape(-1) for p in m.parameters()])

    logits_c, grads_c = run(compile_model(model, "cpu"), model)
    logits_e, grads_e = run(model, model)
    exact = build_model(MODEL).double().train()
    exact.load_state_dict(model.state_dict())
    logits_64, grads_64 = run(exact, exact, torch.float64)
    assert _rel(logits_c, logits_e) <= TOL_LOGITS and _rel(grads_c, grads_e) <= TOL_GRADS
    assert _rel(logits_c, logits_64) <= TOL_LOGITS and _rel(grads_c, grads_64) <= TOL_GRADS_64


def _write_ct(path: Path, shape=(44, 40, 24), seed: int = 0) -> Path:
    """A CT-like image: air around a body with a bright blob, 1.5 x 1.5 x 2 mm voxels."""
    from unetr.data.io import Geometry, write_image

    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    body = (((grid - np.array(shape) / 2) / (np.array(shape) * 0.4)) ** 2).sum(-1) <= 1
    img = np.where(body, 40.0, -1000.0) + rng.normal(0, 10, shape)
    img[(((grid - np.array(shape) * 0.5) / [6, 6, 4]) ** 2).sum(-1) <= 1] = 200.0
    write_image(path, img.astype(np.float32), Geometry.from_affine(np.diag([1.5, 1.5, 2.0, 1.0]), shape))
    return path


@pytest.mark.slow
def test_compiled_prediction_equals_eager(fits):
    """The evaluation graph (compiled once here, reused by the next test): logits and ``predict_volume``'s
    labels against eager."""
    model, _ = load_model(fits[0][True])
    model.eval()
    x = torch.randn(1, 1, *ROI, generator=torch.Generator().manual_seed(3))
    got = make_predictor(compile_model(model, "cpu"), torch.device("cpu"), "fp32")(x)
    want = make_predictor(model, torch.device("cpu"), "fp32")(x)
    assert _rel(got, want) <= TOL_LOGITS
    image = np.random.default_rng(4).normal(0, 1, (1, 40, 36, 20)).astype(np.float32)
    labels = {c: predict_volume(model, image, ROI, InferConfig(device="cpu", precision="fp32", compile=c))[0]
              for c in (False, True)}
    assert labels[True].shape == (40, 36, 20) and torch.equal(labels[True], labels[False])


@pytest.mark.slow
def test_predict_cli_with_compile_writes_the_labels_of_eager(fits, tmp_path):
    import nibabel as nib

    from unetr.cli import main

    ct = _write_ct(tmp_path / "ct.nii.gz")
    out = {}
    for flag in ([], ["--compile"]):
        out[bool(flag)] = tmp_path / f"out{len(flag)}"
        assert main(["predict", "-m", str(fits[0][True]), "-i", str(ct), "-o", str(out[bool(flag)]), "--device", "cpu",
                     "--precision", "fp32", "--no-progress", *flag]) == 0
    eager, compiled = (np.asarray(nib.load(str(out[c] / "ct.nii.gz")).dataobj) for c in (False, True))
    assert eager.shape == (44, 40, 24) and len(np.unique(eager)) > 1  # a real label map, not all background
    assert np.array_equal(compiled, eager)


_AVX2_ONE_THREAD = """
import sys, torch
sys.path.insert(0, sys.argv[1])
import test_compile as T
from unetr.accel import compile_model
from unetr.model import build_model
torch.set_num_threads(1)
torch.manual_seed(0)
model = build_model(T.MODEL).eval()
x = torch.randn(2, 1, *T.ROI).contiguous(memory_format=torch.channels_last_3d)
with torch.no_grad():
    compiled, eager = compile_model(model, "cpu")(x), model(x)
print(torch.isfinite(compiled).all().item(), ((compiled - eager).norm() / eager.norm()).item())
"""


@pytest.mark.slow
def test_compiled_model_on_avx2_with_one_thread_equals_eager():
    """On a CPU whose vector kernels are AVX2 (as ATEN_CPU_CAPABILITY=avx2 makes any x86 CPU), inductor's
    vectorised loop tails gave NaN logits to the channels-last model on one thread (torch 2.13); compile_model
    turns them off there. In a fresh process, as an AVX2 machine would run it."""
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2"}
    out = subprocess.run([sys.executable, "-c", _AVX2_ONE_THREAD, str(Path(__file__).parent)], env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    finite, rel = out.stdout.split()[-2:]
    assert finite == "True" and float(rel) <= TOL_LOGITS, out.stdout
