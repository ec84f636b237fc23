"""What a norm request will allocate, estimated in Python integers before anything is allocated.

Every solver path of :func:`convspectra.operator_norm` and :func:`convspectra.operator_norm_bounds`
is estimated from the layer's sizes alone (no array is created), and refused through
:func:`convspectra._memory.check_budget` when the estimate exceeds ``max_memory``: so that a
request of any size is refused in microseconds, before the first large allocation.

The estimates follow the code they describe, term by term, rounded up:

* the wrap-around maximum (:mod:`convspectra.norm._circular`): the frequency bookkeeping (the
  representatives and the boxes of the branch and bound, a few integers per frequency), the
  working set of the concurrent chunks of transfer matrices (their phase tables, the matrices,
  their Gram matrices) and of the chunked box-centre data;
* the certificate (a bracket's lower end, the padded layer's start): the top singular vector on
  the enlarged grid and a few input- and output-sized vectors;
* the padded solver: the tap-by-tap operator (the weight, the extended input, one slice, one
  product), the Lanczos basis (at most :data:`LANCZOS_MAX_BYTES`, at least
  :data:`LANCZOS_MIN_BASIS` vectors) and its products. The optional Cholesky certificate is
  attempted only when it fits the budget left over (:mod:`convspectra.norm._cholesky`).

Example:
    >>> import numpy as np
    >>> from convspectra.norm._budget import request_bytes
    >>> from convspectra.norm._request import resolve_request
    >>> request = resolve_request(np.ones((1, 1, 3, 3)), 2**20, padding="circular")
    >>> request_bytes(request, want_bracket=False) > 2**40   # 2**40 frequencies: refused up front
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .._memory import check_budget
from ..spec import ConvSpec
from ..transfer import FrequencyPlan
from ._direct import wrap_matvec_bytes
from ._operator import operator_product_bytes
from ._request import NormRequest

__all__ = [
    "CENTRE_CHUNK_BYTES",
    "LANCZOS_MAX_BYTES",
    "LANCZOS_MIN_BASIS",
    "check_request",
    "lanczos_basis",
    "maximum_bytes",
    "operator_bytes",
    "padded_bytes",
    "request_bytes",
    "wrap_spec",
]

#: Bytes of box-centre matrices the branch and bound processes at once.
CENTRE_CHUNK_BYTES = 16 * 2**20
#: The fewest Lanczos vectors the padded solver keeps.
LANCZOS_MIN_BASIS = 10
#: The most bytes of Lanczos vectors the padded solver keeps (and at most a quarter of the budget).
LANCZOS_MAX_BYTES = 512 * 2**20
#: Bytes of transfer matrices per chunk (as :mod:`convspectra.norm._sigma` cuts them).
_CHUNK_BYTES = 8 * 2**20


def _real_half(grid: Sequence[int], real: bool) -> int:
    """Points of a (real-to-complex when ``real``) FFT of ``grid``."""
    if not real:
        return math.prod(grid)
    return math.prod(grid[:-1]) * (grid[-1] // 2 + 1)


def maximum_bytes(spec: ConvSpec, real: bool, workers: int) -> int:
    """Peak bytes of :func:`~convspectra.norm._circular.circular_maximum` on the layer ``spec``."""
    plan = FrequencyPlan.create(spec, real=real)
    d = spec.ndim
    groups = spec.groups
    rows, cols = plan.block_shape
    small, large = min(rows, cols), max(rows, cols)
    taps = math.prod(spec.kernel_size)
    bookkeeping = plan.size * (96 + 48 * d)  # representatives, boxes, points, values: int64/float64 per frequency
    per_matrix = 16 * groups * (4 * rows * cols + 3 * small * small)  # product, layout copy, conj copy, Gram
    per_frequency = per_matrix + 32 * plan.aliases * taps  # the phase table and its integer steps
    per_chunk = max(1, _CHUNK_BYTES // (16 * rows * cols * groups))
    chunk = min(per_chunk, plan.size) * per_frequency
    concurrent = max(1, min(workers, -(-plan.size // per_chunk)))
    per_centre = 16 * groups * (6 + 3 * d) * small * large
    centres = min(CENTRE_CHUNK_BYTES, plan.size * per_centre) + per_centre  # one chunk of box centres
    flat = 16 * taps * spec.out_channels * (spec.in_channels // groups)
    return bookkeeping + concurrent * chunk + centres + 3 * flat + 16 * large * small * groups


def operator_bytes(
    spec: ConvSpec, input_shape: Sequence[int], output_shape: Sequence[int], real: bool, extended: Sequence[int]
) -> int:
    """Peak bytes of a :class:`~convspectra.norm.ConvOperator` (its weight copy) and one product with it
    (or its adjoint) on the ``extended`` input."""
    item = 8 if real else 16
    weight = 2 * item * spec.out_channels * (spec.in_channels // spec.groups) * math.prod(spec.kernel_size)
    product = operator_product_bytes(spec.in_channels, spec.out_channels, extended, math.prod(output_shape), item)
    vectors = 2 * item * (spec.in_channels * math.prod(input_shape) + spec.out_channels * math.prod(output_shape))
    return weight + product + vectors


def _vector_bytes(spec: ConvSpec, grid: Sequence[int]) -> int:
    """The top singular vector built on ``grid`` (:func:`~convspectra.norm._circular.top_singular_vector`)."""
    points = math.prod(grid)
    return points * (16 * 3 * spec.in_channels + 8 * 2 * spec.ndim + 16 * 4)


def lanczos_basis(request: NormRequest) -> int:
    """The padded solver's Lanczos basis size: 300 vectors at most, at most :data:`LANCZOS_MAX_BYTES` and a
    quarter of the budget, at least :data:`LANCZOS_MIN_BASIS`."""
    spec = request.spec
    columns = spec.in_channels * math.prod(request.input_shape)
    item = 16 if request.is_complex else 8
    room = min(LANCZOS_MAX_BYTES, request.max_memory // 4) // max(1, item * columns)
    return int(max(LANCZOS_MIN_BASIS, min(300, room)))


def _lanczos_bytes(request: NormRequest, real: bool) -> int:
    """The Lanczos basis, plus the solver's vectors (the start and its perturbation, the recurrence's
    temporaries, the single-precision product's conversions: 12 input-sized vectors at most)."""
    spec = request.spec
    columns = spec.in_channels * math.prod(request.input_shape)
    rows = spec.out_channels * math.prod(spec.output_shape)
    item = 8 if real else 16
    return (lanczos_basis(request) + 12) * item * columns + 4 * item * rows


