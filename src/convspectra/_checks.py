"""The argument checkers every public function uses: one rule and one message per kind of value.

Each checker takes the parameter's public name and the value received, and returns the value
normalised (a Python ``int``, ``float``, ``bool``, ``str`` or tuple) or raises
:class:`~convspectra.errors.ParameterTypeError` (wrong type) /
:class:`~convspectra.errors.ParameterError` (right type, value out of range) with a message
``"<name>: expected <what>, got <value>"``.

Example:
    >>> from convspectra._checks import as_tuple, integer, real
    >>> as_tuple("stride", 2, 3), integer("iterations", 5), real("max_norm", 1, minimum=0, open_below=True)
    ((2, 2, 2), 5, 1.0)
    >>> integer("iterations", 0)
    Traceback (most recent call last):
    ...
    convspectra.errors.ParameterError: iterations: expected a positive int, got 0
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import ParameterError, ParameterTypeError

__all__ = ["MAX_SIZE", "as_tuple", "choice", "describe", "flag", "integer", "norm_bounds", "real"]

#: The largest size, stride or dilation :func:`as_tuple` accepts by default: products of two
#: such numbers and a tap index still fit the int64 arithmetic of NumPy (larger ones overflow).
MAX_SIZE = 2**62


def describe(obj: Any) -> str:
    """The qualified type name of ``obj`` (``'numpy.ndarray'``, ``'str'``), for messages."""
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}" if cls.__module__ != "builtins" else cls.__qualname__


def _show(number: int) -> str:
    """``number`` for a message: ``2**62`` and ``2**31 - 1`` rather than their 19 and 10 digits."""
    for offset, suffix in ((0, ""), (1, " - 1")):
        power = (number + offset).bit_length() - 1
        if power >= 20 and number + offset == 2**power:
            return f"2**{power}{suffix}"
    return str(number)


def _received(value: Any) -> str:
    """``repr(value)`` for a message, with integers of more than 30 digits shortened (``10**400``: 401 digits)."""
    if _is_int(value) and abs(int(value)) >= 10**30:
        digits = len(str(abs(int(value))))
        return f"{'-' if value < 0 else ''}{str(abs(int(value)))[:6]}... (an integer of {digits} digits)"
    if isinstance(value, (tuple, list)) and any(_is_int(item) and abs(int(item)) >= 10**30 for item in value):
        inner = ", ".join(_received(item) for item in value)
        return f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    return repr(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def integer(name: str, value: Any, *, minimum: int = 1, maximum: int | None = None) -> int:
    """An integer in ``[minimum, maximum]`` (bools are refused), as a Python int."""
    what = (
        ("a positive int" if minimum == 1 else f"an integer >= {minimum}")
        if maximum is None
        else f"an integer in [{minimum}, {maximum}]"
    )
    if not _is_int(value):
        raise ParameterTypeError(f"{name}: expected {what}, got {value!r} ({describe(value)})")
    if value < minimum or (maximum is not None and value > maximum):
        raise ParameterError(f"{name}: expected {what}, got {_received(value)}")
    return int(value)


def real(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    open_below: bool = False,
    open_above: bool = False,
) -> float:
    """A finite real number within the given range (``open_*``: that end itself is excluded)."""
    if minimum == 0 and open_below and maximum is None:
        what = "a positive finite number"
    elif minimum is not None and maximum is not None:
        what = f"a number in {'(' if open_below else '['}{minimum:g}, {maximum:g}{')' if open_above else ']'}"
    elif minimum is not None:
        what = f"a finite number {'>' if open_below else '>='} {minimum:g}"
    elif maximum is not None:
        what = f"a finite number {'<' if open_above else '<='} {maximum:g}"
    else:
        what = "a finite real number"
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):  # a 0-d NumPy array or torch tensor
        value = value.item()
    if isinstance(value, (bool, np.bool_, str, bytes, complex)) or not isinstance(value, numbers.Real):
        raise ParameterTypeError(f"{name}: expected {what}, got {value!r} ({describe(value)})")
    try:
        number = float(value)
    except OverflowError:  # an int beyond the float range, e.g. 10**400
        raise ParameterError(f"{name}: expected {what}, got {_received(value)}") from None
    below = minimum is not None and (number < minimum or (open_below and number == minimum))
    above = maximum is not None and (number > maximum or (open_above and number == maximum))
    if not math.isfinite(number) or below or above:
        raise ParameterError(f"{name}: expected {what}, got {value!r}")
    return number


def flag(name: str, value: Any) -> bool:
    """``True`` or ``False`` (NumPy booleans accepted), nothing else."""
    if not isinstance(value, (bool, np.bool_)):
        raise ParameterTypeError(f"{name}: expected True or False, got {value!r}")
    return bool(value)


def choice(name: str, value: Any, options: Sequence[str]) -> str:
    """One of the strings ``options``."""
    if not isinstance(value, str) or value not in options:
        raise ParameterError(f"{name}: expected one of {', '.join(map(repr, options))}, got {value!r}")
    return value


def as_tuple(name: str, value: Any, ndim: int, *, minimum: int = 1, maximum: int = MAX_SIZE) -> tuple[int, ...]:
    """An int (the same on every axis) or a sequence of ``ndim`` ints, each in ``[minimum, maximum]``.

    A ``list`` and a ``tuple`` are the same here: both give one value per spatial axis.

    Example:
        >>> from convspectra._checks import as_tuple
        >>> as_tuple("dilation", 2**70, 2)
        Traceback (most recent call last):
        ...
        convspectra.errors.ParameterError: dilation: expected integers <= 2**62, got 1180591620717411303424
    """
    if isinstance(value, (bool, np.bool_)):
        raise ParameterTypeError(f"{name}: expected an int or a sequence of {ndim} ints, got {value!r}")
    if isinstance(value, numbers.Integral):
        items: tuple[Any, ...] = (value,) * ndim
    elif (isinstance(value, Sequence) and not isinstance(value, (str, bytes))) or (
        isinstance(value, np.ndarray) and value.ndim == 1
    ):
        items = tuple(value)
        if len(items) != ndim:
            raise ParameterError(
                f"{name}: expected an int or {ndim} values (one per spatial axis of the kernel), "
                f"got {len(items)} values {tuple(value)!r}"
            )
    else:
        raise ParameterTypeError(
            f"{name}: expected an int or a sequence of {ndim} ints, got {value!r} ({describe(value)})"
        )
    out = []
    for item in items:
        if not _is_int(item):
            raise ParameterTypeError(f"{name}: expected integers, got {value!r}")
        if int(item) < minimum:
            raise ParameterError(f"{name}: expected integers >= {minimum}, got {value!r}")
        if int(item) > maximum:
            raise ParameterError(f"{name}: expected integers <= {_show(maximum)}, got {_received(value)}")
        out.append(int(item))
    return tuple(out)


def norm_bounds(max_norm: Any, min_norm: Any) -> tuple[float, float | None]:
    """``(max_norm, min_norm)`` as floats: ``max_norm > 0`` and ``0 <= min_norm <= max_norm`` (or None)."""
    high = real("max_norm", max_norm, minimum=0.0, open_below=True)
    if min_norm is None:
        return high, None
    low = real("min_norm", min_norm, minimum=0.0)
    if low > high:
        raise ParameterError(f"min_norm: expected a number in [0, max_norm] (max_norm = {high!r}), got {min_norm!r}")
    return high, low
