"""Worker processes that end with the command that started them (imports nothing from the package).

``unetr preprocess`` and ``unetr evaluate --workers`` start process pools; each worker calls
:func:`die_with_parent` first, so a ``kill -9`` of the command, or a pipe like ``| tee log`` closing, never
leaves workers running.
"""

from __future__ import annotations

import os


def die_with_parent(parent: int) -> None:
    """Have the kernel kill this process when its parent ends (Linux ``PR_SET_PDEATHSIG``), so that killing a
    command never leaves its workers running; exit at once when the parent ``parent`` is already gone."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover - no prctl: the parent's own cleanup remains
            pass
    if os.getppid() != parent:
        os._exit(1)


__all__ = ["die_with_parent"]
