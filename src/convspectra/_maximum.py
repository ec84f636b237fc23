r"""The largest singular value of a circular convolution: branch and bound over frequencies.

The operator norm is :math:`\max_g \sigma_{\max}(T(g))` over the output-frequency grid (see
:mod:`convspectra.transfer`). :math:`T` is a trigonometric polynomial of the frequency, so it
cannot vary fast: shifting every frequency by :math:`\Delta` (in grid steps, per axis) and
removing a common phase :math:`e^{2\pi i \sum_a \Delta_a \delta_a c_a / n_a}` (c: the kernel's
centre) changes each tap's term by a factor of modulus
:math:`|e^{i\alpha_t} - 1| \le \min(2, |\alpha_t|)`,
:math:`\alpha_t = 2\pi \sum_a \Delta_a \delta_a (t_a - c_a) / n_a`. Hence, for every frequency of a
box with centre :math:`g_0` and half-widths :math:`r_a`,

.. math::  \sigma_{\max}(T(g)) \le \sigma_{\max}(T(g_0))
           + \sum_t \|W_t\|_2 \min\big(2,\ 2\pi \sum_a r_a \delta_a |t_a - c_a| / n_a\big),

(the aliases of a strided layer all move by the same :math:`\Delta`, and the bound holds per
alias block, hence for their scaled concatenation). Boxes whose bound cannot beat the best
value already *computed at an actual frequency* are discarded; the others are halved. What is
left at the end is computed exactly, so the result is the exact maximum — the pruning only
decides what need not be computed. On trained kernels the spectrum is peaked and a few hundred
small decompositions decide the maximum whatever the input size; on flat spectra (random
kernels) nothing can be pruned and every frequency is computed once (as the full spectrum
would), with the cheaper largest-eigenvalue-of-the-Gram-matrix route.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._parallel import _single_threaded_blas, run_chunks
from .transfer import FrequencyPlan

__all__ = ["CircularMaximum", "circular_maximum", "sigma_max_at", "top_singular_vector"]

#: Below this many candidate frequencies, every one is computed directly.
_DIRECT = 2048
#: Number of boxes the first round splits the frequency domain into.
_FIRST_BOXES = 256
#: Bytes of transfer matrices per chunk of the direct enumeration.
_CHUNK_BYTES = 8 * 2**20


@dataclass(frozen=True)
class CircularMaximum:
    """The result of :func:`circular_maximum`.

    Attributes:
        value: the largest singular value of the layer.
        frequency: ``(d,)`` int64 grid coordinates of a frequency where it is attained.
        evaluated: how many frequencies had their largest singular value computed.
        total: how many frequencies the full spectrum decomposes (one per conjugate pair).
    """

    value: float
    frequency: np.ndarray
    evaluated: int
    total: int


def _sigma_max(matrices: np.ndarray, floor: float = -np.inf) -> np.ndarray:
    """Largest singular value of each of ``(B, p, q)`` matrices, via the smaller Gram matrix.

    Matrices whose Frobenius norm, or the fourth root of their Gram matrix's squared Frobenius
    norm, is at most ``floor`` cannot exceed it: their (upper-bound) value is returned instead
    of the exact one and the eigensolver is skipped for them.
    """
    matrices = np.ascontiguousarray(matrices)
    p, q = matrices.shape[1:]
    frobenius = np.sqrt(np.einsum("bij,bij->b", matrices, matrices.conj()).real)
    if min(p, q) == 1:
        return frobenius
    result = frobenius.copy()
    todo = np.flatnonzero(frobenius > floor)
    if not len(todo):
        return result
    part = matrices[todo]
    herm = np.ascontiguousarray(np.swapaxes(part, 1, 2).conj())
    gram = part @ herm if p <= q else herm @ part
    bound = np.sqrt(np.sqrt(np.einsum("bij,bij->b", gram, gram.conj()).real))  # ||G||_F^(1/2)
    result[todo] = bound
    if np.isfinite(floor):  # one more Gram step: ||G^2||_F^(1/4), a GEMM instead of an eigensolver
        keep = bound > floor
        todo, gram = todo[keep], gram[keep]
        square = gram @ gram
        bound = np.sqrt(np.sqrt(np.sqrt(np.einsum("bij,bij->b", square, square.conj()).real)))
        result[todo] = np.minimum(result[todo], bound)
    keep = bound > floor
    if keep.any():
        result[todo[keep]] = np.sqrt(np.maximum(np.linalg.eigvalsh(gram[keep])[:, -1], 0.0))
    return result


def sigma_max_at(
    plan: FrequencyPlan, flat: np.ndarray, freqs: np.ndarray, workers: int = 1, floor: float = -np.inf
) -> np.ndarray:
    """``(B,)`` largest singular value of the transfer matrix at each of ``freqs`` (max over groups).

    Values at most ``floor`` may be replaced by upper bounds that are also at most ``floor``.
    """
    groups = plan.spec.groups
    rows, cols = plan.block_shape
    per_chunk = max(1, _CHUNK_BYTES // (16 * rows * cols * groups))
    chunks = [freqs[i : i + per_chunk] for i in range(0, len(freqs), per_chunk)]
    if workers > 1 and len(chunks) < 4 * workers and len(freqs) > 1:
        per = max(1, math.ceil(len(freqs) / (4 * workers)))
        chunks = [freqs[i : i + per] for i in range(0, len(freqs), per)]

    def one(part: np.ndarray) -> np.ndarray:
        return _sigma_max(plan.transfer_numpy(flat, part), floor).reshape(len(part), groups).max(axis=1)

    if not chunks:
        return np.zeros(0)
    return np.concatenate(run_chunks(one, chunks, workers if len(freqs) > 64 else 1))


def _gram_bound(matrices: np.ndarray) -> np.ndarray:
    """``(B,)`` upper bounds on the spectral norms: ``||M^H M||_F^(1/2)``."""
    matrices = np.ascontiguousarray(matrices)
    p, q = matrices.shape[1:]
    herm = np.ascontiguousarray(np.swapaxes(matrices, 1, 2).conj())
    gram = matrices @ herm if p <= q else herm @ matrices
    return np.sqrt(np.sqrt(np.einsum("bij,bij->b", gram, gram.conj()).real))


def centre_values(
    plan: FrequencyPlan, flat: np.ndarray, freqs: np.ndarray, slopes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Largest singular values at ``freqs`` and bounds on the norms of the derivatives there.

    Returns:
        ``(values (B,), derivative_norms (B, d))``: ``derivative_norms[b, a]`` bounds
        ``||D_a||_2`` with ``D_a = sum_t slopes[t, a] W_t exp(i theta_t)``, the derivative of the
        (phase-centred) transfer matrix along axis ``a`` per grid step (max over groups).
    """
    groups = plan.spec.groups
    batch = len(freqs)
    phases = plan.phases(freqs)
    values = _sigma_max(plan._block_layout(phases @ flat, batch, torch_mode=False))
    values = values.reshape(batch, groups).max(axis=1)
    norms = np.zeros((batch, slopes.shape[1]))
    for axis in range(slopes.shape[1]):
        if not slopes[:, axis].any():
            continue
        derivative = plan._block_layout((phases * slopes[None, :, axis]) @ flat, batch, torch_mode=False)
        norms[:, axis] = _gram_bound(derivative).reshape(batch, groups).max(axis=1)
    return values, norms


