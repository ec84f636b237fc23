"""Subcommands of the ``convspectra`` command line, one module each.

Each module defines ``register(commands)``, which adds its parser to the ``argparse`` sub-parsers
object and sets ``handler`` (a function ``args -> exit status``) as a default. ``COMMANDS`` lists the
modules in the order ``--help`` shows them; add a new subcommand by writing its module and naming
it here.
"""

from __future__ import annotations

import argparse

__all__ = ["COMMANDS", "positive_int", "writable_file"]

COMMANDS: tuple[str, ...] = ("demo", "report", "spectrum", "reproduce", "bench", "train")


def positive_int(text: str) -> int:
    """``argparse`` type for a positive integer, with an "expected ..., got ..." message."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def writable_file(text: str) -> str:
    """``argparse`` type for an output file: ``-`` (stdout) or a path whose folder exists."""
    import os

    if text != "-":
        folder = os.path.dirname(os.path.abspath(text))
        if not os.path.isdir(folder):
            raise argparse.ArgumentTypeError(
                f"expected a file in an existing folder, got {text!r} ({folder} does not exist)"
            )
    return text
