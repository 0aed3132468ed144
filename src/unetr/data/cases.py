"""Finding the cases of a dataset and checking them (``unetr check``): ``Case``, ``Dataset``, ``load_dataset``.

The layouts read, and the public datasets each one matches (the JSON files are read by
:mod:`unetr.data.dataset_json`, the folders here):

- MSD v1 ``dataset.json`` (``modality``, ``labels`` as ``{"0": "background"}``, ``training`` /
  ``validation`` / ``test`` lists of ``./imagesTr/x.nii.gz`` paths): the Medical Segmentation Decathlon
  (``Task09_Spleen``), AMOS22 (``imagesTr``, ``imagesVa``, ``imagesTs``, CT and MR cases).
- nnU-Net v2 raw ``dataset.json`` (``channel_names``, ``labels`` as ``{"background": 0}``, ``file_ending``;
  images ``imagesTr/CASE_XXXX.nii.gz`` with ``XXXX`` the channel, labels ``labelsTr/CASE.nii.gz``,
  ``imagesTs`` / ``labelsTs``): nnU-Net's own datasets, e.g. BraTS with four modalities ``_0000 .. _0003``.
- MONAI datalist JSON files (BTCV's ``dataset_0.json``): ``training`` / ``validation`` / ``test`` lists of
  ``{"image", "label"}`` (or plain image paths), paths relative to the file's folder.
- Paired folders without a ``dataset.json``: ``imagesTr`` + ``labelsTr`` (+ ``imagesVal``/``labelsVal`` or
  ``imagesVa``/``labelsVa`` as the validation cases, + ``imagesTs``/``labelsTs``), or ``images`` + ``labels``:
  WORD (``word_0001.nii.gz``), or any pair of folders whose files share names.

KiTS23 (``case_00000/imaging.nii.gz``) and TotalSegmentator (``s0001/ct.nii.gz`` + ``segmentations/``) are
refused with the ``unetr convert`` command that turns them into the nnU-Net v2 layout
(:mod:`unetr.data.convert`).

Case ids are file names without their ending, channel suffixes taken off by the one naming rule
(:mod:`unetr.data.naming`). The folds of the cases: :mod:`unetr.data.splits`.
"""

from __future__ import annotations

import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from unetr.config import MODALITIES
from unetr.data.checks import grid_problem, label_problem
from unetr.data.io import IMAGE_ENDINGS, PathLike, file_ending, read_image, read_label
from unetr.data.naming import channel_count, channel_files, name_cases, volume_stem
from unetr.errors import DataError

log = logging.getLogger(__name__)

_MR_NAMES = re.compile(r"^(mri?|t1|t2|flair|adc|dwi|pd|swi|dce|bold)", re.IGNORECASE)


def modality_of(channel_name: str) -> str:
    """The modality a channel name states: ``CT``; ``MR`` for MRI names (``T1w``, ``t1gd``, ``FLAIR``,
    ``ADC``, ``MRI`` ...); ``OTHER`` for anything else (``PET``, nnU-Net's ``noNorm`` ...)."""
    name = channel_name.strip()
    if name.upper() == "CT":
        return "CT"
    return "MR" if _MR_NAMES.match(name) else "OTHER"


@dataclass(frozen=True)
class Case:
    """One case: an id, its image file(s) (one per channel, or one multi-channel file) and its label file."""

    id: str
    images: Tuple[str, ...]
    label: Optional[str] = None

    def to_dict(self) -> dict:
        return {"id": self.id, "images": list(self.images), "label": self.label}

    @classmethod
    def from_dict(cls, d: dict) -> Case:
        return cls(id=d["id"], images=tuple(d["images"]), label=d.get("label"))


