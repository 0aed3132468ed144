"""HD95 + surface Dice (+ Dice) for 14 classes on a 192x192x128 case: unetr.metrics against MONAI.

Run: python benchmarks/bench_metrics.py [--repeats 3]
Prints one JSON line: medians in seconds, the speed-up, and the largest difference of the values.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def phantom(seed: int, shape=(192, 192, 128), k: int = 14) -> np.ndarray:
    """k-1 ellipsoidal 'organs' of different sizes; seeds give a reference and a perturbed prediction."""
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.int16)
    base = np.random.default_rng(0)
    for c in range(1, k):
        centre = base.uniform(0.2, 0.8, 3) * shape + rng.normal(0, 1.5, 3)
        radii = base.uniform(6, 30, 3) * rng.uniform(0.93, 1.07, 3)
        sl = tuple(slice(max(int(ce - r) - 1, 0), min(int(ce + r) + 2, n)) for ce, r, n in zip(centre, radii, shape))
        grids = np.ogrid[sl]
        d = sum(((g - ce) / r) ** 2 for g, ce, r in zip(grids, centre, radii))
        lab[sl][d <= 1] = c
    return lab


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from monai.metrics import HausdorffDistanceMetric, SurfaceDiceMetric

    from unetr.metrics import evaluate_case

    torch.set_num_threads(2)
    k, spacing = 14, (0.8, 0.8, 2.5)
    ref, pred = phantom(1), phantom(2)

    def ours():
        return evaluate_case(pred, ref, spacing, k, tolerance_mm=2.0)

    def monai():
        yp = torch.nn.functional.one_hot(torch.from_numpy(pred.astype(np.int64)), k).permute(3, 0, 1, 2)[None]
        yr = torch.nn.functional.one_hot(torch.from_numpy(ref.astype(np.int64)), k).permute(3, 0, 1, 2)[None]
        hd = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")(yp, yr, spacing=spacing)
        nsd = SurfaceDiceMetric([2.0] * (k - 1), include_background=False, reduction="none")(yp, yr, spacing=spacing)
        return hd[0].numpy(), nsd[0].numpy()

    t_ours, t_monai = [], []
    for _ in range(args.repeats):  # alternate so that drifts of a shared CPU hit both
        t0 = time.perf_counter()
        r_ours = ours()
        t_ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        r_monai = monai()
        t_monai.append(time.perf_counter() - t0)
    hd_diff = max(abs(r_ours[c].hd95 - r_monai[0][c - 1]) for c in range(1, k))
    nsd_diff = max(abs(r_ours[c].surface_dice - r_monai[1][c - 1]) for c in range(1, k))
    res = {"shape": list(ref.shape), "classes": k, "ours_s": float(np.median(t_ours)),
           "monai_s": float(np.median(t_monai)), "speedup": float(np.median(t_monai) / np.median(t_ours)),
           "max_abs_diff_hd95_mm": float(hd_diff), "max_abs_diff_surface_dice": float(nsd_diff),
           "ours_includes": "dice, iou, hd95, asd, surface_dice", "monai_includes": "hd95, surface_dice"}
    print(json.dumps(res))


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore")
    main()
