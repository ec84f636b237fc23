r"""A tight certified upper bound on a zero-padded layer's norm: a verified banded Cholesky factorisation.

:math:`\|A\|_2 \le u` exactly when :math:`u^2 I - A^H A` is positive semidefinite. With the inputs
in raster order (channels fastest, groups outermost), :math:`A^H A` is banded: two inputs are
coupled only when some output reads both, i.e. when they are at most :math:`\delta (k - 1)`
apart on every axis, so its half-bandwidth is ``channels * (offset + 1) - 1`` with ``offset`` the
largest such raster distance. The same holds for :math:`A A^H` on the outputs (outputs ``u``,
``u'`` are coupled when :math:`s (u - u')` is a difference of dilated taps), whichever side
is cheaper is used. The band is built straight from the kernel, tap pair by tap pair
(:math:`W_t^H W_{t'}` times the 0/1 pattern of positions where both taps read the input), and
factorised by LAPACK's banded Cholesky (``scipy.linalg.cholesky_banded``, ``N b^2`` flops for
``N`` unknowns of half-bandwidth ``b``).

The factorisation is made rigorous as in Rump, "Verification of positive definiteness" (BIT 2006):
if floating-point Cholesky of :math:`\tilde M = \mathrm{fl}((v - c) I - G)` runs to completion
then :math:`\tilde R^H \tilde R = \tilde M + \Delta` with
:math:`|\Delta| \le \gamma_{b+2} |\tilde R^H| |\tilde R|`, so
:math:`\|\Delta\|_2 \le \gamma_{b+2} / (1 - \gamma_{b+2}) \operatorname{tr} \tilde M` and
:math:`\lambda_{\min}(\tilde M) \ge -\gamma_{b+2}/(1-\gamma_{b+2}) \operatorname{tr}\tilde M`
(:math:`\gamma_k = k\epsilon / (1 - k\epsilon)`; a banded factorisation's inner products have at
most ``b + 1`` terms). The computed Gram matrix ``G`` differs from the exact one by at most
:math:`\gamma_K |A|^H |A|` entrywise (``K`` products per entry), whose norm is at most
:math:`\||A|\|_1 \||A|\|_\infty`; the diagonal's own rounding is allowed for too. The shift
``c`` covers all three, so success proves :math:`v I - A^H A \succ 0`, i.e.
:math:`\|A\|_2 < \sqrt{v}`. Failure proves nothing: the caller keeps its looser bound.

Example:
    >>> import numpy as np
    >>> from convspectra.norm._cholesky import certify_upper
    >>> from convspectra.norm._request import resolve_request
    >>> request = resolve_request(np.ones((1, 1, 3, 3)), (16, 16), padding=1)
    >>> bool(certify_upper(request, request.numpy_weight(), 8.7969) is not None)   # the norm is 8.796837...
    True
    >>> certify_upper(request, request.numpy_weight(), 8.7968) is None             # below it: not certified
    True
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from .._threads import limit_threads
from ._request import NormRequest

__all__ = ["BandPlan", "band_plan", "certify_upper"]

_EPS = float(np.finfo(np.float64).eps) / 2  # the unit roundoff
#: Above this many flops (``N b^2``) the factorisation is not attempted (a few seconds on one core).
MAX_FLOPS = 4e10
#: Nor above this many band entries ``N (b + 1)`` (256 MiB of float64): LAPACK's banded Cholesky runs
#: far below its flop rate on long bands (401408 unknowns of bandwidth 226, a 32-channel depthwise
#: layer at 112x112: 64 s for 2e10 flops on one core), while large maps need no certificate (the
#: enlarged-grid bound closes as 1/n^2).
MAX_BAND_ENTRIES = 2**25
#: Without SciPy, dense Cholesky (``N^3 / 3`` flops, ``N^2`` entries) up to this many unknowns.
DENSE_MAX = 3000


@dataclass(frozen=True)
class BandPlan:
    """Which side's Gram matrix is factorised, and its size.

    Attributes:
        side: ``"input"`` (:math:`A^H A`) or ``"output"`` (:math:`A A^H`).
        size: unknowns ``N``.
        bandwidth: half-bandwidth ``b``.
        groups, channels: the block structure (``N = groups * points * channels``).
        points: spatial positions per channel.
    """

    side: str
    size: int
    bandwidth: int
    groups: int
    channels: int
    points: int

    @property
    def flops(self) -> int:
        """``N (b + 1)^2``: the factorisation's cost, roughly."""
        return self.size * (self.bandwidth + 1) ** 2

    def bytes(self, item: int) -> int:
        """Peak bytes: the band, one tap pair's update (channels x size) twice, the masks."""
        return item * (self.bandwidth + 1) * self.size + 3 * item * self.channels * self.size + 16 * self.size