@dataclass(frozen=True)
class Dataset:
    """A dataset's cases and metadata.

    Attributes:
        root: the dataset folder (or the datalist's folder).
        name: a short name (``Dataset001_X``, ``Task09_Spleen``, the datalist's ``name``...).
        train: labelled cases for training (and cross-validation).
        test: held-out cases (labels when the layout has them, e.g. ``labelsTs``).
        validation: the layout's own validation cases (a datalist's or MSD file's ``validation`` list, WORD's
            ``imagesVal``); empty when the layout gives none.
        class_names: background first; empty when the layout does not say (then taken from the labels).
        channel_names: one per image channel; empty when unknown.
        file_ending: ``.nii.gz`` unless the layout says otherwise.
        layout: ``msd``, ``nnunet``, ``datalist`` or ``folders``.
        modality_source: where the channel names come from (``dataset.json 'modality'`` ...); empty when the
            layout names none.
    """

    root: str
    name: str
    train: Tuple[Case, ...]
    test: Tuple[Case, ...] = ()
    validation: Tuple[Case, ...] = ()
    class_names: Tuple[str, ...] = ()
    channel_names: Tuple[str, ...] = ()
    file_ending: str = ".nii.gz"
    layout: str = "folders"
    modality_source: str = ""

    @property
    def num_classes(self) -> Optional[int]:
        return len(self.class_names) or None

    @property
    def labelled(self) -> Tuple[Case, ...]:
        """Every case with a label: training then validation cases."""
        return tuple(c for c in self.train + self.validation if c.label)

    @property
    def modality(self) -> Optional[str]:
        """The modality the layout states (:func:`modality_of` the first channel's name), or None when it
        names no channels (paired folders, a datalist without ``modality``): then the intensities decide
        (:func:`unetr.data.plan.fingerprint`)."""
        return modality_of(self.channel_names[0]) if self.channel_names else None


# ----------------------------------------------------------------------------------------------- layouts


def _volumes(folder: Optional[Path]) -> List[Path]:
    if folder is None or not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and file_ending(p) in IMAGE_ENDINGS)


def _labels_by_id(folder: Optional[Path]) -> Dict[str, Path]:
    return {volume_stem(p.name): p for p in _volumes(folder)}


def _cases(named: Sequence[Tuple[str, List[Path]]], labels: Dict[str, Path]) -> Tuple[Case, ...]:
    return tuple(Case(cid, tuple(str(f) for f in files), str(labels[cid]) if cid in labels else None)
                 for cid, files in named)


def nnunet_folder(images_dir: Path, labels_dir: Optional[Path], channels: Optional[int]) -> Tuple[Case, ...]:
    """An nnU-Net v2 image folder: ``CASE_XXXX`` channel files, grouped when every file follows the rule.

    The layout defines the channel files, so a case with channels ``0000 .. k-1`` for another ``k`` than the
    rest is still grouped (``unetr check`` names it); names that are no channel files at all (a case whose
    first file is not ``_0000``) are each one case, with a warning."""
    files = _volumes(images_dir)
    stems = [volume_stem(p.name) for p in files]
    n = channel_count(stems, channels)
    if n is None and channel_files(stems, same_count=False) is not None:
        return _cases(name_cases(files, 0, same_count=False), _labels_by_id(labels_dir))  # any count
    if files and n is None:
        want = f"0000..{channels - 1:04d}" if channels else "0000.."
        log.warning("%s: the file names are not nnU-Net channel files CASE_XXXX with the channels %s for every "
                    "case; each file is taken as one case named by its file name", images_dir, want)
    return _cases(name_cases(files, n), _labels_by_id(labels_dir))


def _folder_channels(files: Sequence[Path], labels: Dict[str, Path]) -> Optional[int]:
    """Paired folders define channel files only through their labels: ``x_0000.nii.gz`` is channel 0 of case
    ``x`` when the names are consistently channel files and the labels are named ``x`` rather than
    ``x_0000`` (a folder converted for nnU-Net without its ``dataset.json``)."""
    stems = [volume_stem(p.name) for p in files]
    n = channel_count(stems)
    if n is None or not labels:
        return None
    ids = {c for c, _ in channel_files(stems) or ()}
    return n if sum(i in labels for i in ids) > sum(s in labels for s in stems) else None


_FOLDER_LAYOUTS = (  # (training images, labels), then the optional validation and test folders
    ("imagesTr", "labelsTr", (("imagesVal", "labelsVal"), ("imagesVa", "labelsVa")), ("imagesTs", "labelsTs")),
    ("images", "labels", (), None),
)


def _load_folders(path: Path) -> Optional[Dataset]:
    """Paired folders (see the module docstring), or None when ``path`` has none of them."""
    for img, lab, val_dirs, test_dirs in _FOLDER_LAYOUTS:
        if not (path / img).is_dir():
            continue
        files = _volumes(path / img)
        if not files:
            raise DataError(f"{path / img}: no image files ({', '.join(IMAGE_ENDINGS)})")
        labels = _labels_by_id(path / lab)
        n = _folder_channels(files, labels)
        train = _cases(name_cases(files, n), labels)
        val: Tuple[Case, ...] = ()
        for vi, vl in val_dirs:
            if (path / vi).is_dir():
                val = _cases(name_cases(_volumes(path / vi), n), _labels_by_id(path / vl))
                break
        test: Tuple[Case, ...] = ()
        if test_dirs and (path / test_dirs[0]).is_dir():
            test = _cases(name_cases(_volumes(path / test_dirs[0]), n), _labels_by_id(path / test_dirs[1]))
        return Dataset(str(path), path.name, train, test, val, (), (), file_ending(files[0]), "folders")
    return None


