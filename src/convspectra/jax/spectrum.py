"""Singular values and operator norm of a wrap-around convolution, in JAX (``jit``, ``vmap``, ``grad``).

The same computation as :func:`convspectra.singular_values` (Sedghi, Gupta & Long 2019,
Theorem 8, with stride, dilation, groups, transposed layers and kernels larger than the input):
the static plan and phase table come from the NumPy engine's :class:`~convspectra.transfer.FrequencyPlan`,
the transfer matrices are one traced matrix product and their singular values one batched
``jnp.linalg.svd``. Shapes and layer parameters are static Python values; only the kernel is traced.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from .._memory import check_budget, resolve_budget
from ._layer import Layer, layer_of, memory_bytes, phase_table, to_forward, transfer_matrices

__all__ = ["frequency_values", "operator_norm", "singular_values"]


def _itemsize(weight: Any) -> int:
    return 8 if weight.dtype in (jnp.float64, jnp.complex128) else 4


def frequency_values(weight: Any, layer: Layer) -> Any:
    """``(B, rank)`` singular values, descending per row, of the forward weight at the plan's representatives."""
    spec, plan = layer.spec, layer.plan
    matrices = transfer_matrices(weight, layer)  # (B, G, a, S*b)
    batch = matrices.shape[0]
    values = jnp.linalg.svd(matrices, compute_uv=False)  # (B, G, min(a, S*b))
    values = values.reshape(batch, -1)
    zeros = plan.zeros_per_block * spec.groups
    if zeros:
        values = jnp.concatenate([values, jnp.zeros((batch, zeros), values.dtype)], axis=1)
    if spec.groups > 1:
        values = -jnp.sort(-values, axis=1)
    return values


def _prepare(kernel: Any, input_shape: Any, layer_args: dict[str, Any], max_memory: int | None) -> tuple[Layer, Any]:
    layer = layer_of(kernel, input_shape, **layer_args)
    weight = to_forward(kernel, layer)
    check_budget(
        memory_bytes(layer, _itemsize(weight)) + layer.spec.num_singular_values * 24,
        resolve_budget(max_memory),
        "this JAX spectrum (phase table and transfer matrices)",
    )
    return layer, weight


def singular_values(
    kernel: Any,
    input_shape: int | Sequence[int],
    *,
    layout: str = "HWIO",
    stride: int | Sequence[int] | None = None,
    dilation: int | Sequence[int] | None = None,
    groups: int | None = None,
    transposed: bool | None = None,
    max_memory: int | None = None,
) -> Any:
    """All singular values, descending, of the wrap-around convolution with this kernel (a JAX array).

    Arguments and result as :func:`convspectra.singular_values`, except that ``layout`` defaults to
    ``"HWIO"`` (Flax's ``(k..., in/groups, out)``; pass ``layout="OIHW"`` for Equinox's
    ``(out, in/groups, k...)``) and the result is a JAX array: float32 for float32/bfloat16/float16
    kernels, float64 for float64 kernels (with ``jax_enable_x64``). Works under ``jax.jit``,
    ``jax.vmap`` and ``jax.grad``: every argument but ``kernel`` is a static Python value.

    Example:
        >>> import jax.numpy as jnp
        >>> import convspectra.jax as csj
        >>> csj.singular_values(jnp.ones((2, 2, 1, 1), jnp.float32), 4)[:4].round(4)    # HWIO: footnote 2 of the paper
        Array([4.    , 2.8284, 2.8284, 2.8284], dtype=float32)
    """
    layer_args = dict(layout=layout, stride=stride, dilation=dilation, groups=groups, transposed=transposed)
    layer, weight = _prepare(kernel, input_shape, layer_args, max_memory)
    values = frequency_values(weight, layer)
    multiplicity = phase_table(layer, False)[1]
    counts = np.repeat(multiplicity, values.shape[1])
    total = int(counts.sum())
    flat = jnp.repeat(values.reshape(-1), counts, total_repeat_length=total)
    flat = -jnp.sort(-flat)
    return flat[: layer.spec.num_singular_values]


def operator_norm(
    kernel: Any,
    input_shape: int | Sequence[int],
    *,
    layout: str = "HWIO",
    stride: int | Sequence[int] | None = None,
    dilation: int | Sequence[int] | None = None,
    groups: int | None = None,
    transposed: bool | None = None,
    max_memory: int | None = None,
) -> Any:
    """The largest singular value of the wrap-around convolution (a 0-d JAX array), exact.

    As :func:`convspectra.operator_norm` with ``padding="circular"``; arguments as in
    :func:`singular_values`. Its gradient is the gradient of the top singular value at the
    maximising frequency, ``Re(u^H dT v)`` (the first of several maximising frequencies when they tie).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import convspectra.jax as csj
        >>> kernel = jnp.ones((2, 2, 1, 1), jnp.float32)
        >>> float(csj.operator_norm(kernel, 4))
        4.0
        >>> jax.grad(lambda k: csj.operator_norm(k, 4))(kernel).ravel()   # d sigma / d taps = 1/4 * 4 taps
        Array([1., 1., 1., 1.], dtype=float32)
    """
    layer_args = dict(layout=layout, stride=stride, dilation=dilation, groups=groups, transposed=transposed)
    layer, weight = _prepare(kernel, input_shape, layer_args, max_memory)
    top = frequency_values(weight, layer)[:, 0]
    return top[jnp.argmax(top)]
