"""What a model is on disk, and the one-file model (``.unetr.zip``) that travels to another machine.

A model source is one of:

- a **run directory** (``config.json`` + ``model.safetensors``; a fold's ``model_final.safetensors``, the
  weights at the end of its training, is preferred when present): one member;
- a **folder of folds** (``fold_0/``, ``fold_1/`` ... each a run directory, as ``unetr train --folds``
  writes): one member per fold, and the folder's ``postprocessing.json`` and cross-validation figures;
- a **package** (a zip written by :func:`write_package`): every member's weights, the plan, the class
  names, the post-processing, the versions that made it and a SHA-256 checksum of each member.

Reading a package never executes code: the manifest is JSON, the weights are safetensors (tensors only), and
each member's bytes are checked against its checksum before use; a tampered or truncated member is refused.
The checksums protect against corruption and casual edits, not against someone who rewrites the manifest
too (they are not a signature).

Package layout::

    unetr-model.json                 manifest (format "unetr-package", version 1)
    members/<name>.safetensors       one per member
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import platform
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from unetr.errors import CheckpointError
from unetr.fsutil import atomic_path

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
PACKAGE_FORMAT = "unetr-package"
PACKAGE_VERSION = 1
MANIFEST = "unetr-model.json"
FINAL_WEIGHTS = "model_final.safetensors"  # a fold's weights at the end of training (what its CV measured)
BEST_WEIGHTS = "model.safetensors"
PP_FILE = "postprocessing.json"
CV_SUMMARY = Path("crossval") / "summary.json"
PLAN_FREE_KEYS = ("roi", "preset")  # members may differ in these; everything else decides the preprocessing
_MAX_MANIFEST = 64 << 20
_FOLD_RE = re.compile(r"^fold_(\d+)$")
# Package members whose SHA-256 this process checked, with the zip's size and mtime then: an ensemble reads each
# member again for every case, and zipfile's CRC-32 guards those reads; a changed zip is checked again.
_VERIFIED: set = set()


@dataclass(frozen=True)
class Member:
    """One network of a model: its name, its run's ``config.json`` and where its weights are.

    Attributes:
        name: ``fold_0``, a run's folder name, or the name in a package.
        config: the run's ``config.json`` (``model``, ``plan``, ``train`` ...).
        weights: a safetensors file (run directories), or None for a package member.
        package: the zip holding the member, and ``entry`` / ``sha256`` / ``size`` its file there.
    """

    name: str
    config: Dict[str, Any]
    weights: Optional[Path] = None
    package: Optional[Path] = None
    entry: Optional[str] = None
    sha256: Optional[str] = None
    size: Optional[int] = None

    @property
    def model(self) -> Dict[str, Any]:
        return self.config["model"]

    @property
    def plan(self) -> Dict[str, Any]:
        return self.config["plan"]

    def verify(self) -> None:
        """Check a package member's size and checksum now (nothing to check for a run's file).

        Raises:
            CheckpointError: see :meth:`read_bytes`.
        """
        if self.package is not None:
            self.read_bytes()

    def read_bytes(self) -> bytes:
        """The safetensors bytes of the weights; a package member is checked against its checksum.

        Raises:
            CheckpointError: a package member whose size or checksum differs from the manifest's.
        """
        if self.package is None:
            assert self.weights is not None
            return self.weights.read_bytes()
        with zipfile.ZipFile(self.package) as z:
            try:
                info = z.getinfo(str(self.entry))
            except KeyError:
                raise CheckpointError(f"{self.package}: member {self.name} ({self.entry}) is missing") from None
            if info.file_size != self.size:
                raise CheckpointError(f"{self.package}: member {self.name} has {info.file_size} bytes, the manifest "
                                      f"says {self.size}: the package was altered or is damaged; refusing it")
            data = z.read(info)
        stat = self.package.stat()
        key = (str(self.package.resolve()), self.entry, self.sha256, stat.st_size, stat.st_mtime_ns)
        if key in _VERIFIED:
            return data
        digest = hashlib.sha256(data).hexdigest()
        if digest != self.sha256:
            raise CheckpointError(f"{self.package}: member {self.name} fails its checksum (sha256 {digest[:12]}..., "
                                  f"the manifest says {str(self.sha256)[:12]}...): the package was altered or is "
                                  "damaged; refusing it")
        _VERIFIED.add(key)
        return data


@dataclass(frozen=True)
class ModelSource:
    """A model as found on disk: its members and what travels with them.

    Attributes:
        path: what was given.
        kind: ``run``, ``folds`` or ``package``.
        members: the networks (one for a run).
        postprocessing: the ``postprocessing.json`` dict, or None.
        cv: the cross-validation summary (``unetr cv``), or None.
        versions: the versions that made a package (None for folders).
    """

    path: Path
    kind: str
    members: Tuple[Member, ...]
    postprocessing: Optional[Dict[str, Any]] = None
    cv: Optional[Dict[str, Any]] = None
    versions: Optional[Dict[str, str]] = None

    @property
    def plan(self) -> Dict[str, Any]:
        return shared_plan(self.members)


def _read_json(path: Path) -> Dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def is_package(path: PathLike) -> bool:
    """A zip holding a unetr manifest (PyTorch's ``.pt`` files are zips too, without one)."""
    path = Path(path)
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            return MANIFEST in z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False


def is_run_dir(path: Path) -> bool:
    """A folder with ``config.json`` and weights (``model.safetensors`` or ``model_final.safetensors``)."""
    return (path / "config.json").is_file() and ((path / BEST_WEIGHTS).is_file() or (path / FINAL_WEIGHTS).is_file())


def fold_dirs(path: Path) -> List[Path]:
    """The ``fold_K`` run directories of a folder of folds, by fold number."""
    if not path.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in path.iterdir() if (m := _FOLD_RE.match(p.name)) and is_run_dir(p)]
    return [p for _, p in sorted(found)]