def _tap_norms(plan: FrequencyPlan, flat: np.ndarray) -> np.ndarray:
    """``(taps,)`` spectral norm of each tap's (block-diagonal) channel matrix."""
    spec = plan.spec
    a, b0 = spec.out_channels // spec.groups, spec.in_channels // spec.groups
    blocks = flat.reshape(flat.shape[0], spec.groups, a, b0)
    return np.linalg.svd(blocks, compute_uv=False)[..., 0].max(axis=1)


def _lipschitz_weights(plan: FrequencyPlan) -> np.ndarray:
    """``(taps, d)``: 2 pi delta_a |t_a - c_a| / n_a, the phase change per grid step of each tap."""
    spec = plan.spec
    taps = np.stack(np.unravel_index(np.arange(math.prod(spec.kernel_size)), spec.kernel_size), axis=1)
    centre = (np.asarray(spec.kernel_size) - 1) / 2
    dilation = np.asarray(spec.dilation, dtype=float)
    n = np.asarray(plan.input_grid, dtype=float)
    return 2 * np.pi * np.abs(taps - centre) * dilation / n


def _box_points(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """All grid points of the boxes ``[lo, hi)``, ``(P, d)`` int64."""
    parts = []
    for low, high in zip(lo, hi, strict=True):
        axes = [np.arange(a, b) for a, b in zip(low, high, strict=True)]
        parts.append(np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(axes)))
    return np.concatenate(parts).astype(np.int64)


