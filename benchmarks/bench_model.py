"""Our `paper` UNETR against MONAI's UNETR with the same weights, in one process, alternating repeats.

Measures forward latency at 96³ batch 1 in fp32 and with bf16 autocast (each model's fastest CPU precision
here), and one training step (forward, backward, AdamW) in bf16 autocast; prints MONAI/ours ratios of
medians, the achieved GFLOP/s against the machine's measured matmul and conv3d peaks, and the agreement of
the outputs. Writes the table into benchmarks/RESULTS.md (section "Model").

On a CPU without native bf16 (AVX2 only, or a process whose ``ONEDNN_MAX_CPU_ISA`` / ``ATEN_CPU_CAPABILITY``
hold the kernels below AVX-512: :func:`unetr.device.native_bf16`), bf16 would be emulated, so the bf16 rows
are left out, the training step runs in fp32, and the table (section "Model without native bf16") says so.

Run: .venv/bin/python benchmarks/bench_model.py [--repeats 5] [--size 96] [--no-write]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from unetr.device import cpu_summary, native_bf16  # noqa: E402
from unetr.model import UNETR  # noqa: E402

RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION = "## Model (bench_model.py)"
SECTION_NO_BF16 = "## Model without native bf16 (bench_model.py)"


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def alternate(fns: dict, repeats: int) -> dict:
    """Run each function once to warm up, then ``repeats`` rounds in alternating order; medians in seconds."""
    for f in fns.values():
        f()
    times = {k: [] for k in fns}
    for r in range(repeats):
        order = list(fns) if r % 2 == 0 else list(reversed(fns))
        for k in order:
            times[k].append(timed(fns[k]))
    return {k: statistics.median(v) for k, v in times.items()}


def peak_gflops(dtype: torch.dtype, repeats: int = 5) -> tuple:
    """Measured peaks: a 2048² GEMM and a channels-last 64→64 3×3×3 conv3d at 48³, in GFLOP/s."""
    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    mm = 2 * 2048**3 / alternate({"mm": lambda: a @ b}, repeats)["mm"] / 1e9
    cl = torch.channels_last_3d
    x = torch.randn(1, 64, 48, 48, 48, dtype=dtype).contiguous(memory_format=cl)
    w = torch.randn(64, 64, 3, 3, 3, dtype=dtype).contiguous(memory_format=cl)
    with torch.no_grad():
        conv = 2 * 64 * 64 * 27 * 48**3 / alternate({"c": lambda: F.conv3d(x, w, padding=1)}, repeats)["c"] / 1e9
    return mm, conv


def forward_flops(model, x) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return counter.get_total_flops()


def trained_argmax_agreement(run: str, images: str) -> None:
    """bf16 autocast against fp32 with a trained run's model: the share of voxels with the same argmax,
    sliding window over each preprocessed image. For a ``paper`` run (MONAI's architecture) the reference is
    MONAI's ``UNETR`` in fp32 with the run's weights; otherwise our fp32 (equal to MONAI's to 1e-5, tested)."""
    from pathlib import Path

    from unetr.config import InferConfig
    from unetr.data.preprocess import preprocess_image_file
    from unetr.inference.predict import load_predictor, predict_volume
    from unetr.model import load_model

    model, plan = load_predictor(Path(run), device="cpu")
    mcfg = load_model(Path(run))[1]["model"]
    theirs = None
    if (mcfg["variant"] == "paper" and mcfg["num_layers"] == 12 and tuple(mcfg["skip_layers"]) == (4, 7, 10)
            and mcfg["patch_size"] == 16):
        from monai.networks.nets import UNETR as MonaiUNETR

        theirs = MonaiUNETR(in_channels=mcfg["in_channels"], out_channels=mcfg["out_channels"],
                            img_size=tuple(mcfg["img_size"]), feature_size=mcfg["feature_size"],
                            hidden_size=mcfg["hidden_size"], mlp_dim=mcfg["mlp_dim"], num_heads=mcfg["num_heads"],
                            proj_type=mcfg["proj_type"], norm_name=mcfg["norm"], conv_block=mcfg["conv_block"],
                            res_block=mcfg["res_block"], dropout_rate=0.0, qkv_bias=mcfg["qkv_bias"]).eval()
        missing, unexpected = theirs.load_state_dict(model.state_dict(), strict=False)
        assert not unexpected and all("cross_attn" in k for k in missing), (missing, unexpected)
    ref_name = "MONAI fp32" if theirs is not None else "unetr fp32"
    totals: dict = {}
    for img in sorted(Path(images).glob("*.nii*")):
        x = preprocess_image_file(img, plan)[0]
        labels = {"unetr fp32": predict_volume(model, x, plan.roi, InferConfig(device="cpu", precision="fp32"))[0],
                  "unetr bf16": predict_volume(model, x, plan.roi, InferConfig(device="cpu", precision="bf16"))[0]}
        if theirs is not None:
            for p in ("fp32", "bf16"):
                labels[f"MONAI {p}"] = predict_volume(theirs, x, plan.roi, InferConfig(device="cpu", precision=p))[0]
        ref = labels[ref_name]
        parts = []
        for name, lab in labels.items():
            if name != ref_name:
                eq = int((lab == ref).sum())
                t = totals.setdefault(name, [0, 0])
                t[0], t[1] = t[0] + eq, t[1] + ref.numel()
                parts.append(f"{name} {100 * eq / ref.numel():.3f} %")
        print(f"{img.name}: same argmax as {ref_name}: " + ", ".join(parts), flush=True)
    print(f"all ({mcfg['variant']}, {mcfg['num_layers']} layers, hidden {mcfg['hidden_size']}): same argmax as "
          f"{ref_name}: " + ", ".join(f"{k} {100 * a / b:.3f} % of {b} voxels" for k, (a, b) in totals.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--train-repeats", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--trained-run", help="only measure bf16-vs-fp32 argmax agreement with this trained run "
                    "(e.g. demo/run) on the images of --images")
    ap.add_argument("--images", help="a folder of NIfTI images for --trained-run (e.g. demo/data/imagesTs)")
    args = ap.parse_args()
    if args.trained_run:
        trained_argmax_agreement(args.trained_run, args.images)
        return
    import monai
    from monai.networks.nets import UNETR as MonaiUNETR

    has_bf16, why = native_bf16(torch.device("cpu"))
    if not has_bf16:
        print(f"no native bf16 ({why}): fp32 only", flush=True)
    torch.manual_seed(0)
    s = args.size
    theirs = MonaiUNETR(in_channels=1, out_channels=14, img_size=s).eval()
    ours = UNETR(in_channels=1, out_channels=14, img_size=(s, s, s)).eval()
    ours.load_state_dict({k: v for k, v in theirs.state_dict().items() if "cross_attn" not in k})
    x = torch.randn(1, 1, s, s, s)
    gflop = forward_flops(ours, x) / 1e9
    bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    none = contextlib.nullcontext

    def fwd(model, ctx):
        def run():
            with torch.no_grad(), ctx():
                return model(x)
        return run

    rows = []
    with torch.no_grad():
        ref = theirs(x)
        out32 = ours(x)
    rel = ((out32 - ref).abs().max() / ref.abs().max()).item()
    if has_bf16:
        with torch.no_grad(), bf16():
            out_bf = ours(x).float()
            ref_bf = theirs(x).float()
        agree_ours = (out_bf.argmax(1) == ref.argmax(1)).float().mean().item()
        agree_theirs = (ref_bf.argmax(1) == ref.argmax(1)).float().mean().item()
        # Random weights give near-tied logits; agreement where the fp32 top-2 margin is not a tie (> 1e-2):
        top2 = ref.topk(2, dim=1).values
        decided = (top2[:, 0] - top2[:, 1]) > 1e-2
        agree_decided = (out_bf.argmax(1) == ref.argmax(1))[decided].float().mean().item()

    step_ctx, step_name = (bf16, "bf16") if has_bf16 else (none, "fp32")
    for name, ctx in (("forward fp32", none), ("forward bf16 autocast", bf16))[: 2 if has_bf16 else 1]:
        t = alternate({"monai": fwd(theirs, ctx), "ours": fwd(ours, ctx)}, args.repeats)
        rows.append((name, t["monai"], t["ours"], gflop))

    def train_step(model, opt):
        y = torch.randint(0, 14, (1, s, s, s))

        def run():
            with step_ctx():
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return run

    theirs.train()
    ours.train()
    opt_t = torch.optim.AdamW(theirs.parameters(), lr=1e-4, weight_decay=1e-5)
    opt_o = torch.optim.AdamW(ours.parameters(), lr=1e-4, weight_decay=1e-5)
    t = alternate({"monai": train_step(theirs, opt_t), "ours": train_step(ours, opt_o)}, args.train_repeats)
    rows.append((f"train step {step_name} (fwd+bwd+AdamW)", t["monai"], t["ours"], 3 * gflop))

    mm32, conv32 = peak_gflops(torch.float32)
    mmbf, convbf = peak_gflops(torch.bfloat16) if has_bf16 else (float("nan"), float("nan"))
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    lines = [
        SECTION if has_bf16 else SECTION_NO_BF16,
        "",
        f"`python benchmarks/bench_model.py --repeats {args.repeats}`: `paper` UNETR 1→14 at {s}³, batch 1, same weights, "
        f"alternating repeats, medians. Machine: {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch "
        f"threads ({cpu_summary()}), torch "
        f"{torch.__version__}, MONAI {monai.__version__}. Forward = {gflop:.0f} GFLOP (torch.utils.flop_counter).",
        *([] if has_bf16 else [f"No native bf16 here ({why}): only fp32 is timed."]),
        "",
        "| what | MONAI (s) | ours (s) | MONAI/ours | ours GFLOP/s |",
        "|---|---|---|---|---|",
    ]
    for name, tm, to, fl in rows:
        lines.append(f"| {name} | {tm:.3f} | {to:.3f} | **{tm / to:.2f}×** | {fl / to:.0f} |")
    if has_bf16:
        lines += [
            "",
            f"Measured peaks on this machine: matmul fp32 {mm32:.0f} / bf16 {mmbf:.0f} GFLOP/s; channels-last conv3d "
            f"fp32 {conv32:.0f} / bf16 {convbf:.0f} GFLOP/s.",
            f"Outputs: fp32 max relative difference to MONAI {rel:.1e}; bf16 argmax equal to MONAI fp32 on "
            f"{100 * agree_ours:.2f} % of voxels (MONAI's own bf16: {100 * agree_theirs:.2f} %; on voxels whose fp32 "
            f"top-2 logit margin exceeds 0.01: {100 * agree_decided:.3f} %). Random weights give near-tied logits.",
            "",
        ]
    else:
        lines += [
            "",
            f"Measured peaks on this machine: matmul fp32 {mm32:.0f} GFLOP/s; channels-last conv3d fp32 "
            f"{conv32:.0f} GFLOP/s.",
            f"Outputs: fp32 max relative difference to MONAI {rel:.1e}.",
            "",
        ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section(RESULTS, SECTION if has_bf16 else SECTION_NO_BF16, text)


def write_section(path: Path, heading: str, text: str) -> None:
    """Replace (or append) the section that starts with ``heading`` in a Markdown file."""
    old = path.read_text() if path.exists() else "# Benchmark results\n\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    new = pattern.sub(lambda _: text + "\n", old) if pattern.search(old) else old.rstrip() + "\n\n" + text + "\n"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(new)
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
