"""The memory budget: one default, one check of ``max_memory``, one refusal message.

Every entry point estimates what it will allocate, arithmetically and before allocating, and
calls :func:`check_budget`; a request over the budget raises
:class:`~convspectra.errors.MemoryBudgetError` naming the estimate and the budget.

Example:
    >>> from convspectra._memory import check_budget, format_bytes, resolve_budget
    >>> format_bytes(3 * 2**30), resolve_budget(None) == 4 * 2**30
    ('3.0 GiB', True)
    >>> check_budget(5 * 2**20, 2**20, "this request")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    convspectra.errors.MemoryBudgetError: max_memory: this request needs about 5.0 MiB, over the budget of 1.0 MiB; ...
"""

from __future__ import annotations

from typing import Any

from ._checks import integer
from .errors import MemoryBudgetError

__all__ = ["DEFAULT_MEMORY_BUDGET", "check_budget", "format_bytes", "resolve_budget"]

#: Default cap, in bytes, on the memory one call may use (results and working arrays).
DEFAULT_MEMORY_BUDGET = 4 * 2**30


def format_bytes(size: float) -> str:
    """``size`` bytes in B, KiB, MiB, GiB or TiB with one decimal."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def resolve_budget(max_memory: Any) -> int:
    """``max_memory`` as a positive number of bytes; ``None`` is :data:`DEFAULT_MEMORY_BUDGET`."""
    if max_memory is None:
        return DEFAULT_MEMORY_BUDGET
    return integer("max_memory", max_memory)


def check_budget(estimate: float, budget: int, what: str, hint: str = "") -> None:
    """Refuse ``what`` (e.g. "this request (512 frequencies)") when ``estimate`` bytes exceed ``budget``."""
    if estimate > budget:
        raise MemoryBudgetError(
            f"max_memory: {what} needs about {format_bytes(estimate)}, over the budget of {format_bytes(budget)}; "
            f"pass a larger max_memory (bytes) if the machine has it{hint}"
        )
