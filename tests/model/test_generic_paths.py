"""The generic paths (what GPUs run) give what the CPU fast paths give, checked on the CPU.

``generic_paths()`` makes the model take, on the CPU, the branches it takes on every other device. Each test
runs the same weights and inputs both ways and compares values and gradients, as relative errors (norm of
the difference over the norm of the reference). Tolerances, from measurements with margin:

- the parts (convolutions, norm, head, loss) in fp32: 1e-5, float rounding of different kernels;
- whole models, (outputs, weight gradients, input gradient): fp32 (1e-5, 1e-3, 1e-2), bf16 (3e-2, 5e-2,
  0.25). Deep gradients are ill-conditioned (cancellation): even in fp32 both paths are 2e-4 (weights) and
  2e-3 (input) away from float64 for the paper-width model (measured). Under bf16 autocast both paths round
  every convolution output to 8 bits of mantissa, at different places (measured 1e-2, 2e-2, 0.14 apart,
  which is also how far each is from fp32), so in bf16 the generic path must also be as close to the fp32
  result as the fast path is (within 1.5x).
"""

import collections
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unetr.config import Plan, TrainConfig, preset
from unetr.device import autocast
from unetr.model import build_model
from unetr.model import cpu_kernels as K
from unetr.model.cpu_kernels import fast_paths_enabled, generic_paths
from unetr.model.decoder import ConvUnit, OutBlock
from unetr.model.layout import is_channels_last, to_channels_last
from unetr.model.ops import instance_norm

CPU = torch.device("cpu")
KERNELS = ("onednn_conv3d", "up2_channels_last", "instance_norm_cl")
TOL = {"fp32": (1e-5, 1e-3, 1e-2), "bf16": (3e-2, 5e-2, 0.25)}  # (outputs, weight grads, input grad), relative


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts the calls of each CPU kernel (the kernels still run)."""
    calls = collections.Counter()

    def spy(name, kernel):
        def counted(*args, **kwargs):
            calls[name] += 1
            return kernel(*args, **kwargs)

        return counted

    for name in KERNELS:
        monkeypatch.setattr(K, name, spy(name, getattr(K, name)))
    return calls


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).norm() / want.double().norm()).item()


# ---------------------------------------------------------------------------------------------- the switch


def test_the_switch_turns_the_cpu_kernels_off_for_its_context_and_thread_only():
    assert fast_paths_enabled(CPU) and fast_paths_enabled("cpu")
    assert not fast_paths_enabled("cuda") and not fast_paths_enabled(torch.device("meta"))
    with generic_paths():
        assert not fast_paths_enabled(CPU)
        with generic_paths(False):
            assert fast_paths_enabled(CPU)
        assert not fast_paths_enabled(CPU)
        seen = []
        thread = threading.Thread(target=lambda: seen.append(fast_paths_enabled(CPU)))
        thread.start()
        thread.join()
        assert seen == [True]  # another thread keeps its own setting
    assert fast_paths_enabled(CPU)


# ---------------------------------------------------------------------------------------------- whole models


def _model(name: str, channels_last: bool):
    kw = dict(num_layers=3, skip_layers=(1, 2, 3)) if name == "paper" else {}  # paper widths, fewer blocks
    torch.manual_seed(0)
    return build_model(preset(name, in_channels=1, out_channels=3, img_size=(32, 32, 48), **kw),
                       channels_last=channels_last)


def _forward_backward(model, x, labels, precision: str, generic: bool):
    """Output, all weight gradients (one vector) and the input's gradient of a Dice + CE step."""
    from unetr.training.loss import dice_ce_loss

    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    with generic_paths(generic):
        with autocast(CPU, precision):
            y = model(x)
        dice_ce_loss(y, labels).backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    return y.detach().double(), grads.double(), x.grad.double()


