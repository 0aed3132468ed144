"""How the CLI reports failures: one line for what the user can fix, a bug report for what they cannot."""

import errno

import pytest

from unetr import cli
from unetr.errors import DataError


@pytest.mark.parametrize("exc, code, text", [
    (DataError("/d/a.nii.gz: labels 7 outside 0..2"), cli.EXIT_USER, "error: /d/a.nii.gz: labels 7 outside 0..2"),
    (OSError(errno.ENOSPC, "No space left on device", "/out/x.nii.gz"), cli.EXIT_USER, "disk full writing /out/x.nii.gz"),
    (PermissionError(errno.EACCES, "Permission denied", "/root/x"), cli.EXIT_USER, "error: /root/x: Permission denied"),
    (MemoryError("Unable to allocate 12.0 GiB"), cli.EXIT_USER, "out of memory (Unable to allocate 12.0 GiB)"),
    (KeyError("spacing"), cli.EXIT_BUG, "internal error (a bug in unetr"),
    (AttributeError("x"), cli.EXIT_BUG, "rerun with -v for the traceback"),
])
def test_describe_failure(exc, code, text):
    message, got = cli.describe_failure(exc)
    assert got == code and text in message and "\n" not in message


def test_a_bug_exits_3_with_one_line_and_traceback_only_with_v(monkeypatch, capsys):
    def boom(args):
        raise KeyError("oops")

    from unetr.cli import data as data_commands

    monkeypatch.setattr(data_commands, "_run_check", boom)
    parser = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _with_func(parser(), "check", boom))
    assert cli.main(["check", "somewhere"]) == cli.EXIT_BUG
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error" in err and "Traceback" not in err
    assert cli.main(["-v", "check", "somewhere"]) == cli.EXIT_BUG
    assert "Traceback" in capsys.readouterr().err


def _with_func(parser, command, func):
    sub = next(a for a in parser._actions if a.dest == "command")
    sub.choices[command].set_defaults(func=func)
    return parser
