"""End-to-end prediction of one CT-like 512x512x120 volume: unetr's pipeline against MONAI's usual one.

Both pipelines use the same model object and weights (the ``tiny`` preset, 14 classes, ROI 96^3, seeded)
and go file to file:

- ours:  ``unetr.inference.predict_case`` (read, reorient, crop to the body, resample to 1.5x1.5x2 mm,
  CT window, Gaussian sliding window with overlap 0.5 and argmax-only blending, inverse to the file's grid,
  write) with its defaults, after ``unetr.heap.keep_freed_memory()`` as ``unetr predict`` runs it;
- MONAI: ``LoadImaged, EnsureChannelFirstd, Orientationd(RAS), Spacingd(1.5, 1.5, 2), ScaleIntensityRanged``,
  ``sliding_window_inference`` (Gaussian, overlap 0.5, batch 4), ``Invertd`` (bilinear, on the
  probabilities, as MONAI's tutorials do), ``AsDiscreted(argmax)``, ``SaveImaged`` (uint8).

Each run is a separate child process (so its peak RSS is its own, read with ``resource.getrusage``); runs
alternate ours/MONAI and the medians are reported. Time counts from reading the file to the written file
(imports and model loading excluded, for both).

Agreement of the two label maps (Dice per class) is measured twice: with the randomly initialised UNETR
(whose argmax is fragmented, so it mostly measures how the two preprocessing grids differ) and with a
confident, smooth predictor (intensity bands, a fixed 1x1x1 function of the voxel value) run through the
same two pipelines.

Run: python benchmarks/bench_infer.py [--repeats 2] [--threads 2] [--write-results]
"""

from __future__ import annotations

import argparse
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
def make_ct(path: Path, seed: int = 0) -> None:
    """A CT-like volume: air, a table, an elliptic body of fat/muscle, 13 ellipsoidal organs, noise."""
    from unetr.data.io import Geometry, write_image

    rng = np.random.default_rng(seed)
    x, y, z = (np.arange(n, dtype=np.float32) * s for n, s in zip(SHAPE, SPACING))
    cx, cy, cz = (n * s / 2 for n, s in zip(SHAPE, SPACING))
    img = np.full(SHAPE, -1000.0, np.float32)
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
        hi = np.minimum(((centre + radii) / SPACING).astype(int) + 2, SHAPE)
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        d = (((x[sl[0], None, None] - centre[0]) / radii[0]) ** 2 + ((y[None, sl[1], None] - centre[1]) / radii[1]) ** 2
             + ((z[None, None, sl[2]] - centre[2]) / radii[2]) ** 2)
        img[sl][d <= 1] = HU[c - 1]
    img += rng.normal(0, NOISE_HU, SHAPE).astype(np.float32)
    affine = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])  # LPS-like storage, as DICOM converters write
    affine[:3, 3] = [cx, cy, -cz]
    write_image(path, np.clip(np.rint(img), -1024, 3000).astype(np.int16), Geometry.from_affine(affine, SHAPE))


def make_run(run_dir: Path) -> None:
    import torch

    from unetr.config import Plan, preset
    from unetr.model import build_model, save_run

    torch.manual_seed(0)
    plan = Plan(target_spacing=TARGET, roi=ROI, in_channels=1, num_classes=K,
                class_names=("background",) + tuple(f"organ{c}" for c in range(1, K)), intensity="ct_window",
                window=WINDOW, preset="tiny")
    cfg = preset("tiny", in_channels=1, out_channels=K, img_size=ROI)
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
def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kB


def child_ours(image: Path, out: Path, run: Path, model_kind: str) -> dict:
    import torch

    from unetr.config import InferConfig
    from unetr.heap import keep_freed_memory
    from unetr.inference.predict import load_predictor, predict_case

    keep_freed_memory()  # as `unetr predict` does at start
    model, plan = load_predictor(run, device="cpu")
    if model_kind == "bands":
        model = IntensityBands()
        model.img_size = ROI
    t0 = time.perf_counter()
    res = predict_case(model, plan, [image], out, InferConfig(device="cpu"), overwrite=True)
    dt = time.perf_counter() - t0
    assert res.status == "done", res.message
    return {"seconds": dt, "peak_rss_mb": _peak_rss_mb(), "threads": torch.get_num_threads(), "output": str(res.output)}


