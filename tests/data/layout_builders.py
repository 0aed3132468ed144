"""Tiny generated copies of public datasets, laid out as they are published (folders, file names, JSON).

Each builder writes 32 x 32 x 24 volumes (a body in air with a few spherical organs) with the public dataset's
folder structure, file naming and ``dataset.json`` / datalist, and returns the dataset's root. Nothing here
is real data; only the layouts are copied:

- MSD ``Task09_Spleen``: ``dataset.json`` with ``modality``/``labels``/``training`` (``./imagesTr/...``)/
  ``test`` (plain strings), ids ``spleen_2`` ..., and the macOS ``._spleen_2.nii.gz`` files the MSD tar
  archives carry.
- BTCV as research-contributions reads it: ``dataset_0.json`` (``imagesTr/img0001.nii.gz`` with
  ``labelsTr/label0001.nii.gz``, ``training``/``validation``/``test`` lists, 14 labels).
- AMOS22: MSD-style ``dataset.json`` (``modality`` CT, 16 labels, ``training``/``validation``/``test`` with
  ``imagesVa``), CT cases and MR cases (ids 500 and up).
- WORD: ``imagesTr``/``labelsTr``/``imagesVal``/``labelsVal``/``imagesTs``, ``word_0001.nii.gz``, no JSON.
- KiTS23: ``dataset/case_00000/imaging.nii.gz`` + ``segmentation.nii.gz`` + ``instances/``, ``kits23.json``.
- nnU-Net v2 with four MR channels as BraTS: ``imagesTr/BraTS2021_00000_0000.nii.gz`` .. ``_0003``.
- TotalSegmentator v2: ``s0001/ct.nii.gz`` + ``s0001/segmentations/<structure>.nii.gz``, ``meta.csv``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence, Tuple

import numpy as np
from data_helpers import save_nifti

SHAPE = (32, 32, 24)
LPS = np.array([[-1.5, 0, 0, 40.0], [0, -1.5, 0, 30.0], [0, 0, 2.0, -60.0], [0, 0, 0, 1]])  # DICOM-like


def scene(seed: int, classes: int, mr: bool = False, channels: int = 1) -> Tuple[np.ndarray, np.ndarray]:
    """``(image (X, Y, Z) or (X, Y, Z, C) int16, label (X, Y, Z) uint8)``: a body with ``classes`` organs.

    CT: air -1000 HU, body 40 HU, organ ``k`` 40 + 60 k HU. MR: 0 outside, body 300, organ ``k`` 300 + 150 k
    (per channel a different contrast); no negative values.
    """
    rng = np.random.default_rng(seed)
    g = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij")).astype(np.float32)
    body = ((g[0] - 16) / 13) ** 2 + ((g[1] - 16) / 12) ** 2 < 1
    label = np.zeros(SHAPE, np.uint8)
    for k in range(1, classes + 1):
        centre = np.array([9 + 7 * ((k - 1) % 3), 11 + 9 * ((k - 1) // 3), 12]) + rng.integers(-1, 2, 3)
        label[((g - centre[:, None, None, None]) ** 2).sum(0) < 9] = k
    label[~body] = 0
    if not mr:
        image = np.where(body, 40.0, -1000.0) + 60.0 * label + rng.normal(0, 8, SHAPE)
        return np.round(image).astype(np.int16), label
    chans = []
    for c in range(channels):
        contrast = 150.0 * (1 + c) if c % 2 == 0 else -60.0 * (1 + c)
        chans.append(np.clip(np.where(body, 300.0, 0.0) + contrast * label + rng.normal(0, 10, SHAPE) * body, 0, None))
    image = np.stack(chans, -1) if channels > 1 else chans[0]
    return np.round(image).astype(np.int16), label


def _pair(images: Path, labels: Path, name: str, label_name: str, seed: int, classes: int, mr: bool = False):
    image, label = scene(seed, classes, mr)
    save_nifti(images / name, image, LPS)
    if labels is not None:
        save_nifti(labels / label_name, label, LPS)


def _json(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=4))


def msd_spleen(root: Path) -> Path:
    ds = root / "Task09_Spleen"
    train, test = [2, 3, 6, 8, 10], [1, 7]
    for i, n in enumerate(train):
        _pair(ds / "imagesTr", ds / "labelsTr", f"spleen_{n}.nii.gz", f"spleen_{n}.nii.gz", i, 1)
    for i, n in enumerate(test):
        _pair(ds / "imagesTs", None, f"spleen_{n}.nii.gz", "", 100 + i, 1)
    for folder in ("imagesTr", "labelsTr", "imagesTs"):  # AppleDouble files from the archive
        (ds / folder / f"._spleen_{train[0] if folder != 'imagesTs' else test[0]}.nii.gz").write_bytes(
            b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    _json(ds / "dataset.json", {
        "name": "Spleen", "description": "Spleen Segmentation", "reference": "Memorial Sloan Kettering Cancer Center",
        "licence": "CC-BY-SA 4.0", "release": "1.0 06/08/2018", "tensorImageSize": "3D",
        "modality": {"0": "CT"}, "labels": {"0": "background", "1": "spleen"},
        "numTraining": len(train), "numTest": len(test),
        "training": [{"image": f"./imagesTr/spleen_{n}.nii.gz", "label": f"./labelsTr/spleen_{n}.nii.gz"}
                     for n in train],
        "test": [f"./imagesTs/spleen_{n}.nii.gz" for n in test],
    })
    return ds


BTCV_LABELS = ("background", "spleen", "rkid", "lkid", "gall", "eso", "liver", "sto", "aorta", "IVC", "veins",
               "pancreas", "rad", "lad")


def btcv(root: Path) -> Path:
    ds = root / "dataset0"
    train, val, test = [1, 2, 3, 4], [35], [61]
    for i, n in enumerate(train + val):
        _pair(ds / "imagesTr", ds / "labelsTr", f"img{n:04d}.nii.gz", f"label{n:04d}.nii.gz", 10 + i, 3)
    for i, n in enumerate(test):
        _pair(ds / "imagesTs", None, f"img{n:04d}.nii.gz", "", 110 + i, 3)

    def entry(n):
        return {"image": f"imagesTr/img{n:04d}.nii.gz", "label": f"labelsTr/label{n:04d}.nii.gz"}

    _json(ds / "dataset_0.json", {
        "description": "btcv yucheng", "labels": {str(i): n for i, n in enumerate(BTCV_LABELS)}, "licence": "yt",
        "modality": {"0": "CT"}, "name": "btcv", "numTest": 20, "numTraining": 80,
        "reference": "Vanderbilt University", "release": "1.0 06/08/2015", "tensorImageSize": "3D",
        "test": [f"imagesTs/img{n:04d}.nii.gz" for n in test],
        "training": [entry(n) for n in train], "validation": [entry(n) for n in val],
    })
    return ds


AMOS_LABELS = ("background", "spleen", "right kidney", "left kidney", "gall bladder", "esophagus", "liver",
               "stomach", "arota", "postcava", "pancreas", "right adrenal gland", "left adrenal gland", "duodenum",
               "bladder", "prostate/uterus")
AMOS_MR = (507, 508, 540)


def amos(root: Path) -> Path:
    ds = root / "amos22"
    train, val, test = [1, 4, 5, 507, 508], [8, 540], [2]
    for i, n in enumerate(train):
        _pair(ds / "imagesTr", ds / "labelsTr", f"amos_{n:04d}.nii.gz", f"amos_{n:04d}.nii.gz", 20 + i, 4, n >= 500)
    for i, n in enumerate(val):
        _pair(ds / "imagesVa", ds / "labelsVa", f"amos_{n:04d}.nii.gz", f"amos_{n:04d}.nii.gz", 30 + i, 4, n >= 500)
    for i, n in enumerate(test):
        _pair(ds / "imagesTs", None, f"amos_{n:04d}.nii.gz", "", 120 + i, 4)

    def entry(folder, n):
        return {"image": f"./images{folder}/amos_{n:04d}.nii.gz", "label": f"./labels{folder}/amos_{n:04d}.nii.gz"}

    _json(ds / "dataset.json", {
        "name": "AMOS", "description": "MICCAI2022 Multi-Modality Abdominal Multi-Organ Segmentation Challenge",
        "tensorImageSize": "3D", "reference": "SRIBD, CUHK-SZ", "licence": "CC-BY-SA 4.0",
        "release": "1.0 01/05/2022", "modality": {"0": "CT"},
        "labels": {str(i): n for i, n in enumerate(AMOS_LABELS)},
        "numTraining": len(train), "numValidation": len(val), "numTest": len(test),
        "training": [entry("Tr", n) for n in train], "validation": [entry("Va", n) for n in val],
        "test": [{"image": f"./imagesTs/amos_{n:04d}.nii.gz"} for n in test],
    })
    return ds


def word(root: Path) -> Path:
    ds = root / "WORD-V0.1.0"
    for i, n in enumerate([1, 2, 3, 4, 5]):
        _pair(ds / "imagesTr", ds / "labelsTr", f"word_{n:04d}.nii.gz", f"word_{n:04d}.nii.gz", 40 + i, 3)
    for i, n in enumerate([101, 102]):
        _pair(ds / "imagesVal", ds / "labelsVal", f"word_{n:04d}.nii.gz", f"word_{n:04d}.nii.gz", 50 + i, 3)
    _pair(ds / "imagesTs", None, "word_0121.nii.gz", "", 130, 3)
    return ds


def kits23(root: Path) -> Path:
    ds = root / "kits23" / "dataset"
    for i in range(5):
        case = ds / f"case_{i:05d}"
        image, label = scene(60 + i, 3)
        save_nifti(case / "imaging.nii.gz", image, LPS)
        save_nifti(case / "segmentation.nii.gz", label, LPS)
        save_nifti(case / "instances" / "kidney_instance-1_annotation-1.nii.gz", (label == 1).astype(np.uint8), LPS)
    _json(ds / "kits23.json", [{"case_id": f"case_{i:05d}", "age_at_nephrectomy": 50 + i} for i in range(5)])
    return ds


BRATS_CHANNELS = ("T1", "T1ce", "T2", "FLAIR")


def nnunet_brats(root: Path) -> Path:
    ds = root / "Dataset042_BraTSStyle"
    for part, ids in (("Tr", range(5)), ("Ts", range(5, 6))):
        for i in ids:
            image, label = scene(70 + i, 3, mr=True, channels=4)
            for c in range(4):
                save_nifti(ds / f"images{part}" / f"BraTS2021_{i:05d}_{c:04d}.nii.gz", image[..., c], LPS)
            save_nifti(ds / f"labels{part}" / f"BraTS2021_{i:05d}.nii.gz", label, LPS)
    _json(ds / "dataset.json", {
        "channel_names": {str(i): n for i, n in enumerate(BRATS_CHANNELS)},
        "labels": {"background": 0, "edema": 1, "non-enhancing tumor": 2, "enhancing tumor": 3},
        "numTraining": 5, "file_ending": ".nii.gz", "name": "BraTSStyle",
    })
    return ds


TOTALSEG_STRUCTURES = ("kidney_left", "kidney_right", "liver", "spleen", "urinary_bladder")


def totalsegmentator(root: Path, subjects: Sequence[int] = (1, 2, 3, 4, 5, 6), test: Sequence[int] = (6,)) -> Path:
    ds = root / "Totalsegmentator_dataset_v201"
    for s in subjects:
        image, label = scene(80 + s, 4)
        subject = ds / f"s{s:04d}"
        save_nifti(subject / "ct.nii.gz", image, LPS)
        for k, name in enumerate(TOTALSEG_STRUCTURES, start=1):  # urinary_bladder: an empty mask
            save_nifti(subject / "segmentations" / f"{name}.nii.gz", (label == k).astype(np.uint8), LPS)
    rows = ["image_id;age;gender;institute;study_type;split"]
    rows += [f"s{s:04d};60;f;A;ct abdomen;{'test' if s in test else 'train'}" for s in subjects]
    (ds / "meta.csv").write_text("\n".join(rows) + "\n")
    return ds


BUILDERS = {f.__name__: f for f in (msd_spleen, btcv, amos, word, kits23, nnunet_brats, totalsegmentator)}
