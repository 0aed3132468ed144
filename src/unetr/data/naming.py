"""The one rule that names cases after their files: case ids, nnU-Net channel files, ids unique per file.

Case ids are file names without their ending. A channel suffix ``_XXXX`` is taken off only where a layout
defines one (nnU-Net v2's ``imagesTr``, a datalist entry listing one file per channel, a model's input files)
and only when every file follows it (:func:`channel_files`): ``amos_0001`` or ``word_0001`` stay themselves.
The dataset layouts (:mod:`unetr.data.cases`, :mod:`unetr.data.dataset_json`) and ``unetr predict``
(:mod:`unetr.inference.predict`) name their cases by it.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from unetr.data.io import PathLike, file_ending

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


def channel_count(stems: Sequence[str], channels: Optional[int] = None) -> Optional[int]:
    """The ``n`` of :func:`channel_files` when the names are channel files, else None."""
    parsed = channel_files(stems, channels)
    return None if parsed is None else max(ch for _, ch in parsed) + 1


def unique_ids(ids: Sequence[str], paths: Sequence[PathLike]) -> List[str]:
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
        return sorted((i, [p]) for i, p in zip(unique_ids(stems, paths), paths))
    groups: Dict[str, List[Tuple[int, Path]]] = defaultdict(list)
    for (cid, ch), p in zip(parsed, paths):
        groups[cid].append((ch, p))
    return sorted((cid, [p for _, p in sorted(v)]) for cid, v in groups.items())


__all__ = ["CHANNEL_SUFFIX", "channel_files", "name_cases", "volume_stem"]
