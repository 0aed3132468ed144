"""Finding and naming a prediction's inputs, and the names and checks of its outputs.

``FILE | FOLDER | GLOB`` (or a list of them) becomes cases named by the datasets' rule
(:func:`unetr.data.naming.name_cases`); the outputs of a case are named from its case name, and the output
folder is checked before any work (no output may replace an input; the folder must be writable).

Example:
    >>> find_inputs("imagesTs", in_channels=1)        # doctest: +SKIP
    [('case_01', [PosixPath('imagesTs/case_01_0000.nii.gz')]), ...]
"""

from __future__ import annotations

import glob
import logging
import os
from pathlib import Path
from typing import List, Sequence, Tuple, Union

from unetr.errors import UnetrError

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


def case_name(path: PathLike) -> str:
    """The file name without its volume ending (``a/b/case_01.nii.gz`` -> ``case_01``)."""
    from unetr.data.naming import volume_stem

    return volume_stem(Path(path).name)


def find_inputs(spec: Union[PathLike, Sequence[PathLike]], in_channels: int = 1) -> List[Tuple[str, List[Path]]]:
    """Resolve ``FILE | FOLDER | GLOB`` (or a list of them) into cases.

    Cases are named and grouped by the datasets' rule (:func:`unetr.data.naming.name_cases`): files named
    ``<case>_0000`` .. ``<case>_NNNN`` (nnU-Net's channel files) are the channels of ``<case>`` when every
    file follows that convention with the model's ``in_channels`` channels (so a one-channel nnU-Net
    ``imagesTs`` gives ``<case>``, while AMOS's ``amos_0001``, ``amos_0004`` stay themselves); otherwise each
    file is one case named by its file name (a 4D file holds its channels). Files of one name in different
    folders get their folder's name in front.

    Args:
        spec: a file, a folder (its image files, not recursive), a glob pattern, or a list of these.
        in_channels: the model's image channels.

    Returns:
        ``[(case name, [channel files])]`` sorted by name.

    Raises:
        FileNotFoundError: nothing matches.
    """
    specs = [spec] if isinstance(spec, (str, Path)) else list(spec)
    files: List[Path] = []
    for s in specs:
        p = Path(s)
        if p.is_dir():
            files += sorted(q for q in p.iterdir() if q.is_file() and q.name.lower().endswith(_ENDINGS)
                            and not q.name.startswith("."))
        elif p.exists():
            files.append(p)
        else:
            matches = sorted(Path(m) for m in glob.glob(str(s)))
            if not matches:
                raise FileNotFoundError(f"{s}: no such file, folder or matching pattern")
            files += [m for m in matches if m.is_file()]
    if not files:
        raise FileNotFoundError(f"{', '.join(map(str, specs))}: no image files (.nii.gz, .nii, .nrrd, .mha)")
    from unetr.data.naming import CHANNEL_SUFFIX, name_cases

    cases = name_cases(files, in_channels)
    if len(cases) == len(files) and any(c.endswith("_0000") and CHANNEL_SUFFIX.match(c) for c, _ in cases):
        log.info("the input names are not consistently nnU-Net channel files <case>_0000 .. <case>_%04d; "
                 "each file is one case named by its file name", in_channels - 1)
    return cases


def output_paths(name: str, out_dir: PathLike, probabilities: bool = False) -> List[Path]:
    """The files :func:`unetr.inference.predict.predict_case` writes for case ``name``."""
    out_dir = Path(out_dir)
    return [out_dir / f"{name}.nii.gz"] + ([out_dir / f"{name}_probabilities.nii.gz"] if probabilities else [])


def check_output_folder(cases: Sequence[Tuple[str, Sequence[Path]]], out_dir: PathLike, probabilities: bool) -> None:
    """Refuse, before any work, outputs that would replace an input (whatever ``--overwrite`` says) and an
    output folder that cannot be written."""
    from unetr.data.io import IMAGE_ENDINGS, file_ending
    from unetr.fsutil import temporary_name

    if file_ending(out_dir) in IMAGE_ENDINGS and not Path(out_dir).is_dir():  # a file name: a folder would be made
        example = output_paths(cases[0][0], Path(out_dir).parent / "predictions")[0] if cases else None
        raise UnetrError(f"{out_dir}: -o names the output folder, not a file (each case is written as "
                         f"<folder>/<case>.nii.gz{f', e.g. {example}' if example else ''}); give a folder")
    inputs = {Path(f).resolve() for _, files in cases for f in files}
    for name, _ in cases:
        for path in output_paths(name, out_dir, probabilities):
            if path.resolve() in inputs:
                raise UnetrError(f"{path}: the prediction would replace this input image; choose another "
                                 "output folder (-o)")
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = temporary_name(out_dir / "write-test")
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        probe.unlink()
    except OSError as e:
        raise UnetrError(f"{out_dir}: cannot write predictions there ({e.strerror or e})") from None


__all__ = ["case_name", "find_inputs", "output_paths", "check_output_folder"]