def run_member(path: Path, name: Optional[str] = None) -> Member:
    """The member of a run directory (its final weights when it has them, else its best)."""
    config = _read_json(path / "config.json")
    if "model" not in config or "plan" not in config:
        raise CheckpointError(f"{path / 'config.json'}: not a run's config (needs 'model' and 'plan')")
    weights = path / FINAL_WEIGHTS if (path / FINAL_WEIGHTS).is_file() else path / BEST_WEIGHTS
    return Member(name or path.name, config, weights=weights)


def _optional_json(path: Path) -> Optional[Dict[str, Any]]:
    return _read_json(path) if path.is_file() else None


def open_model(path: PathLike) -> ModelSource:
    """Find the members of a run directory, a folder of folds or a package.

    Raises:
        CheckpointError: none of these (say what was expected), or a malformed package.
        FileNotFoundError: no such path.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model (run directory, folder of folds or .zip package)")
    if path.is_file():
        if zipfile.is_zipfile(path) and path.suffix not in (".pt", ".pth"):
            return read_package(path)
        raise CheckpointError(f"{path}: a checkpoint file, not a run, folder of folds or package")
    folds = fold_dirs(path)
    if folds:
        members = tuple(run_member(p) for p in folds)
        return ModelSource(path, "folds", members, _optional_json(path / PP_FILE), _optional_json(path / CV_SUMMARY))
    if is_run_dir(path):
        return ModelSource(path, "run", (run_member(path),), _optional_json(path / PP_FILE),
                           _optional_json(path / CV_SUMMARY))
    raise CheckpointError(f"{path}: not a run directory (config.json + model.safetensors), nor a folder of folds "
                          "(fold_0/, fold_1/ ...)")


def plan_differences(a: Dict[str, Any], b: Dict[str, Any]) -> List[str]:
    """The plan fields that decide the preprocessing and differ between ``a`` and ``b``."""
    keys = sorted((set(a) | set(b)) - set(PLAN_FREE_KEYS))
    return [k for k in keys if a.get(k) != b.get(k)]


def shared_plan(members: Sequence[Member]) -> Dict[str, Any]:
    """The plan every member was trained with (``roi`` and ``preset`` may differ: they do not change the
    preprocessed arrays).

    Raises:
        CheckpointError: members with different preprocessing, naming the fields.
    """
    if not members:
        raise CheckpointError("no members")
    first = members[0]
    for m in members[1:]:
        diff = plan_differences(first.plan, m.plan)
        if diff:
            shown = "; ".join(f"{k}: {first.plan.get(k)!r} vs {m.plan.get(k)!r}" for k in diff[:3])
            raise CheckpointError(f"members {first.name} and {m.name} were trained on different preprocessing "
                                  f"({shown}); an ensemble's members must share the plan")
    return dict(first.plan)


# ---------------------------------------------------------------------------------------------- package


def versions() -> Dict[str, str]:
    """The versions of the software writing a package."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("unetr", "torch", "safetensors", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "unknown"
    return out


