"""Finding the cases of a dataset, checking them, and splitting them into folds.

Three layouts are read:

- MSD / nnU-Net dataset folders with a ``dataset.json``: the MSD v1 form (``modality``, ``labels`` as
  ``{"0": "background"}``, ``training`` as a list of ``{"image", "label"}``) and the nnU-Net v2 form
  (``channel_names``, ``labels`` as ``{"background": 0}``, ``file_ending``; cases found in ``imagesTr`` /
  ``labelsTr`` / ``imagesTs`` with ``_0000`` channel suffixes; ``labelsTs`` when present).
- MONAI datalist JSON files (BTCV's ``dataset_0.json``): ``training`` / ``validation`` / ``test`` lists of
  ``{"image", "label"}`` (or plain image paths), paths relative to the file's folder.
- Plain paired folders: ``imagesTr`` + ``labelsTr`` (+ ``imagesTs``), or ``images`` + ``labels``.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from unetr.config import load_json, save_json
from unetr.data.io import IMAGE_ENDINGS, PathLike, file_ending
from unetr.errors import DataError

log = logging.getLogger(__name__)

_CHANNEL_RE = re.compile(r"^(?P<id>.+)_(?P<ch>\d{4})$")


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
        validation: the datalist's own validation cases (empty when the layout gives none).
        class_names: background first; empty when the layout does not say (then taken from the labels).
        channel_names: one per image channel; empty when unknown.
        file_ending: ``.nii.gz`` unless the layout says otherwise.
        layout: ``msd``, ``nnunet``, ``datalist`` or ``folders``.
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

    @property
    def num_classes(self) -> Optional[int]:
        return len(self.class_names) or None

    @property
    def labelled(self) -> Tuple[Case, ...]:
        """Every case with a label: training then validation cases."""
        return tuple(c for c in self.train + self.validation if c.label)

    @property
    def modality(self) -> str:
        """``CT`` when the first channel is named CT (or no names are known), else ``MRI``."""
        if not self.channel_names:
            return "CT"
        return "CT" if self.channel_names[0].strip().upper() == "CT" else "MRI"


# ----------------------------------------------------------------------------------------------- layouts


def _strip_ending(name: str) -> str:
    end = file_ending(name)
    return name[: -len(end)] if end and name.lower().endswith(end) else name


def _volumes(folder: Path) -> List[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and file_ending(p) in IMAGE_ENDINGS)


def _group_channels(files: Sequence[Path]) -> Dict[str, List[Path]]:
    """Group ``case_0000.nii.gz``, ``case_0001.nii.gz`` by case id (files with no suffix stand alone)."""
    groups: Dict[str, List[Tuple[int, Path]]] = defaultdict(list)
    for f in files:
        stem = _strip_ending(f.name)
        m = _CHANNEL_RE.match(stem)
        if m:
            groups[m.group("id")].append((int(m.group("ch")), f))
        else:
            groups[stem].append((0, f))
    return {cid: [p for _, p in sorted(v)] for cid, v in sorted(groups.items())}


def _pair(images_dir: Path, labels_dir: Optional[Path]) -> Tuple[Case, ...]:
    labels = {_strip_ending(p.name): p for p in _volumes(labels_dir)} if labels_dir else {}
    cases = []
    for cid, files in _group_channels(_volumes(images_dir)).items():
        lab = labels.get(cid)
        cases.append(Case(cid, tuple(str(f) for f in files), str(lab) if lab else None))
    return tuple(cases)


def _resolve(root: Path, rel: str) -> Path:
    p = Path(rel)
    return p if p.is_absolute() else (root / p)


def _msd_images(root: Path, rel: str) -> Tuple[str, ...]:
    """An MSD ``./imagesTr/x.nii.gz`` entry; falls back to ``x_0000.nii.gz`` ... when converted per channel."""
    path = _resolve(root, rel)
    if path.exists():
        return (str(path),)
    end = file_ending(path.name)
    stem = _strip_ending(path.name)
    split = sorted(path.parent.glob(f"{stem}_[0-9][0-9][0-9][0-9]{end}"))
    return tuple(str(p) for p in split) or (str(path),)


def _names_from_index_map(mapping: dict, what: str, source: Path) -> Tuple[str, ...]:
    """``{"0": "background", "1": "liver"}`` -> ("background", "liver")."""
    try:
        items = sorted((int(k), str(v)) for k, v in mapping.items())
    except (TypeError, ValueError):
        raise DataError(f"{source}: '{what}' must map integer indices to names, got {mapping!r}") from None
    if [i for i, _ in items] != list(range(len(items))):
        raise DataError(f"{source}: '{what}' indices must be 0..{len(items) - 1}, got {[i for i, _ in items]}")
    return tuple(n for _, n in items)


def _labels_v2(mapping: dict, source: Path) -> Tuple[str, ...]:
    """nnU-Net v2 ``{"background": 0, "liver": 1}`` (region lists are not supported)."""
    inv: Dict[int, str] = {}
    for name, value in mapping.items():
        if not isinstance(value, int):
            raise DataError(f"{source}: label {name!r} maps to {value!r}; only integer labels are supported")
        inv[value] = str(name)
    if sorted(inv) != list(range(len(inv))):
        raise DataError(f"{source}: label values must be 0..{len(inv) - 1}, got {sorted(inv)}")
    return tuple(inv[i] for i in range(len(inv)))


def _entry_images(root: Path, image) -> Tuple[str, ...]:
    if isinstance(image, (list, tuple)):
        return tuple(str(_resolve(root, p)) for p in image)
    return (str(_resolve(root, image)),)


def _entry_id(images: Tuple[str, ...]) -> str:
    stem = _strip_ending(Path(images[0]).name)
    m = _CHANNEL_RE.match(stem)
    return m.group("id") if m else stem


def _datalist_cases(root: Path, entries, source: Path, key: str) -> Tuple[Case, ...]:
    if not isinstance(entries, list):
        raise DataError(f"{source}: '{key}' must be a list")
    cases = []
    seen: Dict[str, int] = {}
    for i, e in enumerate(entries):
        if isinstance(e, str):
            e = {"image": e}
        if not isinstance(e, dict) or "image" not in e:
            raise DataError(f"{source}: '{key}' entry {i} has no 'image': {e!r}")
        images = _entry_images(root, e["image"])
        cid = _entry_id(images)
        if cid in seen:  # datalists may reuse file names in other folders: keep ids unique
            seen[cid] += 1
            cid = f"{cid}-{seen[cid]}"
        else:
            seen[cid] = 0
        label = e.get("label")
        cases.append(Case(cid, images, str(_resolve(root, label)) if label else None))
    return tuple(cases)


def _load_dataset_json(root: Path, source: Path) -> Dataset:
    meta = load_json(source)
    if not isinstance(meta, dict):
        raise DataError(f"{source}: expected a JSON object")
    name = str(meta.get("name") or root.name)
    if "channel_names" in meta or "file_ending" in meta:  # nnU-Net v2
        channels = _names_from_index_map(meta.get("channel_names", {"0": "CT"}), "channel_names", source)
        classes = _labels_v2(meta.get("labels", {}), source) if "labels" in meta else ()
        ending = str(meta.get("file_ending", ".nii.gz"))
        if "dataset" in meta:  # explicit file lists
            train = []
            for cid, e in sorted(meta["dataset"].items()):
                train.append(Case(cid, _entry_images(root, e["images"]),
                                  str(_resolve(root, e["label"])) if e.get("label") else None))
            train_t: Tuple[Case, ...] = tuple(train)
        else:
            train_t = tuple(c for c in _pair(root / "imagesTr", root / "labelsTr"))
            missing = [c.id for c in train_t if c.label is None]
            if missing:
                log.warning("%s: %d training image(s) without a label: %s", source, len(missing), missing[:5])
        test = _pair(root / "imagesTs", root / "labelsTs" if (root / "labelsTs").is_dir() else None)
        return Dataset(str(root), name, train_t, test, (), classes, channels, ending, "nnunet")
    if "training" in meta and ("modality" in meta or "labels" in meta):  # MSD v1
        channels = _names_from_index_map(meta.get("modality", {"0": "CT"}), "modality", source)
        classes = _names_from_index_map(meta["labels"], "labels", source) if "labels" in meta else ()
        train = []
        for i, e in enumerate(meta["training"]):
            if not isinstance(e, dict) or "image" not in e:
                raise DataError(f"{source}: 'training' entry {i} has no 'image'")
            images = _msd_images(root, e["image"])
            train.append(Case(_entry_id(images), images, str(_resolve(root, e["label"])) if e.get("label") else None))
        test = []
        for e in meta.get("test", []):
            images = _msd_images(root, e if isinstance(e, str) else e["image"])
            test.append(Case(_entry_id(images), images, None))
        return Dataset(str(root), name, tuple(train), tuple(test), (), classes, channels, ".nii.gz", "msd")
    if "training" in meta:  # a MONAI datalist named dataset.json
        return _load_datalist(source)
    raise DataError(f"{source}: neither an MSD/nnU-Net dataset.json nor a MONAI datalist (no 'training' list, "
                    "no 'channel_names')")


def _load_datalist(source: Path) -> Dataset:
    meta = load_json(source)
    if not isinstance(meta, dict) or "training" not in meta:
        raise DataError(f"{source}: a MONAI datalist needs a 'training' list")
    root = source.parent
    train = _datalist_cases(root, meta["training"], source, "training")
    val = _datalist_cases(root, meta.get("validation", []), source, "validation")
    test = _datalist_cases(root, meta.get("test", []), source, "test")
    classes = _names_from_index_map(meta["labels"], "labels", source) if isinstance(meta.get("labels"), dict) else ()
    channels = (_names_from_index_map(meta["modality"], "modality", source)
                if isinstance(meta.get("modality"), dict) else ())
    return Dataset(str(root), str(meta.get("name") or source.stem), train, test, val, classes, channels,
                   ".nii.gz", "datalist")


def load_dataset(path: PathLike) -> Dataset:
    """Find the cases of a dataset folder, ``dataset.json`` or MONAI datalist JSON file.

    Raises:
        DataError: the path holds none of the layouts, or its JSON is malformed.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix.lower() != ".json":
            raise DataError(f"{path}: expected a dataset folder or a .json file")
        if path.name == "dataset.json":
            return _load_dataset_json(path.parent, path)
        return _load_datalist(path)
    if (path / "dataset.json").is_file():
        return _load_dataset_json(path, path / "dataset.json")
    for img, lab, ts in (("imagesTr", "labelsTr", "imagesTs"), ("images", "labels", None)):
        if (path / img).is_dir():
            train = _pair(path / img, path / lab)
            test = _pair(path / ts, path / "labelsTs" if (path / "labelsTs").is_dir() else None) if ts else ()
            if not train:
                raise DataError(f"{path / img}: no image files ({', '.join(IMAGE_ENDINGS)})")
            return Dataset(str(path), path.name, train, test, (), (), (), file_ending(train[0].images[0]), "folders")
    raise DataError(f"{path}: no dataset.json, no imagesTr/labelsTr and no images/labels folders")


