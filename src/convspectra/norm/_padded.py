"""The norm of a padded layer: a certified upper bound from a circular layer, then Lanczos.

* Zero padding: the padded layer on an n-grid is a restriction of the circular layer on the
  grid ``n + p_left + p_right`` rounded up to a multiple of the stride (the input is embedded,
  the valid outputs selected), so that layer's exact norm is a certified upper bound, and its
  top singular vector, cropped to the input, is the start of the iteration.
* Circular ``padding_mode`` whose outputs do not tile the input: the outputs are rows of the
  stride-1 wrap-around layer, some repeated; its norm times the square root of the most
  repetitions bounds the norm from above.

The start vector's Rayleigh quotient, computed through the padded layer tap by tap
(:class:`~convspectra.norm.ConvOperator`), is a certified lower bound; when it already meets the
upper bound to ``rtol`` (large maps, where the two layers differ by little), that is the answer.
Otherwise restarted Lanczos on :math:`A^H A` (:mod:`convspectra.norm._lanczos`, a basis bounded
by the memory budget; a first run with the layer in single precision, checked and if need be
finished with the exact one) converges to the norm; its value, an actual Rayleigh quotient, is
the certified lower bound. Then, where the bracket is
still wider than ``TIGHT_GAP`` and the band fits (:mod:`convspectra.norm._cholesky`), a verified
banded Cholesky factorisation of :math:`u^2 I - A^H A` certifies ``u = value (1 + delta)``.

Example:
    >>> import numpy as np
    >>> from convspectra.norm._padded import solve_padded
    >>> from convspectra.norm._request import resolve_request
    >>> solution = solve_padded(resolve_request(np.ones((1, 1, 3, 3)), (16, 16), padding=1))
    >>> round(solution.value, 6), round(solution.upper, 6), solution.converged   # upper: verified Cholesky
    (8.796837, 8.797013, True)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

from .._rescale import scale_up
from .._threads import limit_threads
from ._budget import lanczos_basis, padded_bytes, wrap_spec
from ._cholesky import affordable, certify_upper, cheaper_plan
from ._circular import circular_maximum, circular_plan, larger_part, top_singular_vector
from ._lanczos import largest_singular_value
from ._operator import ConvOperator
from ._request import NormRequest
from ._solution import Solution, rounding_allowance

__all__ = ["CERTIFY_MARGINS", "TIGHT_GAP", "solve_padded"]

#: The relative bracket above which a verified Cholesky certificate is attempted (when affordable).
TIGHT_GAP = 5e-5
#: The margins ``delta`` tried in turn: ``u = value (1 + delta)`` is certified by the first that holds.
CERTIFY_MARGINS = (2e-5, 3e-4, 3e-3)


def _certificate(request: NormRequest, weight: np.ndarray) -> tuple[float, str, np.ndarray]:
    """``(upper bound, its name, start vector)`` from the circular layer that contains the padded one."""
    spec = request.spec
    if request.mode == "zeros":
        grid = request.enlarged_grid()
        plan, flat = circular_plan(weight, grid, stride=spec.stride, dilation=spec.dilation, groups=spec.groups)
        found = circular_maximum(plan, flat, request.workers)
        upper, where = found.value, f"circular norm on the enlarged {'x'.join(map(str, grid))} grid"
        start_full = top_singular_vector(plan, flat, found.frequency)
        crop = tuple(slice(pl, pl + n) for (pl, _), n in zip(request.padding, request.input_shape, strict=True))
        window = (slice(None), *crop)
        start = start_full[window] * _envelope(request.input_shape)
    else:  # circular padding whose outputs do not tile the input: rows of the stride-1 layer, repeated
        one = wrap_spec(spec, spec.input_shape, (1,) * spec.ndim)  # the same layer without stride
        plan, flat = circular_plan(
            weight, request.input_shape, stride=one.stride, dilation=one.dilation, groups=one.groups
        )
        found = circular_maximum(plan, flat, request.workers)
        repeats = math.prod(
            -(-m * s // n) if m * s > n else 1
            for m, s, n in zip(spec.output_shape, spec.stride, request.input_shape, strict=True)
        )
        upper, where = found.value * math.sqrt(repeats), "stride-1 circular norm x sqrt(row repetitions)"
        start = top_singular_vector(plan, flat, found.frequency)
    return upper, where, start


def _envelope(shape: tuple[int, ...]) -> np.ndarray:
    """``prod_a sin(pi (i_a + 1) / (n_a + 1))``: the lowest Dirichlet mode of the input grid.

    The zero-padded layer's top singular vector is close to the circular one (a plane wave at the
    maximising frequency) times a smooth envelope that vanishes beyond the border, the ground state
    of the symbol's quadratic approximation there; the cropped plane wave alone (a flat envelope)
    overlaps every mode of the clustered top of the spectrum, this one mostly the top mode.
    """
    envelope = np.ones(shape)
    for axis, n in enumerate(shape):
        profile = np.sin(np.pi * np.arange(1, n + 1) / (n + 1))
        envelope = envelope * profile.reshape((n,) + (1,) * (len(shape) - axis - 1))
    return envelope


def _tighten(request: NormRequest, weight: np.ndarray, value: float, upper: float) -> tuple[float, str] | None:
    """A verified Cholesky certificate below ``upper`` (``(bound, its name)``), or None when it is not
    affordable or does not hold at any margin."""
    if request.mode != "zeros" or value <= 0:
        return None
    plan = cheaper_plan(request)
    spare = request.max_memory - padded_bytes(request)
    if not affordable(request, plan, spare):
        return None
    for delta in CERTIFY_MARGINS:
        u = value * (1 + delta)
        if u >= upper:
            return None
        bound = certify_upper(request, weight, u, plan)
        if bound is not None:
            side = "A^H A" if plan.side == "input" else "A A^H"
            return bound, f"verified banded Cholesky of u^2 I - {side} (N={plan.size}, bandwidth {plan.bandwidth})"
    return None


def _single_precision_gram(op: ConvOperator) -> Callable[[np.ndarray], np.ndarray]:
    """``v -> A^H A v`` through the layer in single precision (twice as fast, good to a few 1e-7), for
    the Lanczos solver's first run; its answer is checked with ``op`` itself."""
    single = op.single()

    def gram(v: np.ndarray) -> np.ndarray:
        return single.rmatvec(single.matvec(v.astype(single.dtype))).ravel().astype(op.dtype)

    return gram


