"""Finding the cases of a dataset, naming them and checking them (their folds: :mod:`unetr.data.splits`).

The layouts read, and the public datasets each one matches:

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

Case ids are file names without their ending. A channel suffix ``_XXXX`` is taken off only where a layout
defines one (nnU-Net v2's ``imagesTr``, a datalist entry listing one file per channel, a model's input files)
and only when every file follows it (:func:`channel_files`): ``amos_0001`` or ``word_0001`` stay themselves.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from unetr.config import MODALITIES, load_json, save_json
from unetr.data.io import IMAGE_ENDINGS, PathLike, file_ending
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


# ----------------------------------------------------------------------------------------------- naming

CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
"""nnU-Net's channel files: ``CASE_XXXX`` with ``XXXX`` the channel, 0000 for the first."""


def volume_stem(name: str) -> str:
    """A file name without its volume ending (``spleen_10.nii.gz`` -> ``spleen_10``)."""
    end = file_ending(name)
    return name[: -len(end)] if end and name.lower().endswith(end) else name


def channel_files(stems: Sequence[str], channels: Optional[int] = None, same_count: bool = True
                  ) -> Optional[List[Tuple[str, int]]]:
    """``(case id, channel)`` of each name when the names, taken together, are nnU-Net channel files.

    They are when every name ends in ``_XXXX`` and every case has exactly the channels ``0000 .. n-1``, with
    the same ``n`` for every case (``channels`` when given). ``amos_0001``, ``amos_0004`` or
    ``case_0001 .. case_0003`` are case ids, not channels: their case does not start at 0000.

    Args:
        stems: file names without their ending.
        channels: the number of channels the names must show; None: any, the same for every case.
        same_count: False accepts cases with different numbers of channels (each still ``0000 .. k-1``):
            a layout that defines channel files then reports the odd cases instead of renaming every file.

    Returns:
        One ``(case id, channel)`` per name, or None when the names are not consistently channel files.
    """
    parsed = [CHANNEL_SUFFIX.match(s) for s in stems]
    if not parsed or not all(parsed):
        return None
    groups: Dict[str, List[int]] = defaultdict(list)
    for m in parsed:
        groups[m.group("case")].append(int(m.group("channel")))  # type: ignore[union-attr]
    sizes = {len(v) for v in groups.values()}
    if same_count and (len(sizes) != 1 or (channels is not None and sizes != {channels})):
        return None
    if any(sorted(v) != list(range(len(v))) for v in groups.values()):
        return None
    return [(m.group("case"), int(m.group("channel"))) for m in parsed]  # type: ignore[union-attr]


def _channel_count(stems: Sequence[str], channels: Optional[int] = None) -> Optional[int]:
    """The ``n`` of :func:`channel_files` when the names are channel files, else None."""
    parsed = channel_files(stems, channels)
    return None if parsed is None else max(ch for _, ch in parsed) + 1


def _unique_ids(ids: Sequence[str], paths: Sequence[PathLike]) -> List[str]:
    """``ids``, except that different files of one id get their folder's name in front
    (``case_00000/imaging.nii.gz`` -> ``case_00000_imaging``); one file listed twice keeps its id."""
    owners: Dict[str, set] = defaultdict(set)
    for i, p in zip(ids, paths):
        owners[i].add(Path(p).resolve())
    return [f"{Path(p).parent.name}_{i}" if len(owners[i]) > 1 else i for i, p in zip(ids, paths)]


def name_cases(files: Sequence[PathLike], channels: Optional[int] = None, same_count: bool = True
               ) -> List[Tuple[str, List[Path]]]:
    """Group image files into cases and name them: the one naming rule of the layouts and of ``unetr predict``.

    Args:
        files: image files.
        channels: where the layout defines nnU-Net channel files (an nnU-Net v2 ``imagesTr``; the input
            files of a model), their number: the files are grouped into cases when, taken together, they are
            such files (:func:`channel_files`). ``None``: every file is one case.
        same_count: see :func:`channel_files`.

    Returns:
        ``[(case id, [files by channel])]`` sorted by id. The id is the file name without its ending (and
        without the channel suffix when grouped); different files of one name get their folder's name in
        front.
    """
    paths = list(dict.fromkeys(Path(f) for f in files))
    stems = [volume_stem(p.name) for p in paths]
    parsed = channel_files(stems, channels, same_count) if channels is not None else None
    if parsed is None:
        return sorted((i, [p]) for i, p in zip(_unique_ids(stems, paths), paths))
    groups: Dict[str, List[Tuple[int, Path]]] = defaultdict(list)
    for (cid, ch), p in zip(parsed, paths):
        groups[cid].append((ch, p))
    return sorted((cid, [p for _, p in sorted(v)]) for cid, v in groups.items())


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