def write_package(out: PathLike, sources: Sequence[ModelSource], *, overwrite: bool = False) -> Path:
    """Write one zip with every member of ``sources`` and what prediction needs.

    The members must share the plan. The post-processing and cross-validation figures travel when there is
    one source (a folder's decision belongs to that folder's ensemble).

    Raises:
        CheckpointError: members that do not share the plan, or ``out`` exists (without ``overwrite``).
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise CheckpointError(f"{out}: exists; export elsewhere or add --overwrite to replace it")
    members = [m for s in sources for m in s.members]
    plan = shared_plan(members)
    names: Dict[str, int] = {}
    entries = []
    for m in members:
        base = re.sub(r"[^A-Za-z0-9_.-]", "_", m.name) or "member"
        names[base] = names.get(base, 0) + 1
        name = base if names[base] == 1 else f"{base}-{names[base]}"
        data = m.read_bytes()
        entries.append((name, data, {"name": name, "weights": f"members/{name}.safetensors", "size": len(data),
                                     "sha256": hashlib.sha256(data).hexdigest(),
                                     "config": {k: v for k, v in m.config.items() if k in ("model", "plan", "train",
                                                                                           "format", "version")}}))
    one = sources[0] if len(sources) == 1 else None
    manifest = {
        "format": PACKAGE_FORMAT, "version": PACKAGE_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": [str(s.path) for s in sources], "plan": plan, "class_names": list(plan.get("class_names", [])),
        "members": [e[2] for e in entries],
        "postprocessing": one.postprocessing if one is not None else None,
        "cv": one.cv if one is not None else None,
        "versions": versions(),
    }
    with atomic_path(out, ".zip") as tmp:
        with zipfile.ZipFile(tmp, "w") as z:
            z.writestr(MANIFEST, json.dumps(manifest, indent=2) + "\n", compress_type=zipfile.ZIP_DEFLATED)
            for name, data, _ in entries:
                z.writestr(f"members/{name}.safetensors", data, compress_type=zipfile.ZIP_STORED)
    log.info("wrote %s: %d member(s), %.1f MB", out, len(entries), out.stat().st_size / 1e6)
    return out


def read_package(path: PathLike) -> ModelSource:
    """Open a package: read its manifest (JSON) and describe its members; no weights are read yet (each is
    checked when loaded, :meth:`Member.read_bytes`).

    Raises:
        CheckpointError: not a unetr package, another format version, or a malformed manifest.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as z:
            try:
                info = z.getinfo(MANIFEST)
            except KeyError:
                raise CheckpointError(f"{path}: a zip without {MANIFEST}; not a unetr model package") from None
            if info.file_size > _MAX_MANIFEST:
                raise CheckpointError(f"{path}: {MANIFEST} of {info.file_size} bytes; not a unetr model package")
            doc = json.loads(z.read(info).decode("utf-8"))
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable package ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != PACKAGE_FORMAT:
        raise CheckpointError(f"{path}: not a unetr model package (format {doc.get('format') if isinstance(doc, dict) else None!r})")
    if doc.get("version") != PACKAGE_VERSION:
        raise CheckpointError(f"{path}: package version {doc.get('version')!r}; this unetr reads version "
                              f"{PACKAGE_VERSION}")
    members = []
    try:
        for e in doc["members"]:
            members.append(Member(str(e["name"]), dict(e["config"]), package=path, entry=str(e["weights"]),
                                  sha256=str(e["sha256"]), size=int(e["size"])))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: malformed manifest ({e})") from None
    if not members:
        raise CheckpointError(f"{path}: a package without members")
    return ModelSource(path, "package", tuple(members), doc.get("postprocessing"), doc.get("cv"), doc.get("versions"))


__all__ = ["BEST_WEIGHTS", "FINAL_WEIGHTS", "MANIFEST", "PACKAGE_FORMAT", "PP_FILE", "Member", "ModelSource",
           "fold_dirs", "is_package", "is_run_dir", "open_model", "plan_differences", "read_package", "run_member", "shared_plan",
           "versions", "write_package"]
