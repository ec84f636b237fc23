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

from ._threads import run_chunks, single_threaded_blas
from .transfer import FrequencyPlan

__all__ = ["CircularMaximum", "circular_maximum", "sigma_max_at", "top_singular_vector"]

#: Below this many candidate frequencies, every one is computed directly.
_DIRECT = 6144
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


#: Gram-iteration steps tried before the eigensolver when a floor is given.
_GRAM_STEPS = 3
#: Boxes wider than this (grid steps from the centre) get only the cheap first-order bound.
_LOCAL_RADIUS = 16
#: Boxes of at most this many frequencies are computed directly (with the cheap filters).
_DIRECT_BOX = 16


def _squared_norms(matrices: np.ndarray) -> np.ndarray:
    """``(B,)`` squared Frobenius norms of contiguous ``(B, p, q)`` matrices, without copies."""
    flat = matrices.reshape(len(matrices), -1)
    if np.iscomplexobj(flat):
        flat = flat.view(np.float64 if flat.dtype == np.complex128 else np.float32)
    return np.einsum("bk,bk->b", flat, flat)


def _sigma_max(matrices: np.ndarray, floor: float = -np.inf) -> np.ndarray:
    """Largest singular value of each of ``(B, p, q)`` matrices (LAPACK SVD, values only).

    With a finite ``floor``, matrices that provably cannot exceed it are settled by cheap upper
    bounds and skip the eigensolver (their returned value is that bound, itself at most
    ``floor``): the Frobenius norm, then Gram iteration (Delattre et al. 2023),
    ``sigma <= ||G^(2^k)||_F^(1 / 2^(k+1))`` for ``G = M^H M``, which tends to ``sigma`` as k grows
    (each step one matrix product, renormalised, the scale kept as a logarithm).
    """
    p, q = matrices.shape[1:]
    if not np.isfinite(floor) and min(p, q) > 1:
        return np.linalg.svd(matrices, compute_uv=False)[:, 0]
    matrices = np.ascontiguousarray(matrices)
    frobenius = np.sqrt(_squared_norms(matrices))
    if min(p, q) == 1:
        return frobenius
    result = frobenius.copy()
    todo = np.flatnonzero(frobenius > floor)
    if not len(todo):
        return result
    if np.isfinite(floor) and len(todo) < 0.9 * len(matrices):  # the Frobenius norm pruned: a peaked spectrum
        part = matrices[todo]
        herm = np.ascontiguousarray(np.swapaxes(part, 1, 2).conj())
        gram = part @ herm if p <= q else herm @ part
        log_floor = np.log(floor) if floor > 0 else -np.inf
        current, log_scale, power = gram, np.zeros(len(todo)), 1  # G^power = exp(log_scale) * current
        keep_idx = np.arange(len(todo))
        for _ in range(_GRAM_STEPS):
            norm = np.sqrt(_squared_norms(current))
            with np.errstate(divide="ignore"):
                log_scale = log_scale + np.log(norm)
            bound_log = log_scale / (2 * power)  # log of the bound on sigma
            result[todo[keep_idx]] = np.minimum(result[todo[keep_idx]], np.exp(bound_log))
            alive = bound_log > log_floor
            if alive.mean() > 0.9:  # this step settled too few: more steps would not pay for themselves
                keep_idx = keep_idx[alive]
                break
            if not alive.all():
                keep_idx, current, log_scale, norm = keep_idx[alive], current[alive], log_scale[alive], norm[alive]
            if not len(keep_idx):
                return result
            current = current / np.maximum(norm, np.finfo(float).tiny)[:, None, None]
            current = current @ current
            log_scale, power = 2 * log_scale, 2 * power
        todo = todo[keep_idx]
    # the exact value: LAPACK's SVD is faster here than the Gram matrix's eigenvalues (measured)
    result[todo] = np.linalg.svd(matrices[todo], compute_uv=False)[:, 0]
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
    work = len(freqs) * groups * min(rows, cols) ** 2 * max(rows, cols)  # multiply-adds, roughly
    return np.concatenate(run_chunks(one, chunks, workers if work > 2 * 10**7 else 1))


