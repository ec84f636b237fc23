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
alias block, hence for their scaled concatenation); near the top, the second-order bound of
:mod:`convspectra.norm._centres` is tighter. Boxes whose bound cannot beat the best value
already *computed at an actual frequency* are discarded; the others are halved. What is left at
the end is computed exactly (:mod:`convspectra.norm._sigma`), so the result is the exact
maximum — the pruning only decides what need not be computed. On trained kernels the spectrum
is peaked and a few hundred small decompositions decide the maximum whatever the input size; on
flat spectra (random kernels) nothing can be pruned and every frequency is computed once (as the
full spectrum would), behind the Frobenius-norm filter.

Example:
    >>> import numpy as np
    >>> from convspectra.norm._circular import circular_maximum, circular_plan
    >>> plan, flat = circular_plan(np.ones((1, 1, 3, 3)), (160, 160), stride=(1, 1), dilation=(1, 1), groups=1)
    >>> found = circular_maximum(plan, flat)
    >>> float(found.value), found.frequency.tolist(), found.total, found.evaluated  # a peaked spectrum
    (9.0, [0, 0], 12802, 656)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .._threads import single_threaded_blas
from ..spec import parse_layer
from ..transfer import FrequencyPlan, flat_weight
from ._centres import Centres, centre_values
from ._sigma import herk_routine, sigma_max_at

__all__ = ["CircularMaximum", "circular_maximum", "circular_plan", "larger_part", "top_singular_vector"]

#: Below this many candidate frequencies, every one is computed directly.
_DIRECT = 6144
#: Frequencies computed first on a direct grid, for a floor the others are tested against.
_SEEDS = 16
#: Number of boxes the first round splits the frequency domain into.
_FIRST_BOXES = 256
#: Boxes wider than this (grid steps from the centre) get only the cheap first-order bound.
_LOCAL_RADIUS = 16
#: Boxes of at most this many frequencies are computed directly (with the cheap filters).
_DIRECT_BOX = 16


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


def circular_plan(
    weight: np.ndarray, grid: Sequence[int], *, stride: Sequence[int], dilation: Sequence[int], groups: int
) -> tuple[FrequencyPlan, np.ndarray]:
    """The wrap-around layer of the forward ``weight`` on the input grid ``grid``: its frequency plan and
    flat complex weight, the arguments of :func:`circular_maximum` and :func:`top_singular_vector`."""
    spec, forward = parse_layer(
        weight, tuple(grid), layout="OIHW", stride=tuple(stride), dilation=tuple(dilation), groups=groups
    )
    plan = FrequencyPlan.create(spec, real=not np.iscomplexobj(forward))
    return plan, flat_weight(forward)


def _tap_norms(plan: FrequencyPlan, flat: np.ndarray) -> np.ndarray:
    """``(taps,)`` spectral norm of each tap's (block-diagonal) channel matrix."""
    spec = plan.spec
    a, b0 = spec.out_channels // spec.groups, spec.in_channels // spec.groups
    blocks = flat.reshape(flat.shape[0], spec.groups, a, b0)
    return np.linalg.svd(blocks, compute_uv=False)[..., 0].max(axis=1)