def child_monai(image: Path, out: Path, run: Path, model_kind: str) -> dict:
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

    model, info = load_model(run, map_location="cpu")
    net = IntensityBands() if model_kind == "bands" else model
    plan = info["plan"]  # the run's preprocessing, as MONAI transforms (the benchmark's own run: TARGET, ROI)
    target, roi = tuple(plan["target_spacing"]), tuple(plan["roi"])
    a_min, a_max, b_min, b_max = plan.get("window") or WINDOW
    pre = Compose([
        LoadImaged(keys="image"), EnsureChannelFirstd(keys="image"), Orientationd(keys="image", axcodes="RAS"),
        Spacingd(keys="image", pixdim=target, mode="bilinear"),
        ScaleIntensityRanged(keys="image", a_min=a_min, a_max=a_max, b_min=b_min, b_max=b_max, clip=True),
        # "unetr+crop": MONAI's UNETR tutorial adds CropForegroundd here, as the run's plan crops to the body
        *([CropForegroundd(keys="image", source_key="image")] if model_kind.endswith("+crop") else []),
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
        data["pred"] = sliding_window_inference(data["image"][None], roi, 4, net, overlap=0.5, mode="gaussian",
                                                sigma_scale=0.125)[0]
    post(data)
    dt = time.perf_counter() - t0
    written = sorted(out.glob("*_seg.nii.gz"))
    return {"seconds": dt, "peak_rss_mb": _peak_rss_mb(), "threads": torch.get_num_threads(),
            "output": str(written[-1])}


def run_child(which: str, image: Path, out: Path, run: Path, model_kind: str, threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", which, "--image", str(image), "--out", str(out),
           "--run", str(run), "--model-kind", model_kind, "--threads", str(threads)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{which} child failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def agreement(a: Path, b: Path, k: int = K) -> dict:
    from unetr.data.io import read_label

    la, ga = read_label(a)
    lb, gb = read_label(b)
    assert la.shape == lb.shape, (la.shape, lb.shape)
    assert np.allclose(ga.affine, gb.affine, atol=1e-3), "the two outputs are not on the same grid"
    from unetr.metrics import confusion_matrix

    cm = confusion_matrix(la, lb, k).astype(np.float64)
    dice = {}
    for c in range(1, k):
        denom = cm[c].sum() + cm[:, c].sum()
        if denom:
            dice[c] = float(2 * cm[c, c] / denom)
    return {"min": min(dice.values()) if dice else float("nan"),
            "mean": float(np.mean(list(dice.values()))) if dice else float("nan"),
            "per_class": {str(k): round(v, 5) for k, v in dice.items()},
            "ours_fraction_foreground": float((la > 0).mean()), "monai_fraction_foreground": float((lb > 0).mean())}


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
    t, m = res["time_s"], res["peak_rss_mb"]
    lines = [
        "## Inference (bench_infer.py)", "",
        f"Command: `python benchmarks/bench_infer.py --repeats {res['repeats']} --threads {res['threads']} "
        "--write-results` (each run in its own process, ours and MONAI alternating; medians).", "",
        f"Machine: {res['machine']}. Model: `tiny` preset (hidden 192, 4 layers), 14 classes, ROI 96^3, seeded "
        "random weights, the same module and weights in both pipelines; MONAI in fp32 (its tutorials use no "
        "autocast on CPUs), unetr with its `auto` precision (bf16 autocast on this CPU, which has AVX-512 BF16).", "",
        f"Volume: CT-like {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]} int16, spacing {SPACING} mm, LPS-stored; target spacing "
        f"{TARGET} mm; Gaussian sliding window, overlap 0.5; MONAI 4 windows per batch (its tutorials' "
        "setting), unetr its CPU default of 1 (the same throughput on a CPU, a quarter of the activations) and "
        "glibc keeping freed buffers, as `unetr predict` runs.", "",
        "| | unetr | MONAI 1.6.1 | ratio (MONAI / unetr) | floor |",
        "|---|---|---|---|---|",
        f"| end-to-end time (s) | {t['ours']:.1f} | {t['monai']:.1f} | **{t['monai'] / t['ours']:.2f}x** | >= 3x |",
        f"| peak RSS (MB) | {m['ours']:.0f} | {m['monai']:.0f} | **{m['ours'] / m['monai']:.2f}x** of MONAI's | <= 0.5x |",
        f"| windows run | {res['windows']['ours']} | {res['windows']['monai']} | | |",
        "", "Agreement of the two label maps (Dice per foreground class present in either):", "",
        f"- random-weight `tiny` UNETR: min {res['agreement_unetr']['min']:.4f}, mean "
        f"{res['agreement_unetr']['mean']:.4f} (floor 0.995);",
        f"- confident intensity-band predictor through the same two pipelines: min "
        f"{res['agreement_bands']['min']:.4f}, mean {res['agreement_bands']['mean']:.4f}.", "",
        "Individual times (s): ours " + ", ".join(f"{v:.1f}" for v in res["runs"]["ours"]) + "; MONAI "
        + ", ".join(f"{v:.1f}" for v in res["runs"]["monai"]) + ".", "",
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


def trained_agreement(run: Path, images: Path, work: Path, args) -> None:
    """Both pipelines with a trained model on each image of ``images``: Dice per class between the label maps."""
    from unetr.model import load_model

    _, info = load_model(run)
    k = int(info["plan"]["num_classes"])
    rows = []
    for image in sorted(images.glob("*.nii*")):
        outs = {w: Path(run_child(w, image, work / f"agree_{w}", run, kind, args.threads)["output"])
                for w, kind in (("ours", "unetr"), ("monai", "unetr+crop"))}
        res = agreement(outs["ours"], outs["monai"], k)
        rows.append((image.name, res))
        print(f"{image.name}: Dice per class {res['per_class']}", flush=True)
    per_class = [v for _, r in rows for v in r["per_class"].values()]
    summary = {"run": str(run), "images": len(rows), "min": min(per_class), "mean": float(np.mean(per_class))}
    print(json.dumps(summary))
    if args.write_results:
        title = "## Inference: agreement with a trained model (bench_infer.py --agreement-run)"
        lines = [title, "",
                 f"Command: `python benchmarks/bench_infer.py --agreement-run {run} --agreement-images {images} "
                 "--write-results`: the model of a finished run (the demo's `tiny` UNETR, trained on the phantoms) "
                 "through both pipelines of this benchmark, each with its defaults (unetr bf16 autocast on this "
                 "CPU, MONAI fp32; MONAI's chain with `CropForegroundd` after the intensity window, as its UNETR "
                 "tutorial has it and as the run's plan crops), on the held-out images; Dice per foreground class "
                 "between the two label maps.",
                 "", "| image | " + " | ".join(f"class {c}" for c in range(1, k)) + " |",
                 "|---|" + "---:|" * (k - 1)]
        for name, r in rows:
            lines.append(f"| {name} | " + " | ".join(f"{r['per_class'].get(str(c), float('nan')):.4f}"
                                                  for c in range(1, k)) + " |")
        lines += ["", f"Minimum {summary['min']:.4f}, mean {summary['mean']:.4f} (floor 0.995 per class).", ""]
        write_section(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", help="working folder (default: a temporary one)")
    ap.add_argument("--write-results", action="store_true", help="write the section into benchmarks/RESULTS.md")
    ap.add_argument("--metrics-json", help="bench_metrics.py's output line, to include in RESULTS.md")
    ap.add_argument("--agreement-run", help="a trained run directory (e.g. demo/run): only measure how the two "
                    "pipelines' label maps agree on --agreement-images with it")
    ap.add_argument("--agreement-images", help="a folder of NIfTI images for --agreement-run (e.g. demo/data/imagesTs)")
    ap.add_argument("--child", choices=["ours", "monai"], help=argparse.SUPPRESS)
    ap.add_argument("--image", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--run", help=argparse.SUPPRESS)
    ap.add_argument("--model-kind", default="unetr", help=argparse.SUPPRESS)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if args.child:
        import logging
        import warnings

        warnings.filterwarnings("ignore")
        logging.disable(logging.WARNING)
        fn = child_ours if args.child == "ours" else child_monai
        print(json.dumps(fn(Path(args.image), Path(args.out), Path(args.run), args.model_kind)))
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
    from unetr.data.preprocess import preprocess_image_file
    from unetr.inference.sliding_window import count_windows
    from unetr.model import load_model

    _, info = load_model(run)
    from unetr.config import Plan

    pre, _ = preprocess_image_file(image, Plan.from_dict(info["plan"]))
    monai_shape = [int(round(n * s / t)) for n, s, t in zip(SHAPE, SPACING, TARGET)]
    windows = {"ours": count_windows(pre.shape[1:], ROI, 0.5), "monai": count_windows(monai_shape, ROI, 0.5)}
    del pre
    runs: dict = {"ours": [], "monai": []}
    rss: dict = {"ours": [], "monai": []}
    outputs = {}
    for r in range(args.repeats):
        for which in ("ours", "monai"):
            res = run_child(which, image, work / f"out_{which}", run, "unetr", args.threads)
            runs[which].append(res["seconds"])
            rss[which].append(res["peak_rss_mb"])
            outputs[which] = Path(res["output"])
            print(f"repeat {r}: {which} {res['seconds']:.1f} s, peak RSS {res['peak_rss_mb']:.0f} MB", flush=True)
    agree_unetr = agreement(outputs["ours"], outputs["monai"])
    band_out = {w: Path(run_child(w, image, work / f"bands_{w}", run, "bands", args.threads)["output"])
                for w in ("ours", "monai")}
    agree_bands = agreement(band_out["ours"], band_out["monai"])
    import platform

    result = {
        "repeats": args.repeats, "threads": args.threads,
        "machine": f"{platform.processor() or platform.machine()}, {args.threads} torch threads, "
                   f"{os.cpu_count()} visible cores (shared)",
        "time_s": {k: float(np.median(v)) for k, v in runs.items()},
        "peak_rss_mb": {k: float(np.median(v)) for k, v in rss.items()},
        "runs": runs, "windows": windows,
        "agreement_unetr": agree_unetr, "agreement_bands": agree_bands,
    }
    result["speedup"] = result["time_s"]["monai"] / result["time_s"]["ours"]
    result["memory_ratio"] = result["peak_rss_mb"]["ours"] / result["peak_rss_mb"]["monai"]
    print(json.dumps(result))
    if args.write_results:
        metrics = json.loads(Path(args.metrics_json).read_text().strip().splitlines()[-1]) if args.metrics_json else None
        write_results(result, metrics)


if __name__ == "__main__":
    main()
