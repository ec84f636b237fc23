r"""The operator norm of a convolution layer: exact, fast, with a certified bracket.

The operator norm (largest singular value, the layer's Lipschitz constant in the l2 norm)

.. math::  \|A\|_2 = \max_{x \ne 0} \|A x\|_2 / \|x\|_2

for the layer as it is actually computed:

* ``padding="circular"`` (default; the paper's wrap-around setting): exact. The maximum over
  frequencies of the transfer matrices' largest singular values, found by branch and bound
  (:mod:`convspectra.norm._circular`): cheap bounds discard whole regions of frequencies that
  cannot hold the maximum, and the rest is computed exactly. No iteration, nothing to converge.
* zero padding, PyTorch-style (an int, a tuple, ``"same"``, ``"valid"``), or ``"module"`` (a
  module's own ``padding``/``padding_mode``; zeros and circular; reflect and replicate are
  refused): restarted Lanczos on :math:`A^H A` with matrix-free products by FFT
  (:class:`ConvOperator`), started from the top singular vector of the
  circular layer on the enlarged grid. The zero-padded layer is a restriction of the circular one
  on a grid of size ``n + p_left + p_right`` (rounded up to a multiple of the stride), whose exact
  norm is therefore a certified upper bound; the Lanczos vector's Rayleigh quotient, computed
  through the operator, is a certified lower bound.

Where things live: the public functions here; the request's validation and normalisation in
``_request``; the exact wrap-around norm in ``_wraparound`` (branch and bound in ``_circular``,
on the per-frequency values of ``_sigma`` and the box-centre expansions of ``_centres``); the
padded norm in ``_padded`` (the restarted Lanczos solver in ``_lanczos``); the matrix-free
operator, public as :class:`ConvOperator`, in ``_operator``; the differentiable torch value in
``_gradient``.

Example:
    >>> import numpy as np, convspectra as cs
    >>> kernel = np.ones((1, 1, 3, 3))
    >>> float(cs.operator_norm(kernel, (16, 16)))                 # wrap-around: the sum of the taps
    9.0
    >>> round(float(cs.operator_norm(kernel, (16, 16), padding=1)), 6)   # zero padding 1
    8.796837
    >>> bounds = cs.operator_norm_bounds(kernel, (16, 16), padding=1)
    >>> round(bounds.lower, 6), round(bounds.upper, 6)              # 9.0 is the wrap-around bound
    (8.796837, 8.797013)
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._backend import is_tensor, loaded_torch
from ..errors import ConvergenceWarning
from ._budget import check_request
from ._gradient import torch_value
from ._groups import solve_grouped
from ._operator import ConvOperator
from ._padded import solve_padded
from ._patches import is_patchwise, solve_patchwise
from ._request import NormRequest, resolve_request
from ._solution import Solution
from ._support import live_request
from ._wraparound import solve_wraparound

__all__ = ["ConvOperator", "NormBounds", "operator_norm", "operator_norm_bounds"]


@dataclass(frozen=True)
class NormBounds:
    """A certified bracket ``lower <= ||A||_2 <= upper`` and the best estimate inside it.

    Attributes:
        lower: ``||A x|| / ||x||`` for an actual vector x pushed through the operator (widened
            by the floating-point rounding allowance).
        upper: a guaranteed upper bound: the exact circular norm (circular padding), or the
            exact circular norm on the enlarged grid that contains the zero-padded layer, or a
            verified banded Cholesky certificate of ``u^2 I - A^H A`` when that is smaller.
        value: the operator norm as :func:`operator_norm` returns it.
        converged: False when the iterative solver stopped at its budget or time limit, or was
            not run (``refine=False``); ``value`` is then only the lower bound.
        method: how the bracket was obtained, in words.
    """

    lower: float
    upper: float
    value: float
    converged: bool
    method: str

    @property
    def gap(self) -> float:
        """``upper - lower``."""
        return self.upper - self.lower

    @property
    def relative_gap(self) -> float:
        """``(upper - lower) / upper`` (0 when both are 0)."""
        return self.gap / self.upper if self.upper > 0 else 0.0


def _pointwise(request: NormRequest) -> bool:
    """A zero-padded layer with one tap, no padding and every output read: the same as its wrap-around layer."""
    spec = request.spec
    return (
        request.mode == "zeros"
        and all(k == 1 for k in spec.kernel_size)
        and all(p == (0, 0) for p in request.padding)
        and spec.output_shape == tuple(n // s for n, s in zip(request.input_shape, spec.stride, strict=True))
        and all(n % s == 0 for n, s in zip(request.input_shape, spec.stride, strict=True))
    )


def _solve(request: NormRequest, *, want_bracket: bool) -> tuple[NormRequest, Solution]:
    """The solver for the request's boundary: exact for wrap-around layers, iterative for padded ones.

    Refused first, allocating nothing, when its estimate exceeds the budget; then solved at unit
    scale (:meth:`NormRequest.at_unit_scale`). Returns the request as solved and the solution.
    """
    if is_patchwise(request):  # non-overlapping windows: one SVD, for zero padding and wrap-around alike
        request = request.at_unit_scale()
        return request, solve_patchwise(request)
    if request.mode == "wrap":
        check_request(request, want_bracket=want_bracket)
        request = request.at_unit_scale()
        return request, solve_wraparound(request, want_bracket=want_bracket)
    if _pointwise(request):
        return _solve(dataclasses.replace(request, mode="wrap"), want_bracket=want_bracket)  # the same layer
    support = live_request(request)  # taps, inputs and outputs that only meet padding: dropped, sizes only
    if support.empty:
        zero = np.zeros(request.spec.in_channels * math.prod(request.input_shape))
        return request, Solution(0.0, 0.0, 0.0, True, "zero: every tap reads only padding", vector=zero)
    live = support.request
    if _pointwise(live):  # one tap left, no padding (ASPP on a small map): the wrap-around layer, exact
        _, solution = _solve(dataclasses.replace(live, mode="wrap"), want_bracket=True)  # the vector for embed
        solution = dataclasses.replace(solution, frequency=None, plan=None)
    elif live.spec.groups > 1:
        solution = solve_grouped(live, want_bracket=want_bracket)  # block diagonal: branch and bound over groups
    else:
        check_request(live, want_bracket=want_bracket)
        solution = solve_padded(live.at_unit_scale(), want_bracket=want_bracket)
    if support.request is not request:
        assert solution.vector is not None
        method = solution.method
        if support.request.spec.kernel_size != request.spec.kernel_size:
            method += f"; on the {'x'.join(map(str, support.request.spec.kernel_size))} taps that meet the input"
        solution = dataclasses.replace(
            solution, vector=support.embed(solution.vector, request), operator=None, method=method
        )
    return request.at_unit_scale(), solution


def operator_norm(
    kernel: Any,
    input_shape: int | Sequence[int],
    *,
    padding: str | int | Sequence[int] = "circular",
    layout: str | None = None,
    stride: int | Sequence[int] | None = None,
    dilation: int | Sequence[int] | None = None,
    groups: int | None = None,
    transposed: bool | None = None,
    rtol: float | None = None,
    max_iter: int | None = None,
    workers: int | None = None,
    max_memory: int | None = None,
    time_limit: float | None = None,
) -> Any:
    r"""The operator norm (largest singular value) of a convolution layer.

    Args:
        kernel: NumPy array, torch tensor (any device) or torch conv module, as in
            :func:`convspectra.singular_values`.
        input_shape: spatial size of the layer's input (int or one per axis).
        padding: ``"circular"`` (wrap-around, exact), ``"module"`` (the module's own padding and
            ``padding_mode``), or PyTorch-style zero padding: an int, one int per axis,
            ``"same"`` or ``"valid"``; or one ``(left, right)`` pair per axis (uneven zero
            padding, as TensorFlow's and JAX's ``"SAME"`` with an even kernel or a stride). For a
            transposed layer, the padding of the ``ConvTranspose`` (its ``output_padding`` is
            read from a module).
        layout, stride, dilation, groups, transposed: as in :func:`convspectra.singular_values`.
        rtol: padded layers only: the Lanczos solver's relative residual target (default 1e-6;
            the norm is then accurate to about ``rtol / 2``).
        max_iter: padded layers only: the most products with :math:`A^H A` (default 3000).
        workers: threads for the per-frequency decompositions (default: every core).
        max_memory: byte budget (default 4 GiB); a larger estimate is refused up front.
        time_limit: padded layers only: seconds after which the iterative solver stops; the
            certified lower end reached so far is returned with a ``ConvergenceWarning`` that
            gives the bracket (default: no limit).

    Returns:
        A NumPy float64 scalar for NumPy input; a 0-d torch tensor on the kernel's device for
        torch input, differentiable with respect to the kernel (the gradient of the largest
        singular value at a maximising frequency or vector; finite also when the top singular
        value is repeated).

    Raises:
        ParameterError, ParameterTypeError: bad input (see :func:`convspectra.singular_values`;
            also bad padding, or an input too small for the kernel).
        MemoryBudgetError: the estimate exceeds ``max_memory``.

    Warns:
        ConvergenceWarning: the iterative solver hit ``max_iter`` or ``time_limit``; the
            certified lower bound is returned and the message gives the bracket.

    Example:
        >>> import numpy as np, convspectra as cs
        >>> rng = np.random.default_rng(0)
        >>> kernel = rng.standard_normal((8, 4, 3, 3))
        >>> exact = cs.operator_norm(kernel, (32, 32))
        >>> bool(abs(exact - cs.singular_values(kernel, (32, 32))[0]) < 1e-12 * exact)
        True
        >>> bool(cs.operator_norm(kernel, (32, 32), padding=1) < exact)
        True
    """
    request = resolve_request(
        kernel,
        input_shape,
        padding=padding,
        layout=layout,
        stride=stride,
        dilation=dilation,
        groups=groups,
        transposed=transposed,
        rtol=rtol,
        max_iter=max_iter,
        workers=workers,
        max_memory=max_memory,
        time_limit=time_limit,
    )
    request, solution = _solve(request, want_bracket=False)
    if solution.warning is not None:
        warnings.warn(solution.warning, ConvergenceWarning, stacklevel=2)
    weight = request.weight
    if is_tensor(weight):
        torch = loaded_torch()
        if (weight.requires_grad and torch.is_grad_enabled()) or weight.device.type != "cpu":
            return torch_value(request, solution)
        single = weight.dtype in (torch.float32, torch.complex64)
        return torch.tensor(solution.value, dtype=torch.float32 if single else torch.float64)
    return np.float64(solution.value)


def operator_norm_bounds(
    kernel: Any,
    input_shape: int | Sequence[int],
    *,
    padding: str | int | Sequence[int] = "circular",
    layout: str | None = None,
    stride: int | Sequence[int] | None = None,
    dilation: int | Sequence[int] | None = None,
    groups: int | None = None,
    transposed: bool | None = None,
    rtol: float | None = None,
    max_iter: int | None = None,
    workers: int | None = None,
    max_memory: int | None = None,
    refine: bool = True,
    time_limit: float | None = None,
) -> NormBounds:
    r"""A certified bracket on the operator norm, and the value :func:`operator_norm` returns.

    Arguments as :func:`operator_norm`. ``lower`` is the norm of the operator applied to an
    actual unit vector (the top singular vector found); ``upper`` is guaranteed: the exact norm
    (circular), or for a padded layer the exact norm of the circular layer on the enlarged grid
    that contains it, or ``value (1 + delta)`` certified by a verified banded Cholesky factorisation
    of ``u^2 I - A^H A`` where that is affordable (see docs/operator_norm.md). Both are widened by a floating-point
    rounding allowance of ``32 (taps + in + out) eps``.

    ``refine=False`` (padded layers) skips the iterative solver: the bracket is then the enlarged
    grid's circular norm above and the circular top singular vector's Rayleigh quotient through
    the padded operator below, ``value`` is the lower end and ``converged`` is False (no warning:
    it was asked for). ``time_limit`` stops the solver after that many seconds with the bracket
    reached (``converged`` False, ``ConvergenceWarning``). Either way ``method`` says which.

    Returns:
        :class:`NormBounds` (Python floats, whatever the kernel's kind).

    Raises:
        ParameterError, ParameterTypeError, MemoryBudgetError: as :func:`operator_norm`.

    Warns:
        ConvergenceWarning: as :func:`operator_norm` (``converged`` is then False).

    Example:
        >>> import numpy as np, convspectra as cs
        >>> b = cs.operator_norm_bounds(np.ones((1, 1, 2, 2)), (8, 8))
        >>> round(b.lower, 9), round(b.upper, 9), b.converged
        (4.0, 4.0, True)
    """
    request = resolve_request(
        kernel,
        input_shape,
        padding=padding,
        layout=layout,
        stride=stride,
        dilation=dilation,
        groups=groups,
        transposed=transposed,
        rtol=rtol,
        max_iter=max_iter,
        workers=workers,
        max_memory=max_memory,
        refine=refine,
        time_limit=time_limit,
    )
    _, solution = _solve(request, want_bracket=True)
    if solution.warning is not None:
        warnings.warn(solution.warning, ConvergenceWarning, stacklevel=2)
    return NormBounds(
        float(solution.lower), float(solution.upper), float(solution.value), solution.converged, solution.method
    )
