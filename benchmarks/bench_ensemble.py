"""An ensemble of 5 members on one CT-like 512x512x120 volume: time and peak memory of ``unetr predict -m``
(members streamed into one accumulator) against one model, 5 separate predictions, and holding every
member's probabilities before averaging them.

Members: 5 ``tiny`` UNETRs (14 classes, ROI 96^3, seeds 0..4) saved as a folder of folds with one plan
(1.5 x 1.5 x 2.0 mm, CT window, crop to the body): what ``unetr train --folds 5`` writes. The CT is
``bench_infer.py``'s. Each pipeline runs in its own child process, file to file (reading, preprocessing,
the sliding windows, the inverse and the writing), after ``unetr.allocator.keep_freed_memory()`` as
``unetr predict`` runs; its peak RSS is read with ``resource.getrusage``:

- ``single``: one member, ``unetr predict -m runs/x/fold_0`` (:func:`unetr.inference.predict.predict_case`);
- ``ensemble``: ``unetr predict -m runs/x`` (:func:`unetr.inference.ensemble.predict_ensemble_case`): the
  image preprocessed once, each member's softmax streamed into one float32 accumulator on the preprocessed
  grid, one network in memory at a time, the argmax of the mean taken on the file's grid;
- ``separate``: 5 ``single`` runs, one per member (what a user without ensembles runs; they would still have
  to average the members' probability files): the sum of their times, the largest of their peaks;
- ``hold-all``: the image preprocessed once, every member's whole probability volume kept, then averaged
  (the same sums in the same order, so the label map must equal ``ensemble``'s) and taken back the same way.
  This is the pattern the issue describes for nnU-Net. nnU-Net v2 itself, predicting with several folds,
  adds each fold's full logit volume into one full-volume sum (two full volumes at a time), and
  ``nnUNetv2_ensemble`` averages probability files saved in the original space one file at a time.

Floor: the ensemble's peak memory at most 1.3x the single model's, whatever the number of members.

Run: python benchmarks/bench_ensemble.py [--repeats 1] [--threads 2] [--write-results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_infer import ROI, SHAPE, SPACING, TARGET, WINDOW, K, make_ct, write_section  # noqa: E402

MEMBERS = 5
SIDES = ("single", "ensemble", "hold-all")


def make_folds(root: Path) -> Path:
    """A folder of ``MEMBERS`` folds: tiny UNETRs seeded 0.. with one plan."""
    import torch

    from unetr.config import Plan, preset
    from unetr.model import build_model, save_run

    plan = Plan(target_spacing=TARGET, roi=ROI, in_channels=1, num_classes=K,
                class_names=("background",) + tuple(f"organ{c}" for c in range(1, K)), intensity="ct_window",
                window=WINDOW, preset="tiny")
    cfg = preset("tiny", in_channels=1, out_channels=K, img_size=ROI)
    for k in range(MEMBERS):
        torch.manual_seed(k)
        save_run(root / f"fold_{k}", build_model(cfg).eval(), cfg, plan=plan.to_dict())
    return root


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kB


def child(side: str, image: Path, out: Path, folds: Path, member: int, precision: str) -> dict:
    import torch

    from unetr.allocator import keep_freed_memory
    from unetr.config import InferConfig, Plan
    from unetr.inference.ensemble import (
        labels_in_input_space,
        load_member,
        member_loaders,
        member_probabilities,
        predict_ensemble_case,
    )
    from unetr.inference.predict import predict_case
    from unetr.package import open_model

    keep_freed_memory()  # as `unetr predict` does at start
    source = open_model(folds)
    plan = Plan.from_dict(source.plan)
    config = InferConfig(device="cpu", precision=precision)
    t0 = time.perf_counter()
    if side == "single":
        res = predict_case(load_member(source.members[member]), plan, [image], out, config, overwrite=True)
        assert res.status == "done", res.message
        output = res.output
    elif side == "ensemble":
        res = predict_ensemble_case(member_loaders(source.members, "cpu"), plan, [image], out, config, overwrite=True)
        assert res.status == "done", res.message
        output = res.output
    else:  # hold-all
        from unetr.data.io import write_label
        from unetr.data.preprocess import preprocess_image_file

        x, record = preprocess_image_file(image, plan)
        x = torch.from_numpy(x)
        held = [member_probabilities(load_member(m), x, config) for m in source.members]  # M x (K, X', Y', Z')
        total = held[0].clone()
        for p in held[1:]:
            total += p
        labels = labels_in_input_space(total / len(held), record)
        output = out / image.name.replace("_0000", "")
        write_label(output, labels, record.geometry)
    dt = time.perf_counter() - t0
    grid = list(x.shape[1:]) if side == "hold-all" else None
    return {"seconds": dt, "peak_rss_mb": _peak_rss_mb(), "threads": torch.get_num_threads(), "output": str(output),
            "grid": grid}


def run_child(side: str, image: Path, out: Path, folds: Path, threads: int, member: int = 0,
              precision: str = "auto") -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", side, "--image", str(image), "--out", str(out),
           "--folds", str(folds), "--member", str(member), "--threads", str(threads), "--precision", precision]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{side} child failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def cpu_flags() -> str:
    from unetr.device import cpu_flags as flags

    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    have = flags()
    return ", ".join(f for f in wanted if f in have) or "none of avx2/avx512/amx"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument("--write-results", action="store_true")
    p.add_argument("--child", choices=SIDES)
    p.add_argument("--image")
    p.add_argument("--out")
    p.add_argument("--folds")
    p.add_argument("--member", type=int, default=0)
    args = p.parse_args()
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(child(args.child, Path(args.image), Path(args.out), Path(args.folds), args.member,
                               args.precision)))
        return

    from unetr.device import explain_precision

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        image = work / "ct_0000.nii.gz"
        make_ct(image)
        folds = make_folds(work / "folds")
        runs: dict = {s: [] for s in SIDES + ("separate",)}
        for r in range(args.repeats):
            for side in SIDES:
                res = run_child(side, image, work / side, folds, args.threads, precision=args.precision)
                runs[side].append(res)
                print(f"[{r}] {side}: {res['seconds']:.1f} s, peak {res['peak_rss_mb']:.0f} MB", flush=True)
            sep = [run_child("single", image, work / f"sep{m}", folds, args.threads, member=m, precision=args.precision)
                   for m in range(MEMBERS)]
            runs["separate"].append({"seconds": sum(s["seconds"] for s in sep),
                                     "peak_rss_mb": max(s["peak_rss_mb"] for s in sep), "each": sep})
            print(f"[{r}] separate: {runs['separate'][-1]['seconds']:.1f} s, peak "
                  f"{runs['separate'][-1]['peak_rss_mb']:.0f} MB", flush=True)
        from unetr.data.io import read_label

        ens = read_label(runs["ensemble"][-1]["output"])[0]
        same = bool((ens == read_label(runs["hold-all"][-1]["output"])[0]).all())
        t = {k: statistics.median(x["seconds"] for x in v) for k, v in runs.items()}
        m = {k: statistics.median(x["peak_rss_mb"] for x in v) for k, v in runs.items()}
        # one model's peak varies from run to run (by up to ~20 % here): the median of every one-model run,
        # the separate predictions' included
        singles = [x for x in runs["single"]] + [e for x in runs["separate"] for e in x["each"]]
        m["single"] = statistics.median(x["peak_rss_mb"] for x in singles)
        spread = (min(x["peak_rss_mb"] for x in singles), max(x["peak_rss_mb"] for x in singles), len(singles))
        import torch

        precision, why = explain_precision(args.precision, torch.device("cpu"))
        ens_peaks = sorted(round(x["peak_rss_mb"]) for x in runs["ensemble"])
        res = {"time_s": t, "peak_rss_mb": m, "single_peak_spread_mb": spread, "ensemble_peaks_mb": ens_peaks,
               "same_labels_as_hold_all": same,
               "grid": runs["hold-all"][-1]["grid"],
               "repeats": args.repeats,
               "threads": args.threads, "precision": f"{precision} ({why})", "cpu_flags": cpu_flags(),
               "machine": f"{platform.machine()}, {args.threads} torch threads, torch {torch.__version__}",
               "load": os.getloadavg()}
        print(json.dumps(res, indent=2))
        if args.write_results:
            write_results(res)


def write_results(res: dict) -> None:
    t, m = res["time_s"], res["peak_rss_mb"]
    single = m["single"]

    def row(side: str, what: str) -> str:
        return f"| {what} | {t[side]:.1f} | {m[side]:.0f} | **{m[side] / single:.2f}x** |"

    lines = [
        "## Ensembles (bench_ensemble.py)", "",
        f"Command: `python benchmarks/bench_ensemble.py --repeats {res['repeats']} --threads {res['threads']} "
        "--write-results` (each pipeline in its own process, file to file; medians).", "",
        f"Machine: {res['machine']}; CPU flags: {res['cpu_flags']}; precision {res['precision']}; load average "
        f"at the end {', '.join(f'{v:.1f}' for v in res['load'])} (2 cores shared with other jobs: times are "
        "noisy, memory is not).", "",
        f"Volume: `bench_infer.py`'s CT-like {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]} int16 at {SPACING} mm; members: "
        f"{MEMBERS} `tiny` UNETRs (14 classes, ROI 96^3, seeded) with one plan ({TARGET} mm, CT window, crop to "
        "the body), as `unetr train --folds 5` writes them.", "",
        "Floor: the ensemble's peak memory at most 1.3x one model's, whatever the number of members (members "
        "run one after another into one float32 accumulator on the preprocessed grid).", "",
        "| pipeline | time (s) | peak RSS (MB) | peak / one model's |",
        "|---|---:|---:|---:|",
        row("single", "one model (`unetr predict -m runs/x/fold_0`; peak: the median of every one-model run)"),
        row("ensemble", f"ensemble of {MEMBERS}, streamed (`unetr predict -m runs/x`)"),
        row("separate", f"{MEMBERS} separate predictions (time: their sum; peak: the largest)"),
        row("hold-all", f"every member's probabilities held, then averaged ({MEMBERS} volumes)"), "",
        f"- The ensemble takes {t['ensemble'] / t['separate']:.2f}x the time of {MEMBERS} separate predictions "
        "(the image is read, preprocessed and taken back once, not five times) and gives one label map where "
        f"those give five; holding every member's probabilities costs {m['hold-all'] / m['ensemble']:.2f}x the "
        "streamed ensemble's memory, and grows with each member.",
        f"- The streamed and the hold-all label maps are identical: {res['same_labels_as_hold_all']} (the same sums "
        "in the same order).",
        f"- One model's peak ranged over {res['single_peak_spread_mb'][0]:.0f}-{res['single_peak_spread_mb'][1]:.0f} MB "
        f"in {res['single_peak_spread_mb'][2]} identical runs (glibc's heap, kept by `unetr predict`, is laid out "
        "differently from run to run); the ratios use their median. The ensemble's peaks: "
        f"{', '.join(map(str, res['ensemble_peaks_mb']))} MB (at most {max(res['ensemble_peaks_mb']) / single:.2f}x "
        "the median). Its one extra volume is the accumulator, K x the preprocessed grid x 4 B "
        f"({K} x {' x '.join(map(str, res['grid']))} x 4 B = {K * np.prod(res['grid']) * 4 / 2**20:.0f} MiB here), "
        "however many members; the peaks differ by less because the rest of a member's working set is freed "
        "before the next member reuses it.",
        "- nnU-Net v2 for comparison (read from its code, not measured here): `nnUNetv2_predict` with several folds "
        "sums each fold's whole logit volume into one whole-volume array on the preprocessed grid (two whole "
        "volumes at a time), and `nnUNetv2_ensemble` averages the probability files each prediction saved in the "
        "original space, one file at a time; the hold-all row is the pattern the issue describes.", "",
    ]
    write_section(lines)


if __name__ == "__main__":
    main()