# ------------------------------------------------------------------------------------------------ check


def _check_case(case: Case, num_channels: Optional[int], num_classes: Optional[int]) -> Tuple[List[str], Optional[int]]:
    from unetr.data.checks import grid_problem, label_problem
    from unetr.data.io import read_image, read_label

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
        problems.append(f"{case.id}: {image.shape[0]} channel(s), the dataset declares {num_channels}")
    if case.label is None:
        return problems, image.shape[0]
    try:
        label, lgeom = read_label(case.label)
    except DataError as e:
        return problems + [f"{case.id}: {e}"], image.shape[0]
    for problem in (grid_problem(lgeom, geom), label_problem(label, num_classes)):
        if problem:
            problems.append(f"{case.id}: {problem}")
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


# ------------------------------------------------------------------------------------------------ split


def split_cases(cases: Sequence[Case], fold: int = 0, num_folds: int = 5, seed: int = 0
                ) -> Tuple[Tuple[Case, ...], Tuple[Case, ...]]:
    """Deterministic k-fold split: cases sorted by id, shuffled with ``seed``, cut into ``num_folds`` parts.

    Returns:
        ``(train, val)``: fold ``fold`` is the validation part. The same arguments always give the same split,
        whatever the order of ``cases``.
    """
    if num_folds < 2:
        raise ValueError(f"num_folds must be at least 2, got {num_folds}")
    if not 0 <= fold < num_folds:
        raise ValueError(f"fold must be in 0..{num_folds - 1}, got {fold}")
    if len(cases) < num_folds:
        raise ValueError(f"{len(cases)} case(s) cannot be split into {num_folds} folds")
    ordered = sorted(cases, key=lambda c: c.id)
    perm = np.random.default_rng(seed).permutation(len(ordered))
    parts = np.array_split(perm, num_folds)
    val_idx = set(int(i) for i in parts[fold])
    train = tuple(ordered[i] for i in range(len(ordered)) if i not in val_idx)
    val = tuple(ordered[i] for i in sorted(val_idx))
    return train, val


def dataset_split(dataset: Dataset, fold: int = 0, num_folds: int = 5, seed: int = 0
                  ) -> Tuple[Tuple[Case, ...], Tuple[Case, ...]]:
    """The training/validation cases of a dataset: the datalist's own ``validation`` list when it has one,
    else :func:`split_cases` over the labelled training cases."""
    if dataset.validation:
        return tuple(c for c in dataset.train if c.label), tuple(c for c in dataset.validation if c.label)
    return split_cases([c for c in dataset.train if c.label], fold, num_folds, seed)


def write_dataset_json(folder: Path, *, name: str, description: str, channels: Sequence[str],
                       class_names: Sequence[str], num_training: int) -> Path:
    """Write an MSD/nnU-Net v2 style ``dataset.json`` (channel names, labels, counts) into ``folder``."""
    path = Path(folder) / "dataset.json"
    save_json(path, {
        "name": name,
        "description": description,
        "channel_names": {str(i): c for i, c in enumerate(channels)},
        "labels": {c: k for k, c in enumerate(class_names)},
        "numTraining": int(num_training),
        "file_ending": ".nii.gz",
    })
    return path


__all__ = ["Case", "Dataset", "load_dataset", "check_dataset", "split_cases", "dataset_split", "write_dataset_json"]

