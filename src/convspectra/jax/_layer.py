"""A JAX kernel and its layer description, to the static plan of the NumPy engine and the forward weight.

Everything that depends on shapes and layer parameters (validation, the frequency plan, the phase
tables) is computed once per shape in NumPy from static values; only the kernel's values are traced.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import ParameterTypeError
from ..spec import LAYOUTS, ConvSpec, parse_layer
from ..transfer import FrequencyPlan, Support

__all__ = ["Layer", "from_forward", "layer_of", "phase_table", "to_forward", "work_dtype"]


def work_dtype(dtype: Any) -> tuple[Any, bool]:
    """The dtype the computation runs in for a kernel of ``dtype``, and whether it is complex.

    float32/float64 stay, bfloat16/float16 are upcast to float32, integers and bools to float64
    (float32 without ``jax_enable_x64``), complex64/complex128 stay.
    """
    dtype = jnp.dtype(dtype)
    x64 = bool(jax.config.jax_enable_x64)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        return dtype, True
    if dtype in (jnp.float32, jnp.float64):
        return dtype, False
    if jnp.issubdtype(dtype, jnp.floating):
        return jnp.dtype(jnp.float32), False
    if jnp.issubdtype(dtype, jnp.integer) or dtype == jnp.bool_:
        return jnp.dtype(jnp.float64 if x64 else jnp.float32), False
    raise ParameterTypeError(f"kernel: expected a real or complex numeric dtype, got {dtype}")


@dataclass(frozen=True)
class Layer:
    """The static description of one layer: its spec, layout, plan and support (hashable)."""

    spec: ConvSpec
    layout: str
    kernel_shape: tuple[int, ...]
    real: bool

    @property
    def plan(self) -> FrequencyPlan:
        """The engine's frequency plan (single-tap axes collapsed, conjugate pairs for real kernels)."""
        return FrequencyPlan.create(self.spec, real=self.real)

    @property
    def support(self) -> Support:
        """The distinct offsets the taps land on."""
        return self.plan.support()


def _as_static(value: Any) -> Any:
    return tuple(int(v) for v in value) if isinstance(value, Sequence) and not isinstance(value, str) else value


def layer_of(
    kernel: Any,
    input_shape: int | Sequence[int],
    *,
    layout: str,
    stride: int | Sequence[int] | None,
    dilation: int | Sequence[int] | None,
    groups: int | None,
    transposed: bool | None,
) -> Layer:
    """Validate the layer as the NumPy engine does (same errors), from the kernel's shape and dtype only."""
    if not hasattr(kernel, "shape") or not hasattr(kernel, "dtype"):
        raise ParameterTypeError(f"kernel: expected a JAX (or NumPy) array, got {type(kernel).__name__}")
    is_complex = work_dtype(kernel.dtype)[1]
    return _layer(
        tuple(int(size) for size in kernel.shape),
        is_complex,
        _as_static(input_shape),
        layout,
        _as_static(stride),
        _as_static(dilation),
        groups,
        transposed,
    )


@lru_cache(maxsize=256)
def _layer(
    shape: tuple[int, ...],
    is_complex: bool,
    input_shape: Any,
    layout: str,
    stride: Any,
    dilation: Any,
    groups: Any,
    transposed: Any,
) -> Layer:
    dummy = np.broadcast_to(np.zeros((), dtype=np.complex128 if is_complex else np.float64), shape)
    spec, _ = parse_layer(
        dummy, input_shape, layout=layout, stride=stride, dilation=dilation, groups=groups, transposed=transposed
    )
    return Layer(spec, layout, shape, not is_complex)


def _order(layer: Layer) -> tuple[int, ...] | None:
    """The axis permutation from the user's layout to ``(O, I/G, k...)``, None when it is the identity."""
    if LAYOUTS[layer.layout][0] != "last":
        return None
    ndim = layer.spec.ndim
    return (ndim + 1, ndim, *range(ndim))


def to_forward(kernel: Any, layer: Layer) -> Any:
    """The user's kernel as the forward convolution's weight ``(O, I/G, k...)`` in the working dtype."""
    weight = jnp.asarray(kernel)
    weight = weight.astype(work_dtype(weight.dtype)[0])
    order = _order(layer)
    return weight if order is None else jnp.transpose(weight, order)


def from_forward(weight: Any, layer: Layer) -> Any:
    """Inverse of :func:`to_forward` (without the dtype change)."""
    order = _order(layer)
    return weight if order is None else jnp.transpose(weight, tuple(int(i) for i in np.argsort(order)))


@lru_cache(maxsize=128)
def phase_table(layer: Layer, on_support: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(phases (B*S, P) complex128, multiplicity (B,) int64, row_weight (B*S,) float64)`` of the plan.

    ``P`` is the taps in row-major order (``on_support=False``) or the support's distinct offsets;
    ``row_weight`` is ``w_g / M`` (2 for a conjugate pair, M the enumerated frequencies), the inverse
    transform's weights.
    """
    plan = layer.plan
    freqs, multiplicity = plan.representatives(0, plan.size)
    offsets = plan.support().positions if on_support else None
    phases = plan.phases(freqs, offsets)
    weight = (multiplicity // plan.collapsed_multiplicity).astype(np.float64) / plan.size
    return phases, multiplicity, np.repeat(weight, plan.aliases)


def transfer_matrices(weight: Any, layer: Layer, folded: Any = None) -> Any:
    """Transfer matrices ``(B, G, a, S*b)`` of the forward weight (or of folded support coefficients ``(P, C)``)."""
    spec, plan = layer.spec, layer.plan
    groups = spec.groups
    a, b = spec.out_channels // groups, spec.in_channels // groups
    complex_dtype = jnp.complex128 if weight.dtype in (jnp.float64, jnp.complex128) else jnp.complex64
    if folded is None:
        phases = phase_table(layer, False)[0]
        flat = weight.reshape(spec.out_channels * b, -1).T  # (taps, O*I/G)
    else:
        phases = phase_table(layer, True)[0]
        flat = folded
    batch = phases.shape[0] // plan.aliases
    table = jnp.asarray(phases, dtype=complex_dtype)
    matrices = jnp.matmul(table, flat.astype(complex_dtype), precision=jax.lax.Precision.HIGHEST)
    matrices = matrices.reshape(batch, plan.aliases, groups, a, b).transpose(0, 2, 3, 1, 4)
    return matrices.reshape(batch, groups, a, plan.aliases * b)


def memory_bytes(layer: Layer, itemsize: int) -> int:
    """Bytes of the phase table and the transfer matrices (the largest arrays of one call)."""
    spec, plan = layer.spec, layer.plan
    rows = plan.count * plan.aliases
    return 2 * itemsize * rows * (math.prod(spec.kernel_size) + spec.out_channels * spec.in_channels // spec.groups)