def solve_padded(request: NormRequest, *, want_bracket: bool = True) -> Solution:
    """The norm of the padded layer of ``request`` (``mode`` ``"zeros"`` or ``"circular"``).

    Args:
        request: the validated request.
        want_bracket: tighten the upper end by the Cholesky certificate where affordable (off
            for :func:`convspectra.operator_norm`, which returns the value only).

    Returns:
        The :class:`~convspectra.norm._solution.Solution`; when the solver reached ``max_iter``
        or ``time_limit`` first, ``converged`` is False, the value is the certified lower bound
        and ``warning`` gives the bracket.

    The memory estimate is checked by the caller (:func:`convspectra.norm._budget.check_request`).
    """
    spec = request.spec
    weight = request.working_weight()  # divided by 2**exponent: scaled back below
    allowance = rounding_allowance(spec)
    op = ConvOperator.create(
        weight,
        input_shape=request.input_shape,
        padding=request.padding,
        mode=request.mode,
        stride=spec.stride,
        dilation=spec.dilation,
        groups=spec.groups,
    )
    upper, where, start = _certificate(request, weight)
    if not np.iscomplexobj(weight):
        start = larger_part(start)
    e = request.exponent
    start = np.ascontiguousarray(start).ravel()
    start = start / max(float(np.linalg.norm(start)), 1e-300)
    with limit_threads(request.workers):
        quotient = float(np.linalg.norm(op.matvec(start)))
    if not request.refine:  # the bracket only: the circular vector's Rayleigh quotient below
        upper_scaled = max(upper, quotient) * (1 + allowance)
        lower_scaled = max(0.0, quotient - allowance * upper_scaled)
        lower = float(scale_up(lower_scaled, e))
        method = f"bracket only (not refined): the circular top vector's Rayleigh quotient and the {where}"
        return Solution(lower, lower, float(scale_up(upper_scaled, e)), False, method, vector=start, operator=op)
    deadline = None if request.time_limit is None else time.monotonic() + request.time_limit
    if 0 <= upper - quotient <= request.rtol * upper:  # the cheapest certificate: the bracket has closed already
        value, vector, converged, residual, timed_out = quotient, start, True, 0.0, False
        how = "the circular top vector's Rayleigh quotient (no iteration needed)"
    else:
        rng = np.random.default_rng(0)  # a little of every direction, reproducibly
        noise = rng.standard_normal(start.shape)
        begin = start + 1e-3 * noise / np.linalg.norm(noise)
        result = largest_singular_value(
            lambda v: op.matvec(v).ravel(),
            lambda v: op.rmatvec(v).ravel(),
            begin,
            rtol=request.rtol,
            max_iter=request.max_iter,
            basis=lanczos_basis(request),
            deadline=deadline,
            target=upper,
            threads=request.workers,
            fast=_single_precision_gram(op),
        )
        value, vector, converged = result.value, result.vector, result.converged
        residual, timed_out = result.residual, result.timed_out
        if quotient > value:  # the start was better than where the iteration stopped
            value, vector = quotient, start
        how = f"Lanczos ({result.iterations} products with A^H A, {result.fast_iterations} of them in single precision)"
    out_of_time = deadline is not None and time.monotonic() >= deadline
    if want_bracket and converged and not out_of_time and (upper - value) > TIGHT_GAP * upper:
        tight = _tighten(request, weight, value, upper)
        if tight is not None:
            upper, where = tight
    upper_scaled = max(upper, value) * (1 + allowance)
    upper_out = float(scale_up(upper_scaled, e))
    lower = float(scale_up(max(0.0, value - allowance * upper_scaled), e))
    method = f"{how} between the Rayleigh quotient and the {where}"
    warning = None
    if not converged:
        limit = f"time_limit={request.time_limit:g} s" if timed_out else f"max_iter={request.max_iter}"
        method += f"; stopped at {limit}"
        warning = (
            f"operator_norm: the Lanczos solver did not reach rtol={request.rtol:g} within "
            f"{limit} (relative residual {residual:.2e}); the norm lies in "
            f"[{lower:.10g}, {upper_out:.10g}] and the lower end is returned. Raise max_iter, time_limit or rtol."
        )
    value_out = float(scale_up(value, e))
    return Solution(value_out, lower, upper_out, converged, method, warning, vector=vector, operator=op)
