"""The run directory's lock: refused while held, taken over (with a notice) from a process that is gone."""

import errno
import json
import os
import socket
import subprocess
import sys

import pytest

from unetr.training import lock as lock_mod
from unetr.training.lock import LOCK_NAME, RunLock, RunLockedError
from unetr.training.run_dir import move_run_aside


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _record(run, pid, host=None):
    run.mkdir(parents=True, exist_ok=True)
    (run / LOCK_NAME).write_text(json.dumps({"host": host or socket.gethostname(), "pid": pid}))


def test_acquire_records_this_process_and_release_removes_it(tmp_path):
    with RunLock(tmp_path / "run") as held:
        doc = json.loads((tmp_path / "run" / LOCK_NAME).read_text())
        assert doc["pid"] == os.getpid() and doc["host"] == socket.gethostname() and held.held
    assert not (tmp_path / "run" / LOCK_NAME).exists() and not held.held


def test_a_lock_left_by_a_dead_process_is_taken_over_with_a_notice(tmp_path, caplog):
    pid = _dead_pid()
    _record(tmp_path / "run", pid)
    with RunLock(tmp_path / "run"):
        assert json.loads((tmp_path / "run" / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert f"taking over the lock of PID {pid} on {socket.gethostname()}, which is no longer running" in caplog.text


@pytest.mark.parametrize("holder, refused", [("alive", True), ("dead", False), ("other host", True)])
def test_without_flock_the_recorded_holder_decides(tmp_path, monkeypatch, holder, refused):
    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(lock_mod.fcntl, "flock", no_flock)
    pid = {"alive": os.getppid(), "dead": _dead_pid(), "other host": 1}[holder]
    _record(tmp_path / "run", pid, host="elsewhere" if holder == "other host" else None)
    if refused:
        with pytest.raises(RunLockedError, match=f"PID {pid} on "):
            RunLock(tmp_path / "run").acquire()
    else:
        RunLock(tmp_path / "run").acquire().release()


def test_a_refusal_leaves_the_holders_file_alone(tmp_path):
    with RunLock(tmp_path / "run"):
        before = (tmp_path / "run" / LOCK_NAME).read_bytes()
        with pytest.raises(RunLockedError, match="another `unetr train` runs there"):
            RunLock(tmp_path / "run").acquire()
        assert (tmp_path / "run" / LOCK_NAME).read_bytes() == before


def test_restart_moves_the_run_aside_and_deletes_nothing(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_text("weights")
    assert move_run_aside(run) == tmp_path / "run.old-1" and not run.exists()
    assert (tmp_path / "run.old-1" / "last.pt").read_text() == "weights"
    assert not (tmp_path / "run.old-1" / LOCK_NAME).exists()
    run.mkdir()
    (run / "config.json").write_text("{}")
    assert move_run_aside(run) == tmp_path / "run.old-2"
    assert move_run_aside(run) is None  # nothing there now
    with RunLock(tmp_path / "busy"):
        with pytest.raises(RunLockedError):
            move_run_aside(tmp_path / "busy")
