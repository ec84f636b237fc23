r"""The paper's projection onto an operator-norm ball, in JAX (``jit``/``vmap`` compatible).

One iteration is the clip of every frequency's transfer-matrix singular values at ``c``
(Sedghi, Gupta & Long 2019, Proposition 12; stride-aware: the aliased input frequencies of an
output frequency form one matrix) followed by the restriction to the kernel's own support, as in
:func:`convspectra.clip_operator_norm` (see :mod:`convspectra.projection` for the mathematics:
the support-restricted inverse DFT, colliding taps of kernels larger than the input, Dykstra).
The static tables come from the NumPy engine's plan; the traced work is two matrix products and
one batched SVD per iteration, in the kernel's working precision (float32 or float64).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._checks import choice
from .._memory import check_budget, resolve_budget
from ..errors import ParameterError, ParameterTypeError
from ._layer import Layer, from_forward, layer_of, memory_bytes, phase_table, to_forward, transfer_matrices

__all__ = ["clip_operator_norm"]


def _clip(t: Any, high: Any) -> tuple[Any, Any]:
    """``U min(S, c) V^H`` of every matrix of the batch ``(..., p, q)``; matrices within the ball come back bit for bit.

    Returns the clipped batch and whether any matrix changed.
    """
    u, s, vh = jnp.linalg.svd(t, full_matrices=False)
    excess = jnp.maximum(s - high, 0).astype(s.dtype)
    change = jnp.matmul(u * excess[..., None, :].astype(u.dtype), vh, precision=jax.lax.Precision.HIGHEST)
    return t - change, jnp.any(excess > 0)


def _inverse(t: Any, layer: Layer, psi: Any) -> Any:
    """Transfer matrices ``(B, G, a, S*b)`` -> support coefficients ``(P, O*b)`` (real part for real kernels)."""
    spec, plan = layer.spec, layer.plan
    groups = spec.groups
    a, b = spec.out_channels // groups, spec.in_channels // groups
    batch = t.shape[0]
    z = t.reshape(batch, groups, a, plan.aliases, b).transpose(0, 3, 1, 2, 4).reshape(batch * plan.aliases, -1)
    x = jnp.matmul(psi, z, precision=jax.lax.Precision.HIGHEST)
    return x.real if layer.real else x


def _check_bounds(max_norm: Any, iterations: Any) -> None:
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)):
        raise ParameterTypeError(f"iterations: expected a positive int (static), got {iterations!r}")
    if iterations < 1:
        raise ParameterError(f"iterations: expected at least 1, got {iterations}")
    if isinstance(max_norm, (int, float, np.floating, np.integer)) and not max_norm > 0:
        raise ParameterError(f"max_norm: expected a bound > 0 on the operator norm, got {max_norm!r}")


def clip_operator_norm(
    kernel: Any,
    input_shape: int | Sequence[int],
    max_norm: Any,
    *,
    iterations: int = 1,
    method: str = "alternating",
    layout: str = "HWIO",
    stride: int | Sequence[int] | None = None,
    dilation: int | Sequence[int] | None = None,
    groups: int | None = None,
    transposed: bool | None = None,
    max_memory: int | None = None,
) -> Any:
    r"""Project a kernel towards ``{K : ||A(K)||_2 <= c}`` on its support, as :func:`convspectra.clip_operator_norm`.

    ``A(K)`` is the layer's wrap-around operator. Each of the ``iterations`` rounds clips the
    singular values of every frequency's transfer matrix at ``max_norm`` and zeroes the
    coefficients outside the kernel's support; ``method="dykstra"`` adds Dykstra's correction
    (convergence to the nearest kernel of the intersection). A round that changes no matrix ends
    the iterations (the later rounds keep the kernel), and a kernel already within the ball comes
    back unchanged, as in the NumPy engine. The ``min_norm`` band of the engine is not offered here.

    Args:
        kernel: a JAX array (layout ``"HWIO"`` by default, Flax; ``"OIHW"`` for Equinox).
        input_shape: spatial size of the layer's input (static).
        max_norm: the bound ``c > 0`` (a float, or a traced scalar).
        iterations: rounds (static int, at least 1).
        method: ``"alternating"`` or ``"dykstra"``.
        layout, stride, dilation, groups, transposed, max_memory: as in :func:`convspectra.jax.singular_values`.

    Returns:
        The projected kernel, same shape, layout and dtype (computed in float32, or float64 for float64 kernels).

    Example:
        >>> import jax.numpy as jnp
        >>> import convspectra.jax as csj
        >>> kernel = jnp.ones((2, 2, 1, 1))                       # HWIO, operator norm 4 on a 4x4 input
        >>> clipped = csj.clip_operator_norm(kernel, 4, 2.0, iterations=50)
        >>> clipped.shape, round(float(csj.operator_norm(clipped, 4)), 3)
        ((2, 2, 1, 1), 2.0)
    """
    method = choice("method", method, ["alternating", "dykstra"])
    _check_bounds(max_norm, iterations)
    layer_args = dict(layout=layout, stride=stride, dilation=dilation, groups=groups, transposed=transposed)
    layer = layer_of(kernel, input_shape, **layer_args)
    weight = to_forward(kernel, layer)
    single = weight.dtype in (jnp.float32, jnp.complex64)
    check_budget(4 * memory_bytes(layer, 4 if single else 8), resolve_budget(max_memory), "this JAX projection")
    support = layer.support
    shape = weight.shape
    flat = weight.reshape(shape[0] * shape[1], -1).T  # (taps, C)
    phases, _, row_weight = phase_table(layer, True)
    complex_dtype = jnp.complex64 if single else jnp.complex128
    psi = jnp.asarray((phases.conj() * row_weight[:, None]).T, dtype=complex_dtype)
    if support.collides:
        fold = np.zeros((support.size, len(support.tap_to_position)))
        fold[support.tap_to_position, np.arange(len(support.tap_to_position))] = 1.0
        x0 = jnp.matmul(jnp.asarray(fold, flat.dtype), flat, precision=jax.lax.Precision.HIGHEST)
    else:
        x0 = flat
    high = jnp.asarray(max_norm, dtype=jnp.float32 if single else jnp.float64)

    def forward(x: Any) -> Any:
        return transfer_matrices(weight, layer, folded=x)

    t0 = forward(x0)

    def round_(_: int, carry: tuple[Any, Any, Any]) -> tuple[Any, Any, Any]:
        x, correction, done = carry
        t_in = forward(x) + correction
        t_clip, changed = _clip(t_in, high)
        active = changed | (jnp.any(correction != 0) if method == "dykstra" else False)
        stop = done | ~active
        new_correction = t_in - t_clip if method == "dykstra" else correction
        x_new = _inverse(t_clip, layer, psi).astype(x.dtype)
        return jnp.where(stop, x, x_new), jnp.where(stop, correction, new_correction), stop

    carry = (x0, jnp.zeros_like(t0), jnp.asarray(False))
    x = jax.lax.fori_loop(0, iterations, round_, carry)[0]
    if support.collides:
        counts = jnp.asarray(support.counts, x.dtype)
        flat = flat + ((x - x0) / counts[:, None])[jnp.asarray(support.tap_to_position)]
    else:
        flat = x
    result = from_forward(flat.T.reshape(shape), layer)
    inside = jnp.max(jnp.linalg.svd(t0, compute_uv=False)) <= high
    original = jnp.asarray(kernel)
    target = original.dtype if jnp.issubdtype(original.dtype, jnp.inexact) else result.dtype
    return jnp.where(inside, original.astype(target), result.astype(target))