def _pair_masks(request: NormRequest, side: str, axis: int, ti: int, tj: int) -> tuple[int, np.ndarray] | None:
    """``(row - column offset, 0/1 mask over the column index)`` of the tap pair on one axis, or None if empty."""
    spec = request.spec
    n, m = request.input_shape[axis], spec.output_shape[axis]
    s, d, pl = spec.stride[axis], spec.dilation[axis], request.padding[axis][0]
    if side == "input":  # columns q_j = s u + d t_j - p_l, rows q_i = q_j + d (t_i - t_j), both inside
        offset = d * (ti - tj)
        u = np.arange(m)
        qj = s * u + d * tj - pl
        qi = qj + offset
        ok = (qj >= 0) & (qj < n) & (qi >= 0) & (qi < n)
        mask = np.zeros(n)
        mask[qj[ok]] = 1.0
    else:  # columns u_j, rows u_i with s u_i + d t_i = s u_j + d t_j, the read inside the input
        if (d * (tj - ti)) % s:
            return None
        offset = d * (tj - ti) // s
        uj = np.arange(m)
        ui = uj + offset
        q = s * uj + d * tj - pl
        ok = (ui >= 0) & (ui < m) & (q >= 0) & (q < n)
        mask = ok.astype(float)
    if not mask.any():
        return None
    return offset, mask


