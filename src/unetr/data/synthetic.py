"""CT-like phantoms: the demo's default dataset and the tests' data.

Each case is an abdomen-like slab: a body outline (fat and muscle), a spine (bone), bowel loops (unlabelled,
soft-tissue intensity) and three labelled organs:

====  ========  =====================================================================================
1     liver     large wedge on the right, ~60 HU
2     spleen    small crescent on the left, ~60 HU (the same intensity as the liver and the bowel)
3     kidney    two beans either side of the spine, ~150 HU (the bone edges blur into this range)
====  ========  =====================================================================================

Liver, spleen and bowel overlap in intensity, so only shape and position tell them apart: a thresholding
"model" scores clearly worse than a trained network. Spacing, orientation (some non-RAS affines, one with
permuted axes), positions, sizes and intensities vary per case; some cases miss the spleen or a kidney;
noise and a smooth bias field are added. Everything is drawn from one ``np.random.Generator`` per case, so a
seed gives the same files.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence, Tuple

import numpy as np

from unetr.data.dataset_json import write_dataset_json
from unetr.data.io import PathLike

log = logging.getLogger(__name__)

CLASS_NAMES = ("background", "liver", "spleen", "kidney")
EXTENT_MM = (108.0, 100.0, 104.0)  # field of view (x, y, z) in RAS mm
ORIENTATIONS = (("R", "A", "S"), ("L", "P", "S"), ("L", "A", "S"), ("R", "A", "I"), ("L", "S", "P"))


def _rot_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _ellipsoid(coords: Tuple[np.ndarray, ...], centre: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    """Normalised radius: < 1 inside the ellipsoid."""
    x, y, z = coords
    return ((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + ((z - centre[2]) / radii[2]) ** 2


def make_phantom(
    rng: np.random.Generator, spacing: Sequence[float] = (1.5, 1.5, 2.0), size: Sequence[float] = EXTENT_MM,
    axcodes: Sequence[str] = ("R", "A", "S"), missing: Sequence[str] = (),
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One phantom case.

    Args:
        rng: draws every random choice (positions, sizes, intensities, noise).
        spacing: voxel size in mm along R, A, S before reorientation.
        size: field of view in mm along R, A, S.
        axcodes: orientation of the stored array (``('L', 'P', 'S')`` gives a DICOM-like affine).
        missing: organ names left out of image and label (``spleen``, ``kidney_left``, ``kidney_right``).

    Returns:
        ``(image (X, Y, Z) int16 HU, label (X, Y, Z) uint8, affine (4, 4))`` in the ``axcodes`` orientation.
    """
    # One long recipe on purpose: read top to bottom, it is the order of the draws from ``rng``, which is
    # what makes a seed give the same files; split into helpers, that order would be spread over them.
    import nibabel as nib

    spacing = np.asarray(spacing, dtype=np.float64)
    shape = tuple(int(round(e / s)) for e, s in zip(size, spacing))
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)]
    gx, gy, gz = np.meshgrid(*axes, indexing="ij")  # world mm, RAS, centred
    # the patient lies a little rotated and shifted in the scanner
    rot = _rot_z(rng.uniform(-0.15, 0.15))
    shift = rng.uniform(-4, 4, size=3)
    pts = np.stack([gx.ravel(), gy.ravel(), gz.ravel()]) - shift[:, None]
    px, py, pz = (rot.T @ pts).reshape(3, *shape)
    coords = (px, py, pz)

    hu = np.full(shape, -1000.0, dtype=np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    # body: elliptic cylinder with a fat rim and muscle inside
    ba, bb = rng.uniform(46, 51), rng.uniform(38, 44)
    body = (px / ba) ** 2 + (py / bb) ** 2
    hu[body < 1] = rng.uniform(-110, -80)  # fat
    hu[body < 0.8] = rng.uniform(20, 45)  # muscle / soft tissue
    hu[body < 0.72] = rng.uniform(-40, 0)  # mesenteric fat
    # spine behind, bone
    spine = ((px - 0) / 9) ** 2 + ((py + 26) / 9) ** 2
    hu[spine < 1] = rng.uniform(300, 450)
    hu[spine < 0.4] = rng.uniform(150, 220)  # marrow: kidney-like intensity, unlabelled

    def jitter(v, s):
        return np.asarray(v, dtype=np.float64) + rng.uniform(-s, s, size=3)

    scale = rng.uniform(0.88, 1.12)
    soft = rng.uniform(50, 65)  # liver, spleen and bowel share it
    # bowel: unlabelled soft-tissue blobs in front
    for _ in range(int(rng.integers(3, 6))):
        c = (rng.uniform(-18, 18), rng.uniform(12, 28), rng.uniform(-30, 30))
        r = rng.uniform(5, 8, size=3)
        hu[_ellipsoid(coords, c, r) < 1] = soft + rng.uniform(-10, 10)
    # liver: big ellipsoid on the patient's right (RAS -x), cut by an oblique plane -> wedge
    c = jitter((-20, 2, 8), 4)
    r = np.array([26, 30, 30]) * scale * rng.uniform(0.92, 1.08, size=3)
    liver = (_ellipsoid(coords, c, r) < 1) & ((px - c[0]) * 0.8 - (py - c[1]) * 0.6 < r[0] * 0.45)
    # spleen: crescent on the left, posterior
    c = jitter((30, -10, 16), 3)
    r = np.array([13, 20, 24]) * scale * rng.uniform(0.9, 1.1, size=3)
    spleen = (_ellipsoid(coords, c, r) < 1) & (_ellipsoid(coords, c + np.array([-10.0, 4.0, 0.0]), r * 0.75) >= 1)
    # kidneys: beans either side of the spine, lower
    kidneys = []
    for side, name in ((-1, "kidney_right"), (1, "kidney_left")):
        c = jitter((side * 24, -20, -18), 3)
        r = np.array([10, 13, 20]) * scale * rng.uniform(0.9, 1.1, size=3)
        bean = (_ellipsoid(coords, c, r) < 1) & (_ellipsoid(coords, c + np.array([-side * 10.0, 0, 0]), r * 0.45) >= 1)
        if name not in missing:
            kidneys.append(bean)
    organs = [(1, liver, soft + rng.uniform(-5, 5)), (3, np.any(kidneys, axis=0) if kidneys else None,
                                                     rng.uniform(140, 170))]
    if "spleen" not in missing:
        organs.insert(1, (2, spleen, soft + rng.uniform(-5, 5)))
    for k, mask, value in organs:
        if mask is None:
            continue
        mask = mask & (body < 0.8)
        hu[mask] = value
        label[mask] = k
    # smooth bias field and noise
    phase = rng.uniform(0, 2 * np.pi, size=3)
    bias = 18 * np.cos(gx / 70 + phase[0]) * np.cos(gy / 60 + phase[1]) * np.cos(gz / 80 + phase[2])
    noise = rng.normal(0.0, rng.uniform(10, 16), size=shape)
    hu = hu + (bias * (hu > -500)).astype(np.float32) + noise.astype(np.float32)
    image = np.clip(np.round(hu), -1024, 3000).astype(np.int16)

    # store in the requested orientation
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -(np.array(shape) - 1) / 2 * spacing + rng.uniform(-50, 50, size=3)
    ornt = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(("R", "A", "S")),
                                           nib.orientations.axcodes2ornt(tuple(axcodes)))
    image = nib.orientations.apply_orientation(image, ornt)
    label = nib.orientations.apply_orientation(label, ornt)
    affine = affine @ nib.orientations.inv_ornt_aff(ornt, shape)
    return np.ascontiguousarray(image), np.ascontiguousarray(label), affine