def _halve(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split every box in two along each axis longer than 1."""
    for axis in range(lo.shape[1]):
        split = (hi[:, axis] - lo[:, axis]) > 1
        mid = (lo[split, axis] + hi[split, axis]) // 2
        right_lo, right_hi = lo[split].copy(), hi[split].copy()
        right_lo[:, axis] = mid
        left_hi = hi.copy()
        left_hi[split, axis] = mid
        lo, hi = np.concatenate([lo, right_lo]), np.concatenate([left_hi, right_hi])
    return lo, hi


def circular_maximum(plan: FrequencyPlan, flat: np.ndarray, workers: int = 1) -> CircularMaximum:
    """The exact largest singular value of the layer of ``plan`` (``flat``: complex128 flat weight)."""
    with _single_threaded_blas():  # small matrices: BLAS threads only get in each other's way
        return _circular_maximum(plan, flat, workers)


def _circular_maximum(plan: FrequencyPlan, flat: np.ndarray, workers: int) -> CircularMaximum:
    grid = np.asarray(plan.grid, dtype=np.int64)
    ndim = len(grid)
    active = [axis for axis in range(ndim) if grid[axis] > 1]
    total = plan.count
    best, best_freq, evaluated = -np.inf, np.zeros(ndim, dtype=np.int64), 0

    def consider(points: np.ndarray, values: np.ndarray) -> None:
        nonlocal best, best_freq
        if len(values):
            top = int(np.argmax(values))
            if values[top] > best:
                best, best_freq = float(values[top]), points[top]

    if plan.size <= _DIRECT:
        freqs, _ = plan.representatives(0, plan.size)
        consider(freqs, sigma_max_at(plan, flat, freqs, workers))
        return CircularMaximum(best, np.asarray(best_freq), len(freqs), total)

    high = grid.copy()
    if plan.real and active:  # sigma(T(-g)) = sigma(T(g)): half of the first varying axis suffices
        high[active[0]] = grid[active[0]] // 2 + 1
    tap_norms = _tap_norms(plan, flat)
    weights = _lipschitz_weights(plan)  # (taps, d): |phase change| per grid step
    taps = np.stack(np.unravel_index(np.arange(math.prod(plan.spec.kernel_size)), plan.spec.kernel_size), axis=1)
    slopes = weights * np.sign(taps - (np.asarray(plan.spec.kernel_size) - 1) / 2)  # signed, (taps, d)

    def increment(radius: np.ndarray, derivative_norms: np.ndarray) -> np.ndarray:
        """Bound on sigma_max(T(g)) - sigma_max(T(g0)) over the box: min of the first-order
        (Lipschitz) bound and the second-order one around the centre's actual derivative."""
        angles = radius @ weights.T  # (B, taps) bound on |alpha_t|
        lipschitz = (tap_norms[None, :] * np.minimum(2.0, angles)).sum(axis=1)
        taylor = (radius * derivative_norms).sum(axis=1) + (tap_norms[None, :] * angles**2 / 2).sum(axis=1)
        return np.minimum(lipschitz, taylor)

    per_axis = max(2, round(_FIRST_BOXES ** (1 / len(active))))
    edges = []
    for axis in range(ndim):
        count = min(per_axis, int(high[axis])) if axis in active else 1
        edges.append(np.unique(np.linspace(0, high[axis], count + 1).round().astype(np.int64)))
    lo = np.stack(np.meshgrid(*[e[:-1] for e in edges], indexing="ij"), axis=-1).reshape(-1, ndim)
    hi = np.stack(np.meshgrid(*[e[1:] for e in edges], indexing="ij"), axis=-1).reshape(-1, ndim)
    while len(lo):
        centre = (lo + hi - 1) // 2
        radius = np.maximum(centre - lo, hi - 1 - centre)
        values, derivative_norms = centre_values(plan, flat, centre, slopes)
        evaluated += len(centre)
        consider(centre, values)
        alive = (values + increment(radius, derivative_norms) > best) & (np.prod(hi - lo, axis=1) > 1)
        lo, hi, values, derivative_norms = lo[alive], hi[alive], values[alive], derivative_norms[alive]
        if not len(lo):
            break
        # a box whose centre is so close to the best that even its one-step neighbours cannot be
        # excluded will be split down to single frequencies: compute its frequencies directly
        one_step = np.minimum(hi - lo - 1, 1)
        hopeless = values + increment(one_step, derivative_norms) > best
        if hopeless.any():
            points = _box_points(lo[hopeless], hi[hopeless])
            point_values = sigma_max_at(plan, flat, points, workers, floor=best)
            evaluated += len(points)
            consider(points, point_values)
            lo, hi = lo[~hopeless], hi[~hopeless]
        lo, hi = _halve(lo, hi)
    return CircularMaximum(best, np.asarray(best_freq, dtype=np.int64), evaluated, total)


def top_singular_vector(plan: FrequencyPlan, flat: np.ndarray, frequency: np.ndarray) -> np.ndarray:
    """A unit right singular vector of the layer for its largest singular value at ``frequency``.

    Returns the input-space vector ``(in_channels, *input_shape)`` (complex128): the plane waves
    ``exp(2 pi i f . q / n)`` of the aliased input frequencies ``f = g + j m``, weighted by the top
    right singular vector of ``T(g)`` (see :mod:`convspectra.transfer`).
    """
    spec = plan.spec
    matrices = plan.transfer_numpy(flat, frequency[None, :])  # (G, a, S*b0)
    _, s, vh = np.linalg.svd(matrices)
    group = int(np.argmax(s[:, 0]))
    coeff = vh[group, 0].conj().reshape(plan.aliases, spec.in_channels // spec.groups)  # (j, i)
    n = np.asarray(spec.input_shape)
    grid = np.asarray(plan.grid)
    aliases = np.stack(np.unravel_index(np.arange(plan.aliases), plan.stride), axis=1)
    positions = np.stack(np.meshgrid(*[np.arange(k) for k in n], indexing="ij"), axis=-1)  # (*n, d)
    vector = np.zeros((spec.in_channels, *n), dtype=np.complex128)
    b0 = spec.in_channels // spec.groups
    for j, alias in enumerate(aliases):
        # on collapsed axes (grid 1, one alias) the plane wave is constant: frequency 0
        f = np.where(grid > 1, frequency + alias * grid, 0)
        wave = np.exp(2j * np.pi * ((positions * f) % n / n).sum(axis=-1))
        vector[group * b0 : (group + 1) * b0] += coeff[j][:, None, ...].reshape(b0, *([1] * len(n))) * wave
    return vector / np.linalg.norm(vector)
