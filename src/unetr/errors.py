"""Errors that users cause; the CLI prints them as one line and exits with code 2."""

from typing import Optional


class UnetrError(Exception):
    """A problem with the user's input (file, dataset, option) that a message can explain."""


class DataError(UnetrError, ValueError):
    """A file or dataset that cannot be used; the message names the file and the problem."""


class CheckpointError(UnetrError, ValueError):
    """A checkpoint that does not fit the model (lists missing/unexpected keys and wrong shapes) or is unsafe."""


def out_of_memory(e: BaseException) -> Optional[str]:
    """How much memory the allocation that ``e`` reports asked for (``"64.0 GiB"``; ``""`` when it does not say),
    or None when ``e`` is not a failed allocation (``MemoryError``, or PyTorch's CPU or CUDA out-of-memory)."""
    import re

    text = str(e)
    if not isinstance(e, MemoryError):
        oom = type(e).__name__ == "OutOfMemoryError" or any(
            s in text for s in ("can't allocate memory", "not enough memory", "out of memory"))
        if not (isinstance(e, RuntimeError) and oom):
            return None
    m = re.search(r"(?:[Uu]nable to|[Tt]ried to) allocate ([\d.]+) ?(bytes|[KMGTP]i?B)", text)
    if m is None:
        return ""
    size, unit = float(m.group(1)), m.group(2)
    if unit != "bytes":
        return f"{m.group(1)} {unit}"
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "bytes" else f"{int(size)} bytes"
        size /= 1024
    return ""  # pragma: no cover