@pytest.mark.parametrize("channels_last", [True, False], ids=["channels-last-on", "channels-last-off"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("name", ["tiny", "paper"])
def test_model_forward_and_backward_equal_on_both_paths(name, precision, channels_last, kernel_calls):
    model = _model(name, channels_last)
    x = torch.randn(2, 1, 32, 32, 48)
    labels = (x > 0.5).long() + (x > 1.5).long()  # three classes with structure: coherent gradients
    fast = _forward_backward(model, x, labels, precision, generic=False)
    took_fast = sum(kernel_calls.values())
    generic = _forward_backward(model, x, labels, precision, generic=True)
    assert took_fast > 0 and sum(kernel_calls.values()) == took_fast  # the generic run took no CPU kernel
    exact = _forward_backward(model, x, labels, "fp32", generic=False) if precision == "bf16" else fast
    for what, f, g, e, tol in zip(("output", "weight gradients", "input gradient"), fast, generic, exact,
                                  TOL[precision]):
        assert _rel(g, f) <= tol, what
        if precision == "bf16":  # as close to fp32 as the fast path (in fp32, exact is the fast path itself)
            assert _rel(g, e) <= 1.5 * _rel(f, e) + tol / 10, what


def test_model_in_eval_mode_equals_on_both_paths():
    """Without autograd the norms work in place: the generic path does too."""
    model = _model("tiny", True).eval()
    x = torch.randn(1, 1, 32, 32, 48)
    with torch.no_grad():
        fast = model(x)
        with generic_paths():
            generic = model(x)
    assert _rel(generic, fast) <= TOL["fp32"][0]


# ---------------------------------------------------------------------------------------------- the parts


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float16, 3e-3)])
@pytest.mark.parametrize("offset", [0.0, 100.0])  # a large mean: the fast fp32 path switches to two passes
@pytest.mark.parametrize("grad_layout", ["channels_last", "channels_first"])
def test_instance_norm_equals_pytorch_on_both_paths(dtype, tol, offset, grad_layout):
    x0 = (torch.randn(2, 6, 10, 12, 14) * 3 + offset).to(dtype)
    g = torch.randn(2, 6, 10, 12, 14)
    g = (to_channels_last(g) if grad_layout == "channels_last" else g).to(dtype)
    ref = x0.to(torch.float32, copy=True).requires_grad_()
    want = F.instance_norm(ref, eps=1e-5)
    want.backward(g.float())
    for generic in (False, True):
        x = to_channels_last(x0).requires_grad_()
        with generic_paths(generic):
            got = instance_norm(x, 1e-5)
            got.backward(g)
            with torch.no_grad():
                y = to_channels_last(x0)
                in_place = instance_norm(y, 1e-5, inplace=True)
        assert got.dtype == dtype and is_channels_last(got) and is_channels_last(x.grad)
        assert in_place.data_ptr() == y.data_ptr()
        # bf16/fp16: the fast path keeps half-precision statistics (bf16: off by up to 0.25 at a mean of 100)
        fwd_tol = 0.1 if (dtype != torch.float32 and offset and not generic) else tol
        assert (got.float() - want).abs().max().item() <= fwd_tol * max(1.0, want.abs().max().item())
        assert (in_place.float() - want).abs().max().item() <= fwd_tol * max(1.0, want.abs().max().item())
        assert _rel(x.grad.float(), ref.grad) <= tol


def test_generic_instance_norm_reads_nothing_back_to_the_host(monkeypatch):
    """No ``Tensor.__bool__``/``item`` per layer: on a GPU each would wait for the device."""
    x = to_channels_last(torch.randn(2, 4, 6, 6, 8) + 50).requires_grad_()

    def refuse(*_args, **_kwargs):
        raise AssertionError("host synchronisation")

    monkeypatch.setattr(torch.Tensor, "__bool__", refuse)
    monkeypatch.setattr(torch.Tensor, "item", refuse)
    with generic_paths():
        instance_norm(x, 1e-5).sum().backward()
    monkeypatch.undo()
    with pytest.raises(AssertionError, match="host"):  # the fast fp32 path does read one value (free on a CPU)
        monkeypatch.setattr(torch.Tensor, "__bool__", refuse)
        instance_norm(x, 1e-5)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_output_head_equals_a_convolution_on_both_paths(dtype, tol):
    head = OutBlock(6, 3)
    x0 = torch.randn(2, 6, 4, 5, 6)
    ref_x = x0.clone().requires_grad_()
    ref = head.conv.conv(ref_x)
    g = torch.randn_like(ref)
    ref.backward(g)
    want = (ref_x.grad, head.conv.conv.weight.grad.clone(), head.conv.conv.bias.grad.clone())
    for generic in (False, True):
        head.zero_grad()
        x = to_channels_last(x0).to(dtype).requires_grad_()
        with generic_paths(generic):
            y = head(x)
            y.backward(g.to(dtype))
        assert y.is_contiguous() and is_channels_last(x.grad)
        assert _rel(y.float(), ref.detach()) <= tol
        got = (x.grad.float(), head.conv.conv.weight.grad, head.conv.conv.bias.grad)
        for a, b in zip(got, want):
            assert _rel(a, b) <= 2 * tol