def _nnunet_folder(images_dir: Path, labels_dir: Optional[Path], channels: Optional[int]) -> Tuple[Case, ...]:
    """An nnU-Net v2 image folder: ``CASE_XXXX`` channel files, grouped when every file follows the rule.

    The layout defines the channel files, so a case with channels ``0000 .. k-1`` for another ``k`` than the
    rest is still grouped (``unetr check`` names it); names that are no channel files at all (a case whose
    first file is not ``_0000``) are each one case, with a warning."""
    files = _volumes(images_dir)
    stems = [volume_stem(p.name) for p in files]
    n = _channel_count(stems, channels)
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
    n = _channel_count(stems)
    if n is None or not labels:
        return None
    ids = {c for c, _ in channel_files(stems) or ()}
    return n if sum(i in labels for i in ids) > sum(s in labels for s in stems) else None


def _resolve(root: Path, rel: str) -> Path:
    p = Path(rel)
    return p if p.is_absolute() else (root / p)


_TYPE_NAMES = {dict: "an object", list: "a list", str: "a string", type(None): "null", int: "a number",
               float: "a number", bool: "true/false"}


def _expect(value, kinds: tuple, what: str, source: Path, example: str):
    """``value`` when it is one of ``kinds``, else a :class:`DataError` naming the file, the key, the expected form
    and what was found (``dataset.json: 'labels' must be an object like {...}, got a string``)."""
    if isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds):
        return value
    got = _TYPE_NAMES.get(type(value), type(value).__name__)
    raise DataError(f"{source}: {what} must be {_TYPE_NAMES.get(kinds[0], kinds[0].__name__)} like {example}, "
                    f"got {got} ({_preview(value)})")


def _preview(value) -> str:
    import json

    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _names_from_index_map(mapping: dict, what: str, source: Path) -> Tuple[str, ...]:
    """``{"0": "background", "1": "liver"}`` -> ("background", "liver")."""
    _expect(mapping, (dict,), f"'{what}'", source, '{"0": "background", "1": "liver"}'
            if what == "labels" else '{"0": "CT"}')
    try:
        items = sorted((int(k), str(v)) for k, v in mapping.items())
    except (TypeError, ValueError):
        raise DataError(f"{source}: '{what}' must map integer indices to names, got {mapping!r}") from None
    if [i for i, _ in items] != list(range(len(items))):
        raise DataError(f"{source}: '{what}' indices must be 0..{len(items) - 1}, got {[i for i, _ in items]}")
    return tuple(n for _, n in items)


def _labels_v2(mapping: dict, source: Path) -> Tuple[str, ...]:
    """nnU-Net v2 ``{"background": 0, "liver": 1}`` (region lists are not supported)."""
    _expect(mapping, (dict,), "'labels'", source, '{"background": 0, "liver": 1}')
    inv: Dict[int, str] = {}
    for name, value in mapping.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise DataError(f"{source}: label {name!r} maps to {value!r}; only integer labels are supported")
        inv[value] = str(name)
    if sorted(inv) != list(range(len(inv))):
        raise DataError(f"{source}: label values must be 0..{len(inv) - 1}, got {sorted(inv)}")
    return tuple(inv[i] for i in range(len(inv)))


def _entry_images(root: Path, image, msd: bool, source: Path, where: str) -> Tuple[Tuple[str, ...], str]:
    """The files and the id of a list entry's ``image``: one path (the id is its name), or one path per
    channel (the id drops the channel suffix when the files are ``CASE_0000 .. CASE_n-1``). An MSD path that
    was split into ``x_0000.nii.gz`` ... files (as nnU-Net v1 converts MSD) is found under those."""
    if not (isinstance(image, (list, tuple)) and image and all(isinstance(p, str) for p in image)):
        _expect(image, (str,), f"{where} 'image'", source, '"imagesTr/case_001.nii.gz" (or a list of them)')
    if isinstance(image, (list, tuple)):
        paths = [_resolve(root, str(p)) for p in image]
        stems = [volume_stem(p.name) for p in paths]
        parsed = channel_files(stems, len(stems))
        return tuple(str(p) for p in paths), parsed[0][0] if parsed else stems[0]
    path = _resolve(root, str(image))
    cid = volume_stem(path.name)
    if msd and not path.exists():
        end = file_ending(path.name)
        split = sorted(path.parent.glob(f"{cid}_[0-9][0-9][0-9][0-9]{end}"))
        if split:
            return tuple(str(p) for p in split), cid
    return (str(path),), cid


