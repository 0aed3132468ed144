"""End-to-end prediction of one CT-like 512x512x120 volume: unetr's pipeline against MONAI's usual one.

Every pipeline uses the same model object and weights (the ``tiny`` preset, 14 classes, ROI 96^3, seeded)
and goes file to file:

- ``unetr``: ``unetr.inference.predict_case`` with its defaults (read, reorient, crop to the body,
  resample to 1.5x1.5x2 mm keeping the extent, CT window, Gaussian sliding window with overlap 0.5 whose
  blended logits stream into the soft inverse, argmax on the file's grid, write), after
  ``unetr.allocator.keep_freed_memory()`` as ``unetr predict`` runs it;
- ``unetr-monai``: the same with the plan's ``geometry="monai"`` (``unetr predict --geometry monai``):
  MONAI's grid and order, logits back as MONAI's ``Invertd`` takes them;
- ``monai``: ``LoadImaged, EnsureChannelFirstd, Orientationd(RAS), Spacingd(1.5, 1.5, 2),
  ScaleIntensityRanged``, ``sliding_window_inference`` (Gaussian, overlap 0.5, batch 4), ``Invertd``
  (bilinear, on the logits, as MONAI's tutorials do), ``AsDiscreted(argmax)``, ``SaveImaged`` (uint8);
- ``monai+crop``: the same with ``CropForegroundd`` after the intensity window (MONAI's UNETR tutorial).

Each run is a separate child process (so its peak RSS is its own, read with ``resource.getrusage``); runs
alternate and the medians are reported. Time counts from reading the file to the written file (imports
and model loading excluded, for all).

Agreement of the label maps (Dice per class) is measured with the randomly initialised UNETR (a
fragmented argmax, so any difference between two chains shows) in fp32 and bf16, and with a confident,
smooth predictor (intensity bands, a fixed 1x1x1 function of the voxel value). ``--agreement-run`` measures
it with a trained run instead, and against the reference labels where there are some.

Run: python benchmarks/bench_infer.py [--repeats 2] [--threads 2] [--write-results]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHAPE = (512, 512, 120)
SPACING = (0.8, 0.8, 2.5)
TARGET = (1.5, 1.5, 2.0)
ROI = (96, 96, 96)
K = 14
WINDOW = (-175.0, 250.0, 0.0, 1.0)
# Organ intensities (HU): at least 20 HU from each other and from air, fat (-100), muscle (40), table (200).
HU = np.array([-75, -55, -35, -15, 5, 70, 90, 110, 130, 150, 170, 225, 245], dtype=np.float32)
NOISE_HU = 3.0


# ----------------------------------------------------------------------------------------------- data
def make_ct(path: Path, seed: int = 0, shape: tuple = SHAPE) -> None:
    """A CT-like volume of ``shape`` voxels: air, a table, an elliptic body of fat/muscle, 13 ellipsoidal organs,
    noise."""
    from unetr.data.io import Geometry, write_image

    rng = np.random.default_rng(seed)
    x, y, z = (np.arange(n, dtype=np.float32) * s for n, s in zip(shape, SPACING))
    cx, cy, cz = (n * s / 2 for n, s in zip(shape, SPACING))
    img = np.full(shape, -1000.0, np.float32)
    body = ((x[:, None] - cx) / 170.0) ** 2 + ((y[None, :] - cy) / 125.0) ** 2 <= 1  # (X, Y)
    img[body] = -100.0  # fat
    muscle = ((x[:, None] - cx) / 150.0) ** 2 + ((y[None, :] - cy) / 105.0) ** 2 <= 1
    img[muscle] = 40.0
    table = (y > cy + 140) & (y < cy + 150)
    img[:, table, :] = 200.0
    base = np.random.default_rng(1)
    for c in range(1, K):
        centre = np.array([cx, cy, cz]) + base.uniform([-90, -60, -90], [90, 60, 90])
        radii = base.uniform([15, 15, 20], [55, 40, 70])
        lo = np.maximum(((centre - radii) / SPACING).astype(int) - 1, 0)
        hi = np.minimum(((centre + radii) / SPACING).astype(int) + 2, shape)
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        d = (((x[sl[0], None, None] - centre[0]) / radii[0]) ** 2 + ((y[None, sl[1], None] - centre[1]) / radii[1]) ** 2
             + ((z[None, None, sl[2]] - centre[2]) / radii[2]) ** 2)
        img[sl][d <= 1] = HU[c - 1]
    img += rng.normal(0, NOISE_HU, shape).astype(np.float32)
    affine = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])  # LPS-like storage, as DICOM converters write
    affine[:3, 3] = [cx, cy, -cz]
    write_image(path, np.clip(np.rint(img), -1024, 3000).astype(np.int16), Geometry.from_affine(affine, shape))


def make_run(run_dir: Path, roi: tuple = ROI, preset_name: str = "tiny") -> None:
    import torch

    from unetr.config import Plan, preset
    from unetr.model import build_model, save_run

    torch.manual_seed(0)
    plan = Plan(target_spacing=TARGET, roi=roi, in_channels=1, num_classes=K,
                class_names=("background",) + tuple(f"organ{c}" for c in range(1, K)), intensity="ct_window",
                window=WINDOW, preset=preset_name)
    cfg = preset(preset_name, in_channels=1, out_channels=K, img_size=roi)
    save_run(run_dir, build_model(cfg).eval(), cfg, plan=plan.to_dict())


class IntensityBands:
    """A confident predictor: organ k where the windowed intensity is within 10 HU of its value, else background.

    A fixed function of each voxel's value (no context), so organ boundaries, where resampling blends two
    intensities, can pass through other organs' bands: thin shells that a trained network would not draw.
    """

    def __init__(self) -> None:
        import torch

        a_min, a_max, b_min, b_max = WINDOW
        scale = (b_max - b_min) / (a_max - a_min)
        self.centres = torch.tensor((HU - a_min) * scale + b_min).view(1, K - 1, 1, 1, 1)
        self.width = 10.0 * scale  # HU -> window units

    def __call__(self, x):  # (B, 1, *roi) -> (B, K, *roi)
        import torch

        organs = 1.0 - ((x - self.centres) / self.width) ** 2  # > 0 within 10 HU of the organ's value
        return torch.cat([torch.zeros_like(x), organs], 1)


# ----------------------------------------------------------------------------------------------- children
SIDES = ("unetr", "unetr-monai", "monai", "monai+crop")


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kB


def child_ours(image: Path, out: Path, run: Path, model_kind: str, geometry: str | None, precision: str,
               device: str = "cpu") -> dict:
    import torch

    from unetr.allocator import keep_freed_memory
    from unetr.config import InferConfig
    from unetr.inference.predict import load_predictor, predict_case

    keep_freed_memory()  # as `unetr predict` does at start
    model, plan = load_predictor(run, device=device)
    if geometry:
        plan = plan.replace(geometry=geometry)
    if model_kind == "bands":
        model = IntensityBands()
        model.img_size = ROI
    t0 = time.perf_counter()
    res = predict_case(model, plan, [image], out, InferConfig(device=device, precision=precision), overwrite=True)
    dt = time.perf_counter() - t0
    assert res.status == "done", res.message
    return {"seconds": dt, "peak_rss_mb": _peak_rss_mb(), "threads": torch.get_num_threads(), "output": str(res.output)}


def child_monai(image: Path, out: Path, run: Path, model_kind: str, crop: bool, device: str = "cpu") -> dict:
    import torch
    from monai.inferers import sliding_window_inference
    from monai.transforms import (
        AsDiscreted,
        Compose,
        CropForegroundd,
        EnsureChannelFirstd,
        Invertd,
        LoadImaged,
        Orientationd,
        SaveImaged,
        ScaleIntensityRanged,
        Spacingd,
    )

    from unetr.model import load_model

    model, info = load_model(run, map_location=device)
    net = IntensityBands() if model_kind == "bands" else model
    plan = info["plan"]  # the run's preprocessing, as MONAI transforms (the benchmark's own run: TARGET, ROI)
    target, roi = tuple(plan["target_spacing"]), tuple(plan["roi"])
    a_min, a_max, b_min, b_max = plan.get("window") or WINDOW
    pre = Compose([
        LoadImaged(keys="image"), EnsureChannelFirstd(keys="image"), Orientationd(keys="image", axcodes="RAS"),
        Spacingd(keys="image", pixdim=target, mode="bilinear"),
        ScaleIntensityRanged(keys="image", a_min=a_min, a_max=a_max, b_min=b_min, b_max=b_max, clip=True),
        # "monai+crop": MONAI's UNETR tutorial adds CropForegroundd here
        *([CropForegroundd(keys="image", source_key="image")] if crop else []),
    ])
    post = Compose([
        Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False, to_tensor=True),
        AsDiscreted(keys="pred", argmax=True),
        SaveImaged(keys="pred", output_dir=str(out), output_postfix="seg", resample=False, separate_folder=False,
                   output_dtype=np.uint8, print_log=False),
    ])
    t0 = time.perf_counter()
    data = pre({"image": str(image)})
    with torch.inference_mode():
        data["pred"] = sliding_window_inference(data["image"][None].to(device), roi, 4, net, overlap=0.5, mode="gaussian",
                                                sigma_scale=0.125)[0]
    post(data)
    dt = time.perf_counter() - t0
    written = sorted(out.glob("*_seg.nii.gz"))
    return {"seconds": dt, "peak_rss_mb": _peak_rss_mb(), "threads": torch.get_num_threads(),
            "output": str(written[-1])}


def run_child(side: str, image: Path, out: Path, run: Path, model_kind: str, threads: int,
              precision: str = "auto") -> dict:
    """One prediction by ``side`` (see SIDES) in a fresh process."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", side, "--image", str(image), "--out", str(out),
           "--run", str(run), "--model-kind", model_kind, "--threads", str(threads), "--precision", precision]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{side} child failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


