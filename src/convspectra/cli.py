"""Command line: ``convspectra COMMAND ...`` (see ``convspectra --help``).

A thin layer over the library: it parses arguments, calls it, and formats what comes back.
Subcommands live in :mod:`convspectra.commands`, one module each. Output files are checked while
the arguments are parsed, before any work. Bad input exits with status 2 and a one-line message
naming the problem, never a traceback.

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
from collections.abc import Sequence

from . import __version__
from .commands import COMMANDS
from .commands._common import check_outputs
from .errors import ConvSpectraError

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr and exit status 2 (no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"convspectra: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="convspectra", description="Exact singular values of convolutional layers.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f".commands.{name}", __package__).register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0: done, 2: bad input, reported in one line on stderr).

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
    try:
        check_outputs(args)
        return int(args.handler(args))
    except (ConvSpectraError, OSError, ImportError) as err:
        print(f"convspectra: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
