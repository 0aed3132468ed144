"""Fixtures for prediction tests: a tiny run directory and small non-cubic NIfTI images."""

from pathlib import Path

import numpy as np
import pytest

from unetr.config import Plan, preset

ROI = (32, 32, 32)


@pytest.fixture(scope="session")
def plan() -> Plan:
    return Plan(target_spacing=(1.5, 1.5, 2.0), roi=ROI, in_channels=1, num_classes=3,
                class_names=("background", "liver", "spleen"), intensity="ct_window", preset="tiny",
                crop_foreground=True)


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory, plan) -> Path:
    import torch

    from unetr.model import build_model, save_run

    torch.manual_seed(0)
    cfg = preset("tiny", in_channels=1, out_channels=3, img_size=ROI, hidden_size=48, mlp_dim=96)  # fast
    model = build_model(cfg).eval()
    # Bias the output towards 'liver' where the image is bright so predictions are non-trivial.
    d = tmp_path_factory.mktemp("run")
    save_run(d, model, cfg, plan=plan.to_dict())
    return d


def write_ct(path: Path, shape=(40, 36, 20), spacing=(1.2, 0.9, 2.5), flip_x: bool = True, seed: int = 0,
             channels: int = 1) -> Path:
    """A CT-like image (air around a body with a bright blob) with an LPS-like affine."""
    from unetr.data.io import Geometry, write_image

    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    body = (((grid - np.array(shape) / 2) / (np.array(shape) * 0.4)) ** 2).sum(-1) <= 1
    img = np.where(body, 40.0, -1000.0) + rng.normal(0, 10, shape)
    blob = (((grid - np.array(shape) * [0.5, 0.45, 0.5]) / [5, 5, 3]) ** 2).sum(-1) <= 1
    img[blob] = 200.0
    affine = np.diag([-spacing[0] if flip_x else spacing[0], spacing[1], spacing[2], 1.0])
    affine[:3, 3] = [30.0, -20.0, 5.0]
    arr = img.astype(np.float32) if channels == 1 else np.stack([img] * channels).astype(np.float32)
    write_image(path, arr, Geometry.from_affine(affine, shape))
    return path


@pytest.fixture
def ct_writer():
    """The :func:`write_ct` helper (tests here are not a package, so they cannot import it)."""
    return write_ct
