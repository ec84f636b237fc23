"""What every subcommand shares: ``argparse`` types, output options checked before any work, ``-`` as stdout.

- Types with "expected ..., got ..." messages: :func:`positive_int`, :func:`positive_float`,
  :func:`non_negative_float`, :func:`threshold`.
- Output files: :func:`add_output` adds an option whose value is checked while the arguments are
  parsed (its folder exists and is writable, it is not a folder, its extension is one the command
  writes, matplotlib is installed when the format needs it); :func:`check_outputs` then refuses
  more than one output on stdout (``-``). So a bad output path fails in milliseconds, not after
  the work. :func:`write_text` writes to a file (atomically) or, for ``-``, to stdout; :func:`writes_to_stdout`
  says whether any output goes there (the table is then not printed).
- Steps: ``with step("reading the kernel 'k.npy'"):`` names what a command is doing, so that an
  unexpected error is reported in one line as "error while reading the kernel 'k.npy': ..."
  (:func:`failed_step` reads it back from the exception).

Example:
    >>> import argparse
    >>> from convspectra.commands._common import add_output, check_outputs, positive_int
    >>> parser = argparse.ArgumentParser()
    >>> add_output(parser, "--json", help="JSON file")
    >>> add_output(parser, "--csv", help="CSV file")
    >>> args = parser.parse_args(["--json", "-", "--csv", "-"])
    >>> check_outputs(args)
    Traceback (most recent call last):
    ...
    convspectra.errors.ParameterError: --json, --csv: expected at most one output on stdout ('-'), got 2
    >>> positive_int("3")
    3
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence

from ..errors import ParameterError

__all__ = [
    "PLOT_SUFFIXES",
    "add_output",
    "check_outputs",
    "failed_step",
    "non_negative_float",
    "output_file",
    "positive_float",
    "positive_int",
    "step",
    "threshold",
    "write_text",
    "writes_to_stdout",
]

#: The plot formats of ``report`` and ``reproduce figure4`` (matplotlib writes them all).
PLOT_SUFFIXES = (".png", ".svg", ".pdf")

#: The parser default that lists a command's output options as ``(dest, flag)`` pairs.
_OUTPUTS = "output_options"

#: The attribute :func:`step` sets on an exception that escapes it: the innermost step's name.
_STEP = "convspectra_step"


@contextlib.contextmanager
def step(what: str) -> Iterator[None]:
    """Name what the command does in this block; an exception escaping it carries the name (innermost wins).

    Example:
        >>> from convspectra.commands._common import failed_step, step
        >>> try:
        ...     with step("building the model"), step("importing 'pkg'"):
        ...         raise RuntimeError("boom")
        ... except RuntimeError as err:
        ...     print(failed_step(err, "running report"))
        importing 'pkg'
    """
    try:
        yield
    except BaseException as err:
        if not hasattr(err, _STEP):
            with contextlib.suppress(AttributeError, TypeError):  # a few built-in exceptions take no attributes
                setattr(err, _STEP, what)
        raise


def failed_step(err: BaseException, default: str) -> str:
    """The step (see :func:`step`) during which ``err`` was raised, or ``default``."""
    return str(getattr(err, _STEP, default))


def positive_int(text: str) -> int:
    """``argparse`` type for a positive integer.

    Example:
        >>> from convspectra.commands._common import positive_int
        >>> positive_int("0")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: expected a positive integer, got 0
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _finite(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_float(what: str = "a positive finite number") -> Callable[[str], float]:
    """``argparse`` type for a positive finite number; ``what`` names it in the message (e.g. "... of seconds").

    Example:
        >>> from convspectra.commands._common import positive_float
        >>> positive_float("a positive number of seconds")("0")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: expected a positive number of seconds, got '0'
    """

    def parse(text: str) -> float:
        value = _finite(text, what)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


def non_negative_float(text: str) -> float:
    """``argparse`` type for a finite number ``>= 0``.

    Example:
        >>> from convspectra.commands._common import non_negative_float
        >>> non_negative_float("1e-4")
        0.0001
    """
    value = _finite(text, "a finite non-negative number")
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a finite non-negative number, got {text!r}")
    return value


def threshold(text: str) -> float:
    """``argparse`` type for a relative threshold in ``[0, 1)``.

    Example:
        >>> from convspectra.commands._common import threshold
        >>> threshold("1e-2")
        0.01
    """
    value = _finite(text, "a number in [0, 1)")
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {value}")
    return value


def _listed(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def output_file(
    *, suffixes: Sequence[str] | None = None, stdout: bool = True, matplotlib_for: Sequence[str] = ()
) -> Callable[[str], str]:
    """``argparse`` type for an output file, checked before the command does any work.

    Args:
        suffixes: the extensions the command writes (None: any).
        stdout: whether ``-`` (standard output) is accepted. An empty name means "no file".
        matplotlib_for: the extensions that need matplotlib (refused at once when it is not installed).

    Example:
        >>> from convspectra.commands._common import output_file
        >>> output_file(suffixes=(".svg", ".png"))("figure.jpg")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: expected a file name ending in .svg or .png, got 'figure.jpg'
    """

    def parse(text: str) -> str:
        if text == "":  # no file: how to turn off an output that has a default
            return text
        if text == "-":
            if not stdout:
                raise argparse.ArgumentTypeError("expected a file name, got '-' (this output cannot go to stdout)")
            return text
        if suffixes is not None and not text.lower().endswith(tuple(suffixes)):
            raise argparse.ArgumentTypeError(f"expected a file name ending in {_listed(list(suffixes))}, got {text!r}")
        folder = os.path.dirname(os.path.abspath(text))
        if not os.path.isdir(folder):
            raise argparse.ArgumentTypeError(
                f"expected a file in an existing folder, got {text!r} ({folder} does not exist)"
            )
        if os.path.isdir(text):
            raise argparse.ArgumentTypeError(f"expected a file, got {text!r} (a folder)")
        if not os.access(folder, os.W_OK):
            raise argparse.ArgumentTypeError(f"expected a file in a writable folder, got {text!r}")
        if text.lower().endswith(tuple(matplotlib_for)) and importlib.util.find_spec("matplotlib") is None:
            raise argparse.ArgumentTypeError(
                f'writing {text!r} needs matplotlib, which is not installed: pip install "convspectra[plot]"'
            )
        return text

    return parse


def add_output(
    parser: argparse.ArgumentParser,
    flag: str,
    *,
    help: str,
    suffixes: Sequence[str] | None = None,
    stdout: bool = True,
    matplotlib_for: Sequence[str] = (),
    default: str | None = None,
) -> None:
    """Add the output option ``flag`` (see :func:`output_file`) and record it for :func:`check_outputs`."""
    action = parser.add_argument(
        flag,
        metavar="FILE",
        type=output_file(suffixes=suffixes, stdout=stdout, matplotlib_for=matplotlib_for),
        default=default,
        help=help + (" ('-': stdout)" if stdout else "") + (f" (default {default})" if default else ""),
    )
    known = parser.get_default(_OUTPUTS) or ()
    parser.set_defaults(**{_OUTPUTS: (*known, (action.dest, flag))})


def check_outputs(args: argparse.Namespace) -> None:
    """Refuse more than one output on stdout (``-``); the options were checked one by one while parsing.

    Raises:
        ParameterError: two or more output options are ``-``.
    """
    flags = [flag for dest, flag in getattr(args, _OUTPUTS, ()) if getattr(args, dest, None) == "-"]
    if len(flags) > 1:
        raise ParameterError(f"{', '.join(flags)}: expected at most one output on stdout ('-'), got {len(flags)}")


def writes_to_stdout(args: argparse.Namespace) -> bool:
    """Whether one of the command's outputs is ``-`` (then nothing else may be printed on stdout)."""
    return any(getattr(args, dest, None) == "-" for dest, _ in getattr(args, _OUTPUTS, ()))


def write_text(path: str, text: str) -> None:
    """Write ``text`` to the file ``path`` (atomically: a temporary file, then a rename), or to stdout for ``-``.

    A run killed while writing leaves the old file or the new one, never a part of one.
    """
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    from ..analysis.records import write_atomically  # NumPy only: no torch

    write_atomically(path, text)