def band_plan(request: NormRequest, side: str) -> BandPlan:
    """The band of the ``side`` Gram matrix of ``request`` (mode ``"zeros"``), from its sizes alone."""
    spec = request.spec
    g = spec.groups
    shape = request.input_shape if side == "input" else spec.output_shape
    channels = (spec.in_channels if side == "input" else spec.out_channels) // g
    strides = [math.prod(shape[a + 1 :]) for a in range(spec.ndim)]  # raster strides of the positions
    reach = []
    for a in range(spec.ndim):
        span = spec.dilation[a] * (spec.kernel_size[a] - 1)
        reach.append(span if side == "input" else span // spec.stride[a])
        reach[-1] = min(reach[-1], shape[a] - 1)
    offset = sum(r * st for r, st in zip(reach, strides, strict=True))
    points = math.prod(shape)
    size = g * points * channels
    return BandPlan(side, size, min(size - 1, channels * (offset + 1) - 1), g, channels, points)


def cheaper_plan(request: NormRequest) -> BandPlan:
    """The side whose factorisation costs fewer flops."""
    return min((band_plan(request, side) for side in ("input", "output")), key=lambda p: (p.flops, p.size))


def _band(request: NormRequest, weight: np.ndarray, plan: BandPlan, absolute: bool = False) -> np.ndarray:
    """The lower band ``ab[i - j, j] = G[i, j]`` of the Gram matrix (of ``|W|`` when ``absolute``)."""
    spec = request.spec
    g, c, points = plan.groups, plan.channels, plan.points
    shape = request.input_shape if plan.side == "input" else spec.output_shape
    strides = [math.prod(shape[a + 1 :]) for a in range(spec.ndim)]
    w = np.abs(weight) if absolute else weight
    out_c, per_group = w.shape[:2]
    taps = w.reshape(g, out_c // g, per_group, -1)  # (G, a, b0, T)
    ab = np.zeros((plan.bandwidth + 1, plan.size), dtype=w.dtype)
    view = ab.reshape(plan.bandwidth + 1, g, points, c)
    ci, cj = np.meshgrid(np.arange(c), np.arange(c), indexing="ij")
    kernel = spec.kernel_size
    tap_list = list(itertools.product(*(range(k) for k in kernel)))
    for a_index, ta in enumerate(tap_list):
        for b_index, tb in enumerate(tap_list):
            parts = [_pair_masks(request, plan.side, axis, ta[axis], tb[axis]) for axis in range(spec.ndim)]
            if any(p is None for p in parts):
                continue
            delta = sum(p[0] * st for p, st in zip(parts, strides, strict=True))  # type: ignore[index]
            if delta < 0:
                continue
            mask = parts[0][1]  # type: ignore[index]
            for p in parts[1:]:
                mask = np.multiply.outer(mask, p[1]).ravel()  # type: ignore[index]
            wa, wb = taps[..., a_index], taps[..., b_index]
            if plan.side == "input":  # (W_ta^H W_tb)[c_i, c_j]
                block = np.conj(np.swapaxes(wa, 1, 2)) @ wb
            else:  # (W_ta W_tb^H)[o_i, o_j]
                block = wa @ np.conj(np.swapaxes(wb, 1, 2))
            rows = delta * c + ci - cj
            keep = (rows >= 0) & (rows <= plan.bandwidth)
            if not keep.any():
                continue
            r, i, j = rows[keep], ci[keep], cj[keep]
            update = block[:, i, j].T[:, :, None] * mask[None, None, :]  # (P, G, points)
            view[r, :, :, j] += update
    return ab


def _factorises(ab: np.ndarray) -> bool:
    """Whether floating-point Cholesky of the band runs to completion (SciPy, or dense NumPy when small)."""
    try:
        from scipy.linalg import LinAlgError, cholesky_banded
    except ImportError:  # pragma: no cover - SciPy is in the test extra
        b1, n = ab.shape
        dense = np.zeros((n, n), dtype=ab.dtype)
        for r in range(b1):
            idx = np.arange(n - r)
            dense[idx + r, idx] = ab[r, : n - r]
            dense[idx, idx + r] = np.conj(ab[r, : n - r])
        try:
            np.linalg.cholesky(dense)
        except np.linalg.LinAlgError:
            return False
        return True
    try:
        cholesky_banded(ab, lower=True, overwrite_ab=True, check_finite=False)
    except LinAlgError:
        return False
    return True


def affordable(request: NormRequest, plan: BandPlan, budget: int) -> bool:
    """Whether the factorisation of ``plan`` fits ``budget`` bytes, :data:`MAX_FLOPS` and :data:`MAX_BAND_ENTRIES`."""
    if plan.size * (plan.bandwidth + 1) > MAX_BAND_ENTRIES:
        return False
    item = 16 if request.is_complex else 8
    try:
        import scipy.linalg  # noqa: F401
    except ImportError:  # pragma: no cover - SciPy is in the test extra
        return plan.size <= DENSE_MAX and item * plan.size**2 + plan.bytes(item) <= budget
    return plan.flops <= MAX_FLOPS and plan.bytes(item) <= budget


def certify_upper(request: NormRequest, weight: np.ndarray, u: float, plan: BandPlan | None = None) -> float | None:
    """A certified upper bound ``<= u (1 + 4 eps)`` on the norm of the zero-padded layer, or None.

    Args:
        request: the (zero-padded) request; ``weight`` its forward weight as the solver works on it.
        u: the bound to certify.
        plan: the side to factorise (default: the cheaper one).

    Returns:
        ``sqrt(v) (1 + 4 eps)`` with ``v = fl(u * u)`` when the verified factorisation of
        ``v I - G`` succeeds; None when it does not (nothing is claimed then).
    """
    plan = plan or cheaper_plan(request)
    v = u * u
    gram = _band(request, weight, plan)
    complex_ = np.iscomplexobj(gram)
    factor = 4 if complex_ else 1  # complex products and sums: a few more roundings per term
    size = plan.size

    def gamma(k: int) -> float:
        k *= factor
        return k * _EPS / (1 - k * _EPS)

    spec = request.spec
    taps = math.prod(spec.kernel_size)
    per_entry = (spec.out_channels if plan.side == "input" else spec.in_channels) // spec.groups * taps + taps + 2
    absolute = np.abs(weight)  # ||A||_1 ||A||_inf of |A| bounds ||(|A|^H |A|)||_2 and ||(|A| |A|^H)||_2
    column = float(absolute.sum(axis=(0, *range(2, weight.ndim))).max())  # an input channel's weight
    row = float(absolute.sum(axis=tuple(range(1, weight.ndim))).max())  # an output channel's weight
    formed = gamma(per_entry) * column * row * (1 + 4 * _EPS)
    diagonal = gram[0].real
    g_max = float(diagonal.max()) if size else 0.0
    rounding_diag = 3 * _EPS * (v + g_max)
    trace = size * v * (1 + 2 * _EPS)  # tr(vI - G) <= N v (the diagonal of G is >= 0)
    g_b = gamma(plan.bandwidth + 2)
    shift = g_b / (1 - g_b) * trace * (1 + 4 * size * _EPS) + formed + rounding_diag + size * 1e-300
    if shift >= v:
        return None
    band = -gram
    band[0] = (v - shift) - diagonal
    with limit_threads(request.workers):
        ok = _factorises(band)
    return math.sqrt(v) * (1 + 4 * _EPS) if ok else None