@functools.lru_cache(maxsize=8)
def _read_label(path: Path):
    """A label file read once (each output is compared with several others)."""
    from unetr.data.io import read_label

    return read_label(path)


def agreement(a: Path, b: Path, k: int = K) -> dict:
    """Dice per foreground class present in either of two label map files on the same grid."""
    from unetr.grid import grid_mismatch
    from unetr.metrics import confusion_matrix, dice_from_confusion

    la, ga = _read_label(a)
    lb, gb = _read_label(b)
    why = grid_mismatch(la.shape, ga.affine, lb.shape, gb.affine)
    assert why is None, f"the two outputs are not on the same grid: {why}"
    per_class = dice_from_confusion(confusion_matrix(la, lb, k))
    dice = {c: float(d) for c, d in enumerate(per_class) if c > 0 and not np.isnan(d)}
    return {"min": min(dice.values()) if dice else float("nan"),
            "mean": float(np.mean(list(dice.values()))) if dice else float("nan"),
            "per_class": {str(k): round(v, 5) for k, v in dice.items()},
            "a_fraction_foreground": float((la > 0).mean()), "b_fraction_foreground": float((lb > 0).mean())}


# ----------------------------------------------------------------------------------------------- main
def write_section(lines: list) -> None:
    """Replace the section of ``benchmarks/RESULTS.md`` whose title is ``lines[0]`` (or append it)."""
    path = HERE / "RESULTS.md"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    section = "\n".join(lines)
    pattern = re.compile(re.escape(lines[0]) + r".*?(?=\n## |\Z)", re.S)
    text = pattern.sub(lambda _: section.rstrip() + "\n", text) if pattern.search(text) else \
        text.rstrip() + "\n\n" + section
    path.write_text(text)


