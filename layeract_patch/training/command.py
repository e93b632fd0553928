"""The recipes' one command-line contract: every `recipes/*.py` ends in `run_command(parser, main, argv)`.

Exit codes: 0 done; 2 bad input, after one `<prog>: error: ...` line and before anything is written
(ValueError / FileNotFoundError from `main`); 1 training diverged (FloatingPointError) or a write failed
mid-run (OSError: a full disk), one line too; 130 Ctrl-C, after the run saved what it needs to continue.
No traceback for any of them.
"""
from __future__ import annotations

import argparse
import errno
import os
import shlex
import sys
from typing import Any, Callable, Optional, Sequence

__all__ = ["run_command", "python_command", "install_hint", "HelpFormatter"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help with each default, except None/False ones, whose help text says what happens instead."""

    def _get_help_string(self, action):
        if action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


def python_command() -> str:
    """This Python as a person should type it to run a command we print: `.venv/bin/python` from the repository
    root (relative when it lies under the working folder, so the line works without an activated venv)."""
    path = sys.executable or "python3"
    relative = os.path.relpath(path)
    if relative.startswith(".."):
        return shlex.quote(path)
    return shlex.quote(relative if os.sep in relative else os.path.join(".", relative))  # never a bare name: PATH


def install_hint(package: str) -> str:
    """The command that installs an optional `package` into this Python, as it can be pasted."""
    return f"{python_command()} -m pip install {package}"


def run_command(parser: argparse.ArgumentParser, main: Callable[[argparse.Namespace], Any],
                argv: Optional[Sequence[str]] = None, *,
                on_interrupt: str = "continue with the same command plus --resume") -> int:
    """Parse `argv`, call `main(args)` and turn its outcome into an exit code (see the module docstring).

    `main` may return an int to choose the exit code itself (a study runner that finished with failures).
    """
    args = parser.parse_args(argv)
    try:
        result = main(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    except FloatingPointError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # a full disk or a file system gone read-only mid-run: what was saved is kept
        text = err.strerror + (f": {err.filename!r}" if err.filename else "") if err.strerror else str(err)
        full = err.errno in (errno.ENOSPC, errno.EDQUOT)
        print(f"{parser.prog}: error: {text}" + (f"; make room, then {on_interrupt}" if full else ""), file=sys.stderr)
        return 1
    except KeyboardInterrupt as stop:
        detail = f" ({stop})" if str(stop) else ""
        print(f"{parser.prog}: interrupted{detail}; {on_interrupt}", file=sys.stderr)
        return 130
    return result if isinstance(result, int) and not isinstance(result, bool) else 0
