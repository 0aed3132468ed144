"""Keep freed large buffers inside the process (glibc only), for the commands that train and predict.

glibc serves every allocation above 32 MiB with a fresh ``mmap`` and returns it to the system on ``free``.
A 3-D network allocates and frees buffers of tens to hundreds of MiB in every step, so each step pays the
kernel for zeroed pages again: on a 2-core CPU this doubled the time of a training step (measured with
``MALLOC_MMAP_MAX_=0``: ``benchmarks/RESULTS.md``). :func:`keep_freed_memory` tells glibc to take such
buffers from its heap instead and to keep freed memory for reuse. The process keeps its peak memory
until it exits, which is what a training or prediction run does anyway.

``unetr train``, ``unetr predict`` and ``unetr demo`` call it at start; ``UNETR_KEEP_HEAP=0`` turns it off.
The library itself never changes the allocator.
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Ask glibc to reuse freed large buffers. Returns whether the setting took effect."""
    if os.environ.get("UNETR_KEEP_HEAP", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


__all__ = ["keep_freed_memory"]
