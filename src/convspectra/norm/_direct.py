"""The wrap-around layer applied tap by tap: ``A x`` without spreading the kernel on the grid.

A bracket's lower end pushes the top singular vector through the true operator. The FFT operator
(:class:`~convspectra.norm.ConvOperator`) holds the kernel's transform on the whole grid
(``out x in x grid`` complex numbers: 3 GiB for a 512 <- 256 1x1 layer at 56x56), while this
product needs only one shifted copy of the input and the output, and ``taps x out x in x output``
multiply-adds: cheaper in memory on every layer and in time on all but the largest kernels.
It is also a second, independent implementation of the layer (tested against ConvOperator).

Example:
    >>> import numpy as np
    >>> y = wrap_matvec(np.ones((1, 1, 2)), np.arange(4.0)[None], stride=(1,), dilation=(1,), groups=1)
    >>> y.tolist()   # y[p] = x[p] + x[p + 1 mod 4]
    [[1.0, 3.0, 5.0, 3.0]]
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

__all__ = ["wrap_matvec", "wrap_matvec_bytes"]


def wrap_matvec(
    weight: np.ndarray, x: np.ndarray, *, stride: Sequence[int], dilation: Sequence[int], groups: int
) -> np.ndarray:
    """``A x`` for the wrap-around forward layer: ``y[o, p] = sum_{i, t} W[o, i, t] x[i, (s p + d t) mod n]``.

    Args:
        weight: forward weight ``(out_channels, in_channels / groups, *kernel)``.
        x: input ``(in_channels, *n)``; every ``n`` a multiple of its stride.
        stride, dilation: one per spatial axis.
        groups: the layer's groups.

    Returns:
        ``(out_channels, *(n / stride))``.
    """
    out_channels, per_group = weight.shape[:2]
    grid = x.shape[1:]
    out_shape = tuple(n // s for n, s in zip(grid, stride, strict=True))
    w = weight.reshape(groups, out_channels // groups, per_group, -1)
    y = np.zeros((groups, out_channels // groups, math.prod(out_shape)), dtype=np.result_type(weight, x))
    taps = itertools.product(*(range(k) for k in weight.shape[2:]))
    for k, tap in enumerate(taps):
        rows = (
            (s * np.arange(m) + (d * t) % n) % n
            for s, m, d, t, n in zip(stride, out_shape, dilation, tap, grid, strict=True)
        )
        shifted = x[(slice(None), *np.ix_(*rows))].reshape(groups, per_group, -1)
        y += w[:, :, :, k] @ shifted
    return y.reshape(out_channels, *out_shape)


def wrap_matvec_bytes(out_channels: int, in_channels: int, output_shape: Sequence[int], real: bool) -> int:
    """Peak bytes of one :func:`wrap_matvec` (the output, one shifted input, one product), Python ints."""
    item = 8 if real else 16
    points = math.prod(output_shape)
    return item * points * (2 * out_channels + in_channels)