def write_results(res: dict, metrics: dict | None) -> None:
    t, m, w = res["time_s"], res["peak_rss_mb"], res["windows"]

    def row(ours: str, peer: str) -> str:
        return (f"| `{ours}` against `{peer}` | {t[ours]:.1f} / {t[peer]:.1f} | **{t[peer] / t[ours]:.2f}x** | "
                f"{m[ours]:.0f} / {m[peer]:.0f} | **{m[ours] / m[peer]:.2f}x** | {w[ours]} / {w[peer]} |")

    a = res["agreement"]
    lines = [
        "## Inference (bench_infer.py)", "",
        f"Command: `python benchmarks/bench_infer.py --repeats {res['repeats']} --threads {res['threads']} "
        "--write-results` (each run in its own process, the four pipelines alternating; medians).", "",
        f"Machine: {res['machine']}. Model: `tiny` preset (hidden 192, 4 layers), 14 classes, ROI 96^3, seeded "
        "random weights, the same module and weights in every pipeline; MONAI in fp32 (its tutorials use no "
        "autocast on CPUs), unetr with its `auto` precision (bf16 autocast on this CPU, which has AVX-512 BF16).", "",
        f"Volume: CT-like {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]} int16, spacing {SPACING} mm, LPS-stored; target spacing "
        f"{TARGET} mm; Gaussian sliding window, overlap 0.5; MONAI 4 windows per batch (its tutorials' "
        "setting), unetr its CPU default of 1 (the same throughput on a CPU, a quarter of the activations) and "
        "glibc keeping freed buffers, as `unetr predict` runs.", "",
        "Pipelines: `unetr` = `unetr predict` with its defaults (crop to the body, resample keeping the extent, "
        "soft inverse); `unetr-monai` = `unetr predict --geometry monai` (MONAI's grid and order, logits back as "
        "`Invertd` takes them); `monai` = MONAI's usual inference chain (LoadImaged, Orientationd, Spacingd, "
        "ScaleIntensityRanged, sliding_window_inference, Invertd, AsDiscreted, SaveImaged); `monai+crop` = the "
        "same with `CropForegroundd` after the intensity window, as MONAI's UNETR tutorial has it.", "",
        "Floors (first row: what a MONAI user runs today against what replaces it): at least 3x faster and at "
        "most 0.5x the memory, so that switching is clearly worth it on the same machine; label maps agreeing "
        "at Dice >= 0.995 per class with `--geometry monai`, so that a MONAI-trained model keeps its MONAI "
        "pipeline's results.", "",
        "| pipelines | time (s) | MONAI / unetr | peak RSS (MB) | unetr / MONAI | windows |",
        "|---|---|---|---|---|---|",
        row("unetr", "monai"), row("unetr-monai", "monai"), row("unetr-monai", "monai+crop"), "",
        "Agreement of the label maps (Dice per foreground class present in either):", "",
        f"- `unetr-monai` in fp32 against `monai+crop`, random-weight UNETR (a fragmented argmax, so any "
        f"difference of the two chains shows): min {a['random_fp32']['min']:.6f}, mean {a['random_fp32']['mean']:.6f};",
        f"- the same with unetr's default bf16: min {a['random_bf16']['min']:.4f}, mean "
        f"{a['random_bf16']['mean']:.4f} (near-tied random logits flip under bf16);",
        f"- a confident intensity-band predictor: `unetr-monai` against `monai+crop` min {a['bands_monai']['min']:.4f}, "
        f"mean {a['bands_monai']['mean']:.4f}; `unetr` (its own grid) against `monai+crop` min "
        f"{a['bands_extent']['min']:.4f}, mean {a['bands_extent']['mean']:.4f};",
        "- with a trained model: see the section on agreement below.", "",
        "Individual times (s): " + "; ".join(f"{k} " + ", ".join(f"{v:.1f}" for v in res["runs"][k]) for k in SIDES)
        + ".", "",
    ]
    if metrics:
        lines += [
            "### Metrics (bench_metrics.py)", "",
            f"HD95 + surface Dice (2 mm), 14 classes, {metrics['shape']} label maps, spacing (0.8, 0.8, 2.5): "
            f"unetr.metrics {metrics['ours_s']:.2f} s (Dice, IoU, HD95, ASD and surface Dice together) against "
            f"MONAI's HausdorffDistanceMetric + SurfaceDiceMetric {metrics['monai_s']:.2f} s: "
            f"**{metrics['speedup']:.1f}x**; largest differences {metrics['max_abs_diff_hd95_mm']:.2g} mm (HD95) and "
            f"{metrics['max_abs_diff_surface_dice']:.2g} (surface Dice). Command: `python benchmarks/bench_metrics.py`.", "",
        ]
    write_section(lines)


