"""Command line: ``convspectra COMMAND ...`` (see ``convspectra --help``).

A thin layer over the library: it parses arguments, calls it, and formats what comes back.
Subcommands live in :mod:`convspectra.commands`, one module each. Output files are checked while
the arguments are parsed, before any work. Whatever happens, the user gets one line on stderr,
never a traceback (``--debug``, before or after the command, shows it):

- bad input (:class:`~convspectra.errors.ConvSpectraError`, a missing or unreadable file, a missing
  optional package): ``convspectra: error: <message>``, exit status 2;
- anything else: ``convspectra <command>: error while <step>: <ExceptionType>: <message>``, exit
  status 1, where the step is what the command was doing (reading the kernel, building the model...);
- Ctrl-C: ``convspectra <command>: interrupted``, exit status 130.

Example:
    >>> from convspectra.cli import main
    >>> main(["--version"])  # doctest: +ELLIPSIS
    convspectra ...
    0
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from . import __version__
from .commands import COMMANDS
from .commands._common import check_outputs, failed_step, step
from .errors import ConvSpectraError

#: Exit status of an interrupted command (128 + SIGINT, as shells report it).
INTERRUPTED = 130

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr and exit status 2 (no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"convspectra: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


_DEBUG_HELP = "on an error, print the full traceback as well as the one-line message"


def _add_debug(parser: argparse.ArgumentParser) -> None:
    """Accept ``--debug`` after every (sub)command word too (``convspectra report --debug ...``)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP)
                _add_debug(sub)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="convspectra", description="Exact singular values of convolutional layers.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f".commands.{name}", __package__).register(commands)
    _add_debug(parser)
    return parser


def _one_line(err: BaseException, limit: int | None = None) -> str:
    """The message of ``err`` on one line (newlines and runs of spaces collapsed), cut at ``limit`` characters."""
    text = " ".join(str(err).split())
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."


def _one_line_warnings(previous: Callable[..., None]) -> Callable[..., None]:
    """A ``warnings.showwarning`` that prints the library's own warnings in one line on stderr, like the
    errors (no file name, no source line), and hands any other warning to ``previous``."""

    def show(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if category.__module__.partition(".")[0] != "convspectra":
            previous(message, category, *args, **kwargs)
            return
        print(f"convspectra: warning: {' '.join(str(message).split())} ({category.__name__})", file=sys.stderr)

    return show


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (see the module docstring: 0 done, 2 bad input,
    1 an unexpected error, 130 interrupted), every error reported in one line on stderr.

    Args:
        argv: the arguments without the program name (default: ``sys.argv[1:]``).
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse reports bad arguments itself and exits with 2
        return int(exit_.code or 0)
    if args.version:
        print(f"convspectra {__version__}")
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    name = " ".join(word for word in (args.command, getattr(args, "experiment", None)) if word)
    debug = bool(getattr(args, "debug", False))
    try:
        with warnings.catch_warnings(), step(f"running {name}"):
            warnings.showwarning = _one_line_warnings(warnings.showwarning)
            check_outputs(args)
            return int(args.handler(args))
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(f"convspectra {name}: interrupted", file=sys.stderr)
        return INTERRUPTED
    except (ConvSpectraError, OSError, ImportError) as err:
        if debug:
            traceback.print_exc()
        print(f"convspectra: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except Exception as err:  # the boundary: one line naming the step, never a traceback
        if debug:
            traceback.print_exc()
        hint = "" if debug else " (run again with --debug for the traceback)"
        print(
            f"convspectra {name}: error while {failed_step(err, f'running {name}')}: {type(err).__name__}: "
            f"{_one_line(err, 300)}{hint}",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
