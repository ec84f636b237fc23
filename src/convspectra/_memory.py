"""The memory budget: one default, one check of ``max_memory``, one refusal message.

Every entry point estimates what it will allocate, arithmetically and before allocating, and
calls :func:`check_budget`; a request over the budget raises
:class:`~convspectra.errors.MemoryBudgetError` naming the estimate and the budget. The
estimates are Python integers (:func:`nbytes`, :func:`frequency_count`,
:func:`frequency_grid_bytes`): they never overflow and never allocate, whatever the sizes
(a grid of ``2**40`` per side is refused in microseconds).

Example:
    >>> from convspectra._memory import check_budget, format_bytes, frequency_grid_bytes, resolve_budget
    >>> format_bytes(3 * 2**30), resolve_budget(None) == 4 * 2**30
    ('3.0 GiB', True)
    >>> check_budget(5 * 2**20, 2**20, "this request")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    convspectra.errors.MemoryBudgetError: max_memory: this request needs about 5.0 MiB, over the budget of 1.0 MiB; ...
    >>> format_bytes(frequency_grid_bytes((2**40, 2**40), (64, 64), real=True))  # one complex 64x64 per pair
    '36028797018963968.0 TiB'
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any

from ._checks import integer
from .errors import MemoryBudgetError

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "check_budget",
    "format_bytes",
    "frequency_count",
    "frequency_grid_bytes",
    "nbytes",
    "resolve_budget",
]

#: Default cap, in bytes, on the memory one call may use (results and working arrays).
DEFAULT_MEMORY_BUDGET = 4 * 2**30


def format_bytes(size: float) -> str:
    """``size`` bytes in B, KiB, MiB, GiB or TiB with one decimal (``2**N B`` beyond what a float holds)."""
    if isinstance(size, int) and size.bit_length() > 1000:
        return f"more than 2**{size.bit_length() - 1} B"
    size = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def resolve_budget(max_memory: Any) -> int:
    """``max_memory`` as a positive number of bytes (a Python int); ``None`` is :data:`DEFAULT_MEMORY_BUDGET`.

    Only integers are accepted (Python or NumPy; not bools): ``"x"``, ``1.5``, ``nan``, ``inf`` and
    ``True`` raise :class:`~convspectra.errors.ParameterTypeError`, ``0`` and ``-1``
    :class:`~convspectra.errors.ParameterError`, each naming ``max_memory``.

    Example:
        >>> resolve_budget(2**20)
        1048576
        >>> resolve_budget(-1)
        Traceback (most recent call last):
        ...
        convspectra.errors.ParameterError: max_memory: expected a positive int, got -1
    """
    if max_memory is None:
        return DEFAULT_MEMORY_BUDGET
    return integer("max_memory", max_memory)


def nbytes(*factors: int | Sequence[int]) -> int:
    """The product of ``factors`` (ints, or sequences of ints that are multiplied out) as a Python int.

    The byte count of an array, e.g. ``nbytes(itemsize, shape)``, computed without NumPy's fixed-width
    integers, so it cannot overflow.

    Example:
        >>> nbytes(16, (2**40, 2**40), 64) == 2**90
        True
    """
    total = 1
    for factor in factors:
        if isinstance(factor, Sequence):
            total *= math.prod(operator.index(item) for item in factor)
        else:
            total *= operator.index(factor)
    return total


def frequency_count(grid: Sequence[int], *, real: bool) -> int:
    """Frequencies of ``grid`` a computation visits: every point, or one per conjugate pair ``{g, -g}`` (``real``).

    Example:
        >>> frequency_count((4, 4), real=False), frequency_count((4, 4), real=True)
        (16, 10)
    """
    size = nbytes(grid)
    if not real:
        return size
    self_conjugate = math.prod(2 if operator.index(m) % 2 == 0 else 1 for m in grid)
    return (size + self_conjugate) // 2


def frequency_grid_bytes(
    grid: Sequence[int],
    block_shape: Sequence[int],
    *,
    groups: int = 1,
    itemsize: int = 16,
    real: bool = False,
) -> int:
    """Bytes of one ``block_shape`` matrix per group at every frequency of ``grid`` (or per conjugate pair).

    Args:
        grid: the frequency grid (e.g. the output shape of the layer).
        block_shape: the matrix per group and frequency, e.g. ``(out/groups, stride_prod * in/groups)``.
        groups: matrices per frequency.
        itemsize: bytes per entry (16: complex128, 8: complex64 or float64).
        real: count one frequency per conjugate pair (real kernels).

    Example:
        >>> frequency_grid_bytes((56, 56), (64, 64))   # complex128 transfer matrices of a 64-channel layer
        205520896
    """
    return nbytes(frequency_count(grid, real=real), block_shape, groups, itemsize)


def check_budget(estimate: float, budget: int, what: str, hint: str = "") -> None:
    """Refuse ``what`` (e.g. "this request (512 frequencies)") when ``estimate`` bytes exceed ``budget``."""
    if estimate > budget:
        raise MemoryBudgetError(
            f"max_memory: {what} needs about {format_bytes(estimate)}, over the budget of {format_bytes(budget)}; "
            f"pass a larger max_memory (bytes) if the machine has it{hint}"
        )
