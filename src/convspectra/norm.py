r"""The operator norm of a convolution layer: exact, fast, with a certified bracket.

The operator norm (largest singular value, the layer's Lipschitz constant in the l2 norm)

.. math::  \|A\|_2 = \max_{x \ne 0} \|A x\|_2 / \|x\|_2

for the layer as it is actually computed:

* ``padding="circular"`` (default; the paper's wrap-around setting): exact. The maximum over
  frequencies of the transfer matrices' largest singular values, found by branch and bound
  (:mod:`convspectra._maximum`): cheap bounds discard whole regions of frequencies that cannot
  hold the maximum, and the rest is computed exactly. No iteration, nothing to converge.
* zero padding, PyTorch-style (an int, a tuple, ``"same"``, ``"valid"``), or ``"module"`` (a
  module's own ``padding``/``padding_mode``; zeros and circular; reflect and replicate are
  refused): restarted Lanczos on :math:`A^H A` with matrix-free products by FFT
  (:class:`~convspectra.conv_operator.ConvOperator`), started from the top singular vector of the
  circular layer on the enlarged grid. The zero-padded layer is a restriction of the circular one
  on a grid of size ``n + p_left + p_right`` (rounded up to a multiple of the stride), whose exact
  norm is therefore a certified upper bound; the Lanczos vector's Rayleigh quotient, computed
  through the operator, is a certified lower bound.

Example:
    >>> import numpy as np, convspectra as cs
    >>> kernel = np.ones((1, 1, 3, 3))
    >>> float(cs.operator_norm(kernel, (16, 16)))                 # wrap-around: the sum of the taps
    9.0
    >>> round(float(cs.operator_norm(kernel, (16, 16), padding=1)), 6)   # zero padding 1
    8.796837
    >>> bounds = cs.operator_norm_bounds(kernel, (16, 16), padding=1)
    >>> round(bounds.lower, 6), round(bounds.upper, 6)
    (8.796837, 9.0)
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._checks import as_tuple
from ._lanczos import largest_singular_value
from ._maximum import circular_maximum, top_singular_vector
from ._threads import resolve_workers
from .conv_operator import ConvOperator
from .errors import ConvergenceWarning, MemoryBudgetError, ParameterError, ParameterTypeError
from .spec import ConvSpec, parse_layer
from .transfer import FrequencyPlan, flat_weight

__all__ = ["NormBounds", "operator_norm", "operator_norm_bounds"]

_DEFAULT_RTOL = 1e-6
_DEFAULT_MAX_ITER = 3000
_DEFAULT_BUDGET = 4 * 2**30
_EPS = float(np.finfo(np.float64).eps)


@dataclass(frozen=True)
class NormBounds:
    """A certified bracket ``lower <= ||A||_2 <= upper`` and the best estimate inside it.

    Attributes:
        lower: ``||A x|| / ||x||`` for an actual vector x pushed through the operator (widened
            by the floating-point rounding allowance).
        upper: a guaranteed upper bound: the exact circular norm (circular padding), or the
            exact circular norm on the enlarged grid that contains the zero-padded layer, or
            Proposition 11's bound when that is smaller.
        value: the operator norm as :func:`operator_norm` returns it.
        converged: False when the iterative solver stopped at its budget (``value`` is then
            only the lower bound).
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


@dataclass(frozen=True)
class _Layer:
    """A parsed request: the forward convolution, its boundary handling, the user's kernel kind."""

    spec: ConvSpec
    weight: Any  # forward weight, NumPy or torch (as given)
    mode: str  # "wrap", "zeros" or "circular"
    input_shape: tuple[int, ...]  # forward input n
    padding: tuple[tuple[int, int], ...]


