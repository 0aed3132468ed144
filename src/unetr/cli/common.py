"""Helpers the subcommands share: ROI arguments, flag names, refusing a non-empty output folder."""

from __future__ import annotations

import sys
from typing import Optional, Sequence, Tuple


def _roi(values: Sequence[int]) -> Tuple[int, int, int]:
    """``--roi`` as three sizes: one value (a cube) or three, each a positive multiple of the patch size 16."""
    given = " ".join(str(v) for v in values)
    if len(values) not in (1, 3):
        raise ValueError(f"--roi {given}: give one size (a cube) or three, e.g. --roi 96 or --roi 128 128 64")
    if any(v < 16 or v % 16 for v in values):
        raise ValueError(f"--roi {given}: crop sizes must be positive multiples of 16 (the patch size), "
                         "e.g. --roi 96 or --roi 128 128 64")
    return tuple(values * 3 if len(values) == 1 else values)

def _flag(args, key: str) -> Optional[str]:
    """The option that set ``key`` (``--no-res-block`` for a false switch), or None when it was not given."""
    value = getattr(args, key)
    if value is None or (value is False and key != "res_block"):
        return None
    return f"--{'no-' if value is False else ''}{key.replace('_', '-')}"

def _refuse_non_empty(folder: str, overwrite: bool) -> None:
    """A generated dataset goes into a new or empty folder: writing into a user's dataset would replace its
    dataset.json and mix phantoms into it."""
    from pathlib import Path

    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path}: exists and is not a folder")
    if not overwrite and path.is_dir() and any(path.iterdir()):
        raise ValueError(f"{path}: the folder is not empty; choose a new folder or add --overwrite")

def _print_problems(problems: Sequence[str]) -> None:
    """The count of ``problems`` and the first five, on one line of stderr (nothing when there are none)."""
    if problems:
        print(f"{len(problems)} problem(s): " + "; ".join(problems[:5]) + (" ..." if len(problems) > 5 else ""),
              file=sys.stderr)
