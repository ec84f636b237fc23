r"""Power iteration on a Flax or Equinox conv layer as the library computes it (the shared core of the wrappers).

:class:`ConvOperator` is the layer's linear map at one input size, bias left out: the forward is
``jax.lax.conv_general_dilated`` with the layer's own padding (``"SAME"``, ``"VALID"``,
``"SAME_LOWER"``, explicit pairs, Flax's ``"CAUSAL"``; Flax's ``"CIRCULAR"`` and Equinox's
``padding_mode="CIRCULAR"`` as a periodic extension), strides, input and kernel dilation and
feature groups, 1-3 spatial axes; the adjoint is ``jax.linear_transpose`` of the forward, exact
by construction. ``padding="circular"`` gives the wrap-around operator of the paper instead
(every side a multiple of the stride). Vectors have the layer's input shape with batch 1:
``(1, *spatial, C)`` for Flax (channels last, kernel HWIO), ``(1, C, *spatial)`` for Equinox
(kernel OIHW). Everything about shapes is static; only the kernel and the vectors are traced.

Example:
    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> from convspectra.jax._power import flax_operator, start_vectors, converge
    >>> conv = nn.Conv(2, (3, 3), padding="CIRCULAR")
    >>> kernel = jnp.ones((3, 3, 1, 2), jnp.float32) / 9
    >>> op = flax_operator(conv, (8, 8), in_features=1)
    >>> op.input_shape, op.output_shape
    ((1, 8, 8, 1), (1, 8, 8, 2))
    >>> u, v, result = converge(op, kernel, *start_vectors(op, jnp.float32), tol=1e-5)
    >>> round(result.sigma, 4)            # the mean filter on a torus, duplicated: sqrt(2)
    1.4142
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from .._checks import as_tuple, choice, integer, real
from ..convergence import Convergence
from ..errors import ConvergenceWarning, ParameterError, ParameterTypeError

__all__ = [
    "MODES",
    "PADDINGS",
    "ConvOperator",
    "Convergence",
    "converge",
    "equinox_operator",
    "flax_operator",
    "normalized_kernel",
    "power_iteration",
    "sigma",
    "start_vectors",
    "warn_unconverged",
]

PADDINGS = ("module", "circular")
MODES = ("normalize", "clip")
SEED = 20190101  # the starting vectors' key: the same on every process
FIRST_ITERATIONS = 15
_SPATIAL = ("H", "HW", "DHW")


@dataclass(frozen=True)
class ConvOperator:
    """One conv layer's linear map at one input size (hashable: a static argument of ``jax.jit``).

    Attributes:
        channels_last: Flax's layout (data ``N...C``, kernel ``...IO``), else Equinox's (``NC...``, ``OI...``).
        input_shape, output_shape: the vectors' shapes, batch 1.
        strides, input_dilation, kernel_dilation, groups: as ``lax.conv_general_dilated``'s.
        padding: what ``lax.conv_general_dilated`` receives (a string or (low, high) pairs).
        wrap: ``(left, right)`` pairs of a periodic extension done first (``None``: none; right < 0 crops).
    """

    channels_last: bool
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    strides: tuple[int, ...]
    padding: str | tuple[tuple[int, int], ...]
    input_dilation: tuple[int, ...]
    kernel_dilation: tuple[int, ...]
    groups: int
    wrap: tuple[tuple[int, int], ...] | None

    @property
    def spatial(self) -> tuple[int, ...]:
        """The input's spatial size."""
        return self.input_shape[1:-1] if self.channels_last else self.input_shape[2:]

    def _extend(self, v: Any) -> Any:
        first = 1 if self.channels_last else 2
        for axis, (n, (left, right)) in enumerate(zip(self.spatial, self.wrap or (), strict=False), start=first):
            v = jnp.take(v, jnp.arange(-left, n + right) % n, axis=axis)
        return v

    def apply(self, v: Any, kernel: Any) -> Any:
        """The layer applied to ``v`` (shape :attr:`input_shape`), bias left out, at the highest precision."""
        ndim = len(self.strides)
        s = _SPATIAL[ndim - 1]
        specs = ("N" + s + "C", s + "IO", "N" + s + "C") if self.channels_last else ("NC" + s, "OI" + s, "NC" + s)
        x = v if self.wrap is None else self._extend(v)
        numbers = lax.conv_dimension_numbers(x.shape, kernel.shape, specs)
        return lax.conv_general_dilated(
            x,
            kernel,
            self.strides,
            self.padding,
            lhs_dilation=self.input_dilation,
            rhs_dilation=self.kernel_dilation,
            dimension_numbers=numbers,
            feature_group_count=self.groups,
            precision=lax.Precision.HIGHEST,
        )

    def adjoint(self, u: Any, kernel: Any) -> Any:
        """The layer's adjoint applied to ``u`` (shape :attr:`output_shape`): the transpose of :meth:`apply`."""
        spec = jax.ShapeDtypeStruct(self.input_shape, u.dtype)
        (back,) = jax.linear_transpose(partial(self.apply, kernel=kernel), spec)(u)
        return back