def _case_params(rng: np.random.Generator, index: int):
    spacing = (float(s) for s in (rng.uniform(1.2, 1.8),) * 2 + (rng.uniform(1.6, 2.4),))
    axcodes = ORIENTATIONS[0] if index % 3 else ORIENTATIONS[int(rng.integers(1, len(ORIENTATIONS)))]
    u = rng.uniform()
    missing = ("spleen",) if u < 0.12 else ("kidney_left",) if u < 0.2 else ()
    return tuple(spacing), axcodes, missing


def make_phantom_dataset(
    out_dir: PathLike, cases: int = 20, test_cases: int = 4, seed: int = 0, size: Sequence[float] = EXTENT_MM,
    progress: bool = False,
) -> Path:
    """Write a phantom dataset in the nnU-Net v2 layout.

    Creates ``dataset.json``, ``imagesTr/phantom_000_0000.nii.gz`` ..., ``labelsTr``, ``imagesTs`` and
    ``labelsTs`` (the held-out labels, for evaluation). Case ``i`` depends only on ``(seed, i)``.

    Args:
        out_dir: the dataset folder (created).
        cases: training cases; test_cases: held-out cases.
        size: field of view in mm (x, y, z); the default gives ~72x67x52 voxels at 1.5x1.5x2.0 mm.

    Returns:
        ``out_dir`` as a Path.
    """
    from tqdm import tqdm

    from unetr.data.io import Geometry, write_image, write_label

    if cases < 1 or test_cases < 0:
        raise ValueError(f"cases must be >= 1 and test_cases >= 0, got {cases} and {test_cases}")
    out = Path(out_dir)
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    total = cases + test_cases
    for i in tqdm(range(total), desc="phantoms", disable=not progress):
        rng = np.random.default_rng([seed, i])
        spacing, axcodes, missing = _case_params(rng, i)
        image, label, affine = make_phantom(rng, spacing, size, axcodes, missing)
        geom = Geometry.from_affine(affine, image.shape, "int16")
        img_dir, lab_dir = ("imagesTr", "labelsTr") if i < cases else ("imagesTs", "labelsTs")
        cid = f"phantom_{i:03d}"
        write_image(out / img_dir / f"{cid}_0000.nii.gz", image, geom, dtype="int16")
        write_label(out / lab_dir / f"{cid}.nii.gz", label, geom)
    write_dataset_json(out, name="Phantom", description=f"unetr synthetic CT-like phantoms (seed {seed})",
                       channels=["CT"], class_names=CLASS_NAMES, num_training=cases)
    log.debug("wrote %d training and %d test phantoms to %s", cases, test_cases, out)
    return out


__all__ = ["make_phantom", "make_phantom_dataset", "CLASS_NAMES"]
