"""Command line: argument parsing only. Each subcommand calls one plain function of the package.

Every subcommand has an ``_add_<name>`` function that declares its arguments and a ``_run_<name>``
function that imports what it needs lazily (so ``unetr --help`` is fast) and calls it. Errors that users
cause (bad files, bad options) are ``ValueError``/``FileNotFoundError``/``UnetrError``; they are printed as
one line naming the problem and give exit code 2, never a stack trace.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Optional, Sequence

log = logging.getLogger("unetr")


# ------------------------------------------------------------------------------------------ summary
def _add_summary(sub) -> None:
    p = sub.add_parser("summary", help="print the layers, output shapes, parameters and FLOPs of a model")
    p.add_argument("--preset", default="paper", help="paper | tutorial | small | tiny")
    p.add_argument("--in-channels", type=int, default=1)
    p.add_argument("--out-channels", type=int, default=14)
    p.add_argument("--img-size", type=int, nargs="+", default=[96], help="one value (cube) or three")
    p.add_argument("--depth", type=int, default=3, help="module nesting depth shown in the table")
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP count (needs one forward pass)")
    p.set_defaults(func=_run_summary)


def _run_summary(args) -> int:
    from unetr.config import preset
    from unetr.model.summary import summarize

    size = args.img_size * 3 if len(args.img_size) == 1 else args.img_size
    cfg = preset(args.preset, in_channels=args.in_channels, out_channels=args.out_channels, img_size=tuple(size))
    print(summarize(cfg, depth=args.depth, flops=not args.no_flops))
    return 0


# ------------------------------------------------------------------------------------------ main
_ADDERS: list = [_add_summary]


def build_parser() -> argparse.ArgumentParser:
    from unetr import __version__

    parser = argparse.ArgumentParser(prog="unetr", description="UNETR for 3D medical image segmentation.")
    parser.add_argument("--version", action="version", version=f"unetr {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _ADDERS:
        add(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    func: Optional[Callable] = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    from unetr.errors import UnetrError

    try:
        return int(func(args) or 0)
    except (UnetrError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as e:
        print(f"unetr {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"unetr {args.command}: interrupted", file=sys.stderr)
        return 130
