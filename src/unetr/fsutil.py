"""The one way the package writes a file: to a temporary name beside it, flushed to disk, then renamed.

A reader never sees a half-written file, a crash or Ctrl-C leaves the old file (or none) in place, and the
new file gets the mode any file the user creates gets (``0666`` less the umask), so colleagues on a shared
server can read results. A temporary name carries the writer's process id
(``.NAME.unetr-PID-TOKEN.tmp[ENDING]``); :func:`remove_stale_temporaries` deletes those whose process is
gone, which is how a rerun cleans up after a ``kill -9``.

Imports nothing from the package.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from pathlib import Path
from typing import Callable, Iterator, List, Union

PathLike = Union[str, os.PathLike]

_MARK = "unetr"
_TEMP_RE = re.compile(rf"^\.(?P<name>.+)\.{_MARK}-(?P<pid>\d+)-[0-9a-f]+\.tmp")
# the names of earlier versions' writers: mkstemp's 8 random characters before .tmp (.png for pictures), or a pid
_LEGACY_RE = re.compile(r"^\.(?P<name>.+)\.(?:[a-z0-9_]{8}\.tmp(?:\.[A-Za-z.]+)?|[a-z0-9_]{8}\.png|(?P<pid>\d+)\.tmp)$")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some file systems do not open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temporary_name(path: PathLike, ending: str = "") -> Path:
    """A fresh hidden name beside ``path`` that ends with ``ending`` (nibabel reads gzip from the name)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{_MARK}-{os.getpid()}-{secrets.token_hex(4)}.tmp{ending}")


@contextlib.contextmanager
def atomic_path(path: PathLike, ending: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for a writer that wants a file name; on a clean exit the file is
    flushed to disk and renamed over ``path``, on any exception (Ctrl-C included) it is removed.

    Args:
        path: the final file; its folder is created when missing.
        ending: the ending the temporary name keeps (``.nii.gz``, ``.png``) for writers that choose the format
            from the name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path, ending)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for any new file
    mode = os.fstat(fd).st_mode & 0o777
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, mode)  # a writer that recreated the file may have left another mode
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None and e.errno is not None:  # name the file (disk full ...)
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    _fsync_dir(path.parent)


def atomic_write(path: PathLike, write: Callable[[object], None]) -> None:
    """Call ``write(f)`` with a binary file object open on a temporary name, then rename it over ``path``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (this process does; a zombie, dead but not yet reaped by its
    parent, does not)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):  # no /proc (macOS): trust kill
        return True


def remove_stale_temporaries(folder: PathLike, legacy: bool = False) -> List[Path]:
    """Delete the temporary files in ``folder`` (not below it) left by writers whose process is gone.

    Args:
        legacy: also delete the temporary names of earlier versions (``.NAME.x8k2j_q1.tmp``, ``.NAME.PID.tmp``),
            which carry no process id: only for a folder no other process writes in (a locked run directory).

    Returns the removed paths. A live writer's temporary file is kept.
    """
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        m = _TEMP_RE.match(entry.name) or (_LEGACY_RE.match(entry.name) if legacy else None)
        if m is None or (m["pid"] is not None and process_alive(int(m["pid"]))) or not entry.is_file():
            continue
        try:
            entry.unlink()
        except OSError:
            continue
        removed.append(entry)
    return removed


__all__ = ["atomic_path", "atomic_write", "atomic_write_bytes", "atomic_write_text", "process_alive",
           "remove_stale_temporaries", "temporary_name"]
