"""Command line: argument parsing only. Each subcommand calls one plain function of the package.

Every subcommand has an ``_add_<name>`` function that declares its arguments and a ``_run_<name>``
function that imports what it needs lazily (so ``unetr --help`` is fast) and calls it. Errors that users
cause (bad files, bad options) are ``ValueError``/``FileNotFoundError``/``UnetrError``; they are printed as
one line naming the problem and give exit code 2, never a stack trace.

The subcommands live in ``unetr.cli.data`` (datasets), ``train``, ``predict`` (segment and score) and
``results`` (report, export, info, demo); this module builds the parser, runs a subcommand and turns any
failure into one line.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import traceback
from typing import Callable, Optional, Sequence, Tuple

from unetr.cli.data import (
    _add_check,
    _add_convert,
    _add_mni,
    _add_plan,
    _add_preprocess,
    _add_summary,
    _add_synth,
)
from unetr.cli.predict import _add_evaluate, _add_predict
from unetr.cli.results import _add_demo, _add_export, _add_info, _add_report
from unetr.cli.train import _add_cv, _add_train

log = logging.getLogger("unetr")

# ------------------------------------------------------------------------------------------ main
_ADDERS: list = [_add_summary, _add_synth, _add_check, _add_convert, _add_plan, _add_preprocess,
                 _add_predict, _add_evaluate, _add_report, _add_export, _add_train, _add_cv, _add_info, _add_mni,
                 _add_demo]

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

    if args.command in ("train", "predict", "demo"):
        from unetr.allocator import keep_freed_memory

        keep_freed_memory()
    previous = _stop_on_sigterm()
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        print(f"unetr {args.command}: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print(f"unetr {args.command}: terminated (SIGTERM); rerun the command to continue", file=sys.stderr)
        return 128 + signal.SIGTERM
    except BaseException as e:  # noqa: BLE001 - every failure becomes one line (or a bug report)
        message, code = describe_failure(e, verbose=args.verbose, command=args.command)
        if code == EXIT_BUG and args.verbose:
            traceback.print_exc()
        print(f"unetr {args.command}: {message}", file=sys.stderr)
        return code
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)

class Terminated(BaseException):
    """SIGTERM arrived: raised in the main thread so that every ``finally`` runs (temporary files are removed,
    locks released, worker processes stopped) before the command exits with 143."""

def _raise_terminated(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM during the cleanup ends the process
    raise Terminated()

def _stop_on_sigterm():
    """Turn SIGTERM into :class:`Terminated` (main thread only); returns the handler it replaced."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)

EXIT_USER = 2  # the user's input or environment: a message says what to change

EXIT_BUG = 3  # an unexpected exception: a bug in unetr

# what lowers the memory a command needs
MEMORY_ADVICE = {
    "train": "use a smaller --roi or --batch-size, --precision bf16 or --set checkpointing=true",
    "predict": "lower --batch, add --accum-fp16 or --accum-device cpu, or use --inverse labels",
    "preprocess": "use fewer --workers (each preprocesses one case at a time)",
    "plan": "use fewer --workers",
    "evaluate": "use fewer --workers",
}

def describe_failure(e: BaseException, verbose: bool = False, command: Optional[str] = None) -> Tuple[str, int]:
    """One line for a failure and the exit code: user-caused conditions (bad files, options, a full disk, too
    little memory) get :data:`EXIT_USER`; anything else is a bug in unetr and says so (:data:`EXIT_BUG`).

    Args:
        command: the subcommand, whose options a memory message suggests.
    """
    import errno

    from unetr.errors import UnetrError, out_of_memory

    if isinstance(e, SystemExit):
        raise e
    needed = out_of_memory(e)
    if needed is not None:
        advice = MEMORY_ADVICE.get(command or "", "free memory or use a machine with more")
        text = str(e).splitlines()[0][:160] if str(e) else ""
        what = text if isinstance(e, MemoryError) or not needed else f"an allocation of {needed} failed"
        return f"error: out of memory{f' ({what})' if what else ''}; {advice}", EXIT_USER
    if isinstance(e, (UnetrError, ValueError)):
        return f"error: {e}", EXIT_USER
    if isinstance(e, OSError):
        where = e.filename or ""
        if e.errno == errno.ENOSPC:
            return f"error: disk full writing {where or 'a file'}", EXIT_USER
        if isinstance(e, (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
                          FileExistsError)) or e.errno in (errno.EROFS, errno.EDQUOT, errno.EIO):
            text = e.strerror or str(e)
            return f"error: {where}: {text}" if where and str(where) not in text else f"error: {e}", EXIT_USER
    return (f"internal error (a bug in unetr; please report it with the command): {type(e).__name__}: {e}"
            + ("" if verbose else " (rerun with -v for the traceback)")), EXIT_BUG
