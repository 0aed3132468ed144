"""Report fixtures: phantom cases with imperfect predictions, a case with known disagreement, a tiny run."""

from pathlib import Path

import numpy as np
import pytest

from unetr import metrics as M

CLASS_NAMES = ("background", "liver", "spleen", "kidney")
KNOWN_SHAPE = (40, 36, 24)  # non-cubic, so that axis mix-ups show
KNOWN_SPACING = (0.8, 0.8, 2.5)  # anisotropic
KNOWN_FP = (slice(26, 29), slice(22, 26), slice(4, 9))  # 3 x 4 x 5 = 60 voxels of liver where there is none
KNOWN_FN = (slice(24, 26), slice(8, 10), slice(10, 12))  # 2 x 2 x 2 = 8 voxels of spleen left out


def make_known_case():
    """``(image, reference, prediction, spacing)``: two boxes, the prediction with 60 false-positive liver voxels
    and 8 false-negative spleen voxels."""
    rng = np.random.default_rng(7)
    x, y, z = np.meshgrid(*[np.arange(n) for n in KNOWN_SHAPE], indexing="ij")
    image = (-900.0 + 25.0 * x + 10.0 * y + 5.0 * z + rng.normal(0, 15, KNOWN_SHAPE)).astype(np.float32)
    ref = np.zeros(KNOWN_SHAPE, np.uint8)
    ref[8:20, 10:24, 6:14] = 1
    ref[24:32, 8:16, 10:18] = 2
    pred = ref.copy()
    assert not ref[KNOWN_FP].any() and (ref[KNOWN_FN] == 2).all()
    pred[KNOWN_FP] = 1
    pred[KNOWN_FN] = 0
    return image, ref, pred, KNOWN_SPACING


def make_phantom_cases(n: int = 3):
    """Phantoms in RAS with predictions that err as models do: a shifted organ, an eroded one, a missed one."""
    from scipy import ndimage

    from unetr.data.synthetic import make_phantom

    cases = {}
    for i in range(n):
        rng = np.random.default_rng([11, i])
        spacing = (1.5, 1.5, 2.0 + 0.5 * i)
        image, ref, _ = make_phantom(rng, spacing)
        pred = ref.copy()
        pred[ref == 2] = 0
        pred[np.roll(ref == 2, 2 + i, axis=1)] = 2  # the spleen a few voxels off
        pred[(ref == 3) & ~ndimage.binary_erosion(ref == 3, iterations=1 + i)] = 0  # the kidneys too small
        if i == n - 1:
            pred[:, :, : ref.shape[2] // 3][pred[:, :, : ref.shape[2] // 3] == 1] = 0  # the bottom of the liver missed
        cases[f"phantom_{i:03d}"] = (image.astype(np.float32), ref, pred, spacing)
    return cases


def score(cases):
    return {c: M.evaluate_case(pred, ref, spacing, len(CLASS_NAMES)) for c, (_, ref, pred, spacing) in cases.items()}


def write_metrics_csv(path: Path, iterations: int = 300, every: int = 50) -> Path:
    """A run's ``metrics.csv``: loss every 10 iterations, validation Dice every ``every``."""
    cols = ["iteration", "train_loss", "lr"] + [f"val_dice_{c}" for c in CLASS_NAMES] + ["val_mean_dice", "seconds"]
    lines = [",".join(cols)]
    for it in range(10, iterations + 1, 10):
        val = it % every == 0
        dice = [0.99, 0.5 + it / 700, 0.3 + it / 500, 0.2 + it / 600]
        cells = [f"{d:.4f}" if val else "" for d in dice]
        mean = f"{np.mean(dice[1:]):.4f}" if val else ""
        lines.append(",".join([str(it), f"{2.0 * np.exp(-it / 150) + 0.3:.5f}", f"{1e-3 * (1 - it / iterations):.6g}",
                               *cells, mean, f"{it / 3:.1f}"]))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def known_case():
    return make_known_case()


@pytest.fixture(scope="session")
def phantom_cases():
    return make_phantom_cases()


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A run directory: a small untrained UNETR with a plan for 64 x 64 x 48 windows, and a metrics.csv."""
    import torch

    from unetr.config import Plan, preset
    from unetr.model import build_model, save_run

    torch.manual_seed(0)
    plan = Plan(target_spacing=(1.5, 1.5, 2.0), roi=(64, 64, 48), num_classes=4, class_names=CLASS_NAMES,
                preset="tiny")
    cfg = preset("tiny", in_channels=1, out_channels=4, img_size=(64, 64, 48), hidden_size=48, mlp_dim=96)
    run = tmp_path_factory.mktemp("run")
    save_run(run, build_model(cfg).eval(), cfg, plan=plan.to_dict(),
             extra={"train": {"iterations": 300, "lr": 1e-3, "batch_size": 1, "samples_per_volume": 2, "seed": 0,
                              "fold": 0, "num_folds": 5}})
    write_metrics_csv(run / "metrics.csv")
    return run


@pytest.fixture(scope="session")
def phantom_files(tmp_path_factory, phantom_cases) -> Path:
    """The phantom cases as a dataset folder: ``imagesTs/<case>_0000.nii.gz``, ``labelsTs``, ``predictions``."""
    from unetr.data.io import Geometry, write_image, write_label

    root = tmp_path_factory.mktemp("phantom_files")
    for sub in ("imagesTs", "labelsTs", "predictions"):
        (root / sub).mkdir()
    for case, (image, ref, pred, spacing) in phantom_cases.items():
        g = Geometry.from_affine(np.diag([*spacing, 1.0]), image.shape)
        write_image(root / "imagesTs" / f"{case}_0000.nii.gz", image, g)
        write_label(root / "labelsTs" / f"{case}.nii.gz", ref, g)
        write_label(root / "predictions" / f"{case}.nii.gz", pred, g)
    (root / "dataset.json").write_text('{"labels": {"background": 0, "liver": 1, "spleen": 2, "kidney": 3}}')
    return root


@pytest.fixture(scope="session")
def helpers():
    """This file's helpers and constants (test folders are not packages, so tests take them as a fixture)."""
    import types

    return types.SimpleNamespace(make_known_case=make_known_case, make_phantom_cases=make_phantom_cases, score=score,
                                 write_metrics_csv=write_metrics_csv, CLASS_NAMES=CLASS_NAMES, KNOWN_FP=KNOWN_FP,
                                 KNOWN_FN=KNOWN_FN, KNOWN_SHAPE=KNOWN_SHAPE, KNOWN_SPACING=KNOWN_SPACING)
