"""Driving the command line in tests: one call, and what a user mistake must look like."""

from __future__ import annotations

from click.testing import CliRunner

from synthgen.cli import main


def invoke(*args):
    """`synthgen ARGS...` through click's runner (arguments may be paths or numbers)."""
    return CliRunner().invoke(main, [str(arg) for arg in args])


def assert_no_traceback(result, allowed=(0, 2)) -> None:
    """No exception escaped the command, its exit status is one of `allowed`, and nothing
    printed a traceback."""
    escaped = result.exception if not isinstance(result.exception, SystemExit) else None
    assert escaped is None, f"{type(escaped).__name__}: {str(escaped)[:300]}"
    assert result.exit_code in allowed, result.output
    assert "Traceback" not in result.output


def assert_refused(result, *named: str) -> None:
    """A user mistake: exit 2, no traceback, and a message that names each of `named`."""
    assert_no_traceback(result, allowed=(2,))
    for name in named:
        assert name in result.output, result.output
