"""The layer as an explicit matrix, built with PyTorch's own convolution.

:func:`dense_matrix` feeds the identity basis through ``torch.nn.functional.conv{1,2,3}d``
(or ``conv_transpose{1,2,3}d`` for a transposed layer) on a wrap-around grid. It is the
full-matrix method of the paper's Figure 1 and the reference the test-suite checks every
fast path against: nothing in it shares code with the Fourier computation.

Wrap-around is implemented literally: the input is tiled periodically and convolved without
padding (this works for kernels larger than the input, where ``padding_mode="circular"``
cannot); a transposed layer's output is folded back modulo the grid.

Example:
    >>> import numpy as np
    >>> from convspectra.operator import dense_matrix
    >>> dense_matrix(np.ones((1, 1, 2)), 3)       # y[u] = x[u] + x[u + 1 mod 3]
    array([[1., 1., 0.],
           [0., 1., 1.],
           [1., 0., 1.]])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._memory import check_budget, nbytes, resolve_budget
from .spec import parse_layer

__all__ = ["dense_matrix"]

_DEFAULT_DENSE_BUDGET = 2 * 2**30


def _torch() -> Any:
    try:
        import torch
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("dense_matrix needs PyTorch: pip install 'convspectra[torch]'") from err
    return torch


def _tile(x: Any, reps: Sequence[int], lengths: Sequence[int]) -> Any:
    """Periodic extension of the spatial axes of ``x`` (N, C, *n) to ``lengths``."""
    x = x.repeat(1, 1, *reps)
    index = (slice(None), slice(None), *tuple(slice(0, length) for length in lengths))
    return x[index]


def _fold(z: Any, sizes: Sequence[int]) -> Any:
    """Sum ``z`` (N, C, *L) modulo ``sizes`` on each spatial axis: the adjoint of :func:`_tile`."""
    torch = _torch()
    for axis, n in enumerate(sizes, start=2):
        length = z.shape[axis]
        reps = -(-length // n)
        pad = [0, 0] * (z.dim() - 1 - axis) + [0, reps * n - length]
        z = torch.nn.functional.pad(z, pad)
        shape = (*z.shape[:axis], reps, n, *z.shape[axis + 1 :])
        z = z.reshape(shape).sum(dim=axis)
    return z


def dense_matrix(
    kernel: Any,
    input_shape: int | Sequence[int],
    *,
    layout: str | None = None,
    stride: int | Sequence[int] | None = None,
    dilation: int | Sequence[int] | None = None,
    groups: int | None = None,
    transposed: bool | None = None,
    max_memory: int | None = _DEFAULT_DENSE_BUDGET,
) -> Any:
    """The dense matrix of a wrap-around convolution layer, from PyTorch's convolution.

    Arguments as :func:`convspectra.singular_values`. Row and column order: the layer's
    output and input flattened C-style from ``(channels, *spatial)``.

    Returns:
        ``(rows, columns)`` float64 (complex128 for complex kernels) matrix; NumPy for NumPy
        input, torch (on the kernel's device) for torch input.

    Raises:
        MemoryBudgetError: the matrix and the working arrays of its columns would exceed
            ``max_memory`` bytes (default 2 GiB; ``None``: the library's default budget). Refused
            before anything is allocated.
    """
    budget = resolve_budget(max_memory)
    torch = _torch()
    spec, weight = parse_layer(
        kernel, input_shape, layout=layout, stride=stride, dilation=dilation, groups=groups, transposed=transposed
    )
    rows, cols = spec.matrix_shape
    entry = 16 if (weight.is_complex() if isinstance(weight, torch.Tensor) else np.iscomplexobj(weight)) else 8
    # Dilation acts modulo the grid (tap t lands on dilation * t mod n): the same operator with the
    # dilation reduced to [1, n] keeps the tiled input short whatever the dilation (2**70 included).
    dilation_t = tuple((dl - 1) % n + 1 for dl, n in zip(spec.dilation, spec.input_shape, strict=True))
    axes = zip(spec.stride, spec.output_shape, dilation_t, spec.kernel_size, strict=True)
    lengths = [s * (m - 1) + dl * (k - 1) + 1 for s, m, dl, k in axes]
    per_column = entry * (rows + cols + nbytes(spec.in_channels, lengths))  # basis, tiled input, output
    batch = max(1, (64 * 2**20) // per_column)
    check_budget(
        nbytes(rows, cols, entry) + 3 * batch * per_column,
        budget,
        f"the dense {rows:,} x {cols:,} matrix",
        "; this is what the Fourier method avoids",
    )
    as_numpy = not isinstance(weight, torch.Tensor)
    w = torch.from_numpy(np.ascontiguousarray(weight)) if as_numpy else weight.detach()
    w = w.to(torch.complex128 if w.is_complex() else torch.float64)
    d = spec.ndim
    conv = getattr(torch.nn.functional, f"conv{d}d")
    conv_t = getattr(torch.nn.functional, f"conv_transpose{d}d")
    reps = [-(-length // n) for length, n in zip(lengths, spec.input_shape, strict=True)]
    matrix = torch.empty(rows, cols, dtype=w.dtype, device=w.device)
    for start in range(0, cols, batch):
        count = min(batch, cols - start)
        basis = torch.zeros(count, cols, dtype=w.dtype, device=w.device)
        basis[torch.arange(count), torch.arange(start, start + count)] = 1
        if spec.transposed:  # input: (c_out, *m) of the forward conv; output folded onto n
            y = basis.reshape(count, spec.out_channels, *spec.output_shape)
            z = conv_t(y, w, stride=spec.stride, dilation=dilation_t, groups=spec.groups)
            out = _fold(z, spec.input_shape)
        else:
            x = basis.reshape(count, spec.in_channels, *spec.input_shape)
            out = conv(_tile(x, reps, lengths), w, stride=spec.stride, dilation=dilation_t, groups=spec.groups)
        matrix[:, start : start + count] = out.reshape(count, rows).T
    return matrix.cpu().numpy() if as_numpy else matrix