def wrap_spec(spec: ConvSpec, grid: Sequence[int], stride: Sequence[int]) -> ConvSpec:
    """``spec`` as a wrap-around layer on the input ``grid`` with ``stride``."""
    return ConvSpec(
        ndim=spec.ndim,
        out_channels=spec.out_channels,
        in_channels=spec.in_channels,
        groups=spec.groups,
        kernel_size=spec.kernel_size,
        stride=tuple(stride),
        dilation=spec.dilation,
        input_shape=tuple(grid),
        output_shape=tuple(n // s for n, s in zip(grid, stride, strict=True)),
        transposed=False,
    )


def padded_bytes(request: NormRequest) -> int:
    """Peak bytes of the padded solver of ``request`` without its optional Cholesky certificate."""
    spec = request.spec
    real = not request.is_complex
    if request.mode == "zeros":
        certificate = wrap_spec(spec, request.enlarged_grid(), spec.stride)
    else:
        certificate = wrap_spec(spec, request.input_shape, (1,) * spec.ndim)
    extended = tuple(
        s * (m - 1) + d * (k - 1) + 1
        for s, m, d, k in zip(spec.stride, spec.output_shape, spec.dilation, spec.kernel_size, strict=True)
    )
    op = operator_bytes(spec, request.input_shape, spec.output_shape, real, extended)
    op += -(-op // 2)  # and the same layer in single precision, for the Lanczos solver's first run
    start = maximum_bytes(certificate, real, request.workers) + _vector_bytes(spec, certificate.input_shape)
    return op + max(start, _lanczos_bytes(request, real))


def request_bytes(request: NormRequest, *, want_bracket: bool) -> int:
    """Peak bytes the solver of ``request`` will allocate (an estimate that errs high).

    Args:
        request: the validated request (nothing of it is allocated here).
        want_bracket: wrap-around layers: whether the certificate vector is pushed through the operator.
    """
    spec = request.spec
    real = not request.is_complex
    if request.mode == "wrap":
        total = maximum_bytes(spec, real, request.workers)
        if want_bracket:
            n = spec.input_shape
            out = spec.output_shape
            total += wrap_matvec_bytes(spec.out_channels, spec.in_channels, out, real) + _vector_bytes(spec, n)
        return total
    return padded_bytes(request)


def check_request(request: NormRequest, *, want_bracket: bool) -> None:
    """Refuse ``request`` with :class:`~convspectra.errors.MemoryBudgetError` when :func:`request_bytes`
    exceeds its ``max_memory``; allocates nothing."""
    spec = request.spec
    layer = (
        f"{spec.in_channels}->{spec.out_channels} channels, kernel {'x'.join(map(str, spec.kernel_size))}, "
        f"input {'x'.join(map(str, request.input_shape))}"
    )
    what = "the " + ("wrap-around" if request.mode == "wrap" else "padded") + f" operator norm of this layer ({layer})"
    check_budget(request_bytes(request, want_bracket=want_bracket), request.max_memory, what)
