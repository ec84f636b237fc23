"""What a projection call will allocate, estimated in Python integers before anything is allocated.

The estimate follows :mod:`~convspectra.projection._loop` and :mod:`~convspectra.projection._tables`:
each kernel's working taps (and its result), the phase tables of every distinct layer shape
(their forward and inverse tables on the support, and the integers they are built from), and
the working set of the batches of transfer matrices that run at once (the matrices, the clipped
copies, the Gram matrices and their eigenvectors, or the SVD's factors for a band). A request
over the budget is refused by :func:`check_projection` before the first kernel is copied.

Example:
    >>> from convspectra.spec import parse_layer
    >>> import numpy as np
    >>> spec, _ = parse_layer(np.ones((1, 1, 3, 3)), 2**20)
    >>> projection_bytes([(spec, True, False)], workers=1) > 2**40   # a 2**20 x 2**20 grid
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .._memory import check_budget
from ..spec import ConvSpec
from ..transfer import FrequencyPlan

__all__ = ["check_projection", "projection_bytes"]

#: As ``_loop._BATCH_BYTES``: layers of one shape are batched up to about this many bytes of matrices.
_BATCH_BYTES = 2 * 2**20


def _plan(spec: ConvSpec, real: bool, band: bool) -> FrequencyPlan:
    return FrequencyPlan.create(spec, real=real, collapse_strided=not band)


def _tables_bytes(plan: FrequencyPlan) -> int:
    """The phase tables of one layer shape and what building them allocates."""
    taps = math.prod(plan.spec.kernel_size)
    support = min(taps, plan.size * plan.aliases)
    rows = plan.count * plan.aliases
    representatives = 8 * plan.size * (4 + plan.spec.ndim)
    building = rows * (8 * plan.spec.ndim + 24 * support)
    return representatives + building + 16 * rows * support * 6 + 8 * support * taps


def _layer_matrix_bytes(plan: FrequencyPlan) -> int:
    """Bytes of one layer's transfer matrices (and the support-sized operands) in a batch."""
    spec = plan.spec
    columns = spec.out_channels * (spec.in_channels // spec.groups)
    support = min(math.prod(spec.kernel_size), plan.size * plan.aliases)
    return 16 * plan.count * plan.aliases * max(columns, support)


def _batch_working_bytes(plan: FrequencyPlan, layers: int, band: bool) -> int:
    """One batch of ``layers`` layers: matrices, clipped copies, Gram matrices and eigenvectors (or SVD factors)."""
    spec = plan.spec
    rows, cols = plan.block_shape
    small = min(rows, cols)
    matrices = _layer_matrix_bytes(plan) * layers
    decomposition = 16 * plan.count * spec.groups * layers * (small * small * 4 + (2 * rows * cols if band else 0))
    return 8 * matrices + decomposition  # Dykstra (its correction, t + D) peaks near 5x


def projection_bytes(layers: Sequence[tuple[ConvSpec, bool, bool]], workers: int) -> int:
    """Peak bytes of projecting kernels of the layers ``(spec, real, band)``, ``workers`` threads.

    Args:
        layers: per kernel, its forward layer, whether it is real, whether a ``min_norm`` band is asked.
        workers: the NumPy worker threads (batches of different shapes run concurrently).
    """
    total = 0
    shapes: dict[tuple[ConvSpec, bool, bool], int] = {}
    for spec, real, band in layers:
        columns = spec.out_channels * (spec.in_channels // spec.groups)
        total += 16 * 4 * math.prod(spec.kernel_size) * columns  # taps, folded, result, restored copy
        shapes[(spec, real, band)] = shapes.get((spec, real, band), 0) + 1
    batches = []
    for (spec, real, band), count in shapes.items():
        plan = _plan(spec, real, band)
        total += _tables_bytes(plan)
        per_batch = max(1, _BATCH_BYTES // max(1, _layer_matrix_bytes(plan)))
        batches.append(_batch_working_bytes(plan, min(count, per_batch), band))
    if batches:
        concurrent = max(1, min(workers, len(batches)))
        total += sum(sorted(batches, reverse=True)[:concurrent])
    return total


def check_projection(layers: Sequence[tuple[ConvSpec, bool, bool]], workers: int, budget: int) -> None:
    """Refuse the projection of ``layers`` (see :func:`projection_bytes`) over ``budget`` bytes; allocates nothing."""
    first = layers[0][0] if layers else None
    what = "the projection of " + (
        f"this layer ({first.in_channels}->{first.out_channels} channels, kernel "
        f"{'x'.join(map(str, first.kernel_size))}, input {'x'.join(map(str, first.input_shape))})"
        if len(layers) == 1 and first is not None
        else f"these {len(layers)} layers"
    )
    check_budget(projection_bytes(layers, workers), budget, what)