def _lipschitz_weights(plan: FrequencyPlan) -> np.ndarray:
    """``(taps, d)``: 2 pi delta_a |t_a - c_a| / n_a, the phase change per grid step of each tap."""
    spec = plan.spec
    taps = plan.tap_offsets()
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
    """The exact largest singular value of the layer of ``plan`` (``flat``: complex128 flat weight).

    Small grids (at most 6144 candidate frequencies) are enumerated directly; larger ones go
    through the branch and bound of the module docstring, on ``workers`` threads.
    """
    herk_routine(np.complex128)  # SciPy's BLAS, when there is one, loaded before the limit so that it is limited too
    with single_threaded_blas():  # small matrices: BLAS threads only get in each other's way
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

    high = grid.copy()
    if plan.real and active:  # sigma(T(-g)) = sigma(T(g)): half of the first varying axis suffices
        high[active[0]] = grid[active[0]] // 2 + 1
    if np.prod(high) <= _DIRECT:
        freqs, _ = plan.representatives(0, plan.size)
        floor, evaluated = -np.inf, len(freqs)
        if len(freqs) > 4 * _SEEDS:  # exact values at a few spread frequencies give a floor that most others
            step = len(freqs) // _SEEDS  # provably stay under (a Cholesky factor each, see _sigma)
            consider(freqs[::step], sigma_max_at(plan, flat, freqs[::step], 1))
            floor, freqs = best, np.delete(freqs, np.s_[::step], axis=0)
        consider(freqs, sigma_max_at(plan, flat, freqs, workers, floor=floor))
        return CircularMaximum(best, np.asarray(best_freq), evaluated, total)
    tap_norms = _tap_norms(plan, flat)
    weights = _lipschitz_weights(plan)  # (taps, d): |phase change| per grid step
    taps = plan.tap_offsets()
    slopes = weights * np.sign(taps - (np.asarray(plan.spec.kernel_size) - 1) / 2)  # signed, (taps, d)

    def lipschitz(radius: np.ndarray) -> np.ndarray:
        """First-order bound on the increase of sigma_max over boxes of half-widths ``radius``."""
        return (tap_norms[None, :] * np.minimum(2.0, radius @ weights.T)).sum(axis=1)

    def box_bound(centres: Centres, radius: np.ndarray) -> np.ndarray:
        """Upper bound on sigma_max over each box: the better of the first-order (Lipschitz)
        bound and the second-order one around the centre (see :class:`Centres`)."""
        angles = radius @ weights.T  # (B, taps): bound on |alpha_t|
        lipschitz = centres.value + (tap_norms[None, :] * np.minimum(2.0, angles)).sum(axis=1)
        remainder = (tap_norms[None, :] * angles**2 / 2).sum(axis=1)
        return np.minimum(lipschitz, centres.bound(radius, remainder))

    per_axis = max(2, round(_FIRST_BOXES ** (1 / len(active))))
    edges = []
    for axis in range(ndim):
        count = min(per_axis, int(high[axis])) if axis in active else 1
        edges.append(np.unique(np.linspace(0, high[axis], count + 1).round().astype(np.int64)))
    lo = np.stack(np.meshgrid(*[e[:-1] for e in edges], indexing="ij"), axis=-1).reshape(-1, ndim)
    hi = np.stack(np.meshgrid(*[e[1:] for e in edges], indexing="ij"), axis=-1).reshape(-1, ndim)
    domain, rounds = int(np.prod(high)), 0
    while len(lo):
        tiny = np.prod(hi - lo, axis=1) <= _DIRECT_BOX  # a centre's bounds cost more than these frequencies
        if tiny.any():
            points = _box_points(lo[tiny], hi[tiny])
            consider(points, sigma_max_at(plan, flat, points, workers, floor=best))
            evaluated += len(points)
            lo, hi = lo[~tiny], hi[~tiny]
            if not len(lo):
                break
        centre = (lo + hi - 1) // 2
        radius = np.maximum(centre - lo, hi - 1 - centre)
        evaluated += len(centre)
        splittable = np.prod(hi - lo, axis=1) > 1
        if rounds == 0 or radius.max() > _LOCAL_RADIUS:
            # large boxes, or the first round: the first-order bound first, cheaply (one value per
            # centre; the second-order data cost several times more), which also tells a flat
            # spectrum, where nothing will prune, before spending anything on it
            values = sigma_max_at(plan, flat, centre, workers)
            consider(centre, values)
            keep = (values + lipschitz(radius) > best) & splittable
            lo, hi, centre, radius = lo[keep], hi[keep], centre[keep], radius[keep]
            flat_spectrum = np.median(values) > 0.9 * best and np.prod(hi - lo, axis=1).sum() > 0.9 * domain
            if flat_spectrum:  # typical frequencies are within 10% of the top: nothing will prune
                freqs, _ = plan.representatives(0, plan.size)
                consider(freqs, sigma_max_at(plan, flat, freqs, workers, floor=best))
                evaluated += len(freqs)
                break
            local = radius.max(axis=1) <= _LOCAL_RADIUS
            if not local.any():
                if not len(lo):
                    break
                lo, hi = _halve(lo, hi)
                rounds += 1
                continue
            lo = np.concatenate([lo[local], lo[~local]])
            hi = np.concatenate([hi[local], hi[~local]])
            far_lo, far_hi = lo[local.sum() :], hi[local.sum() :]
            lo, hi, centre, radius = lo[: local.sum()], hi[: local.sum()], centre[local], radius[local]
        else:
            far_lo, far_hi = lo[:0], hi[:0]
        centres = centre_values(plan, flat, centre, slopes)
        consider(centre, centres.value)
        alive = (box_bound(centres, radius) > best) & (np.prod(hi - lo, axis=1) > 1)
        lo, hi, centres = lo[alive], hi[alive], centres.select(alive)
        if not len(lo) and not len(far_lo):
            break
        rounds += 1
        remaining = np.prod(hi - lo, axis=1).sum() + np.prod(far_hi - far_lo, axis=1).sum()
        if remaining > (0.9 if rounds == 1 else 0.8) * domain:  # a flat spectrum: nothing prunes
            freqs, _ = plan.representatives(0, plan.size)
            consider(freqs, sigma_max_at(plan, flat, freqs, workers, floor=best))
            evaluated += len(freqs)
            break
        # a box whose centre is so close to the best that even its one-step neighbours cannot be
        # excluded will be split down to single frequencies: compute its frequencies directly
        one_step = np.minimum(hi - lo - 1, 1)
        small = np.prod(hi - lo, axis=1) <= 4 * 2 ** len(active)  # splitting costs a quarter of finishing
        hopeless = small & (box_bound(centres, one_step) > best)
        if hopeless.any():
            points = _box_points(lo[hopeless], hi[hopeless])
            point_values = sigma_max_at(plan, flat, points, workers, floor=best)
            evaluated += len(points)
            consider(points, point_values)
            lo, hi = lo[~hopeless], hi[~hopeless]
        lo, hi = _halve(np.concatenate([lo, far_lo]), np.concatenate([hi, far_hi]))
    return CircularMaximum(best, np.asarray(best_freq, dtype=np.int64), evaluated, total)