def _gram_bound(matrices: np.ndarray) -> np.ndarray:
    """``(B,)`` upper bounds on the spectral norms: ``||M^H M||_F^(1/2)``."""
    matrices = np.ascontiguousarray(matrices)
    p, q = matrices.shape[1:]
    herm = np.ascontiguousarray(np.swapaxes(matrices, 1, 2).conj())
    gram = matrices @ herm if p <= q else herm @ matrices
    return np.sqrt(np.sqrt(_squared_norms(gram)))


@dataclass(frozen=True)
class _Centres:
    """First- and second-order data of the transfer matrices at box centres, per group block.

    With ``T(g0 + D) = T0 + sum_a D_a K_a + E`` (phase-centred, ``K_a = i D_a`` the derivative
    per grid step, ``||E|| <= sum_t ||W_t|| alpha_t^2 / 2``) and ``P0 = T0 T0^H = sum lambda_i v_i v_i^H``
    (on the smaller side), the largest eigenvalue ``mu`` of ``P0 + sum_a D_a H_a``,
    ``H_a = K_a T0^H + T0 K_a^H``, obeys, with ``a = lambda_1 + v^H (sum D_a H_a) v``,
    ``||b|| <= sum |D_a| ||H_a v||`` and ``c <= lambda_2 + sum |D_a| ||H_a||`` (Schur complement):
    ``mu <= max(c, a + ||b||^2 / (a - c))`` when ``a > c``, else ``mu <= max(a, c) + ||b||``.
    Near a maximum ``v^H H_a v`` vanishes and the bound grows only quadratically.
    """

    value: np.ndarray  # (B,) sigma_max, max over groups
    lam1: np.ndarray  # (B*G,)
    lam2: np.ndarray  # (B*G,)
    slope: np.ndarray  # (B*G, d) |v^H H_a v|
    coupling: np.ndarray  # (B*G, d) ||H_a v||
    h_norm: np.ndarray  # (B*G, d) bound on ||H_a||
    k_norm: np.ndarray  # (B*G, d) bound on ||K_a||
    groups: int

    def select(self, keep: np.ndarray) -> _Centres:
        """The centres where ``keep`` (B,) is true."""
        block = np.repeat(keep, self.groups)
        return _Centres(
            self.value[keep],
            self.lam1[block],
            self.lam2[block],
            self.slope[block],
            self.coupling[block],
            self.h_norm[block],
            self.k_norm[block],
            self.groups,
        )

    def bound(self, radius: np.ndarray, remainder: np.ndarray) -> np.ndarray:
        """``(B,)`` upper bound on sigma_max over boxes of half-widths ``radius`` (B, d)."""
        r = np.repeat(radius.astype(float), self.groups, axis=0)
        a_hi = self.lam1 + (r * self.slope).sum(1)
        a_lo = self.lam1 - (r * self.slope).sum(1)
        b = (r * self.coupling).sum(1)
        c = self.lam2 + (r * self.h_norm).sum(1)
        quad = (r * self.k_norm).sum(1) ** 2
        with np.errstate(divide="ignore", invalid="ignore"):
            schur = np.maximum(c, a_hi + b**2 / (a_lo - c))
        mu = np.where(a_lo > c, schur, np.maximum(a_hi, c) + b)
        sigma = np.sqrt(np.maximum(mu + quad, 0.0)) + np.repeat(remainder, self.groups)
        return sigma.reshape(-1, self.groups).max(axis=1)