def _output_shape(op: ConvOperator, kernel_shape: tuple[int, ...]) -> tuple[int, ...]:
    v = jax.ShapeDtypeStruct(op.input_shape, jnp.float32)
    k = jax.ShapeDtypeStruct(kernel_shape, jnp.float32)
    return tuple(jax.eval_shape(op.apply, v, k).shape)


def _wraparound(
    size: tuple[int, ...], kernel: tuple[int, ...], strides: tuple[int, ...], dilation: tuple[int, ...]
) -> tuple[tuple[tuple[int, int], ...], tuple[int, ...]]:
    """The periodic extension and dilation of the wrap-around operator ``y_i = sum_k w_k x_{(s i + d k) mod n}``."""
    bad = [(n, s) for n, s in zip(size, strides, strict=True) if n % s]
    if bad:
        raise ParameterError(
            f"input_shape: the wrap-around operator needs every side a multiple of the stride {strides}, got {size}"
        )
    dilation = tuple((d - 1) % n + 1 for d, n in zip(dilation, size, strict=True))
    pairs = tuple(
        (0, s * (n // s - 1) + d * (k - 1) + 1 - n) for n, k, s, d in zip(size, kernel, strides, dilation, strict=True)
    )
    return pairs, dilation


def _build(
    channels_last: bool,
    spatial: Any,
    channels: int,
    kernel_shape: tuple[int, ...],
    kernel_size: tuple[int, ...],
    strides: tuple[int, ...],
    padding: Any,
    input_dilation: tuple[int, ...],
    kernel_dilation: tuple[int, ...],
    groups: int,
    wrap: Any,
    mode: str,
) -> ConvOperator:
    ndim = len(kernel_size)
    size = as_tuple("input_shape", spatial, ndim)
    if mode == "circular":
        if any(d != 1 for d in input_dilation):
            raise ParameterError(
                f"padding: the wrap-around operator is not defined for input_dilation {input_dilation}; "
                "use padding='module'"
            )
        wrap, kernel_dilation = _wraparound(size, kernel_size, strides, kernel_dilation)
        padding = "VALID"
    shape = (1, *size, channels) if channels_last else (1, channels, *size)
    if isinstance(padding, str):  # explicit pairs, as lax computes them (its transpose needs them with lhs dilation)
        extended = size if wrap is None else tuple(n + lo + hi for n, (lo, hi) in zip(size, wrap, strict=True))
        dilated = tuple(d * (k - 1) + 1 for k, d in zip(kernel_size, kernel_dilation, strict=True))
        padding = tuple((int(lo), int(hi)) for lo, hi in lax.padtype_to_pads(extended, dilated, strides, padding))
    op = ConvOperator(channels_last, shape, (), strides, padding, input_dilation, kernel_dilation, groups, wrap)
    try:
        out = _output_shape(op, kernel_shape)
    except (TypeError, ValueError) as error:
        raise ParameterError(f"input_shape: the layer cannot take an input of size {size}: {error}") from error
    if min(out) < 1:
        raise ParameterError(f"input_shape: the layer's input {size} is too small for its kernel {kernel_size}")
    return ConvOperator(channels_last, shape, out, strides, padding, input_dilation, kernel_dilation, groups, wrap)


def _per_axis(name: str, value: Any, ndim: int) -> tuple[int, ...]:
    return (1,) * ndim if value is None else as_tuple(name, value, ndim)


def _explicit_pairs(padding: Any, ndim: int) -> tuple[tuple[int, int], ...]:
    if isinstance(padding, int):
        return ((padding, padding),) * ndim
    pairs = tuple((int(p), int(p)) if isinstance(p, int) else (int(p[0]), int(p[1])) for p in padding)
    if len(pairs) == 1 and ndim > 1:
        pairs *= ndim
    if len(pairs) != ndim:
        raise ParameterError(f"padding: expected {ndim} (low, high) pairs, got {padding!r}")
    return pairs


def flax_operator(
    conv: Any, input_shape: int | Sequence[int], *, in_features: int | None = None, padding: str = "module"
) -> ConvOperator:
    """The operator of a ``flax.linen.Conv`` or ``flax.nnx.Conv`` at input spatial size ``input_shape``.

    ``in_features``: the input's channels (a linen ``Conv`` learns them from its input; an nnx one knows them).

    Raises:
        ParameterTypeError: not a Flax ``Conv`` (``ConvTranspose`` and ``ConvLocal`` are not supported).
        ParameterError: ``"REFLECT"`` padding (not a linear map of the input alone), a bad size.
    """
    choice("padding", padding, PADDINGS)
    import flax.linen as nn
    from flax import nnx

    if type(conv) not in (nn.Conv, nnx.Conv):
        raise ParameterTypeError(
            f"layer_instance: expected a flax.linen.Conv or flax.nnx.Conv, got {type(conv).__qualname__}"
        )
    k = conv.kernel_size
    kernel_size = (int(k),) if isinstance(k, int) else tuple(int(v) for v in k)
    ndim = len(kernel_size)
    strides = _per_axis("strides", conv.strides, ndim)
    input_dilation = _per_axis("input_dilation", conv.input_dilation, ndim)
    kernel_dilation = _per_axis("kernel_dilation", conv.kernel_dilation, ndim)
    groups = int(conv.feature_group_count)
    if isinstance(conv, nnx.Conv):
        channels, features = int(conv.in_features), int(conv.out_features)
    else:
        channels, features = integer("in_features", in_features), int(conv.features)
    pad, wrap = conv.padding, None
    if isinstance(pad, str):
        pad = pad.upper()
        dilated = [(kk - 1) * d + 1 for kk, d in zip(kernel_size, kernel_dilation, strict=True)]
        if pad == "CIRCULAR":
            pad, wrap = "VALID", tuple(((kk - 1) // 2, kk // 2) for kk in dilated)
        elif pad == "CAUSAL":
            if ndim != 1:
                raise ParameterError(f"padding: 'CAUSAL' is for 1-D convolutions, got a {ndim}-D one")
            pad = ((kernel_dilation[0] * (kernel_size[0] - 1), 0),)
        elif pad not in ("SAME", "VALID", "SAME_LOWER"):
            raise ParameterError(
                f"padding: expected 'SAME', 'VALID', 'CIRCULAR', 'CAUSAL' or explicit pairs (a linear map of the "
                f"input), got {conv.padding!r}"
            )
    else:
        pad = _explicit_pairs(pad, ndim)
    kernel_shape = (*kernel_size, channels // groups, features)
    return _build(
        True,
        input_shape,
        channels,
        kernel_shape,
        kernel_size,
        strides,
        pad,
        input_dilation,
        kernel_dilation,
        groups,
        wrap,
        padding,
    )


def equinox_operator(conv: Any, input_shape: int | Sequence[int], *, padding: str = "module") -> ConvOperator:
    """The operator of an ``equinox.nn.Conv`` (``Conv1d/2d/3d``) at input spatial size ``input_shape``.

    Raises:
        ParameterTypeError: not an Equinox ``Conv`` (``ConvTranspose`` is not supported).
        ParameterError: ``padding_mode`` ``"REFLECT"`` or ``"REPLICATE"``, a bad size.
    """
    choice("padding", padding, PADDINGS)
    import equinox as eqx

    if not isinstance(conv, eqx.nn.Conv):
        raise ParameterTypeError(f"layer: expected an equinox.nn.Conv (Conv1d/2d/3d), got {type(conv)}")
    ndim = int(conv.num_spatial_dims)
    size = as_tuple("input_shape", input_shape, ndim)
    kernel_size, strides, dilation = tuple(conv.kernel_size), tuple(conv.stride), tuple(conv.dilation)
    pad, wrap = conv.padding, None
    if conv.padding_mode not in ("ZEROS", "CIRCULAR"):
        raise ParameterError(
            f"padding_mode: expected 'ZEROS' or 'CIRCULAR' (a linear map of the input alone), got "
            f"{conv.padding_mode!r}; pass padding='circular' for the wrap-around operator"
        )
    if conv.padding_mode == "CIRCULAR":
        if isinstance(pad, str):
            dilated = tuple(d * (k - 1) + 1 for k, d in zip(kernel_size, dilation, strict=True))
            pad = lax.padtype_to_pads(size, dilated, strides, pad)
        pad, wrap = "VALID", tuple((int(lo), int(hi)) for lo, hi in pad)
    elif not isinstance(pad, str):
        pad = tuple((int(lo), int(hi)) for lo, hi in pad)
    return _build(
        False,
        size,
        int(conv.in_channels),
        tuple(conv.weight.shape),
        kernel_size,
        strides,
        pad,
        (1,) * ndim,
        dilation,
        int(conv.groups),
        wrap,
        padding,
    )


def start_vectors(op: ConvOperator, dtype: Any, key: Any = None) -> tuple[Any, Any]:
    """Unit starting vectors ``(u, v)`` from a fixed key (the same on every process), or from ``key``."""
    key = jax.random.key(SEED) if key is None else key
    ku, kv = jax.random.split(key)
    u, v = jax.random.normal(ku, op.output_shape, dtype), jax.random.normal(kv, op.input_shape, dtype)
    return u / jnp.linalg.norm(u), v / jnp.linalg.norm(v)


def power_iteration(op: ConvOperator, kernel: Any, u: Any, v: Any, iterations: int, eps: float) -> tuple[Any, ...]:
    """``iterations`` steps ``u := A v / ||A v||``, ``v := A^T u / ||A^T u||`` (no gradient through them).

    Returns:
        ``(u, v, sigma, residual)``: the new vectors, ``||A^T u||`` (the Rayleigh quotient
        ``<u, A v>`` of the new pair) and the last step's relative change ``||A^T u - sigma v_old|| / sigma``.
    """
    kernel = lax.stop_gradient(kernel)
    dtype = kernel.dtype

    def step(_: int, carry: tuple[Any, ...]) -> tuple[Any, ...]:
        u, v, _, _ = carry
        forward = op.apply(v, kernel)
        u = forward / jnp.maximum(jnp.linalg.norm(forward), eps)
        back = op.adjoint(u, kernel)
        value = jnp.linalg.norm(back)
        residual = jnp.linalg.norm(back - value * v) / jnp.maximum(value, eps)
        return u, back / jnp.maximum(value, eps), value, residual

    zero = jnp.zeros((), dtype)
    carry = (lax.stop_gradient(u).astype(dtype), lax.stop_gradient(v).astype(dtype), zero, zero)
    return lax.fori_loop(0, iterations, step, carry)


def sigma(op: ConvOperator, kernel: Any, u: Any, v: Any) -> Any:
    """``<u, A(kernel) v>``, differentiable in ``kernel`` (``u`` and ``v`` held fixed)."""
    u, v = lax.stop_gradient(u), lax.stop_gradient(v)
    return jnp.vdot(u.astype(kernel.dtype), op.apply(v.astype(kernel.dtype), kernel))


def normalized_kernel(kernel: Any, value: Any, *, max_norm: float, mode: str, eps: float) -> Any:
    """``kernel * c / sigma`` (``"normalize"``) or ``kernel / max(1, sigma / c)`` (``"clip"``); sigma >= eps."""
    value = jnp.maximum(value, eps).astype(kernel.dtype)
    if mode == "normalize":
        return kernel * (max_norm / value)
    return kernel / jnp.maximum(value / max_norm, 1.0)


def check_options(n_steps: Any, eps: Any, padding: Any, max_norm: Any, mode: Any, *, steps_name: str) -> None:
    """Validate the options every wrapper shares (one clear error per bad value)."""
    integer(steps_name, n_steps)
    real("eps", eps, minimum=0.0, open_below=True)
    choice("padding", padding, PADDINGS)
    real("max_norm", max_norm, minimum=0.0, open_below=True)
    choice("mode", mode, MODES)


@partial(jax.jit, static_argnums=(0, 4, 5))
def _chunk(op: ConvOperator, kernel: Any, u: Any, v: Any, steps: int, eps: float) -> tuple[Any, ...]:
    return power_iteration(op, kernel, u, v, steps, eps)


def converge(
    op: ConvOperator,
    kernel: Any,
    u: Any,
    v: Any,
    *,
    tol: float | None = None,
    max_iter: int = 10000,
    eps: float = 1e-12,
) -> tuple[Any, Any, Convergence]:
    """Iterate until ``||A^T u - sigma v|| / sigma <= tol`` or ``max_iter`` steps, in jitted chunks of 10.

    ``tol=None``: the kernel dtype's machine epsilon to the power 2/3 (2.4e-5 in float32, 3.7e-11
    in float64); sigma is then correct to about tol² sigma when the top singular value is separated.

    Returns:
        ``(u, v, Convergence)``. Warns nothing (the callers gather the layers that did not converge).
    """
    kernel = jnp.asarray(kernel)
    if tol is None:
        tol = float(jnp.finfo(kernel.dtype).eps) ** (2 / 3)
    tol = real("tol", tol, minimum=0.0, open_below=True)
    max_iter = integer("max_iter", max_iter)
    done, value, residual = 0, 0.0, float("inf")
    while done < max_iter:
        steps = min(10, max_iter - done)
        u, v, value, residual = _chunk(op, kernel, u, v, steps, float(eps))
        done += steps
        if float(residual) <= tol:
            break
    return u, v, Convergence(float(value), done, float(residual), float(residual) <= tol)


def warn_unconverged(helper: str, results: dict[str, Convergence], max_iter: int) -> None:
    """One :class:`~convspectra.errors.ConvergenceWarning` naming the layers that did not reach the tolerance."""
    stuck = [name for name, result in results.items() if not result.converged]
    if stuck:
        warnings.warn(
            f"{helper}: layers {stuck} did not reach the tolerance in {max_iter} iterations (a nearly repeated "
            "top singular value converges slowly; the estimate is still a lower bound)",
            ConvergenceWarning,
            stacklevel=3,
        )
