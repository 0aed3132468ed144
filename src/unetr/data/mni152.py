"""A real brain MRI example: the MNI152 2009 T1 template and its tissue maps, which nilearn ships in its wheel.

The template is one real (population-average) T1 MRI with grey- and white-matter probability maps. It
becomes a 4-class tissue segmentation — background, CSF, grey matter, white matter — and a small dataset
of cases, each the template under its own smooth random geometry (rotation, scaling, translation), bias
field, contrast curve and noise, written in the nnU-Net v2 layout. Nothing is downloaded.

Labels: grey/white matter where their probabilities sum to at least one half (the larger wins); CSF inside
the brain envelope (the tissue mask closed and hole-filled) where tissue is below one half — ventricles
and sulci, which are dark on T1.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Tuple, Union

import numpy as np
from scipy import ndimage as ndi

from unetr.data.dataset_json import write_dataset_json
from unetr.errors import DataError

log = logging.getLogger(__name__)

CLASS_NAMES = ("background", "csf", "grey_matter", "white_matter")
_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}


def template_paths() -> dict:
    """Paths of the template files inside the installed nilearn package."""
    try:
        import nilearn
    except ImportError:
        raise DataError("the brain example needs nilearn (pip install nilearn, or the package's dev extra)") from None
    root = Path(nilearn.__file__).parent / "datasets" / "data"
    paths = {k: root / f for k, f in _FILES.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise DataError(f"this nilearn has no MNI152 2009 template files: {', '.join(missing)}")
    return paths


def load_template(spacing: float = 2.0) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The T1 template and its 4-class tissue labels resampled to ``spacing`` mm.

    Returns:
        ``(t1 (X, Y, Z) float32 in [0, 1], labels (X, Y, Z) uint8, affine (4, 4))``.
    """
    from unetr.data.io import read_image

    paths = template_paths()
    t1, geom = read_image(paths["t1"])
    gm, _ = read_image(paths["gm"])
    wm, _ = read_image(paths["wm"])
    t1, gm, wm = t1[0] / 255.0, gm[0] / 255.0, wm[0] / 255.0
    factor = geom.spacing[0] / spacing
    if abs(factor - 1) > 1e-6:
        t1 = ndi.zoom(t1, factor, order=1)
        gm = ndi.zoom(gm, factor, order=1)
        wm = ndi.zoom(wm, factor, order=1)
    affine = geom.affine.copy()
    affine[:3, :3] = affine[:3, :3] / factor
    tissue = gm + wm
    inside = tissue >= 0.5
    envelope = ndi.binary_fill_holes(ndi.binary_closing(inside, iterations=max(1, round(4 / spacing))))
    labels = np.zeros(t1.shape, np.uint8)
    labels[envelope & ~inside] = 1
    labels[inside & (gm >= wm)] = 2
    labels[inside & (wm > gm)] = 3
    return t1.astype(np.float32), labels, affine


def _random_case(t1: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """The template under a random rotation/scale/shift, bias field, contrast curve and noise."""
    angles = np.deg2rad(rng.uniform(-10, 10, 3))
    rot = np.eye(3)
    for axis, a in enumerate(angles):
        c, s = np.cos(a), np.sin(a)
        i, j = [k for k in range(3) if k != axis]
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        rot = rot @ r
    matrix = rot * rng.uniform(0.9, 1.1, 3)[None, :]
    centre = (np.array(t1.shape) - 1) / 2
    offset = centre - matrix @ centre + rng.uniform(-3, 3, 3)
    image = ndi.affine_transform(t1, matrix, offset=offset, order=1, mode="constant", cval=0.0)
    label = ndi.affine_transform(labels, matrix, offset=offset, order=0, mode="constant", cval=0)
    coarse = rng.normal(0, 1, (4, 4, 4))
    bias = ndi.zoom(coarse, np.array(image.shape) / 4, order=3)[tuple(slice(0, s) for s in image.shape)]
    image = image ** rng.uniform(0.8, 1.25) * np.exp(0.1 * bias)
    image = image + rng.normal(0, 0.02, image.shape)
    return (np.clip(image, 0, None) * 1000).astype(np.float32), label.astype(np.uint8)


def make_brain_dataset(out_dir: Union[str, Path], cases: int = 8, test_cases: int = 2, seed: int = 0,
                       spacing: float = 2.0) -> Path:
    """Write the MNI152 tissue dataset (nnU-Net v2 layout: dataset.json, imagesTr, labelsTr, imagesTs, labelsTs).

    Args:
        out_dir: the dataset folder (created).
        cases / test_cases: training and held-out cases, each the template under its own random transform.
        seed: case ``i`` depends only on ``(seed, i)``.
        spacing: isotropic voxel size in mm (2 mm gives ~99×117×95 voxels; 3 mm ~66×78×63).
    """
    from unetr.data.io import Geometry, write_image, write_label

    if cases < 1 or test_cases < 0:
        raise ValueError(f"cases must be >= 1 and test_cases >= 0, got {cases} and {test_cases}")
    t1, labels, affine = load_template(spacing)
    out = Path(out_dir)
    for i in range(cases + test_cases):
        image, label = _random_case(t1, labels, np.random.default_rng([seed, i]))
        geom = Geometry.from_affine(affine, image.shape, "float32")
        img_dir, lab_dir = ("imagesTr", "labelsTr") if i < cases else ("imagesTs", "labelsTs")
        write_image(out / img_dir / f"mni_{i:03d}_0000.nii.gz", image, geom)
        write_label(out / lab_dir / f"mni_{i:03d}.nii.gz", label, geom)
    write_dataset_json(out, name="MNI152Tissue", channels=["T1"], class_names=CLASS_NAMES, num_training=cases,
                       description="MNI152 2009 T1 template (shipped with nilearn) under random transforms; "
                                   "4 tissue classes")
    log.info("wrote %d training and %d test brain cases to %s", cases, test_cases, out)
    return out