def centre_values(plan: FrequencyPlan, flat: np.ndarray, freqs: np.ndarray, slopes: np.ndarray) -> _Centres:
    """Largest singular values at ``freqs`` and the local expansion data of :class:`_Centres`.

    ``slopes[t, a]`` is the phase change of tap t per grid step along axis a (centred taps).
    """
    groups = plan.spec.groups
    batch = len(freqs)
    phases = plan.phases(freqs)
    t0 = np.ascontiguousarray(plan.block_layout(phases @ flat, batch))
    p, q = t0.shape[1:]
    ks = []
    for axis in range(slopes.shape[1]):
        ks.append(np.ascontiguousarray(plan.block_layout((phases * (1j * slopes[None, :, axis])) @ flat, batch)))
    if p > q:  # work on the smaller side: sigma(T) = sigma(T^H)
        t0 = np.ascontiguousarray(np.swapaxes(t0, 1, 2).conj())
        ks = [np.ascontiguousarray(np.swapaxes(k, 1, 2).conj()) for k in ks]
    t0h = np.ascontiguousarray(np.swapaxes(t0, 1, 2).conj())
    lam, vec = np.linalg.eigh(t0 @ t0h)
    lam = np.maximum(lam, 0.0)
    lam1 = lam[:, -1]
    lam2 = lam[:, -2] if lam.shape[1] > 1 else np.zeros_like(lam1)
    v = vec[:, :, -1]  # (BG, p)
    sigma0 = np.sqrt(lam1)
    tv = np.einsum("bji,bj->bi", t0.conj(), v)  # T0^H v, (BG, q)
    slope = np.zeros((len(v), len(ks)))
    coupling = np.zeros_like(slope)
    k_norm = np.zeros_like(slope)
    h_norm = np.zeros_like(slope)
    for axis, k in enumerate(ks):
        k_tv = np.einsum("bij,bj->bi", k, tv)  # K_a T0^H v
        kh_v = np.einsum("bji,bj->bi", k.conj(), v)  # K_a^H v
        hv = k_tv + np.einsum("bij,bj->bi", t0, kh_v)
        slope[:, axis] = np.abs(2 * np.real(np.einsum("bi,bi->b", v.conj(), k_tv)))
        coupling[:, axis] = np.linalg.norm(hv, axis=1)
        k_norm[:, axis] = np.minimum(np.sqrt(_squared_norms(k)), _gram_bound(k))
        h = k @ t0h
        h = h + np.swapaxes(h, 1, 2).conj()  # H_a, Hermitian
        h_sq = h @ h
        h_norm[:, axis] = np.minimum(2 * sigma0 * k_norm[:, axis], np.sqrt(np.sqrt(_squared_norms(h_sq))))
    value = sigma0.reshape(batch, groups).max(axis=1)
    return _Centres(value, lam1, lam2, slope, coupling, h_norm, k_norm, groups)


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
    """The exact largest singular value of the layer of ``plan`` (``flat``: complex128 flat weight)."""
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
        consider(freqs, sigma_max_at(plan, flat, freqs, workers))
        return CircularMaximum(best, np.asarray(best_freq), len(freqs), total)
    tap_norms = _tap_norms(plan, flat)
    weights = _lipschitz_weights(plan)  # (taps, d): |phase change| per grid step
    taps = plan.tap_offsets()
    slopes = weights * np.sign(taps - (np.asarray(plan.spec.kernel_size) - 1) / 2)  # signed, (taps, d)

    def lipschitz(radius: np.ndarray) -> np.ndarray:
        """First-order bound on the increase of sigma_max over boxes of half-widths ``radius``."""
        return (tap_norms[None, :] * np.minimum(2.0, radius @ weights.T)).sum(axis=1)

    def box_bound(centres: _Centres, radius: np.ndarray) -> np.ndarray:
        """Upper bound on sigma_max over each box: the better of the first-order (Lipschitz)
        bound and the second-order one around the centre (see :class:`_Centres`)."""
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
        if radius.max() > _LOCAL_RADIUS:  # large boxes: the first-order bound first, cheaply
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
    aliases = plan.alias_shifts()
    positions = np.stack(np.meshgrid(*[np.arange(k) for k in n], indexing="ij"), axis=-1)  # (*n, d)
    vector = np.zeros((spec.in_channels, *n), dtype=np.complex128)
    b0 = spec.in_channels // spec.groups
    for j, alias in enumerate(aliases):
        # on collapsed axes (grid 1, one alias) the plane wave is constant: frequency 0
        f = np.where(grid > 1, frequency + alias * grid, 0)
        wave = np.exp(2j * np.pi * ((positions * f) % n / n).sum(axis=-1))
        vector[group * b0 : (group + 1) * b0] += coeff[j][:, None, ...].reshape(b0, *([1] * len(n))) * wave
    return vector / np.linalg.norm(vector)
