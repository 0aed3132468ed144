"""The run directory's lock: one training process at a time in a run directory.

``RUN/train.lock`` holds the host, the process id and the start time of the process that trains there. The
lock itself is an exclusive ``flock`` on that file, which the kernel drops when the process ends, however it
ends (``kill -9`` included): a lock file left by a process that is gone is taken over with a notice, and a
second live process is refused with a message naming the holder. Where the file system has no ``flock``
(some network file systems), the recorded host and process id decide: a holder on this host that is no
longer running is taken over, any other holder refuses. :func:`run_lock` holds it for the processes of one
run (rank 0 takes it; every rank fails when it is refused).

Example:
    >>> with RunLock("runs/spleen"):       # doctest: +SKIP
    ...     fit(run_dir="runs/spleen", ...)
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import socket
from pathlib import Path
from typing import Iterator, List, Optional

from unetr.errors import UnetrError
from unetr.fsutil import process_alive, remove_stale_temporaries
from unetr.training import distributed as D

log = logging.getLogger(__name__)

LOCK_NAME = "train.lock"

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: the recorded host and pid decide
    fcntl = None  # type: ignore[assignment]


class RunLockedError(UnetrError):
    """Another live process trains in the run directory."""


def _describe(holder: dict) -> str:
    since = f" since {holder['started']}" if holder.get("started") else ""
    return f"PID {holder.get('pid', '?')} on {holder.get('host', '?')}{since}"


def _read_holder(fd: int) -> dict:
    """The holder recorded in the open lock file (empty when none or unreadable)."""
    os.lseek(fd, 0, os.SEEK_SET)
    raw = b""
    while True:
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        raw += chunk
    try:
        holder = json.loads(raw.decode("utf-8")) if raw.strip() else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {"pid": "?", "host": "?"}
    return holder if isinstance(holder, dict) else {}


def _alive_here(holder: dict) -> bool:
    """True when ``holder`` may still run: another host (unknowable), or a live process on this one."""
    if holder.get("host") != socket.gethostname():
        return True
    try:
        pid = int(holder.get("pid"))
    except (TypeError, ValueError):
        return False
    return pid != os.getpid() and process_alive(pid)


class RunLock:
    """Hold ``run_dir/train.lock`` while training (a context manager; :meth:`acquire` / :meth:`release`).

    Args:
        run_dir: the run directory (created when missing, on :meth:`acquire`; removed again on :meth:`release`
            when it is still empty, so a run that fails before writing anything leaves no empty folder).

    Raises:
        RunLockedError: on :meth:`acquire`, when another live process holds the lock (the message names it).
    """

    def __init__(self, run_dir: os.PathLike) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: Optional[int] = None
        self._created: List[Path] = []

    def acquire(self) -> RunLock:
        self._created = [p for p in (self.path.parent, *self.path.parent.parents) if not p.exists()]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                holder = self._lock(fd)
                if self._same_file(fd):
                    break
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # the holder released and removed the file between our open and our lock: again
        if holder.get("pid") not in (None, os.getpid()):
            log.warning("%s: taking over the lock of %s, which is no longer running", self.path, _describe(holder))
        me = {"host": socket.gethostname(), "pid": os.getpid(),
              "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(me) + "\n").encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def _lock(self, fd: int) -> dict:
        """Lock the open file ``fd``; return the previous holder recorded in it (empty when none)."""
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return _read_holder(fd)
            except BlockingIOError:
                raise RunLockedError(self._refusal(_read_holder(fd))) from None
            except OSError as e:  # no flock here: fall back to the recorded holder
                log.debug("%s: flock unavailable (%s); using the recorded process id", self.path, e)
        holder = _read_holder(fd)
        if holder and _alive_here(holder):
            raise RunLockedError(self._refusal(holder))
        return holder

    def _refusal(self, holder: dict) -> str:
        return (f"{self.path.parent}: another `unetr train` runs there ({_describe(holder)}; lock {self.path}); "
                "wait for it to finish or stop it, or choose another --out")

    def _same_file(self, fd: int) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        own = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)

    def release(self) -> None:
        """Remove the lock file and drop the lock (the file first, so no one locks a file being removed)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None
        for folder in self._created:  # deepest first; only empty folders go
            try:
                folder.rmdir()
            except OSError:
                break
        self._created = []

    def follow(self, run_dir: os.PathLike) -> None:
        """The run directory was renamed to ``run_dir`` while locked: release the lock file there."""
        self.path = Path(run_dir) / LOCK_NAME
        self._created = []

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def run_lock(run_dir: Path, env: D.DistEnv, hold: bool = True) -> Iterator[None]:
    """Hold the run directory's lock (rank 0; every rank fails when it is refused) and clean up the temporary
    files earlier processes left there; a run directory this call created is removed again if it stays empty.

    Raises:
        RunLockedError: another live process trains in ``run_dir``.
    """
    lock, refusal = None, None
    if hold and env.is_main:
        try:
            lock = RunLock(run_dir).acquire()
        except RunLockedError as e:
            refusal = e
    refused = D.broadcast_object(str(refusal) if refusal else None, env)
    if refused:
        raise refusal or RunLockedError(refused)
    try:
        if lock is not None:
            for path in remove_stale_temporaries(run_dir, legacy=True):
                log.info("removed %s, left by an interrupted run", path)
        yield
    finally:
        if lock is not None:
            lock.release()


__all__ = ["LOCK_NAME", "RunLock", "RunLockedError", "run_lock"]