def _is_torch(obj: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


def _pairs_from(padding: Any, spec: ConvSpec, *, what: str = "padding") -> tuple[tuple[int, int], ...]:
    d = spec.ndim
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * d
        if padding == "same":
            if any(s != 1 for s in spec.stride):
                raise ParameterError(
                    f"{what}: 'same' needs stride 1 (as in PyTorch), got stride {spec.stride}; pass explicit padding"
                )
            totals = [dl * (k - 1) for dl, k in zip(spec.dilation, spec.kernel_size, strict=True)]
            return tuple((t // 2, t - t // 2) for t in totals)
        raise ParameterError(
            f"{what}: expected 'circular', 'module', 'same', 'valid', an int or one int per spatial axis, "
            f"got {padding!r}"
        )
    return tuple((p, p) for p in as_tuple(what, padding, d, minimum=0))


def _resolve(
    kernel: Any,
    input_shape: Any,
    padding: Any,
    layout: str,
    stride: Any,
    dilation: Any,
    groups: Any,
    transposed: Any,
) -> _Layer:
    if isinstance(padding, str) and padding == "circular":
        spec, weight = parse_layer(
            kernel, input_shape, layout=layout, stride=stride, dilation=dilation, groups=groups, transposed=transposed
        )
        return _Layer(spec, weight, "wrap", spec.input_shape, ((0, 0),) * spec.ndim)
    spec0, weight = parse_layer(
        kernel, None, layout=layout, stride=stride, dilation=dilation, groups=groups, transposed=transposed
    )
    d = spec0.ndim
    n_user = as_tuple("input_shape", input_shape, d)
    torch = sys.modules.get("torch")
    is_module = torch is not None and isinstance(kernel, torch.nn.Module)
    mode, output_padding = "zeros", (0,) * d
    if isinstance(padding, str) and padding == "module":
        if not is_module:
            raise ParameterError(
                "padding: 'module' reads a torch conv module's own padding, but the kernel is "
                f"{type(kernel).__name__}; pass the padding explicitly"
            )
        padding_mode = getattr(kernel, "padding_mode", "zeros")
        if padding_mode not in ("zeros", "circular"):
            raise ParameterError(
                f"padding: the module's padding_mode is {padding_mode!r}; expected 'zeros' or 'circular' "
                "(reflect and replicate padding are not linear maps of the input alone with a fixed kernel layout "
                "supported here)"
            )
        mode = padding_mode
        pairs = _pairs_from(kernel.padding, spec0, what="padding (from the module)")
        if spec0.transposed:
            output_padding = tuple(int(v) for v in kernel.output_padding)
    else:
        if isinstance(padding, bool) or padding is None:
            raise ParameterTypeError(
                f"padding: expected 'circular', 'module', 'same', 'valid', an int or a tuple of ints, got {padding!r}"
            )
        pairs = _pairs_from(padding, spec0)
    k, s, dl = spec0.kernel_size, spec0.stride, spec0.dilation
    if spec0.transposed:
        if mode != "zeros":
            raise ParameterError(f"padding: transposed convolutions support only zero padding, got mode {mode!r}")
        n = tuple(
            (nt - 1) * si - pl - pr + di * (ki - 1) + op + 1
            for nt, si, (pl, pr), di, ki, op in zip(n_user, s, pairs, dl, k, output_padding, strict=True)
        )
        if min(n) < 1:
            raise ParameterError(
                f"input_shape: the transposed layer's output would be {n} for input {n_user} and padding {pairs}; "
                "expected a positive size"
            )
    else:
        n = n_user
    m = tuple(
        (ni + pl + pr - di * (ki - 1) - 1) // si + 1
        for ni, (pl, pr), di, ki, si in zip(n, pairs, dl, k, s, strict=True)
    )
    if min(m) < 1:
        raise ParameterError(
            f"input_shape: expected an input at least as large as the dilated kernel minus the padding "
            f"(kernel {k}, dilation {dl}, padding {pairs}), got {n}: the output would be empty"
        )
    if mode == "circular":
        if any(max(pair) > ni for pair, ni in zip(pairs, n, strict=True)):
            raise ParameterError(f"padding: circular padding {pairs} larger than the input {n} (PyTorch refuses it)")
        if all(mi * si == ni for mi, si, ni in zip(m, s, n, strict=True)):  # a shifted wrap-around layer
            spec, weight = parse_layer(weight, n, stride=s, dilation=dl, groups=spec0.groups)
            return _Layer(spec, weight, "wrap", n, pairs)
    spec = ConvSpec(
        ndim=d,
        out_channels=spec0.out_channels,
        in_channels=spec0.in_channels,
        groups=spec0.groups,
        kernel_size=k,
        stride=s,
        dilation=dl,
        input_shape=n,
        output_shape=m,
        transposed=spec0.transposed,
    )
    return _Layer(spec, weight, mode, n, pairs)


def _numpy_weight(weight: Any) -> np.ndarray:
    array = weight.detach().cpu().numpy() if _is_torch(weight) else np.asarray(weight)
    return array.astype(np.complex128 if np.iscomplexobj(array) else np.float64, copy=False)


def _circular_plan(weight: np.ndarray, input_shape: Sequence[int], spec: ConvSpec) -> tuple[FrequencyPlan, np.ndarray]:
    grid_spec, forward = parse_layer(
        weight, tuple(input_shape), stride=spec.stride, dilation=spec.dilation, groups=spec.groups
    )
    plan = FrequencyPlan.create(grid_spec, real=not np.iscomplexobj(forward))
    return plan, flat_weight(forward)


def _enlarged_grid(layer: _Layer) -> tuple[int, ...]:
    """A grid on which the circular layer contains the padded one (a multiple of the stride)."""
    spec = layer.spec
    return tuple(
        -(-(n + pl + pr) // s) * s for n, (pl, pr), s in zip(layer.input_shape, layer.padding, spec.stride, strict=True)
    )


def _rounding(spec: ConvSpec) -> float:
    return 32 * (math.prod(spec.kernel_size) + spec.in_channels + spec.out_channels) * _EPS


def _check_rtol(rtol: float | None, max_iter: int | None) -> tuple[float, int]:
    rtol = _DEFAULT_RTOL if rtol is None else rtol
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not 0 < rtol < 1:
        raise ParameterError(f"rtol: expected a number in (0, 1), got {rtol!r}")
    max_iter = _DEFAULT_MAX_ITER if max_iter is None else max_iter
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ParameterError(f"max_iter: expected a positive int, got {max_iter!r}")
    return float(rtol), max_iter


@dataclass(frozen=True)
class _Solution:
    value: float
    lower: float
    upper: float
    converged: bool
    method: str
    frequency: np.ndarray | None  # wrap-around: where the maximum is attained
    plan: FrequencyPlan | None
    vector: np.ndarray | None  # padded: the Lanczos vector (input space, flat)
    operator: ConvOperator | None


def _solve(
    layer: _Layer, *, rtol: float, max_iter: int, workers: int, max_memory: int, want_bracket: bool
) -> _Solution:
    spec = layer.spec
    weight = _numpy_weight(layer.weight)
    allowance = _rounding(spec)
    if layer.mode == "wrap":
        plan, flat = _circular_plan(weight, spec.input_shape, spec)
        found = circular_maximum(plan, flat, workers)
        lower = found.value
        if want_bracket:
            vector = top_singular_vector(plan, flat, found.frequency)
            if not np.iscomplexobj(weight):
                vector = vector.real if np.linalg.norm(vector.real) >= np.linalg.norm(vector.imag) else vector.imag
            op = ConvOperator.create(
                weight,
                input_shape=spec.input_shape,
                mode="wrap",
                stride=spec.stride,
                dilation=spec.dilation,
                groups=spec.groups,
            )
            lower = float(np.linalg.norm(op.matvec(vector)) / np.linalg.norm(vector))
        return _Solution(
            found.value,
            max(0.0, min(lower, found.value) - allowance * found.value),
            found.value * (1 + allowance),
            True,
            f"exact: branch and bound over {found.total} frequencies, {found.evaluated} evaluated",
            found.frequency,
            plan,
            None,
            None,
        )

    # padded layer: certified upper bound from a circular layer that contains it, then Lanczos
    op = ConvOperator.create(
        weight,
        input_shape=layer.input_shape,
        padding=layer.padding,
        mode=layer.mode,
        stride=spec.stride,
        dilation=spec.dilation,
        groups=spec.groups,
    )
    vector_bytes = 16 * max(op.shape) * 2 + 16 * math.prod(op.grid) * max(spec.in_channels, spec.out_channels)
    estimate = 24 * vector_bytes + op.hat.nbytes
    if estimate > max_memory:
        raise MemoryBudgetError(
            f"max_memory: the iterative solver for this layer needs about {estimate / 2**30:.2f} GiB, over the "
            f"budget of {max_memory / 2**30:.2f} GiB; pass a larger max_memory (bytes) if the machine has it"
        )
    if layer.mode == "zeros":
        grid = _enlarged_grid(layer)
        plan, flat = _circular_plan(weight, grid, spec)
        found = circular_maximum(plan, flat, workers)
        upper, where = found.value, f"circular norm on the enlarged {'x'.join(map(str, grid))} grid"
        start_full = top_singular_vector(plan, flat, found.frequency)
        crop = tuple(slice(pl, pl + n) for (pl, _), n in zip(layer.padding, layer.input_shape, strict=True))
        window = (slice(None), *crop)
        start = start_full[window]
    else:  # circular padding whose outputs do not tile the input: rows of the stride-1 layer, repeated
        plan, flat = _circular_plan(weight, layer.input_shape, _stride_one(spec))
        found = circular_maximum(plan, flat, workers)
        repeats = math.prod(
            -(-m * s // n) if m * s > n else 1
            for m, s, n in zip(spec.output_shape, spec.stride, layer.input_shape, strict=True)
        )
        upper, where = found.value * math.sqrt(repeats), "stride-1 circular norm x sqrt(row repetitions)"
        start = top_singular_vector(plan, flat, found.frequency)
    from .bounds import channel_l1_bound

    prop11 = float(channel_l1_bound(weight, groups=spec.groups))
    if prop11 < upper:
        upper, where = prop11, "Proposition 11"
    if not np.iscomplexobj(weight):
        start = start.real if np.linalg.norm(start.real) >= np.linalg.norm(start.imag) else start.imag
    rng = np.random.default_rng(0)  # a little of every direction, reproducibly
    noise = rng.standard_normal(start.shape)
    start = start / max(np.linalg.norm(start), 1e-300) + 1e-3 * noise / np.linalg.norm(noise)
    vector_bytes = 16 * max(op.shape)
    basis = int(max(20, min(300, (max_memory // 4) // max(1, vector_bytes))))
    result = largest_singular_value(
        lambda v: op.matvec(v).ravel(),
        lambda v: op.rmatvec(v).ravel(),
        start,
        rtol=rtol,
        max_iter=max_iter,
        basis=basis,
    )
    upper = max(upper * (1 + allowance), result.value * (1 + allowance))
    lower = max(0.0, result.value - allowance * upper)
    method = f"Lanczos ({result.iterations} products with A^H A) between the Rayleigh quotient and the {where}"
    if not result.converged:
        warnings.warn(
            f"operator_norm: the Lanczos solver did not reach rtol={rtol:g} within max_iter={max_iter} "
            f"(relative residual {result.residual:.2e}); the norm lies in [{lower:.10g}, {upper:.10g}] and the "
            "lower end is returned. Raise max_iter or rtol.",
            ConvergenceWarning,
            stacklevel=3,
        )
    return _Solution(result.value, lower, upper, result.converged, method, None, None, result.vector, op)


def _stride_one(spec: ConvSpec) -> ConvSpec:
    """The same layer without stride (on the same input grid)."""
    return ConvSpec(
        ndim=spec.ndim,
        out_channels=spec.out_channels,
        in_channels=spec.in_channels,
        groups=spec.groups,
        kernel_size=spec.kernel_size,
        stride=(1,) * spec.ndim,
        dilation=spec.dilation,
        input_shape=spec.input_shape,
        output_shape=spec.input_shape,
        transposed=False,
    )


def _torch_value(layer: _Layer, solution: _Solution) -> Any:
    """The norm as a torch scalar on the weight's device, differentiable through the weight."""
    torch = sys.modules["torch"]
    weight = layer.weight
    if layer.mode == "wrap":
        assert solution.plan is not None and solution.frequency is not None
        plan = FrequencyPlan.create(layer.spec, real=not weight.is_complex())
        matrices = plan.transfer_torch(flat_weight(weight), solution.frequency[None, :])
        if min(matrices.shape[1:]) == 1:
            return torch.linalg.vector_norm(matrices, dim=(1, 2)).amax()
        return torch.linalg.svdvals(matrices)[:, 0].amax()
    assert solution.vector is not None
    if weight.is_complex():
        raise ParameterTypeError(
            "kernel: gradients of the zero-padded norm are supported for real kernels only, got a complex tensor"
        )
    spec = layer.spec
    x = torch.from_numpy(solution.vector.reshape(1, spec.in_channels, *layer.input_shape)).to(
        device=weight.device, dtype=weight.dtype
    )
    pads = [p for pair in reversed(layer.padding) for p in pair]
    x = torch.nn.functional.pad(x, pads, mode="circular" if layer.mode == "circular" else "constant")
    conv = getattr(torch.nn.functional, f"conv{spec.ndim}d")
    y = conv(x, weight, stride=spec.stride, dilation=spec.dilation, groups=spec.groups)
    return torch.linalg.vector_norm(y)


def _compute(
    kernel: Any,
    input_shape: Any,
    padding: Any,
    layout: str,
    stride: Any,
    dilation: Any,
    groups: Any,
    transposed: Any,
    rtol: float | None,
    max_iter: int | None,
    workers: int | None,
    max_memory: int | None,
    *,
    want_bracket: bool,
) -> tuple[_Layer, _Solution]:
    """Validate the request and solve it: what :func:`operator_norm` and :func:`operator_norm_bounds` share."""
    rtol_f, max_iter_i = _check_rtol(rtol, max_iter)
    layer = _resolve(kernel, input_shape, padding, layout, stride, dilation, groups, transposed)
    budget = _DEFAULT_BUDGET if max_memory is None else max_memory
    solution = _solve(
        layer,
        rtol=rtol_f,
        max_iter=max_iter_i,
        workers=resolve_workers(workers),
        max_memory=budget,
        want_bracket=want_bracket,
    )
    return layer, solution


def operator_norm(
    kernel: Any,
    input_shape: int | Sequence[int],
    *,
    padding: str | int | Sequence[int] = "circular",
    layout: str = "OIHW",
    stride: int | Sequence[int] | None = None,
    dilation: int | Sequence[int] | None = None,
    groups: int | None = None,
    transposed: bool | None = None,
    rtol: float | None = None,
    max_iter: int | None = None,
    workers: int | None = None,
    max_memory: int | None = None,
) -> Any:
    r"""The operator norm (largest singular value) of a convolution layer.

    Args:
        kernel: NumPy array, torch tensor (any device) or torch conv module, as in
            :func:`convspectra.singular_values`.
        input_shape: spatial size of the layer's input (int or one per axis).
        padding: ``"circular"`` (wrap-around, exact), ``"module"`` (the module's own padding and
            ``padding_mode``), or PyTorch-style zero padding: an int, one int per axis,
            ``"same"`` or ``"valid"``. For a transposed layer, the padding of the
            ``ConvTranspose`` (its ``output_padding`` is read from a module).
        layout, stride, dilation, groups, transposed: as in :func:`convspectra.singular_values`.
        rtol: padded layers only: the Lanczos solver's relative residual target (default 1e-6;
            the norm is then accurate to about ``rtol / 2``).
        max_iter: padded layers only: the most products with :math:`A^H A` (default 3000).
        workers: threads for the per-frequency decompositions (default: every core).
        max_memory: byte budget (default 4 GiB); a larger estimate is refused up front.

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
        ConvergenceWarning: the iterative solver hit ``max_iter``; the certified lower bound is
            returned and the message gives the bracket.

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
    layer, solution = _compute(
        kernel,
        input_shape,
        padding,
        layout,
        stride,
        dilation,
        groups,
        transposed,
        rtol,
        max_iter,
        workers,
        max_memory,
        want_bracket=False,
    )
    if _is_torch(layer.weight):
        torch = sys.modules["torch"]
        needs_graph = layer.weight.requires_grad and torch.is_grad_enabled()
        if needs_graph or layer.weight.device.type != "cpu":
            return _torch_value(layer, solution)
        single = layer.weight.dtype in (torch.float32, torch.complex64)
        return torch.tensor(solution.value, dtype=torch.float32 if single else torch.float64)
    return np.float64(solution.value)


def operator_norm_bounds(
    kernel: Any,
    input_shape: int | Sequence[int],
    *,
    padding: str | int | Sequence[int] = "circular",
    layout: str = "OIHW",
    stride: int | Sequence[int] | None = None,
    dilation: int | Sequence[int] | None = None,
    groups: int | None = None,
    transposed: bool | None = None,
    rtol: float | None = None,
    max_iter: int | None = None,
    workers: int | None = None,
    max_memory: int | None = None,
) -> NormBounds:
    r"""A certified bracket on the operator norm, and the value :func:`operator_norm` returns.

    Arguments as :func:`operator_norm`. ``lower`` is the norm of the operator applied to an
    actual unit vector (the top singular vector found); ``upper`` is guaranteed: the exact norm
    (circular), or for a padded layer the exact norm of the circular layer on the enlarged grid
    that contains it (or Proposition 11 if smaller). Both are widened by a floating-point
    rounding allowance of ``32 (taps + in + out) eps``.

    Returns:
        :class:`NormBounds` (Python floats, whatever the kernel's kind).

    Example:
        >>> import numpy as np, convspectra as cs
        >>> b = cs.operator_norm_bounds(np.ones((1, 1, 2, 2)), (8, 8))
        >>> round(b.lower, 9), round(b.upper, 9), b.converged
        (4.0, 4.0, True)
    """
    _, solution = _compute(
        kernel,
        input_shape,
        padding,
        layout,
        stride,
        dilation,
        groups,
        transposed,
        rtol,
        max_iter,
        workers,
        max_memory,
        want_bracket=True,
    )
    return NormBounds(
        float(solution.lower), float(solution.upper), float(solution.value), solution.converged, solution.method
    )
