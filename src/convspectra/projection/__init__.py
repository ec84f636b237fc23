r"""Projection of a convolution layer onto an operator-norm ball (or a singular-value band).

The layer is the wrap-around (circular) operator of :func:`convspectra.singular_values`. With
the kernel folded onto the input grid (tap ``t`` at offset ``dilation * t mod n``, colliding taps
summed) into ``K``, the map from ``K`` to the layer's matrix ``A(K)`` is, up to the constant
factor ``sqrt(prod(output_shape))``, an isometry for the Frobenius norm, and ``A(K)`` is block
diagonal in Fourier coordinates with the per-frequency transfer matrices ``T(g)`` (see
:mod:`convspectra.transfer`; with stride the ``s^d`` aliased input frequencies of ``g`` are
regrouped, one to one, into ``T(g)``). Hence (Sedghi, Gupta & Long 2019, Proposition 12)

.. math:: \Pi_{\{\|A\|_2 \le c\}}(K) = \mathcal F^{-1}\big[\, U(g)\,\min(\Sigma(g), c)\,V(g)^H \,\big],
          \qquad T(g) = U(g)\,\Sigma(g)\,V(g)^H,

the Frobenius-nearest kernel on the whole grid whose operator norm is at most ``c``. It may use
offsets outside the kernel's own support (its ``k_1 x ... x k_d`` taps, dilated); the projection
onto kernels with that support keeps the support's coefficients and zeroes the rest. One
*iteration* here is the two projections in turn; repeating them is alternating projections
(Cheney & Goldstein 1959), which converges to a point of the intersection; Dykstra's algorithm
(Boyle & Dykstra 1986) converges to the Frobenius-nearest point of the intersection. Both sets
are convex for ``{sigma_max <= c}``. With ``min_norm`` the per-frequency step clips the singular
values into ``[min_norm, max_norm]`` (still the nearest point per frequency), but
``{sigma_min >= min_norm}`` is not convex: the iterations are then a heuristic without the
convergence guarantees.

Kernels larger than the input (or dilated past it) have taps that land on the same offset
modulo ``n``: the operator only sees their sum. The projection is computed for the folded kernel
(so "nearest" is measured on the operator), and the change at each offset is split equally
between the taps that share it, the smallest change of the taps that realises the projected
operator. When no taps collide this is the ordinary Frobenius projection of the kernel.

How it is fast: only one frequency of each conjugate pair (real kernels), the forward and the
support-restricted inverse transforms are one matrix product each with a table of phases on the
support (no full-grid FFT), layers of the same shape are batched, frequencies whose transfer
matrix has Frobenius norm at most ``max_norm`` are skipped (their singular values cannot exceed
it), and the clip uses the eigendecomposition of the smaller Gram matrix ``T T^H`` (complex128):
``T' = T - V diag(1 - min(1, c/sigma)) V^H T``. The two-sided band uses the SVD, which stays
accurate for small singular values.

The package, by idea: :mod:`~convspectra.projection._tables` (one layer shape's plan, support,
phase tables and the two transforms), :mod:`~convspectra.projection._clip` (the per-frequency
clip), :mod:`~convspectra.projection._items` (a user's kernel to working taps and back),
:mod:`~convspectra.projection._loop` (batching by shape and the iterations) and
:mod:`~convspectra.projection._report` (:class:`ProjectionReport`); this module is the public API.

Example:
    >>> import numpy as np, convspectra as cs
    >>> kernel = np.ones((1, 1, 2, 2))                       # operator norm 4 on a 4x4 input
    >>> clipped = cs.clip_operator_norm(kernel, 4, 2.0, iterations=50)
    >>> clipped.shape, round(float(cs.singular_values(clipped, 4)[0]), 3)
    ((1, 1, 2, 2), 2.0)

References:
    H. Sedghi, V. Gupta, P. M. Long. The Singular Values of Convolutional Layers. ICLR 2019.
    W. Cheney, A. A. Goldstein. Proximity maps for convex sets. Proc. AMS 10(3), 1959.
    J. P. Boyle, R. L. Dykstra. A method for finding projections onto the intersection of convex
    sets in Hilbert spaces. Lecture Notes in Statistics 37, 1986.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .._checks import describe, norm_bounds
from .._memory import resolve_budget
from ..errors import ParameterError, ParameterTypeError
from ._budget import check_projection
from ._items import Item, parse_item, prepare
from ._loop import METHODS, Options, run
from ._report import ProjectionReport

__all__ = ["METHODS", "ProjectionReport", "clip_operator_norm", "clip_operator_norm_many", "clip_operator_norm_report"]


def _project_one(
    kernel: Any,
    input_shape: Any,
    max_norm: Any,
    min_norm: Any,
    layer: dict[str, Any],
    options: Options,
    max_memory: Any,
) -> Item:
    high, low = norm_bounds(max_norm, min_norm)
    budget = resolve_budget(max_memory)
    parsed = parse_item(kernel, input_shape, layer)
    check_projection([(parsed[0], parsed[2], low is not None)], options.workers, budget)
    item = prepare(kernel, input_shape, high, low, layer, options.backend, parsed)
    run([item], options)
    return item


def clip_operator_norm(
    kernel: Any,
    input_shape: int | Sequence[int],
    max_norm: float,
    *,
    min_norm: float | None = None,
    iterations: int = 1,
    method: str = "alternating",
    layout: str | None = None,
    stride: int | Sequence[int] | None = None,
    dilation: int | Sequence[int] | None = None,
    groups: int | None = None,
    transposed: bool | None = None,
    workers: int | None = None,
    backend: str = "auto",
    max_memory: int | None = None,
) -> Any:
    r"""Project a convolution kernel towards ``{K : ||A(K)||_2 <= max_norm}`` with its own support.

    ``A(K)`` is the layer's wrap-around operator (as in :func:`convspectra.singular_values`).
    One iteration is

    .. math:: K \leftarrow P_{\mathrm{supp}}\Big(\arg\min_{\|A(J)\|_2 \le c} \|J - K\|_F\Big),

    the clip of every frequency's transfer-matrix singular values at ``c`` (Proposition 12 of
    Sedghi et al.; exact with stride, dilation, groups, 1-3 spatial dimensions and transposed
    layers), followed by zeroing the coefficients outside the kernel's support. ``method``
    ``"alternating"`` repeats this (and stops early at a round that changes nothing);
    ``"dykstra"`` adds Dykstra's correction, whose iterates converge to
    ``argmin { ||J - K||_F : ||A(J)||_2 <= c, supp J within supp K }``. With ``min_norm`` the
    singular values are clipped into ``[min_norm, max_norm]`` (that set is not convex: no
    convergence guarantee). When the support covers the whole input grid one iteration is the
    exact nearest operator ``U min(S, c) V^T``. A kernel that already satisfies the constraint
    comes back unchanged (a copy). Taps that collide modulo the input size (kernel larger than the
    input, large dilation): see the module docstring.

    Args:
        kernel: NumPy array, ``torch.Tensor`` (any device) or ``torch.nn.Conv*d`` /
            ``ConvTranspose*d`` module (its stride, dilation, groups and kind are used; the
            module is not modified, a new weight tensor is returned).
        input_shape: spatial size of the layer's input (int or one per axis).
        max_norm: the bound ``c > 0`` on the operator norm.
        min_norm: optional lower bound on every singular value (``0 <= min_norm <= max_norm``).
        iterations: number of rounds (clip + support restriction), at least 1.
        method: ``"alternating"`` or ``"dykstra"``.
        layout, stride, dilation, groups, transposed: as in :func:`convspectra.singular_values`.
        workers: threads for the NumPy path (default: every core when ``threadpoolctl`` is
            installed, else 1); BLAS runs single-threaded inside them.
        backend: where the computation runs. ``"auto"``: NumPy/LAPACK for NumPy input and CPU
            tensors, torch operations on the tensor's device for tensors on other devices (GPU).
            ``"torch"``: torch operations wherever the tensor is (a NumPy kernel is computed on
            the CPU with torch), e.g. to run the accelerator code path on a CPU. ``"numpy"``:
            always NumPy/LAPACK; a tensor on another device is copied to the CPU and the result
            copied back. The result's kind, device and dtype do not depend on the backend.
        max_memory: byte budget (default 4 GiB); a larger estimate is refused before anything
            is copied.

    Returns:
        The projected kernel, same shape and layout; NumPy for NumPy input, a torch tensor on the
        kernel's device for torch input (not requiring grad). The dtype is the input's
        (integer kernels give float64); the computation runs in float64/complex128.

    Raises:
        ParameterError: ``max_norm <= 0``, ``min_norm`` outside ``[0, max_norm]``,
            ``iterations < 1``, an unknown method or backend, or a bad layer description.
        ParameterTypeError: non-numeric bounds, non-integer iterations, unsupported kernel type.
        MemoryBudgetError: the estimate exceeds ``max_memory``.

    Example:
        >>> import numpy as np, convspectra as cs
        >>> rng = np.random.default_rng(0)
        >>> kernel = rng.normal(size=(8, 4, 3, 3))
        >>> float(cs.singular_values(kernel, 8)[0]) > 1.0
        True
        >>> clipped = cs.clip_operator_norm(kernel, 8, 1.0, iterations=100)
        >>> bool(cs.singular_values(clipped, 8)[0] <= 1.0 + 1e-3)
        True
        >>> inside = cs.clip_operator_norm(kernel / 100, 8, 1.0)   # already in the ball
        >>> bool(np.array_equal(inside, kernel / 100))
        True
        >>> on_torch = cs.clip_operator_norm(kernel, 8, 1.0, iterations=100, backend="torch")
        >>> bool(np.allclose(on_torch, clipped, rtol=0, atol=1e-12))
        True

    References:
        H. Sedghi, V. Gupta, P. M. Long. The Singular Values of Convolutional Layers. ICLR 2019.
    """
    options = Options.create(method=method, iterations=iterations, workers=workers, backend=backend, report=False)
    layer = {"layout": layout, "stride": stride, "dilation": dilation, "groups": groups, "transposed": transposed}
    return _project_one(kernel, input_shape, max_norm, min_norm, layer, options, max_memory).result


def clip_operator_norm_report(
    kernel: Any,
    input_shape: int | Sequence[int],
    max_norm: float,
    *,
    min_norm: float | None = None,
    iterations: int = 1,
    method: str = "alternating",
    layout: str | None = None,
    stride: int | Sequence[int] | None = None,
    dilation: int | Sequence[int] | None = None,
    groups: int | None = None,
    transposed: bool | None = None,
    workers: int | None = None,
    backend: str = "auto",
    max_memory: int | None = None,
) -> tuple[Any, ProjectionReport]:
    """:func:`clip_operator_norm` plus diagnostics: ``(kernel, ProjectionReport)``.

    The report costs two extra spectrum evaluations (before and after) and is not needed for
    the projection itself. Arguments as :func:`clip_operator_norm`.

    Returns:
        ``(kernel, report)``: the kernel as :func:`clip_operator_norm` returns it, and its
        :class:`ProjectionReport`.

    Raises:
        ParameterError, ParameterTypeError, MemoryBudgetError: as :func:`clip_operator_norm`.

    Example:
        >>> import numpy as np, convspectra as cs
        >>> kernel, report = cs.clip_operator_norm_report(np.ones((1, 1, 2, 2)), 2, 1.0)
        >>> round(report.sigma_max_before, 6), round(report.sigma_max_after, 6), report.iterations
        (4.0, 1.0, 1)
        >>> report.support_changed      # a 2x2 kernel on a 2x2 input: the support is everything
        False
    """
    options = Options.create(method=method, iterations=iterations, workers=workers, backend=backend, report=True)
    layer = {"layout": layout, "stride": stride, "dilation": dilation, "groups": groups, "transposed": transposed}
    item = _project_one(kernel, input_shape, max_norm, min_norm, layer, options, max_memory)
    assert item.report is not None
    return item.result, item.report


def _per_kernel(name: str, value: Any, count: int) -> list[Any]:
    """The rule of :func:`clip_operator_norm_many`: a ``list`` gives one value per kernel, anything else one for all."""
    if isinstance(value, list):
        if len(value) != count:
            raise ParameterError(
                f"{name}: expected one value per kernel when given a list ({count} kernels), "
                f"got a list of length {len(value)}"
            )
        return value
    if name in ("max_norm", "min_norm") and (
        isinstance(value, tuple) or (isinstance(value, np.ndarray) and value.ndim)
    ):
        raise ParameterTypeError(
            f"{name}: expected a number (one bound for all kernels), got {value!r} ({describe(value)}); "
            "a list gives one bound per kernel"
        )
    return [value] * count


def clip_operator_norm_many(
    kernels: Sequence[Any],
    input_shapes: Any,
    max_norm: float | list[float],
    *,
    min_norm: float | list[float | None] | None = None,
    iterations: int = 1,
    method: str = "alternating",
    layout: str | list[str | None] | None = None,
    stride: Any = None,
    dilation: Any = None,
    groups: int | list[int | None] | None = None,
    transposed: bool | list[bool | None] | None = None,
    workers: int | None = None,
    backend: str = "auto",
    max_memory: int | None = None,
) -> list[Any]:
    """:func:`clip_operator_norm` of many kernels at once; layers of equal shape are batched.

    The result equals ``[clip_operator_norm(k, n, c, ...) for k, n, c in zip(...)]`` (to
    rounding) but shares the phase tables and the batched eigendecompositions among layers of
    the same shape, which is what makes a whole-network projection round cheap.

    One rule for every per-kernel argument (``input_shapes``, ``max_norm``, ``min_norm``,
    ``layout``, ``stride``, ``dilation``, ``groups``, ``transposed``): a ``list`` gives one value
    per kernel; any other value (an int, a tuple, a string, a float, None) is one value for all
    kernels. So ``input_shapes=(32, 32)`` is a 32x32 input for every kernel and
    ``input_shapes=[32, 16]`` is 32 for the first kernel and 16 for the second;
    ``stride=(2, 1)`` is one per-axis stride for all, ``stride=[2, 1]`` one stride per kernel.

    Args:
        kernels: a list (or tuple) of kernels or conv modules (a mix of kinds is fine).
        input_shapes: the input size of every kernel (an int or a tuple of one int per axis), or a
            list with one such size per kernel.
        max_norm: one bound for all, or a list with one bound per kernel.
        min_norm: None, one lower bound for all, or a list with one per kernel (entries may be None).
        layout, stride, dilation, groups, transposed: one value for all kernels, or a list with one
            value per kernel (as in :func:`clip_operator_norm`).
        iterations, method, workers, backend, max_memory: as :func:`clip_operator_norm` (shared; the
            budget is for the whole call, checked before any kernel is copied).

    Returns:
        A list of projected kernels, in order, each as :func:`clip_operator_norm` returns it.

    Raises:
        ParameterError: a list whose length is not the number of kernels (the message names the
            parameter and both counts), or any error of :func:`clip_operator_norm`.
        ParameterTypeError: ``kernels`` not a sequence, a tuple or array given as ``max_norm`` or
            ``min_norm`` (a list gives one bound per kernel), or any error of :func:`clip_operator_norm`.
        MemoryBudgetError: the estimate for all the kernels exceeds ``max_memory``.

    Example:
        >>> import numpy as np, convspectra as cs
        >>> rng = np.random.default_rng(1)
        >>> kernels = [rng.normal(size=(4, 4, 3, 3)) for _ in range(3)]
        >>> out = cs.clip_operator_norm_many(kernels, [8, 8, 6], 1.0)      # a list: one size per kernel
        >>> one = cs.clip_operator_norm(kernels[2], 6, 1.0)
        >>> bool(np.allclose(out[2], one, rtol=0, atol=1e-12))
        True
        >>> same = cs.clip_operator_norm_many(kernels, (8, 6), 1.0)        # a tuple: 8x6 for every kernel
        >>> bool(np.allclose(same[0], cs.clip_operator_norm(kernels[0], (8, 6), 1.0), rtol=0, atol=1e-12))
        True
    """
    if isinstance(kernels, (str, bytes)) or not isinstance(kernels, Sequence):
        raise ParameterTypeError(f"kernels: expected a list of kernels, got {describe(kernels)}")
    count = len(kernels)
    options = Options.create(method=method, iterations=iterations, workers=workers, backend=backend, report=False)
    given = {
        "input_shapes": input_shapes,
        "max_norm": max_norm,
        "min_norm": min_norm,
        "layout": layout,
        "stride": stride,
        "dilation": dilation,
        "groups": groups,
        "transposed": transposed,
    }
    values = {name: _per_kernel(name, value, count) for name, value in given.items()}
    budget = resolve_budget(max_memory)
    described = []
    for index, kernel in enumerate(kernels):
        high, low = norm_bounds(values["max_norm"][index], values["min_norm"][index])
        layer = {name: values[name][index] for name in ("layout", "stride", "dilation", "groups", "transposed")}
        described.append((kernel, high, low, layer, parse_item(kernel, values["input_shapes"][index], layer)))
    layers = [(parsed[0], parsed[2], low is not None) for _, _, low, _, parsed in described]
    check_projection(layers, options.workers, budget)
    items = [
        prepare(kernel, values["input_shapes"][index], high, low, layer, options.backend, parsed)
        for index, (kernel, high, low, layer, parsed) in enumerate(described)
    ]
    run(items, options)
    return [item.result for item in items]
