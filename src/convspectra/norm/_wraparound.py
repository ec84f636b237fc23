"""The norm of a wrap-around layer: exact, with the top singular vector as the certificate.

The value is the branch and bound's exact maximum (:mod:`convspectra.norm._circular`). When a
bracket is asked for, its lower end is :math:`\\|A x\\| / \\|x\\|` for the top singular vector x
pushed through the layer tap by tap (:func:`~convspectra.norm._direct.wrap_matvec`), an independent
check of the value; both ends are widened by the rounding allowance.

Example:
    >>> import numpy as np
    >>> from convspectra.norm._request import resolve_request
    >>> from convspectra.norm._wraparound import solve_wraparound
    >>> solution = solve_wraparound(resolve_request(np.ones((1, 1, 2, 2)), (8, 8)), want_bracket=True)
    >>> solution.value, round(solution.lower, 12), solution.converged
    (4.0, 4.0, True)
"""

from __future__ import annotations

import numpy as np

from .._rescale import scale_up
from ._circular import circular_maximum, circular_plan, larger_part, top_singular_vector
from ._direct import wrap_matvec
from ._request import NormRequest
from ._solution import Solution, rounding_allowance

__all__ = ["solve_wraparound"]


def solve_wraparound(request: NormRequest, *, want_bracket: bool) -> Solution:
    """The exact norm of the wrap-around layer of ``request`` (``mode == "wrap"``).

    Args:
        request: the validated request.
        want_bracket: also push the top singular vector through the operator for the lower end
            (otherwise the lower end is the exact value less the allowance); the vector is then
            the solution's ``vector``.

    Returns:
        The :class:`~convspectra.norm._solution.Solution` (always converged).
    """
    spec = request.spec
    weight = request.working_weight()  # divided by 2**exponent: scaled back below
    allowance = rounding_allowance(spec)
    plan, flat = circular_plan(weight, spec.input_shape, stride=spec.stride, dilation=spec.dilation, groups=spec.groups)
    found = circular_maximum(plan, flat, request.workers)
    lower = found.value
    x = None
    if want_bracket:
        vector = top_singular_vector(plan, flat, found.frequency)
        if not np.iscomplexobj(weight):
            vector = larger_part(vector)
        x = np.reshape(vector, (spec.in_channels, *spec.input_shape))
        image = wrap_matvec(np.asarray(weight), x, stride=spec.stride, dilation=spec.dilation, groups=spec.groups)
        lower = float(np.linalg.norm(image) / np.linalg.norm(vector))
    e = request.exponent
    return Solution(
        float(scale_up(found.value, e)),
        float(scale_up(max(0.0, min(lower, found.value) - allowance * found.value), e)),
        float(scale_up(found.value * (1 + allowance), e)),
        True,
        f"exact: branch and bound over {found.total} frequencies, {found.evaluated} evaluated",
        frequency=found.frequency,
        plan=plan,
        vector=None if x is None else x.ravel(),
    )
