"""The padded norm of a grouped layer: branch and bound over its groups.

A layer with ``groups > 1`` is block diagonal, one block per group, so its norm is the largest of
the groups' norms. Each group's certified bracket costs one small circular problem (the bracket
only mode of :func:`~convspectra.norm._padded.solve_padded`); a group whose upper end is not
above the best lower end found cannot hold the maximum and is never refined. The rest are
refined in decreasing order of their upper ends until none is left above the best value. For a
depthwise layer of random or trained weights that is one or a few groups of one channel each,
instead of one iteration on the whole layer, whose clustered spectrum (every channel's top
values together) is what made it slow.

Example:
    >>> import numpy as np
    >>> from convspectra.norm._groups import solve_grouped
    >>> from convspectra.norm._request import resolve_request
    >>> kernel = np.ones((3, 1, 3, 3)) * np.array([1.0, 2.0, 3.0])[:, None, None, None]
    >>> solution = solve_grouped(resolve_request(kernel, (16, 16), padding=1, groups=3), want_bracket=True)
    >>> round(solution.value, 6), solution.method.startswith("groups: 1 of 3 refined")
    (26.390511, True)
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

from ..spec import ConvSpec
from ._budget import check_request
from ._padded import solve_padded
from ._request import NormRequest
from ._solution import Solution

__all__ = ["group_request", "solve_grouped"]


def group_request(request: NormRequest, group: int) -> NormRequest:
    """The request of one group of ``request``'s layer alone (``groups=1``, the group's channels)."""
    spec = request.spec
    out_per, in_per = spec.out_channels // spec.groups, spec.in_channels // spec.groups
    sub: ConvSpec = dataclasses.replace(spec, out_channels=out_per, in_channels=in_per, groups=1)
    weight = request.weight[group * out_per : (group + 1) * out_per]
    return dataclasses.replace(request, spec=sub, weight=weight, exponent=0)


def _embed(request: NormRequest, group: int, vector: np.ndarray) -> np.ndarray:
    """A group's input vector placed among the layer's input channels (zeros elsewhere), flat."""
    spec = request.spec
    in_per = spec.in_channels // spec.groups
    full = np.zeros((spec.in_channels, math.prod(request.input_shape)), dtype=vector.dtype)
    full[group * in_per : (group + 1) * in_per] = vector.reshape(in_per, -1)
    return full.ravel()


def solve_grouped(request: NormRequest, *, want_bracket: bool) -> Solution:
    """The norm of the grouped padded layer of ``request`` (``mode`` ``"zeros"`` or ``"circular"``).

    The budget is checked once, on the first group's request, before anything is solved (every
    group has the same sizes, and the groups are solved one after another). ``time_limit``
    covers the whole layer: groups left unrefined when it runs out keep their brackets (the
    result is then not converged, and ``warning`` says so).
    """
    spec = request.spec
    deadline = None if request.time_limit is None else time.monotonic() + request.time_limit
    check_request(group_request(request, 0), want_bracket=want_bracket)  # every group has the same sizes
    subs = [group_request(request, g) for g in range(spec.groups)]
    brackets: list[Solution] = []
    top = -1.0
    for sub in subs:
        found = solve_padded(dataclasses.replace(sub, refine=False).at_unit_scale(), want_bracket=False)
        if found.lower <= top:
            found = dataclasses.replace(found, vector=None, operator=None)  # only the best starts are kept
        top = max(top, found.lower)
        brackets.append(found)
    uppers = np.array([b.upper for b in brackets])
    best_group = int(np.argmax([b.lower for b in brackets]))
    best = brackets[best_group]
    if not request.refine:
        method = f"groups: bracket only over {spec.groups} groups (best lower end: group {best_group}); {best.method}"
        vector = _embed(request, best_group, best.vector) if best.vector is not None else None
        return Solution(best.lower, best.lower, float(uppers.max()), False, method, vector=vector)
    refined, converged, warning = 0, True, None
    final_upper = uppers.copy()
    bracket_best = best
    chosen: Solution | None = None
    for g in np.argsort(-uppers, kind="stable"):
        if chosen is not None and uppers[g] <= chosen.value:
            break  # no group left can hold a larger norm
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            converged, warning = False, f"operator_norm: time_limit={request.time_limit:g} s reached over the groups"
            break
        sub = dataclasses.replace(subs[int(g)], time_limit=remaining)
        solution = solve_padded(sub.at_unit_scale(), want_bracket=want_bracket)
        refined += 1
        final_upper[g] = solution.upper
        converged = converged and solution.converged
        warning = warning or solution.warning
        if chosen is None or solution.value > chosen.value:
            chosen, best_group = solution, int(g)
    if chosen is None or chosen.value < bracket_best.lower:  # nothing refined in time: the brackets
        chosen, best_group = bracket_best, int(np.argmax([b.lower for b in brackets]))
        converged = False
    best = chosen
    upper = float(max(final_upper.max(), best.upper))
    method = (
        f"groups: {refined} of {spec.groups} refined, the others bounded by their brackets; "
        f"the largest, group {best_group}: {best.method}"
    )
    if not converged and warning is not None and "the norm lies in" not in warning:
        warning += f"; the norm lies in [{best.lower:.10g}, {upper:.10g}] and the lower end is returned"
    vector = _embed(request, best_group, best.vector) if best.vector is not None else None
    return Solution(best.value, best.lower, upper, converged, method, warning, vector=vector)