@pytest.mark.parametrize("kind", ["conv1", "conv3", "up2"])
def test_convolutions_equal_pytorch_on_both_paths(kind, kernel_calls):
    unit = {"conv1": ConvUnit(1, 8, 3), "conv3": ConvUnit(16, 8, 3), "up2": ConvUnit(16, 8, 2, 2, transposed=True)}[kind]
    x0 = torch.randn(1, unit.conv.in_channels, 6, 8, 10)
    ref_x = x0.clone().requires_grad_()
    ref = unit.conv(ref_x)
    g = torch.randn_like(ref)
    ref.backward(g)
    for generic in (False, True):
        x = to_channels_last(x0).requires_grad_()
        with generic_paths(generic):
            y = unit(x)
            y.backward(to_channels_last(g))
        assert is_channels_last(y)
        assert _rel(y.detach(), ref.detach()) <= 1e-5 and _rel(x.grad, ref_x.grad) <= 1e-5
    assert sum(kernel_calls.values()) == 1  # the fast run only


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["channels_first", "channels_last"])
def test_loss_equals_monai_on_both_paths(dtype, layout):
    monai_losses = pytest.importorskip("monai.losses")
    from unetr.training.loss import DiceCELoss

    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(2, 4, 8, 6, 10, generator=g) * 3).to(dtype)
    if layout == "channels_last":
        logits = logits.contiguous(memory_format=torch.channels_last_3d)
    target = torch.randint(0, 4, (2, 1, 8, 6, 10), generator=g)
    ref_in = logits.to(torch.float32, copy=True).requires_grad_()
    want = monai_losses.DiceCELoss(to_onehot_y=True, softmax=True)(ref_in, target)
    want.backward()
    for generic in (False, True):
        z = logits.clone().requires_grad_()
        with generic_paths(generic):
            got = DiceCELoss()(z, target)
            got.backward()
        assert got.item() == pytest.approx(want.item(), rel=1e-5)
        assert z.grad.dtype == dtype and z.grad.stride() == z.stride()
        assert _rel(z.grad.float(), ref_in.grad) <= (1e-5 if dtype == torch.float32 else 1e-2)


# ---------------------------------------------------------------------------------------------- training


def _cases(n: int = 3, shape=(40, 36, 44)):
    rng = np.random.default_rng(0)
    cases = {}
    for i in range(n):
        label = np.zeros(shape, np.uint8)
        c = rng.integers(10, np.array(shape) - 10)
        label[tuple(slice(int(ci) - 6, int(ci) + 6) for ci in c)] = 1
        image = rng.normal(0, 0.3, shape).astype(np.float32) + label
        cases[f"case{i}"] = (image[None], label)
    return cases


def _fit(run_dir, generic: bool):
    from unetr.training import fit

    cases = _cases()
    plan = Plan(roi=(32, 32, 32), num_classes=2, channel_names=("img",), intensity="zscore", preset="tiny")
    cfg = TrainConfig(iterations=3, val_every=3, checkpoint_every=3, log_every=1, samples_per_volume=2, lr=1e-3,
                      warmup_iterations=1, num_workers=0, seed=0, device="cpu", precision="fp32",
                      tensorboard=False, flip_prob=0.5, scale_intensity_prob=0.5)
    with generic_paths(generic):
        return fit(run_dir=run_dir, train_ids=["case0", "case1"], val_ids=["case2"], load=cases.__getitem__,
                   plan=plan, model_cfg=plan.model_config(), cfg=cfg, progress=False)


def test_fit_on_the_generic_paths_gives_the_fast_paths_losses(tmp_path, kernel_calls):
    import csv

    fast = _fit(tmp_path / "fast", generic=False)
    took_fast = sum(kernel_calls.values())
    generic = _fit(tmp_path / "generic", generic=True)
    assert took_fast > 0 and sum(kernel_calls.values()) == took_fast

    def losses(run):
        with open(run.run_dir / "metrics.csv", newline="") as f:
            return [float(row["train_loss"]) for row in csv.DictReader(f)]

    assert len(losses(fast)) == 3
    # Adam's first steps move each weight by about lr·sign(gradient), so a weight whose gradient is near zero
    # can move the other way on the other path: measured 5e-5 apart after two steps (the first loss is equal).
    np.testing.assert_allclose(losses(generic), losses(fast), rtol=5e-4)
    np.testing.assert_allclose(generic.last_dice, fast.last_dice, atol=2e-3)  # Dice counts voxels: 4e-4 measured
