"""Reading the ``dataset.json`` of MSD and nnU-Net v2 datasets and MONAI datalists; writing a ``dataset.json``.

- MSD v1 ``dataset.json``: ``modality``, ``labels`` as ``{"0": "background"}``, ``training`` / ``validation``
  / ``test`` lists of ``./imagesTr/x.nii.gz`` paths.
- nnU-Net v2 raw ``dataset.json``: ``channel_names``, ``labels`` as ``{"background": 0}``, ``file_ending``;
  the cases come from its ``imagesTr`` / ``labelsTr`` (``imagesTs`` / ``labelsTs``) folders
  (:func:`unetr.data.cases.nnunet_folder`), or from its explicit ``dataset`` lists.
- MONAI datalist JSON files (BTCV's ``dataset_0.json``): ``training`` / ``validation`` / ``test`` lists of
  ``{"image", "label"}`` (or plain image paths), paths relative to the file's folder.

A malformed file raises a :class:`~unetr.errors.DataError` naming the file, the key, the expected form and
what was found. :func:`unetr.data.cases.load_dataset` decides which reader a path needs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from unetr.config import load_json, save_json
from unetr.data.cases import Case, Dataset, nnunet_folder
from unetr.data.io import file_ending
from unetr.data.naming import channel_files, unique_ids, volume_stem
from unetr.errors import DataError

log = logging.getLogger(__name__)


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
        raise DataError(f"{source}: '{what}' indices must be 0..{len(items) - 1} without gaps, "
                        f"got {[i for i, _ in items]}")
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
        raise DataError(f"{source}: label values must be 0..{len(inv) - 1} without gaps, got {sorted(inv)}")
    return tuple(inv[i] for i in range(len(inv)))


def class_names(mapping, source: Path) -> Tuple[str, ...]:
    """Class names, background first, from a ``labels`` mapping of either kind, told apart by its keys: MSD's
    ``{"0": "background", "1": "liver"}`` or nnU-Net v2's ``{"background": 0, "liver": 1}`` (for a file
    that is not a dataset, e.g. ``unetr evaluate --labels``)."""
    if isinstance(mapping, dict) and mapping and all(str(k).lstrip("-").isdigit() for k in mapping):
        return _names_from_index_map(mapping, "labels", source)
    return _labels_v2(mapping, source)


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
    ids unique over all three (:func:`unique_ids`)."""
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
    ids = unique_ids([r[1] for r in rows], [r[2][0] for r in rows])
    out: Dict[str, List[Case]] = {"training": [], "validation": [], "test": []}
    for (key, _, images, label), cid in zip(rows, ids):
        out[key].append(Case(cid, images, label))
    return {k: tuple(v) for k, v in out.items()}


def read_dataset_json(root: Path, source: Path) -> Dataset:
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
            train_t = nnunet_folder(root / "imagesTr", root / "labelsTr", len(channels) or None)
            missing = [c.id for c in train_t if c.label is None]
            if missing:
                log.warning("%s: %d training image(s) without a label: %s", source, len(missing), missing[:5])
        test = nnunet_folder(root / "imagesTs", root / "labelsTs", len(channels) or None)
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
        return _datalist(source, meta)
    raise DataError(f"{source}: neither an MSD/nnU-Net dataset.json nor a MONAI datalist (no 'training' list, "
                    "no 'channel_names')")


def read_datalist(source: Path) -> Dataset:
    return _datalist(source, load_json(source))


def _datalist(source: Path, meta) -> Dataset:
    """The cases of a MONAI datalist ``source`` whose JSON is ``meta``."""
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


__all__ = ["class_names", "write_dataset_json"]