def _reference_for(image: Path) -> Path | None:
    """``labelsTs/<case>.nii.gz`` next to ``imagesTs/<case>_0000.nii.gz``, when there is one."""
    name = re.sub(r"_\d{4}(\.nii(\.gz)?)$", r"\1", image.name)
    ref = image.parent.parent / image.parent.name.replace("images", "labels") / name
    return ref if ref.exists() else None


def trained_agreement(run: Path, images: Path, work: Path, args) -> None:
    """The pipelines with a trained model on each image of ``images``: Dice per class between the label maps,
    and against the reference labels where ``labelsTs`` has them."""
    from unetr.model import load_model

    _, info = load_model(run)
    k = int(info["plan"]["num_classes"])
    sides = ("unetr-monai", "unetr", "monai+crop")
    rows = []
    for image in sorted(images.glob("*.nii*")):
        outs = {s: Path(run_child(s, image, work / f"agree_{s}", run, "unetr", args.threads)["output"]) for s in sides}
        ref = _reference_for(image)
        r = {"monai": agreement(outs["unetr-monai"], outs["monai+crop"], k),
             "extent": agreement(outs["unetr"], outs["monai+crop"], k)}
        if ref is not None:
            r["accuracy"] = {s: agreement(outs[s], ref, k) for s in sides}
        rows.append((image.name, r))
        print(f"{image.name}: unetr-monai vs monai+crop {r['monai']['per_class']}; unetr vs monai+crop "
              f"{r['extent']['per_class']}", flush=True)
    summary = {"run": str(run), "images": len(rows)}
    for key in ("monai", "extent"):
        vals = [v for _, r in rows for v in r[key]["per_class"].values()]
        summary[key] = {"min": min(vals), "mean": float(np.mean(vals))}
    acc = {}
    if all("accuracy" in r for _, r in rows):
        for s in sides:  # mean Dice per class against the reference (a class absent from both is left out)
            per_class = [[r["accuracy"][s]["per_class"].get(str(c)) for _, r in rows] for c in range(1, k)]
            acc[s] = [float(np.mean([v for v in vals if v is not None])) for vals in per_class]
        summary["accuracy"] = acc
    print(json.dumps(summary))
    if args.write_results:
        title = "## Inference: agreement with a trained model (bench_infer.py --agreement-run)"
        lines = [title, "",
                 f"Command: `python benchmarks/bench_infer.py --agreement-run {run} --agreement-images {images} "
                 "--write-results`: the model of a finished run (the demo's `tiny` UNETR, trained on the phantoms) "
                 "through the pipelines of this benchmark, each with its defaults (unetr bf16 autocast on this "
                 "CPU, MONAI fp32), on the held-out images; Dice per foreground class between the label maps. "
                 "The run's plan crops to the body, so the MONAI chain is `monai+crop` (with `CropForegroundd`, "
                 "as MONAI's UNETR tutorial has it).",
                 "", "| image | " + " | ".join(f"class {c}" for c in range(1, k)) + " | "
                 + " | ".join(f"class {c} (unetr defaults)" for c in range(1, k)) + " |",
                 "|---|" + "---:|" * (2 * (k - 1))]
        for name, r in rows:
            lines.append(f"| {name} | " + " | ".join(f"{r[key]['per_class'].get(str(c), float('nan')):.4f}"
                                                  for key in ("monai", "extent") for c in range(1, k)) + " |")
        lines += ["", f"`unetr --geometry monai` against MONAI: minimum {summary['monai']['min']:.4f}, mean "
                  f"{summary['monai']['mean']:.4f} (floor 0.995 per class). unetr's default grid against MONAI: "
                  f"minimum {summary['extent']['min']:.4f}, mean {summary['extent']['mean']:.4f}.", ""]
        if acc:
            names = info["plan"].get("class_names") or [f"class {c}" for c in range(k)]
            lines += ["Dice against the reference labels (mean over the images, per class):", "",
                      "| pipeline | " + " | ".join(names[1:]) + " | mean |", "|---|" + "---:|" * k]
            for s in sides:
                lines.append(f"| `{s}` | " + " | ".join(f"{v:.4f}" for v in acc[s]) + f" | {np.mean(acc[s]):.4f} |")
            lines.append("")
        write_section(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", help="working folder (default: a temporary one)")
    ap.add_argument("--write-results", action="store_true", help="write the section into benchmarks/RESULTS.md")
    ap.add_argument("--metrics-json", help="bench_metrics.py's output line, to include in RESULTS.md")
    ap.add_argument("--agreement-run", help="a trained run directory (e.g. demo/run): only measure how the "
                    "pipelines' label maps agree on --agreement-images with it")
    ap.add_argument("--agreement-images", help="a folder of NIfTI images for --agreement-run (e.g. demo/data/imagesTs)")
    ap.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    ap.add_argument("--image", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--run", help=argparse.SUPPRESS)
    ap.add_argument("--model-kind", default="unetr", help=argparse.SUPPRESS)
    ap.add_argument("--precision", default="auto", help=argparse.SUPPRESS)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if args.child:
        import logging
        import warnings

        warnings.filterwarnings("ignore")
        logging.disable(logging.WARNING)
        image, out, run = Path(args.image), Path(args.out), Path(args.run)
        if args.child.startswith("unetr"):
            res = child_ours(image, out, run, args.model_kind, "monai" if args.child == "unetr-monai" else None,
                             args.precision)
        else:
            res = child_monai(image, out, run, args.model_kind, crop=args.child == "monai+crop")
        print(json.dumps(res))
        return

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_infer_"))
    work.mkdir(parents=True, exist_ok=True)
    if args.agreement_run:
        trained_agreement(Path(args.agreement_run), Path(args.agreement_images), work, args)
        return
    image, run = work / "ct.nii.gz", work / "run"
    if not image.exists():
        make_ct(image)
    if not (run / "config.json").exists():
        make_run(run)
    from unetr.config import Plan
    from unetr.data.preprocess import preprocess_image_file
    from unetr.data.resample import monai_shape
    from unetr.inference.sliding_window import count_windows
    from unetr.model import load_model

    _, info = load_model(run)
    plan = Plan.from_dict(info["plan"])
    windows = {}
    for side, p in (("unetr", plan), ("unetr-monai", plan.replace(geometry="monai"))):
        pre, _ = preprocess_image_file(image, p)
        windows[side] = count_windows(pre.shape[1:], ROI, 0.5)
        del pre
    windows["monai"] = count_windows(monai_shape(SHAPE, SPACING, TARGET), ROI, 0.5)
    windows["monai+crop"] = windows["unetr-monai"]  # the same crop of the same grid
    runs: dict = {s: [] for s in SIDES}
    rss: dict = {s: [] for s in SIDES}
    outputs = {}
    for r in range(args.repeats):
        for side in SIDES:
            res = run_child(side, image, work / f"out_{side}", run, "unetr", args.threads)
            runs[side].append(res["seconds"])
            rss[side].append(res["peak_rss_mb"])
            outputs[side] = Path(res["output"])
            print(f"repeat {r}: {side} {res['seconds']:.1f} s, peak RSS {res['peak_rss_mb']:.0f} MB", flush=True)
    fp32 = Path(run_child("unetr-monai", image, work / "fp32_unetr-monai", run, "unetr", args.threads, "fp32")["output"])
    bands = {s: Path(run_child(s, image, work / f"bands_{s}", run, "bands", args.threads)["output"])
             for s in ("unetr", "unetr-monai", "monai+crop")}
    agree = {"random_fp32": agreement(fp32, outputs["monai+crop"]),
             "random_bf16": agreement(outputs["unetr-monai"], outputs["monai+crop"]),
             "bands_monai": agreement(bands["unetr-monai"], bands["monai+crop"]),
             "bands_extent": agreement(bands["unetr"], bands["monai+crop"])}
    import platform

    result = {
        "repeats": args.repeats, "threads": args.threads,
        "machine": f"{platform.processor() or platform.machine()}, {args.threads} torch threads, "
                   f"{os.cpu_count()} visible cores (shared)",
        "time_s": {k: float(np.median(v)) for k, v in runs.items()},
        "peak_rss_mb": {k: float(np.median(v)) for k, v in rss.items()},
        "runs": runs, "windows": windows, "agreement": agree,
    }
    result["speedup"] = result["time_s"]["monai"] / result["time_s"]["unetr"]
    result["memory_ratio"] = result["peak_rss_mb"]["unetr"] / result["peak_rss_mb"]["monai"]
    print(json.dumps(result))
    if args.write_results:
        metrics = json.loads(Path(args.metrics_json).read_text().strip().splitlines()[-1]) if args.metrics_json else None
        write_results(result, metrics)


if __name__ == "__main__":
    main()