def _refuse_unconverted(path: Path) -> None:
    """KiTS23 and TotalSegmentator folders: a DataError with the command that converts them."""
    from unetr.data.convert import detect_layout

    kind = detect_layout(path)
    if kind is not None:
        raise DataError(f"{path}: a {kind.title} dataset ({kind.files}); unetr reads it once converted to the "
                        f"nnU-Net v2 layout: unetr convert {kind.name} {path} {path.parent / (path.name + '_nnunet')}")


def load_dataset(path: PathLike) -> Dataset:
    """Find the cases of a dataset folder, ``dataset.json`` or MONAI datalist JSON file.

    Raises:
        DataError: the path holds none of the layouts (a KiTS23 or TotalSegmentator folder: the message gives
            the ``unetr convert`` command), or its JSON is malformed.
    """
    from unetr.data.dataset_json import read_datalist, read_dataset_json  # here: it imports this module

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix.lower() != ".json":
            raise DataError(f"{path}: expected a dataset folder or a .json file")
        if path.name == "dataset.json":
            return read_dataset_json(path.parent, path)
        return read_datalist(path)
    if (path / "dataset.json").is_file():
        return read_dataset_json(path, path / "dataset.json")
    found = _load_folders(path)
    if found is not None:
        return found
    _refuse_unconverted(path)
    raise DataError(f"{path}: no dataset.json, no imagesTr/labelsTr and no images/labels folders")


# ------------------------------------------------------------------------------------------------ check


def _check_case(case: Case, num_channels: Optional[int], num_classes: Optional[int]) -> Tuple[List[str], Optional[int]]:
    problems: List[str] = []
    for p in case.images + ((case.label,) if case.label else ()):
        if not Path(p).is_file():
            problems.append(f"{case.id}: missing file {p}")
    if problems:
        return problems, None
    try:
        image, geom = read_image(case.images)
    except DataError as e:
        return [f"{case.id}: {e}"], None
    if num_channels is not None and image.shape[0] != num_channels:
        problems.append(f"{case.id}: {case.images[0]}: {image.shape[0]} channel(s), the dataset declares "
                        f"{num_channels}")
    if case.label is None:
        return problems, image.shape[0]
    try:
        label, lgeom = read_label(case.label)
    except DataError as e:
        return problems + [f"{case.id}: {e}"], image.shape[0]
    for problem in (grid_problem(lgeom, geom), label_problem(label, num_classes)):
        if problem:
            problems.append(f"{case.id}: {case.label}: {problem}")
    return problems, image.shape[0]


def check_dataset(path: PathLike, workers: int = 2) -> List[str]:
    """Validate a dataset and return every problem found (an empty list means it is usable).

    Checks: the layout parses; every file exists and reads as a 3D volume with finite values; labels are
    non-negative integers within the declared classes (:func:`unetr.labels.label_problem`); image and label
    lie on one grid (:func:`unetr.data.checks.grid_problem`, the rule preprocessing applies); every case has the
    same number of channels (and the declared one).
    """
    try:
        ds = load_dataset(path)
    except (DataError, ValueError, FileNotFoundError) as e:
        return [str(e)]
    problems: List[str] = []
    if not ds.train:
        problems.append(f"{path}: no training cases found")
    unlabelled = [c.id for c in ds.train if c.label is None]
    if unlabelled:
        problems.append(f"{len(unlabelled)} training case(s) without a label: {', '.join(unlabelled[:10])}")
    cases = ds.train + ds.validation + ds.test
    nch = len(ds.channel_names) or None
    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = list(pool.map(lambda c: _check_case(c, nch, ds.num_classes), cases))
    counts = set()
    for probs, channels in results:
        problems.extend(probs)
        if channels is not None:
            counts.add(channels)
    if len(counts) > 1 and nch is None:
        problems.append(f"cases disagree on the number of channels: {sorted(counts)}")
    return problems


__all__ = ["Case", "Dataset", "MODALITIES", "modality_of", "load_dataset", "check_dataset"]
