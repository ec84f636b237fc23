r"""The circular projection of a convolution kernel in ``keras.ops``: backend-native, traceable, jit-compatible.

The same projection as :func:`convspectra.clip_operator_norm` (Sedghi, Gupta & Long 2019,
Proposition 12), written with backend-agnostic Keras operations only (``einsum``, ``reshape``,
``transpose``, ``svd``), so it runs inside a compiled ``model.fit`` on every Keras backend, on the
variable's device. One iteration, for the kernel ``K`` with taps at offsets ``dilation * t mod n``:

1. the discrete Fourier transform of the folded kernel at every frequency ``f`` of the input grid,
   one product with a table of phases on the support (``cos``/``sin``, real arithmetic);
2. the transfer matrix of each output frequency ``h`` and group: the ``prod(stride)`` aliased input
   frequencies ``h + m a`` side by side, divided by ``sqrt(prod(stride))``;
3. its singular values clipped at ``c``, by the SVD of the real ``2p x 2q`` embedding
   ``[[Re T, -Im T], [Im T, Re T]]`` (a complex matrix's singular values, each twice; the clip is a
   spectral function, so the clipped embedding is the embedding of the clipped ``T``);
4. the change brought back to the kernel's own taps (the inverse transform restricted to the support;
   taps that share an offset modulo ``n`` share its change equally, as the NumPy engine does).

With ``rescale`` the result is multiplied by ``min(1, c / sigma_max)``, ``sigma_max`` its exact
circular norm computed the same way, so the returned kernel satisfies the bound to rounding.

Example:
    >>> import numpy as np, convspectra as cs
    >>> from convspectra.keras.clip import CircularPlan, clip_kernel
    >>> kernel = np.random.default_rng(0).normal(size=(3, 3, 4, 8)).astype("float32")
    >>> plan = CircularPlan.create(kernel.shape, 8)
    >>> mine = np.asarray(clip_kernel(kernel, plan, 1.0, iterations=3, rescale=False))
    >>> engine = cs.clip_operator_norm(kernel.astype("float64"), 8, 1.0, iterations=3, layout="HWIO")
    >>> bool(np.abs(mine - engine).max() < 1e-5)
    True
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._memory import check_budget, resolve_budget
from ..spec import parse_layer

__all__ = ["CircularPlan", "circular_norm", "clip_kernel"]


@dataclass(frozen=True, eq=False)
class CircularPlan:
    """One kernel shape's layer on one input grid: sizes and the phase tables (NumPy, built once).

    Attributes:
        kernel_shape: the engine-layout (``"HWIO"``) kernel shape ``(k..., in // groups, out)``.
        grid: the forward convolution's input grid ``n``; ``out_grid``: its output ``m = n / stride``.
        stride, groups: as in the layer.
        cos, sin: ``(taps, prod(n))`` phase tables ``cos/sin(2 pi <f, offset_t / n>)``.
        share: ``(taps,)`` how many taps share each tap's offset modulo ``n``.
    """

    kernel_shape: tuple[int, ...]
    grid: tuple[int, ...]
    out_grid: tuple[int, ...]
    stride: tuple[int, ...]
    groups: int
    cos: np.ndarray
    sin: np.ndarray
    share: np.ndarray

    @classmethod
    def create(
        cls,
        kernel_shape: Sequence[int],
        input_shape: int | Sequence[int],
        *,
        stride: int | Sequence[int] | None = None,
        dilation: int | Sequence[int] | None = None,
        groups: int | None = None,
        transposed: bool | None = None,
        max_memory: int | None = None,
    ) -> CircularPlan:
        """Validate the layer (as :func:`convspectra.singular_values` does) and build its tables.

        Raises:
            ParameterError, ParameterTypeError: a bad layer description (the engine's messages).
            MemoryBudgetError: the tables and the per-frequency matrices exceed ``max_memory``.
        """
        kernel_shape = tuple(int(size) for size in kernel_shape)
        spec, _ = parse_layer(
            np.zeros(kernel_shape, np.float32),
            input_shape,
            layout="HWIO",
            stride=stride,
            dilation=dilation,
            groups=groups,
            transposed=transposed,
        )
        taps, freqs = math.prod(spec.kernel_size), math.prod(spec.input_shape)
        channels = spec.out_channels * (spec.in_channels // spec.groups)
        # float64 tables and, per iteration, about a dozen real arrays of every frequency's blocks (the
        # embedding is 4x a block; U and V of its SVD as much again).
        estimate = 8 * (2 * taps * freqs + 16 * freqs * channels)
        check_budget(estimate, resolve_budget(max_memory), "the Keras circular projection of this kernel")
        offsets = np.array(
            [
                [(d * t) % n for t, d, n in zip(tap, spec.dilation, spec.input_shape, strict=True)]
                for tap in itertools.product(*(range(k) for k in spec.kernel_size))
            ],
            dtype=np.int64,
        ).reshape(taps, spec.ndim)
        axes = np.meshgrid(*(np.arange(n) for n in spec.input_shape), indexing="ij")
        phase = np.zeros((taps, freqs))
        for axis, (n, f) in enumerate(zip(spec.input_shape, axes, strict=True)):
            phase += np.outer(offsets[:, axis], f.reshape(-1)) * (2 * np.pi / n)
        keys = [tuple(row) for row in offsets.tolist()]
        share = np.array([keys.count(key) for key in keys], dtype=np.float64)
        return cls(
            kernel_shape=kernel_shape,
            grid=spec.input_shape,
            out_grid=spec.output_shape,
            stride=spec.stride,
            groups=spec.groups,
            cos=np.cos(phase),
            sin=np.sin(phase),
            share=share,
        )

    @property
    def _perm(self) -> tuple[list[int], list[int]]:
        """Axis orders from ``(s1, m1, ..., sd, md, G, O/G, I/G)`` to ``(m..., G, O/G, I/G, s...)`` and back."""
        d = len(self.grid)
        forward = [2 * i + 1 for i in range(d)] + [2 * d, 2 * d + 1, 2 * d + 2] + [2 * i for i in range(d)]
        return forward, [forward.index(axis) for axis in range(len(forward))]


def _tables(plan: CircularPlan, dtype: str) -> tuple[Any, Any]:
    import keras

    return keras.ops.convert_to_tensor(plan.cos, dtype), keras.ops.convert_to_tensor(plan.sin, dtype)


def _blocks(plan: CircularPlan, kernel: Any, cos: Any, sin: Any) -> tuple[Any, Any]:
    """Real and imaginary parts of every (output frequency, group) transfer matrix: ``(M*G, O/G, I/G*S)`` each."""
    ops = __import__("keras").ops
    *_, in_g, out = plan.kernel_shape
    groups = plan.groups
    taps = plan.cos.shape[0]
    weight = ops.reshape(kernel, (taps, in_g, groups, out // groups))
    real = ops.einsum("tigo,tf->fgoi", weight, cos)
    imag = -ops.einsum("tigo,tf->fgoi", weight, sin)
    split = [size for s, m in zip(plan.stride, plan.out_grid, strict=True) for size in (s, m)]
    aliases = math.prod(plan.stride)
    batch = (math.prod(plan.out_grid) * groups, out // groups, in_g * aliases)
    forward, _ = plan._perm
    scale = 1.0 / math.sqrt(aliases)

    def block(part: Any) -> Any:
        part = ops.reshape(part, (*split, groups, out // groups, in_g))
        return ops.reshape(ops.transpose(part, forward), batch) * scale

    return block(real), block(imag)


def _unblock(plan: CircularPlan, part: Any) -> Any:
    """The inverse of the block layout of :func:`_blocks`: ``(prod(n), G, O/G, I/G)``, times ``sqrt(S)``."""
    ops = __import__("keras").ops
    *_, in_g, out = plan.kernel_shape
    groups = plan.groups
    _, backward = plan._perm
    shape = (*plan.out_grid, groups, out // groups, in_g, *plan.stride)
    part = ops.transpose(ops.reshape(part, shape), backward)
    return ops.reshape(part, (math.prod(plan.grid), groups, out // groups, in_g)) * math.sqrt(math.prod(plan.stride))


def _embed(real: Any, imag: Any) -> Any:
    ops = __import__("keras").ops
    top = ops.concatenate([real, -imag], axis=-1)
    bottom = ops.concatenate([imag, real], axis=-1)
    return ops.concatenate([top, bottom], axis=-2)


def _work_dtype(kernel: Any) -> str:
    import keras

    return "float64" if keras.backend.standardize_dtype(kernel.dtype) == "float64" else "float32"


def circular_norm(kernel: Any, plan: CircularPlan) -> Any:
    """The exact circular operator norm of an engine-layout kernel (a scalar tensor of the work dtype)."""
    ops = __import__("keras").ops
    dtype = _work_dtype(kernel)
    cos, sin = _tables(plan, dtype)
    real, imag = _blocks(plan, ops.cast(kernel, dtype), cos, sin)
    return ops.max(ops.svd(_embed(real, imag), compute_uv=False))


def clip_kernel(kernel: Any, plan: CircularPlan, max_norm: float, *, iterations: int = 1, rescale: bool = True) -> Any:
    """Alternating projection of an engine-layout kernel onto ``{||A||_2 <= max_norm}`` with its own support.

    Args:
        kernel: a tensor (or NumPy array) of shape ``plan.kernel_shape``.
        plan: the layer's :class:`CircularPlan`.
        max_norm: the bound ``c > 0``.
        iterations: rounds of (clip every frequency, restrict to the support).
        rescale: multiply the result by ``min(1, c / sigma_max)`` so that it satisfies the bound.

    Returns:
        The projected kernel, a backend tensor of the kernel's dtype (computed in float32, or float64
        for float64 kernels).
    """
    ops = __import__("keras").ops
    given = kernel.dtype if hasattr(kernel, "dtype") else "float32"
    dtype = _work_dtype(kernel)
    cos, sin = _tables(plan, dtype)
    share = ops.convert_to_tensor(plan.share, dtype)
    freqs = plan.cos.shape[1]
    *_, in_g, out = plan.kernel_shape
    groups = plan.groups
    work = ops.cast(ops.convert_to_tensor(kernel), dtype)
    q = in_g * math.prod(plan.stride)
    p = out // groups
    for _ in range(iterations):
        real, imag = _blocks(plan, work, cos, sin)
        matrix = _embed(real, imag)
        left, values, right = ops.svd(matrix, full_matrices=False)
        excess = ops.relu(values - ops.cast(max_norm, dtype))
        change = -ops.matmul(left * ops.expand_dims(excess, -2), right)
        d_real = (change[:, :p, :q] + change[:, p:, q:]) * 0.5
        d_imag = (change[:, p:, :q] - change[:, :p, q:]) * 0.5
        d_real, d_imag = _unblock(plan, d_real), _unblock(plan, d_imag)
        delta = ops.einsum("fgoi,tf->tigo", d_real, cos) - ops.einsum("fgoi,tf->tigo", d_imag, sin)
        delta = delta / (freqs * ops.reshape(share, (-1, 1, 1, 1)))
        work = work + ops.reshape(delta, plan.kernel_shape)
    if rescale:
        sigma = circular_norm(work, plan)
        bound = ops.cast(max_norm, dtype)
        work = work * ops.minimum(ops.cast(1.0, dtype), bound / ops.maximum(sigma, ops.cast(1e-30, dtype)))
    return ops.cast(work, given)
