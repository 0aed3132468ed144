"""Public datasets published in layouts of their own, converted to the nnU-Net v2 layout ``unetr`` reads.

- **KiTS23** (``dataset/case_00000/imaging.nii.gz`` + ``segmentation.nii.gz``, labels 1 kidney, 2 tumor,
  3 cyst): each case becomes ``imagesTr/case_00000_0000.nii.gz`` and ``labelsTr/case_00000.nii.gz`` (cases
  without a segmentation go to ``imagesTs``). The labels are kept as they are (nnU-Net's own KiTS23 setup
  trains on the challenge's nested regions instead; ``unetr`` trains on the three classes).
- **TotalSegmentator** (``s0001/ct.nii.gz`` + ``s0001/segmentations/<structure>.nii.gz``, one binary mask per
  structure): the masks of each subject are merged into one label map, class ``k`` being the ``k``-th
  structure, and the names are kept in ``dataset.json``'s ``labels``. The structures are every mask of the
  first subject in name order, or the ``structures`` given (in that order; the others become background).
  Where masks overlap, the structure listed first keeps the voxel (the overlaps are counted and logged).
  With a ``meta.csv`` that has a ``split`` column (TotalSegmentator v2), the ``test`` subjects go to
  ``imagesTs``/``labelsTs``.

Images (and KiTS23's label maps) are linked, not copied, unless ``copy=True``; every file appears under its
final name only when complete (a temporary name, then a rename).

Example:
    ``unetr convert totalsegmentator Totalsegmentator_dataset_v201 data/TotalSeg --structures liver spleen``
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from unetr.data.checks import check_same_grid
from unetr.data.dataset_json import write_dataset_json
from unetr.data.io import Geometry, PathLike, read_geometry, read_label, write_label
from unetr.data.naming import volume_stem
from unetr.errors import DataError
from unetr.fsutil import atomic_path, temporary_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceLayout:
    """A published layout ``unetr convert`` turns into the nnU-Net v2 layout."""

    name: str  # the ``unetr convert`` sub-command
    title: str  # how the dataset calls itself
    files: str  # what identifies it


KITS23 = SourceLayout("kits23", "KiTS23", "case_XXXXX/imaging.nii.gz with segmentation.nii.gz")
TOTALSEGMENTATOR = SourceLayout("totalsegmentator", "TotalSegmentator",
                                "SUBJECT/ct.nii.gz with SUBJECT/segmentations/<structure>.nii.gz masks")
LAYOUTS = {s.name: s for s in (KITS23, TOTALSEGMENTATOR)}
KITS23_CLASSES = ("background", "kidney", "tumor", "cyst")


def _is_subject(folder: Path) -> bool:
    return (folder / "ct.nii.gz").is_file() and (folder / "segmentations").is_dir()


def _subfolders(path: Path) -> List[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")) if path.is_dir() else []


def detect_layout(path: PathLike) -> Optional[SourceLayout]:
    """The published layout of ``path`` (a KiTS23 ``dataset`` folder, a TotalSegmentator folder or one of its
    subjects), or None."""
    path = Path(path)
    if _is_subject(path):
        return TOTALSEGMENTATOR
    subs = _subfolders(path)
    if any((s / "imaging.nii.gz").is_file() for s in subs):
        return KITS23
    if any(_is_subject(s) for s in subs):
        return TOTALSEGMENTATOR
    return None


def _place(source: Path, dest: Path, copy: bool) -> None:
    """``dest`` becomes a copy of ``source``, or a symbolic link to it, appearing only when complete."""
    if copy:
        with atomic_path(dest, ".nii.gz") as tmp:
            shutil.copyfile(source, tmp)
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(dest)
    os.symlink(source.resolve(), tmp)
    try:
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a folder")
    if not overwrite and out.is_dir() and any(out.iterdir()):
        raise ValueError(f"{out}: the folder is not empty; choose a new folder or add --overwrite")


# ------------------------------------------------------------------------------------------------ KiTS23


def convert_kits23(source: PathLike, out: PathLike, *, copy: bool = False, overwrite: bool = False) -> Path:
    """KiTS23's ``dataset`` folder -> an nnU-Net v2 dataset in ``out`` (see the module docstring).

    Returns:
        ``out``.

    Raises:
        DataError: ``source`` holds no ``case_XXXXX/imaging.nii.gz``.
    """
    source, out = Path(source), Path(out)
    cases = [s for s in _subfolders(source) if (s / "imaging.nii.gz").is_file()]
    if not cases:
        raise DataError(f"{source}: no KiTS23 cases ({KITS23.files})")
    _check_out(out, overwrite)
    train = 0
    for case in cases:
        seg = case / "segmentation.nii.gz"
        part = "Tr" if seg.is_file() else "Ts"
        _place(case / "imaging.nii.gz", out / f"images{part}" / f"{case.name}_0000.nii.gz", copy)
        if seg.is_file():
            _place(seg, out / "labelsTr" / f"{case.name}.nii.gz", copy)
            train += 1
    write_dataset_json(out, name="KiTS23", description=f"KiTS23 converted by unetr from {source}",
                       channels=("CT",), class_names=KITS23_CLASSES, num_training=train)
    log.info("%s: %d KiTS23 case(s) with a segmentation, %d without", out, train, len(cases) - train)
    return out


# ------------------------------------------------------------------------------------------------ TotalSegmentator


def subject_structures(subject: PathLike) -> Tuple[str, ...]:
    """The structure names of a TotalSegmentator subject: its ``segmentations/*.nii.gz`` in name order."""
    folder = Path(subject) / "segmentations"
    return tuple(sorted(volume_stem(p.name) for p in folder.iterdir()
                        if p.name.endswith(".nii.gz") and not p.name.startswith(".")))


def merge_masks(subject: PathLike, structures: Sequence[str]) -> Tuple[np.ndarray, Geometry, int]:
    """One label map from a subject's binary masks: class ``k`` is ``structures[k - 1]``.

    Args:
        subject: ``s0001`` (``ct.nii.gz`` and ``segmentations/``).
        structures: mask names (``liver`` for ``segmentations/liver.nii.gz``), in class order.

    Returns:
        ``(label (X, Y, Z) uint8 (uint16 past 255 classes), ct.nii.gz's geometry, overlapping voxels)``: where
        masks overlap, the structure listed first keeps the voxel.

    Raises:
        DataError: a mask is missing, is not binary, or lies on another grid than ``ct.nii.gz``.
    """
    subject = Path(subject)
    ct_geom, _ = read_geometry(subject / "ct.nii.gz")
    label = np.zeros(ct_geom.shape, np.uint8 if len(structures) < 256 else np.uint16)
    overlap = 0
    for k, name in enumerate(structures, start=1):
        path = subject / "segmentations" / f"{name}.nii.gz"
        if not path.is_file():
            raise DataError(f"{path}: missing (the structures are {', '.join(structures[:5])} ...)")
        mask, geom = read_label(path)
        check_same_grid(path, geom, ct_geom, "mask", "ct.nii.gz's")
        if mask.max(initial=0) > 1:
            raise DataError(f"{path}: not a binary mask (values up to {int(mask.max())})")
        on = mask.astype(bool)
        taken = on & (label != 0)
        overlap += int(taken.sum())
        label[on & ~taken] = k
    return label, ct_geom, overlap


def _split_column(source: Path) -> Dict[str, str]:
    """``subject -> split`` from TotalSegmentator v2's ``meta.csv`` (``;``-separated), when it has one."""
    meta = source / "meta.csv"
    if not meta.is_file():
        return {}
    text = meta.read_text(encoding="utf-8-sig")
    rows = list(csv.DictReader(text.splitlines(), delimiter=";" if ";" in text.splitlines()[0] else ","))
    if not rows or "split" not in rows[0] or "image_id" not in rows[0]:
        return {}
    return {r["image_id"]: r["split"].strip().lower() for r in rows}


def convert_totalsegmentator(source: PathLike, out: PathLike, *, structures: Optional[Sequence[str]] = None,
                             copy: bool = False, overwrite: bool = False, workers: int = 2) -> Path:
    """TotalSegmentator subjects (or one subject) -> an nnU-Net v2 dataset in ``out`` (see the module docstring).

    Returns:
        ``out``.

    Raises:
        DataError: no subject, a subject without one of the structures, a mask that is not binary or lies on
            another grid.
    """
    source, out = Path(source), Path(out)
    subjects = [source] if _is_subject(source) else [s for s in _subfolders(source) if _is_subject(s)]
    if not subjects:
        raise DataError(f"{source}: no TotalSegmentator subjects ({TOTALSEGMENTATOR.files})")
    names = tuple(structures) if structures else subject_structures(subjects[0])
    if not names:
        raise DataError(f"{subjects[0] / 'segmentations'}: no masks")
    if len(set(names)) != len(names):
        raise ValueError(f"structures listed twice: {sorted(n for n in set(names) if names.count(n) > 1)}")
    _check_out(out, overwrite)
    splits = _split_column(source if source not in subjects else source.parent)

    def one(subject: Path) -> Tuple[str, int]:
        part = "Ts" if splits.get(subject.name) == "test" else "Tr"
        label, geom, overlap = merge_masks(subject, names)
        write_label(out / f"labels{part}" / f"{subject.name}.nii.gz", label, geom)
        _place(subject / "ct.nii.gz", out / f"images{part}" / f"{subject.name}_0000.nii.gz", copy)
        return part, overlap

    with ThreadPoolExecutor(max(1, workers)) as pool:
        done = list(pool.map(one, subjects))
    for subject, (_, overlap) in zip(subjects, done):
        if overlap:
            log.warning("%s: %d voxel(s) in more than one mask; the structure listed first keeps them",
                        subject.name, overlap)
    train = sum(part == "Tr" for part, _ in done)
    write_dataset_json(out, name="TotalSegmentator", description=f"TotalSegmentator converted by unetr from "
                       f"{source}: {len(names)} structures merged", channels=("CT",),
                       class_names=("background",) + names, num_training=train)
    log.info("%s: %d subject(s) for training, %d for testing, %d structures", out, train, len(done) - train,
             len(names))
    return out


__all__ = ["SourceLayout", "LAYOUTS", "KITS23", "TOTALSEGMENTATOR", "KITS23_CLASSES", "detect_layout",
           "convert_kits23", "convert_totalsegmentator", "merge_masks", "subject_structures"]