def _list_cases(root: Path, meta: dict, source: Path, msd: bool) -> Dict[str, Tuple[Case, ...]]:
    """The ``training`` / ``validation`` / ``test`` lists of an MSD ``dataset.json`` or a MONAI datalist, with
    ids unique over all three (:func:`_unique_ids`)."""
    rows: List[Tuple[str, str, Tuple[str, ...], Optional[str]]] = []
    for key in ("training", "validation", "test"):
        entries = _expect(meta.get(key, []), (list,), f"'{key}'", source,
                          '[{"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/a.nii.gz"}]')
        for i, e in enumerate(entries):
            if isinstance(e, str):
                e = {"image": e}
            if not isinstance(e, dict) or "image" not in e:
                raise DataError(f"{source}: '{key}' entry {i} has no 'image': {e!r}")
            where = f"'{key}' entry {i}"
            images, cid = _entry_images(root, e["image"], msd, source, where)
            label = e.get("label")
            if label:
                _expect(label, (str,), f"{where} 'label'", source, '"labelsTr/case_001.nii.gz"')
            rows.append((key, cid, images, str(_resolve(root, str(label))) if label else None))
    ids = _unique_ids([r[1] for r in rows], [r[2][0] for r in rows])
    out: Dict[str, List[Case]] = {"training": [], "validation": [], "test": []}
    for (key, _, images, label), cid in zip(rows, ids):
        out[key].append(Case(cid, images, label))
    return {k: tuple(v) for k, v in out.items()}


def _load_dataset_json(root: Path, source: Path) -> Dataset:
    meta = load_json(source)
    if not isinstance(meta, dict):
        raise DataError(f"{source}: expected a JSON object")
    name = str(meta.get("name") or root.name)
    if "channel_names" in meta or "file_ending" in meta:  # nnU-Net v2
        channels = (_names_from_index_map(meta["channel_names"], "channel_names", source)
                    if "channel_names" in meta else ())
        classes = _labels_v2(meta.get("labels", {}), source) if "labels" in meta else ()
        ending = _expect(meta.get("file_ending", ".nii.gz"), (str,), "'file_ending'", source, '".nii.gz"')
        if "dataset" in meta:  # explicit file lists
            train = []
            listed = _expect(meta["dataset"], (dict,), "'dataset'", source, '{"case_001": {"images": [...]}}')
            for cid, e in sorted(listed.items()):
                where = f"'dataset' entry {cid!r}"
                e = _expect(e, (dict,), where, source, '{"images": ["imagesTr/case_001_0000.nii.gz"]}')
                if "images" not in e:
                    raise DataError(f"{source}: {where} has no 'images'")
                label = e.get("label")
                if label:
                    _expect(label, (str,), f"{where} 'label'", source, '"labelsTr/case_001.nii.gz"')
                train.append(Case(cid, _entry_images(root, e["images"], False, source, where)[0],
                                  str(_resolve(root, label)) if label else None))
            train_t: Tuple[Case, ...] = tuple(train)
        else:
            train_t = _nnunet_folder(root / "imagesTr", root / "labelsTr", len(channels) or None)
            missing = [c.id for c in train_t if c.label is None]
            if missing:
                log.warning("%s: %d training image(s) without a label: %s", source, len(missing), missing[:5])
        test = _nnunet_folder(root / "imagesTs", root / "labelsTs", len(channels) or None)
        where = "dataset.json 'channel_names'" if channels else ""
        return Dataset(str(root), name, train_t, test, (), classes, channels, ending, "nnunet", where)
    if "training" in meta and ("modality" in meta or "labels" in meta):  # MSD v1
        channels = _names_from_index_map(meta["modality"], "modality", source) if "modality" in meta else ()
        classes = _names_from_index_map(meta["labels"], "labels", source) if "labels" in meta else ()
        lists = _list_cases(root, meta, source, msd=True)
        where = "dataset.json 'modality'" if channels else ""
        return Dataset(str(root), name, lists["training"], lists["test"], lists["validation"], classes, channels,
                       ".nii.gz", "msd", where)
    if "training" in meta:  # a MONAI datalist named dataset.json
        return _load_datalist(source)
    raise DataError(f"{source}: neither an MSD/nnU-Net dataset.json nor a MONAI datalist (no 'training' list, "
                    "no 'channel_names')")


def _load_datalist(source: Path) -> Dataset:
    meta = load_json(source)
    if not isinstance(meta, dict) or "training" not in meta:
        raise DataError(f"{source}: a MONAI datalist needs a 'training' list")
    root = source.parent
    lists = _list_cases(root, meta, source, msd=False)
    classes = _names_from_index_map(meta["labels"], "labels", source) if isinstance(meta.get("labels"), dict) else ()
    channels = (_names_from_index_map(meta["modality"], "modality", source)
                if isinstance(meta.get("modality"), dict) else ())
    return Dataset(str(root), str(meta.get("name") or source.stem), lists["training"], lists["test"],
                   lists["validation"], classes, channels, ".nii.gz", "datalist",
                   f"{source.name} 'modality'" if channels else "")


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
    found = _load_folders(path)
    if found is not None:
        return found
    _refuse_unconverted(path)
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


__all__ = ["Case", "Dataset", "MODALITIES", "CHANNEL_SUFFIX", "channel_files", "modality_of", "name_cases",
           "volume_stem", "load_dataset", "check_dataset", "write_dataset_json"]