def _top_right_vectors(matrices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(v, sigma)``: each matrix's top right singular vector ``(G, cols)`` and value ``(G,)``, from the
    eigendecomposition of the smaller Gram matrix (a start vector: its accuracy is what the products
    check)."""
    rows, cols = matrices.shape[1:]
    if rows < cols:
        values, vectors = np.linalg.eigh(matrices @ np.conj(np.swapaxes(matrices, 1, 2)))
        v = np.conj(np.swapaxes(matrices, 1, 2)) @ vectors[..., -1:]  # M^H u, then normalised
        v = v[..., 0]
        v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-300)
    else:
        values, vectors = np.linalg.eigh(np.conj(np.swapaxes(matrices, 1, 2)) @ matrices)
        v = vectors[..., -1]
    return v, np.sqrt(np.maximum(values[:, -1], 0.0))


def top_singular_vector(plan: FrequencyPlan, flat: np.ndarray, frequency: np.ndarray) -> np.ndarray:
    """A unit right singular vector of the layer for its largest singular value at ``frequency``.

    Returns the input-space vector ``(in_channels, *input_shape)`` (complex128): the plane waves
    ``exp(2 pi i f . q / n)`` of the aliased input frequencies ``f = g + j m``, weighted by the top
    right singular vector of ``T(g)`` (see :mod:`convspectra.transfer`).
    """
    spec = plan.spec
    matrices = plan.transfer_numpy(flat, frequency[None, :])  # (G, a, S*b0)
    with single_threaded_blas():
        right = _top_right_vectors(matrices)  # (G, S*b0), and the top value per group
    group = int(np.argmax(right[1]))
    coeff = right[0][group].reshape(plan.aliases, spec.in_channels // spec.groups)  # (j, i)
    n = np.asarray(spec.input_shape)
    grid = np.asarray(plan.grid)
    aliases = plan.alias_shifts()
    positions = np.stack(np.meshgrid(*[np.arange(k) for k in n], indexing="ij"), axis=-1)  # (*n, d)
    vector = np.zeros((spec.in_channels, *n), dtype=np.complex128)
    b0 = spec.in_channels // spec.groups
    for j, alias in enumerate(aliases):
        f = frequency + alias * grid  # every alias its own plane wave (also where the grid is 1)
        wave = np.exp(2j * np.pi * ((positions * f) % n / n).sum(axis=-1))
        vector[group * b0 : (group + 1) * b0] += coeff[j][:, None, ...].reshape(b0, *([1] * len(n))) * wave
    # A collapsed strided axis (one tap, stride s) planned one alias where the layer has s equal
    # ones: the singular vector is their sum, exp(2 pi i j q / s) over j, which is s on the
    # samples the layer reads (q = 0 mod s) and 0 elsewhere; not the constant wave.
    for axis, (planned, actual) in enumerate(zip(plan.stride, spec.stride, strict=True)):
        if actual > 1 and planned == 1:
            read = (np.arange(n[axis]) % actual == 0).reshape([-1 if a == axis else 1 for a in range(len(n))])
            vector *= read
    return vector / np.linalg.norm(vector)


def larger_part(vector: np.ndarray) -> np.ndarray:
    """The real or the imaginary part of ``vector``, whichever has the larger norm.

    For a real layer the conjugate of a singular vector is one too (``T(-g) = conj(T(g))``), so
    both parts of a complex top singular vector are real top singular vectors (or zero).
    """
    return vector.real if np.linalg.norm(vector.real) >= np.linalg.norm(vector.imag) else vector.imag
