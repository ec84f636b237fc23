"""What a solved request is: the value, its certified bracket, and how it was found.

Both solvers (:mod:`convspectra.norm._wraparound`, :mod:`convspectra.norm._padded`) return a
:class:`Solution`. A solver that stops at its budget says so in the result (``converged`` and
the ``warning`` text); the public functions issue the warning, so that it points at the
caller's line.

Example:
    >>> import numpy as np
    >>> from convspectra.spec import parse_layer
    >>> from convspectra.norm._solution import rounding_allowance
    >>> spec, _ = parse_layer(np.ones((4, 2, 3, 3)), 8)
    >>> bool(rounding_allowance(spec) == 32 * (9 + 2 + 4) * np.finfo(np.float64).eps)
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..spec import ConvSpec
from ..transfer import FrequencyPlan
from ._operator import ConvOperator

__all__ = ["Solution", "rounding_allowance"]

_EPS = float(np.finfo(np.float64).eps)


@dataclass(frozen=True)
class Solution:
    """The outcome of a solver.

    Attributes:
        value: the operator norm as :func:`convspectra.operator_norm` returns it.
        lower, upper: the certified bracket (rounding allowance included).
        converged: False when the iterative solver stopped at ``max_iter``.
        method: how the bracket was obtained, in words.
        warning: the ``ConvergenceWarning`` text when not converged, else None.
        frequency: wrap-around layers: where the maximum is attained.
        plan: wrap-around layers: the frequency plan of the maximum.
        vector: padded layers: the final Lanczos vector (input space, flat).
        operator: padded layers: the matrix-free operator.
    """

    value: float
    lower: float
    upper: float
    converged: bool
    method: str
    warning: str | None = None
    frequency: np.ndarray | None = None
    plan: FrequencyPlan | None = None
    vector: np.ndarray | None = None
    operator: ConvOperator | None = None


def rounding_allowance(spec: ConvSpec) -> float:
    """The relative floating-point allowance by which both ends of a bracket are widened:
    ``32 (taps + in_channels + out_channels) eps``."""
    return 32 * (math.prod(spec.kernel_size) + spec.in_channels + spec.out_channels) * _EPS
