r"""Projection of a convolution layer onto an operator-norm ball (or a singular-value band).

The layer is the wrap-around (circular) operator of :func:`convspectra.singular_values`. With
the kernel folded onto the input grid (tap ``t`` at offset ``dilation * t mod n``, colliding taps
summed) into ``K``, the map from ``K`` to the layer's matrix ``A(K)`` is, up to the constant
factor ``sqrt(prod(output_shape))``, an isometry for the Frobenius norm, and ``A(K)`` is block
diagonal in Fourier coordinates with the per-frequency transfer matrices ``T(g)`` (see
:mod:`convspectra.transfer`; with stride the ``s^d`` aliased input frequencies of ``g`` are
regrouped, one to one, into ``T(g)``). Hence (Sedghi, Gupta & Long 2019, Proposition 12)

.. math:: \Pi_{\{\|A\|_2 \le c\}}(K) = \mathcal F^{-1}\big[\, U(g)\,\min(\Sigma(g), c)\,V(g)^H \,\big],
          \qquad T(g) = U(g)\,\Sigma(g)\,V(g)^H,

the Frobenius-nearest kernel on the whole grid whose operator norm is at most ``c``. It may use
offsets outside the kernel's own support (its ``k_1 x ... x k_d`` taps, dilated); the projection
onto kernels with that support keeps the support's coefficients and zeroes the rest. One
*iteration* here is the two projections in turn; repeating them is alternating projections
(Cheney & Goldstein 1959), which converges to a point of the intersection; Dykstra's algorithm
(Boyle & Dykstra 1986) converges to the Frobenius-nearest point of the intersection. Both sets
are convex for ``{sigma_max <= c}``. With ``min_norm`` the per-frequency step clips the singular
values into ``[min_norm, max_norm]`` (still the nearest point per frequency), but
``{sigma_min >= min_norm}`` is not convex: the iterations are then a heuristic without the
convergence guarantees.

Kernels larger than the input (or dilated past it) have taps that land on the same offset
modulo ``n``: the operator only sees their sum. The projection is computed for the folded kernel
(so "nearest" is measured on the operator), and the change at each offset is split equally
between the taps that share it, the smallest change of the taps that realises the projected
operator. When no taps collide this is the ordinary Frobenius projection of the kernel.

How it is fast: only one frequency of each conjugate pair (real kernels), the forward and the
support-restricted inverse transforms are one matrix product each with a table of phases on the
support (no full-grid FFT), layers of the same shape are batched, frequencies whose transfer
matrix has Frobenius norm at most ``max_norm`` are skipped (their singular values cannot exceed
it), and the clip uses the eigendecomposition of the smaller Gram matrix ``T T^H`` (complex128):
``T' = T - V diag(1 - min(1, c/sigma)) V^H T``. The two-sided band uses the SVD, which stays
accurate for small singular values.

Example:
    >>> import numpy as np, convspectra as cs
    >>> kernel = np.ones((1, 1, 2, 2))                       # operator norm 4 on a 4x4 input
    >>> clipped = cs.clip_operator_norm(kernel, 4, 2.0, iterations=50)
    >>> clipped.shape, round(float(cs.singular_values(clipped, 4)[0]), 3)
    ((1, 1, 2, 2), 2.0)

References:
    H. Sedghi, V. Gupta, P. M. Long. The Singular Values of Convolutional Layers. ICLR 2019.
    W. Cheney, A. A. Goldstein. Proximity maps for convex sets. Proc. AMS 10(3), 1959.
    J. P. Boyle, R. L. Dykstra. A method for finding projections onto the intersection of convex
    sets in Hilbert spaces. Lecture Notes in Statistics 37, 1986.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import numbers
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from ._threads import resolve_workers, run_chunks, single_threaded_blas
from .errors import ParameterError, ParameterTypeError
from .spec import LAYOUTS, ConvSpec, parse_layer
from .transfer import FrequencyPlan

__all__ = ["METHODS", "ProjectionReport", "clip_operator_norm", "clip_operator_norm_many", "clip_operator_norm_report"]

#: The projection algorithms: ``"alternating"`` (Cheney-Goldstein) and ``"dykstra"``.
METHODS = ("alternating", "dykstra")

#: Layers of one shape are processed together up to about this many bytes of transfer matrices
#: (cache-sized: one round of ResNet-32 took 1.35x the CPU time with 64 MiB batches).
_BATCH_BYTES = 2 * 2**20

#: Below this many multiply-adds (sum of p^2 q over the decompositions), the clip stays on one thread.
_PARALLEL_MIN_WORK = 2 * 10**7


@dataclass(frozen=True)
class ProjectionReport:
    """Diagnostics of one projection (all norms of the wrap-around operator, float64).

    Attributes:
        sigma_max_before: operator norm of the input kernel.
        sigma_max_after: operator norm of the returned kernel.
        sigma_min_before: smallest singular value of the input (``None`` unless ``min_norm`` given).
        sigma_min_after: smallest singular value of the result (``None`` unless ``min_norm`` given).
        distance: Frobenius norm of ``result - kernel`` (in the kernel's own layout).
        iterations: rounds that changed the kernel (0: it already satisfied the constraint;
            alternating projections stop early at a round that changes nothing).
        support_residual: Frobenius norm (of the folded kernel) of what the last support
            restriction removed: the part of the last clipped kernel outside the kernel's support
            (small when the iterations have converged). Exactly 0.0 when the support covers
            the whole input grid.
        support_changed: whether any round's support restriction removed more than rounding
            (``64 * eps`` times the norm of the clipped kernel); False when no round ran. After
            one iteration, False means the result is the exact nearest operator.
        method: ``"alternating"`` or ``"dykstra"``.
        max_norm: the upper bound asked for.
        min_norm: the lower bound asked for, or ``None``.
    """

    sigma_max_before: float
    sigma_max_after: float
    sigma_min_before: float | None
    sigma_min_after: float | None
    distance: float
    iterations: int
    support_residual: float
    support_changed: bool
    method: str
    max_norm: float
    min_norm: float | None


# --------------------------------------------------------------------------------------------
# Geometry: frequencies, support and the two transforms, shared by every layer of one shape.
# --------------------------------------------------------------------------------------------


class _Geometry:
    """Phase tables of one layer shape: kernel support <-> transfer matrices at representative frequencies.

    The support is the set of distinct offsets ``dilation * t mod n`` of the taps (on axes where
    the whole computation collapses, see below, offset 0). ``forward`` maps a folded kernel
    ``(P, C)`` (``C = L * out * in/groups`` columns, L layers side by side) to the transfer
    matrices ``(B * L * groups, a, S * b)``; ``inverse`` maps transfer matrices back to the
    coefficients of the support, i.e. the inverse DFT followed by the support restriction.

    An axis where the kernel has a single tap has the same transfer matrix at every frequency,
    so it is computed as one frequency (the inverse DFT of a constant is a delta at offset 0,
    inside the support). With stride on that axis the ``s`` alias blocks are equal: the matrix
    is ``T_red Q`` with ``Q Q^H = I``, and clipping the largest singular values commutes with
    that; raising the smallest ones (``min_norm``) does not, so such an axis is not collapsed
    when a band is asked for.
    """

    def __init__(self, spec: ConvSpec, real: bool, band: bool) -> None:
        grid, stride, collapsed = [], [], 1
        for k, m, s in zip(spec.kernel_size, spec.output_shape, spec.stride, strict=True):
            collapse = k == 1 and (s == 1 or not band)
            grid.append(1 if collapse else m)
            stride.append(1 if collapse else s)
            collapsed *= m if collapse else 1
        plan = FrequencyPlan(spec, tuple(grid), tuple(stride), collapsed, real)
        self.plan = plan
        self.real = real
        freqs, multiplicity = plan.representatives(0, plan.size)
        self.freqs = freqs
        self.batch = len(freqs)
        self.aliases = plan.aliases
        self.groups = spec.groups
        self.rows = spec.out_channels // spec.groups
        self.cols_per_alias = spec.in_channels // spec.groups
        self.columns = spec.out_channels * self.cols_per_alias  # O * I/G: one layer's columns
        n = np.asarray(plan.input_grid, dtype=np.int64)
        taps = np.stack(np.unravel_index(np.arange(math.prod(spec.kernel_size)), spec.kernel_size), axis=1)
        offsets = (taps * np.asarray(spec.dilation, dtype=np.int64)) % n  # (taps, d)
        unique, tap_to_position, counts = np.unique(offsets, axis=0, return_inverse=True, return_counts=True)
        self.collides = len(unique) < len(offsets)
        if self.collides:
            self.positions = unique
            self.tap_to_position = tap_to_position.reshape(-1)
            self.counts = counts.astype(np.float64)
            fold = np.zeros((len(unique), len(offsets)))
            fold[self.tap_to_position, np.arange(len(offsets))] = 1.0
            self.fold = fold
        else:
            self.positions = offsets
        self.support = len(self.positions)
        self.full_support = self.support == int(np.prod(n))
        phases = self._phases(n)  # (B * S, P), scaled by S^(-1/2)
        self.phi = phases
        # Inverse DFT at the support: x[r] = (1/M) * sum_b w_b sum_j conj(phase[b, j, r]) * T'[b, j]
        # (M: computed output grid size; w_b = 1 or 2 for a conjugate pair of a real kernel).
        weight = (multiplicity // plan.collapsed_multiplicity).astype(np.float64) / plan.size
        self.row_weight = np.repeat(weight, self.aliases)  # (B * S,)
        self.psi = np.ascontiguousarray((phases.conj() * self.row_weight[:, None]).T)  # (P, B * S)
        self.phi_parts = (np.ascontiguousarray(phases.real), np.ascontiguousarray(phases.imag))
        self.psi_parts = (np.ascontiguousarray(self.psi.real), np.ascontiguousarray(self.psi.imag))
        self.psi_stacked = np.concatenate(self.psi_parts)  # (2P, B * S): [Re psi; Im psi]
        self._device_tables: dict[Any, tuple[Any, ...]] = {}

    def _phases(self, n: np.ndarray) -> np.ndarray:
        """``exp(2 pi i sum_a f_a r_a / n_a) / sqrt(S)`` for f = g + j m (rows b * S + j), r the support."""
        plan = self.plan
        aliases = np.stack(np.unravel_index(np.arange(plan.aliases), plan.stride), axis=1)
        grid = np.asarray(plan.grid, dtype=np.int64)
        f = self.freqs[:, None, :] + aliases[None, :, :] * grid  # (B, S, d)
        turns = np.zeros((f.shape[0], f.shape[1], self.support))
        for axis in range(len(n)):  # exact integer products reduced mod n, then one fraction per axis
            turns += ((f[..., axis, None] * self.positions[:, axis]) % n[axis]) / n[axis]
        angle = (2 * np.pi) * np.mod(turns, 1.0).reshape(-1, self.support)
        return np.exp(1j * angle) / math.sqrt(plan.aliases)

    # ---- kernel <-> folded support coefficients ------------------------------------------

    def fold_kernel(self, flat: Any) -> Any:
        """(taps, C) -> (P, C): colliding taps summed."""
        if not self.collides:
            return flat
        if isinstance(flat, np.ndarray):
            return self.fold.astype(flat.dtype) @ flat
        return self.tables(flat.device)[4].to(flat.dtype) @ flat

    def lift(self, flat: Any, folded_before: Any, folded_after: Any) -> Any:
        """(P, C) -> (taps, C): the smallest change of the taps with the given folded change."""
        if not self.collides:
            return folded_after
        share = (folded_after - folded_before) / (
            self.counts[:, None] if isinstance(flat, np.ndarray) else self.tables(flat.device)[5][:, None]
        )
        return flat + share[self.tap_to_position]

    # ---- transforms ------------------------------------------------------------------------

    def tables(self, device: Any) -> tuple[Any, ...]:
        """The tables as float64/complex128 torch tensors on ``device`` (cached)."""
        if device not in self._device_tables:
            torch = sys.modules["torch"]

            def put(array: np.ndarray) -> Any:
                return torch.from_numpy(np.ascontiguousarray(array)).to(device)

            fold = put(self.fold) if self.collides else None
            counts = put(self.counts) if self.collides else None
            phi, psi = put(self.phi), put(self.psi)
            self._device_tables[device] = (
                phi,
                psi,
                phi.real.contiguous(),
                phi.imag.contiguous(),
                fold,
                counts,
                psi.real.contiguous(),
                psi.imag.contiguous(),
            )
        return self._device_tables[device]

    def forward(self, x: Any, layers: int) -> Any:
        """Folded kernels ``(P, layers * columns)`` -> transfer matrices ``(B * layers * G, a, S * b)``.

        The batch axis runs over (frequency, layer, group), so that without stride the result is
        a view of one matrix product (no copy).
        """
        shape = (self.batch, self.aliases, layers, self.groups, self.rows, self.cols_per_alias)
        if isinstance(x, np.ndarray):
            if np.iscomplexobj(x):
                z = self.phi @ x
            else:
                z = np.empty((self.phi.shape[0], x.shape[1]), dtype=np.complex128)
                z.real = self.phi_parts[0] @ x
                z.imag = self.phi_parts[1] @ x
            z = z.reshape(shape).transpose(0, 2, 3, 4, 1, 5)
        else:
            torch = sys.modules["torch"]
            phi, _psi, phr, phi_i = self.tables(x.device)[:4]
            z = phi @ x if x.is_complex() else torch.complex(phr @ x, phi_i @ x)
            z = z.reshape(shape).permute(0, 2, 3, 4, 1, 5)
        return z.reshape(self.batch * layers * self.groups, self.rows, self.aliases * self.cols_per_alias)

    def inverse(self, t: Any, layers: int, real: bool) -> Any:
        """Transfer matrices -> the support's coefficients ``(P, layers * columns)`` (inverse DFT, restricted)."""
        shape = (self.batch, layers, self.groups, self.rows, self.aliases, self.cols_per_alias)
        rows = self.batch * self.aliases
        if isinstance(t, np.ndarray):
            z = np.ascontiguousarray(t.reshape(shape).transpose(0, 4, 1, 2, 3, 5)).reshape(rows, -1)
            if not real:
                return self.psi @ z
            # Re(psi @ z) from one real product with z's interleaved (re, im) columns
            both = self.psi_stacked @ z.view(np.float64)
            support = self.support
            return both[:support, 0::2] - both[support:, 1::2]
        tables = self.tables(t.device)
        z = t.reshape(shape).permute(0, 4, 1, 2, 3, 5).reshape(rows, -1)
        if real:
            return tables[6] @ z.real.contiguous() - tables[7] @ z.imag.contiguous()
        return tables[1] @ z

    def per_layer(self, values: Any, layers: int) -> Any:
        """(B * layers * G, ...) -> (B, layers, G, ...): split the batch axis."""
        return values.reshape(self.batch, layers, self.groups, *values.shape[1:])

    def squared_norms(self, t: Any, layers: int) -> np.ndarray:
        """Per layer: squared Frobenius norm of the folded kernel whose transfer matrices are ``t``.

        ``||K||^2 = (1/M) sum_g ||T(g)||_F^2`` (Parseval; M output frequencies), with the
        conjugate partners of a real kernel counted through their multiplicity.
        """
        weight = self.row_weight.reshape(self.batch, self.aliases)[:, 0]  # w_b / M
        if isinstance(t, np.ndarray):
            per_matrix = (t.real**2 + t.imag**2).sum(axis=(1, 2))
        else:
            per_matrix = t.abs().square().sum(dim=(1, 2)).cpu().numpy()
        return weight @ self.per_layer(per_matrix, layers).sum(axis=2)


@lru_cache(maxsize=64)
def _geometry(spec: ConvSpec, real: bool, band: bool) -> _Geometry:
    return _Geometry(spec, real, band)


# --------------------------------------------------------------------------------------------
# The per-frequency clip.
# --------------------------------------------------------------------------------------------


def _mh(x: Any) -> Any:
    """Conjugate transpose of a batch; contiguous for NumPy (a strided operand makes matmul 3x slower)."""
    return np.ascontiguousarray(np.swapaxes(x, -1, -2).conj()) if isinstance(x, np.ndarray) else x.mH


def _clip_max(t: Any, high: Any) -> tuple[Any, Any]:
    """Clip every matrix's singular values at ``high`` (per matrix). Returns (clipped, changed mask).

    The Hermitian eigensolver on the smaller Gram matrix, ``G = T T^H = V diag(sigma^2) V^H``:
    ``T' = T - V diag(1 - min(1, c / sigma)) V^H T`` (``T V ...`` for a tall ``T``). Matrices with
    ``trace G = ||T||_F^2 <= c^2`` or a Gershgorin bound ``max_i sum_j |G_ij| <= c^2`` cannot
    have ``sigma_max > c`` and are not decomposed; matrices that need no change are returned bit
    for bit.
    """
    if not isinstance(t, np.ndarray):
        return _clip_max_torch(t, high)
    tall = t.shape[1] > t.shape[2]
    # conj(G) from a contiguous conj and a transposed view (a conj-transposed copy costs more
    # than the product); its eigenvectors are W = conj(V).
    conj = t.conj()
    gram = np.swapaxes(t, 1, 2) @ conj if tall else conj @ np.swapaxes(t, 1, 2)
    trace = np.einsum("bii->b", gram).real
    index = np.flatnonzero(trace > high**2)
    changed = np.zeros(len(t), dtype=bool)
    if len(index) == 0:
        return t, changed
    everything = len(index) == len(t)
    if not everything:
        gram, high = gram[index], high[index]
    # Gershgorin: lambda_max(G) <= max_i sum_j |G_ij| <= max_i sum_j (|Re G_ij| + |Im G_ij|)
    inside = np.abs(gram.view(np.float64)).sum(axis=2).max(axis=1) <= high**2
    if inside.any():
        keep = ~inside
        index, gram, high = index[keep], gram[keep], high[keep]
        everything = False
        if len(index) == 0:
            return t, changed
    lam, w = np.linalg.eigh(gram)
    cap = high[:, None]
    sigma = np.sqrt(np.maximum(lam, 0.0))
    shrink = np.where(sigma > cap, 1.0 - cap / np.where(sigma > 0, sigma, 1.0), 0.0)
    hit = shrink[:, -1] > 0  # eigenvalues ascending: the largest decides
    if not hit.any():
        return t, changed
    if not hit.all():
        index, w, shrink = index[hit], w[hit], shrink[hit]
        everything = False
    sub = t if everything else t[index]
    # only the eigenvectors with sigma > c move anything: the last `top` columns (ascending order)
    top = int((shrink > 0).sum(axis=1).max())
    if top < shrink.shape[1]:
        w, shrink = w[:, :, -top:], shrink[:, -top:]
    if tall:  # T - (T V) diag(shrink) V^H,  V = conj(W), V^H = W^T
        sub = sub - ((sub @ w.conj()) * shrink[:, None, :]) @ np.swapaxes(w, 1, 2)
    else:  # T - V diag(shrink) (V^H T)
        sub = sub - w.conj() @ ((np.swapaxes(w, 1, 2) @ sub) * shrink[:, :, None])
    if everything:
        changed[:] = True
        return sub, changed
    t = t.copy()
    t[index] = sub
    changed[index] = True
    return t, changed


def _clip_max_torch(t: Any, high: Any) -> tuple[Any, Any]:
    """:func:`_clip_max` with torch operations (any device)."""
    torch = sys.modules["torch"]
    tall = t.shape[1] > t.shape[2]
    gram = t.mH @ t if tall else t @ t.mH
    trace = gram.diagonal(dim1=1, dim2=2).real.sum(dim=1)
    candidates = trace > high**2
    index = candidates.nonzero().reshape(-1)
    changed = torch.zeros(len(t), dtype=torch.bool, device=t.device)
    if len(index) == 0:
        return t, changed
    lam, vec = torch.linalg.eigh(gram[index])
    cap = high[index][:, None]
    sigma = lam.clamp_min(0.0).sqrt()
    shrink = torch.where(sigma > cap, 1.0 - cap / torch.where(sigma > 0, sigma, torch.ones_like(sigma)), 0.0)
    hit = shrink[:, -1] > 0
    if not bool(hit.any()):
        return t, changed
    index, vec, shrink = index[hit], vec[hit], shrink[hit].to(vec.dtype)
    sub = t[index]
    if tall:
        sub = sub - ((sub @ vec) * shrink[:, None, :]) @ vec.mH
    else:
        sub = sub - vec @ ((vec.mH @ sub) * shrink[:, :, None])
    t = t.clone()
    t[index] = sub
    changed[index] = True
    return t, changed


def _clip_band(t: Any, high: Any, low: Any) -> tuple[Any, Any]:
    """Clip every matrix's singular values into ``[low, high]`` (per matrix) by the SVD."""
    numpy = isinstance(t, np.ndarray)
    if numpy:
        u, s, vh = np.linalg.svd(t, full_matrices=False)
        target = np.clip(s, low[:, None], high[:, None])
        changed = (target != s).any(axis=1)
        index = np.flatnonzero(changed)
    else:
        torch = sys.modules["torch"]
        u, s, vh = torch.linalg.svd(t, full_matrices=False)
        target = torch.minimum(torch.maximum(s, low[:, None]), high[:, None])
        changed = (target != s).any(dim=1)
        index = changed.nonzero().reshape(-1)
    if len(index) == 0:
        return t, changed
    delta = (target - s)[index][:, None, :]
    correction = (u[index] * (delta if numpy else delta.to(u.dtype))) @ vh[index]
    t = t.copy() if numpy else t.clone()
    t[index] = t[index] + correction
    return t, changed


def _extremes(geometry: _Geometry, t: Any, layers: int, band: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Per layer: largest singular value, and smallest (if ``band``), of the transfer matrices ``t``."""
    numpy = isinstance(t, np.ndarray)
    if band:  # the SVD keeps the small singular values accurate
        values = np.linalg.svd(t, compute_uv=False) if numpy else sys.modules["torch"].linalg.svdvals(t).cpu().numpy()
    else:  # the largest only: eigenvalues of the smaller Gram matrix (relative accuracy ~eps)
        tall = t.shape[1] > t.shape[2]
        gram = (_mh(t) @ t if tall else t @ _mh(t)) if numpy else (t.mH @ t if tall else t @ t.mH)
        lam = np.linalg.eigvalsh(gram) if numpy else sys.modules["torch"].linalg.eigvalsh(gram).cpu().numpy()
        values = np.sqrt(np.maximum(lam[:, ::-1], 0.0))
    values = geometry.per_layer(values, layers)  # (B, layers, G, r)
    top = values[..., 0].max(axis=(0, 2))
    return top, (values[..., -1].min(axis=(0, 2)) if band else None)


# --------------------------------------------------------------------------------------------
# Validation and the user-facing layer description.
# --------------------------------------------------------------------------------------------


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, (bool, np.bool_, str, bytes)) or value is None:
        raise ParameterTypeError(f"{name}: expected a positive real number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError) as err:
        raise ParameterTypeError(f"{name}: expected a positive real number, got {value!r}") from err
    if isinstance(value, complex) or not math.isfinite(number):
        raise ParameterError(f"{name}: expected a finite positive real number, got {value!r}")
    return number


def _check_bounds(max_norm: Any, min_norm: Any) -> tuple[float, float | None]:
    high = _as_float("max_norm", max_norm)
    if high <= 0:
        raise ParameterError(f"max_norm: expected a positive real number, got {max_norm!r}")
    if min_norm is None:
        return high, None
    low = _as_float("min_norm", min_norm)
    if low < 0:
        raise ParameterError(f"min_norm: expected None or a real number >= 0, got {min_norm!r}")
    if low > high:
        raise ParameterError(f"min_norm: expected at most max_norm ({high!r}), got {min_norm!r}")
    return high, low


@dataclass(frozen=True)
class _Options:
    method: str
    iterations: int
    workers: int
    report: bool


def _options(method: Any, iterations: Any, workers: Any, report: bool) -> _Options:
    method, iterations = _check_method(method, iterations)
    return _Options(method, iterations, resolve_workers(workers), report)


def _check_method(method: Any, iterations: Any) -> tuple[str, int]:
    if not isinstance(method, str) or method not in METHODS:
        raise ParameterError(f"method: expected one of {list(METHODS)}, got {method!r}")
    if isinstance(iterations, (bool, np.bool_)) or not isinstance(iterations, numbers.Integral):
        raise ParameterTypeError(f"iterations: expected a positive int, got {iterations!r}")
    if iterations < 1:
        raise ParameterError(f"iterations: expected a positive int, got {iterations!r}")
    return method, int(iterations)


@dataclass
class _Item:
    """One kernel to project: its normalised layer, working data and how to give it back."""

    spec: ConvSpec
    flat: Any  # (taps, O * I/G) float64/complex128 (NumPy, or torch on a non-CPU device)
    high: float
    low: float | None
    real: bool
    restore: Any  # callable: (taps, C) result -> the user's kind, layout and dtype
    original: Any  # the user's kernel (for an unchanged result)
    result: Any = None
    report: ProjectionReport | None = None


def _is_torch(obj: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


def _prepare(
    kernel: Any,
    input_shape: Any,
    high: float,
    low: float | None,
    layout: str | None,
    stride: Any,
    dilation: Any,
    groups: Any,
    transposed: Any,
    force_torch: bool = False,
) -> _Item:
    torch = sys.modules.get("torch")
    layout_name = "OIHW" if layout is None else layout
    spec, weight = parse_layer(
        kernel, input_shape, layout=layout_name, stride=stride, dilation=dilation, groups=groups, transposed=transposed
    )
    spec = dataclasses.replace(spec, transposed=False)  # the adjoint's projection is the adjoint of the projection
    is_module = torch is not None and isinstance(kernel, torch.nn.Module)
    source = kernel.weight if is_module else kernel
    family = "first" if is_module else LAYOUTS[layout_name][0]
    ndim = spec.ndim
    shape = tuple(weight.shape)  # forward weight (O, I/G, k...)
    taps = math.prod(spec.kernel_size)
    if _is_torch(weight):
        torch = sys.modules["torch"]
        real = not bool(weight.is_complex())
        on_cpu = weight.device.type == "cpu" and not force_torch
        target_dtype = source.dtype if (source.dtype.is_floating_point or source.dtype.is_complex) else torch.float64
        device = source.device
        w = weight.detach().to(torch.float64 if real else torch.complex128)
        flat = w.reshape(shape[0] * shape[1], taps).T
        flat = flat.cpu().numpy().copy() if on_cpu else flat.contiguous()

        def restore(result: Any) -> Any:
            out = torch.from_numpy(np.ascontiguousarray(result)) if isinstance(result, np.ndarray) else result
            out = out.T.reshape(shape)
            if family == "last":
                out = out.permute(*range(2, 2 + ndim), 1, 0)
            return out.to(device=device, dtype=target_dtype).contiguous()

        original = source.detach()
    else:
        array = np.asarray(source)
        real = not np.iscomplexobj(weight)
        target = array.dtype if array.dtype.kind in "fc" else np.dtype(np.float64)
        w = np.asarray(weight, dtype=np.float64 if real else np.complex128)
        flat = np.ascontiguousarray(w.reshape(shape[0] * shape[1], taps).T)

        def restore(result: Any) -> Any:
            out = np.asarray(result).T.reshape(shape)
            if family == "last":
                out = np.transpose(out, (*range(2, 2 + ndim), 1, 0))
            return np.ascontiguousarray(out, dtype=target)

        original = array
    return _Item(spec=spec, flat=flat, high=high, low=low, real=real, restore=restore, original=original)


def _unchanged(item: _Item) -> Any:
    """The user's kernel, as a fresh array/tensor of the result's kind."""
    original = item.original
    if _is_torch(original):
        torch = sys.modules["torch"]
        target = original.dtype if (original.dtype.is_floating_point or original.dtype.is_complex) else torch.float64
        return original.detach().clone().to(target)
    return np.array(original, dtype=original.dtype if original.dtype.kind in "fc" else np.float64)


# --------------------------------------------------------------------------------------------
# The iterations, for a batch of layers of one shape.
# --------------------------------------------------------------------------------------------


def _clip(t: Any, high: Any, low: Any, band: bool, workers: int) -> tuple[Any, Any]:
    """The per-frequency clip of a batch, split over ``workers`` threads (NumPy, single-threaded BLAS)."""
    if not isinstance(t, np.ndarray) or workers <= 1:
        return _clip_band(t, high, low) if band else _clip_max(t, high)
    p, q = t.shape[1:]
    if len(t) * min(p, q) ** 2 * max(p, q) < _PARALLEL_MIN_WORK:
        workers = 1
    bounds = np.linspace(0, len(t), 2 * workers + 1 if workers > 1 else 2).astype(int)
    ranges = [(a, b) for a, b in itertools.pairwise(bounds) if b > a]

    def part(index_range: tuple[int, int]) -> tuple[Any, Any]:
        a, b = index_range
        if band:
            return _clip_band(t[a:b], high[a:b], low[a:b])
        return _clip_max(t[a:b], high[a:b])

    parts = run_chunks(part, ranges, workers)
    if len(parts) == 1:
        return parts[0]
    if not any(changed.any() for _, changed in parts):
        return t, np.zeros(len(t), dtype=bool)
    return np.concatenate([clipped for clipped, _ in parts]), np.concatenate([changed for _, changed in parts])


def _project_batch(items: list[_Item], options: _Options) -> None:
    method, iterations, want_report = options.method, options.iterations, options.report
    first = items[0]
    band = first.low is not None
    geometry = _geometry(first.spec, first.real, band)
    layers = len(items)
    numpy = isinstance(first.flat, np.ndarray)
    if numpy:
        flat = np.concatenate([item.flat for item in items], axis=1) if layers > 1 else first.flat
    else:
        flat = sys.modules["torch"].cat([item.flat for item in items], dim=1)
    x0 = geometry.fold_kernel(flat)
    x = x0
    # per matrix of the (frequency, layer, group) batch
    high = np.tile(np.repeat([item.high for item in items], geometry.groups), geometry.batch)
    low = np.tile(np.repeat([item.low or 0.0 for item in items], geometry.groups), geometry.batch)
    if not numpy:
        torch = sys.modules["torch"]
        high = torch.from_numpy(high).to(x.device)
        low = torch.from_numpy(low).to(x.device)
    columns = geometry.columns
    used = np.zeros(layers, dtype=np.int64)
    correction = None  # Dykstra's increment for the clip set, in Fourier coordinates
    pending = np.zeros(layers, dtype=bool)  # layers whose Dykstra increment is non-zero
    residual = np.zeros(layers)
    support_changed = np.zeros(layers, dtype=bool)
    before = None
    t = geometry.forward(x, layers)
    if want_report:
        before = _extremes(geometry, t, layers, band)
    for _ in range(iterations):
        if t is None:
            t = geometry.forward(x, layers)
        t_in = t if correction is None else t + correction
        t_clip, changed = _clip(t_in, high, low, band, options.workers if numpy else 1)
        changed = changed if numpy else changed.cpu().numpy()
        layer_changed = geometry.per_layer(changed, layers).any(axis=(0, 2))
        active = layer_changed | pending
        if not active.any():
            break
        if method == "dykstra":
            correction = t_in - t_clip
            pending = layer_changed  # unchanged matrices give an exactly zero increment
        x_new = geometry.inverse(t_clip, layers, first.real)
        if not active.all():  # keep the layers that nothing changed bit for bit
            keep = np.repeat(~active, columns)
            if numpy:
                x_new[:, keep] = x[:, keep]
            else:
                keep_t = sys.modules["torch"].from_numpy(keep).to(x.device)
                x_new[:, keep_t] = x[:, keep_t]
        used += active
        x = x_new
        t = None
        if want_report:
            t = geometry.forward(x, layers)
            if geometry.full_support:
                residual[:] = 0.0
            else:
                residual = np.sqrt(geometry.squared_norms(t_clip - t, layers)) * active
            clipped_norm = np.sqrt(geometry.squared_norms(t_clip, layers))
            support_changed |= residual > 64 * np.finfo(np.float64).eps * np.maximum(clipped_norm, 1e-300)
    result = geometry.lift(flat, x0, x)
    after = None
    if want_report:
        after = _extremes(geometry, geometry.forward(x, layers) if t is None else t, layers, band)
    for index, item in enumerate(items):
        if used[index] == 0:
            item.result = _unchanged(item)
        else:
            part = result[:, index * columns : (index + 1) * columns]
            item.result = item.restore(part)
        if want_report:
            assert before is not None and after is not None
            if used[index] == 0:
                distance = 0.0
            else:
                original = item.original
                a = np.asarray(original.detach().cpu().numpy() if _is_torch(original) else original)
                b = np.asarray(item.result.detach().cpu().numpy() if _is_torch(item.result) else item.result)
                distance = float(np.linalg.norm((b.astype(np.complex128) - a.astype(np.complex128)).ravel()))
            item.report = ProjectionReport(
                sigma_max_before=float(before[0][index]),
                sigma_max_after=float(after[0][index]),
                sigma_min_before=None if before[1] is None else float(before[1][index]),
                sigma_min_after=None if after[1] is None else float(after[1][index]),
                distance=distance,
                iterations=int(used[index]),
                support_residual=float(residual[index]),
                support_changed=bool(support_changed[index]),
                method=method,
                max_norm=item.high,
                min_norm=item.low,
            )


def _run(items: list[_Item], options: _Options) -> None:
    """Group the items by shape (and kind) and project each group in memory-bounded batches."""
    torch = sys.modules.get("torch")
    # Small batched LAPACK calls gain nothing from BLAS threads and lose a lot when the cores are
    # busy (measured: 10x slower eigh with OpenBLAS's two threads on a loaded 2-core machine).
    with single_threaded_blas():
        if torch is not None:
            with torch.no_grad():
                _run_groups(items, options)
        else:
            _run_groups(items, options)


def _run_groups(items: list[_Item], options: _Options) -> None:
    groups: dict[Any, list[_Item]] = {}
    for item in items:
        device = "numpy" if isinstance(item.flat, np.ndarray) else str(item.flat.device)
        key = (item.spec, item.real, item.low is not None, device)
        groups.setdefault(key, []).append(item)
    numpy_batches: list[list[_Item]] = []
    device_batches: list[list[_Item]] = []
    for (spec, real, band, device), members in groups.items():
        geometry = _geometry(spec, real, band)
        per_layer = 16 * geometry.batch * geometry.aliases * max(geometry.columns, geometry.support)
        chunk = max(1, _BATCH_BYTES // max(per_layer, 1))
        batches = [members[start : start + chunk] for start in range(0, len(members), chunk)]
        (numpy_batches if device == "numpy" else device_batches).extend(batches)
    # NumPy: independent batches spread over the workers (each then clips on one thread);
    # a single batch splits its clip over the workers instead.
    if options.workers > 1 and len(numpy_batches) > 1:
        inner = dataclasses.replace(options, workers=1)
        run_chunks(lambda batch: _project_batch(batch, inner), numpy_batches, options.workers)
    else:
        for batch in numpy_batches:
            _project_batch(batch, options)
    for batch in device_batches:
        _project_batch(batch, options)


# --------------------------------------------------------------------------------------------
# Public API.
# --------------------------------------------------------------------------------------------


def _project(
    kernel: Any,
    input_shape: Any,
    max_norm: Any,
    min_norm: Any,
    iterations: Any,
    method: Any,
    layout: str | None,
    stride: Any,
    dilation: Any,
    groups: Any,
    transposed: Any,
    workers: int | None,
    want_report: bool,
    force_torch: bool = False,
) -> _Item:
    high, low = _check_bounds(max_norm, min_norm)
    options = _options(method, iterations, workers, want_report)
    item = _prepare(kernel, input_shape, high, low, layout, stride, dilation, groups, transposed, force_torch)
    _run([item], options)
    return item


def clip_operator_norm(
    kernel: Any,
    input_shape: int | Sequence[int],
    max_norm: float,
    *,
    min_norm: float | None = None,
    iterations: int = 1,
    method: str = "alternating",
    layout: str | None = None,
    stride: int | Sequence[int] | None = None,
    dilation: int | Sequence[int] | None = None,
    groups: int | None = None,
    transposed: bool | None = None,
    workers: int | None = None,
) -> Any:
    r"""Project a convolution kernel towards ``{K : ||A(K)||_2 <= max_norm}`` with its own support.

    ``A(K)`` is the layer's wrap-around operator (as in :func:`convspectra.singular_values`).
    One iteration is

    .. math:: K \leftarrow P_{\mathrm{supp}}\Big(\arg\min_{\|A(J)\|_2 \le c} \|J - K\|_F\Big),

    the clip of every frequency's transfer-matrix singular values at ``c`` (Proposition 12 of
    Sedghi et al.; exact with stride, dilation, groups, 1-3 spatial dimensions and transposed
    layers), followed by zeroing the coefficients outside the kernel's support. ``method``
    ``"alternating"`` repeats this (and stops early at a round that changes nothing);
    ``"dykstra"`` adds Dykstra's correction, whose iterates converge to
    ``argmin { ||J - K||_F : ||A(J)||_2 <= c, supp J within supp K }``. With ``min_norm`` the
    singular values are clipped into ``[min_norm, max_norm]`` (that set is not convex: no
    convergence guarantee). When the support covers the whole input grid one iteration is the
    exact nearest operator ``U min(S, c) V^T``. A kernel that already satisfies the constraint
    comes back unchanged (a copy). Taps that collide modulo the input size (kernel larger than the
    input, large dilation): see the module docstring.

    Args:
        kernel: NumPy array, ``torch.Tensor`` (any device) or ``torch.nn.Conv*d`` /
            ``ConvTranspose*d`` module (its stride, dilation, groups and kind are used; the
            module is not modified, a new weight tensor is returned).
        input_shape: spatial size of the layer's input (int or one per axis).
        max_norm: the bound ``c > 0`` on the operator norm.
        min_norm: optional lower bound on every singular value (``0 <= min_norm <= max_norm``).
        iterations: number of rounds (clip + support restriction), at least 1.
        method: ``"alternating"`` or ``"dykstra"``.
        layout, stride, dilation, groups, transposed: as in :func:`convspectra.singular_values`.
        workers: threads for the NumPy path (default: every core when ``threadpoolctl`` is
            installed, else 1); BLAS runs single-threaded inside them.

    Returns:
        The projected kernel, same shape and layout; NumPy for NumPy input, a torch tensor on the
        kernel's device for torch input (not requiring grad). The dtype is the input's
        (integer kernels give float64); the computation runs in float64/complex128.

    Raises:
        ParameterError: ``max_norm <= 0``, ``min_norm`` outside ``[0, max_norm]``,
            ``iterations < 1``, an unknown method, or a bad layer description.
        ParameterTypeError: non-numeric bounds, non-integer iterations, unsupported kernel type.

    Example:
        >>> import numpy as np, convspectra as cs
        >>> rng = np.random.default_rng(0)
        >>> kernel = rng.normal(size=(8, 4, 3, 3))
        >>> float(cs.singular_values(kernel, 8)[0]) > 1.0
        True
        >>> clipped = cs.clip_operator_norm(kernel, 8, 1.0, iterations=100)
        >>> bool(cs.singular_values(clipped, 8)[0] <= 1.0 + 1e-3)
        True
        >>> inside = cs.clip_operator_norm(kernel / 100, 8, 1.0)   # already in the ball
        >>> bool(np.array_equal(inside, kernel / 100))
        True

    References:
        H. Sedghi, V. Gupta, P. M. Long. The Singular Values of Convolutional Layers. ICLR 2019.
    """
    item = _project(
        kernel,
        input_shape,
        max_norm,
        min_norm,
        iterations,
        method,
        layout,
        stride,
        dilation,
        groups,
        transposed,
        workers,
        False,
    )
    return item.result


def clip_operator_norm_report(
    kernel: Any,
    input_shape: int | Sequence[int],
    max_norm: float,
    *,
    min_norm: float | None = None,
    iterations: int = 1,
    method: str = "alternating",
    layout: str | None = None,
    stride: int | Sequence[int] | None = None,
    dilation: int | Sequence[int] | None = None,
    groups: int | None = None,
    transposed: bool | None = None,
    workers: int | None = None,
) -> tuple[Any, ProjectionReport]:
    """:func:`clip_operator_norm` plus diagnostics: ``(kernel, ProjectionReport)``.

    The report costs two extra spectrum evaluations (before and after) and is not needed for
    the projection itself. Arguments, returned kernel and errors as :func:`clip_operator_norm`.

    Example:
        >>> import numpy as np, convspectra as cs
        >>> kernel, report = cs.clip_operator_norm_report(np.ones((1, 1, 2, 2)), 2, 1.0)
        >>> round(report.sigma_max_before, 6), round(report.sigma_max_after, 6), report.iterations
        (4.0, 1.0, 1)
        >>> report.support_changed      # a 2x2 kernel on a 2x2 input: the support is everything
        False
    """
    item = _project(
        kernel,
        input_shape,
        max_norm,
        min_norm,
        iterations,
        method,
        layout,
        stride,
        dilation,
        groups,
        transposed,
        workers,
        True,
    )
    assert item.report is not None
    return item.result, item.report


def _per_kernel(name: str, value: Any, count: int) -> list[Any]:
    """A list (one entry per kernel) or one value for all."""
    if isinstance(value, list):
        if len(value) != count:
            raise ParameterError(f"{name}: expected one value per kernel ({count}) when given a list, got {len(value)}")
        return value
    return [value] * count


def clip_operator_norm_many(
    kernels: Sequence[Any],
    input_shapes: Sequence[Any] | int,
    max_norm: float | Sequence[float],
    *,
    min_norm: float | Sequence[float] | None = None,
    iterations: int = 1,
    method: str = "alternating",
    layout: str | None = None,
    stride: Any = None,
    dilation: Any = None,
    groups: Any = None,
    transposed: Any = None,
    workers: int | None = None,
) -> list[Any]:
    """:func:`clip_operator_norm` of many kernels at once; layers of equal shape are batched.

    The result equals ``[clip_operator_norm(k, n, c, ...) for k, n, c in zip(...)]`` (to
    rounding) but shares the phase tables and the batched eigendecompositions among layers of
    the same shape, which is what makes a whole-network projection round cheap.

    Args:
        kernels: kernels or conv modules (a mix of kinds is fine).
        input_shapes: one input size per kernel (a list), or one int for all.
        max_norm: one bound for all, or a list with one bound per kernel.
        min_norm: None, one lower bound for all, or a list (entries may be None).
        iterations, method, workers: as :func:`clip_operator_norm` (shared).
        layout, stride, dilation, groups, transposed: one value for all kernels, or a ``list``
            with one value per kernel (a tuple is always a per-axis value).

    Returns:
        A list of projected kernels, in order, each as :func:`clip_operator_norm` returns it.

    Example:
        >>> import numpy as np, convspectra as cs
        >>> rng = np.random.default_rng(1)
        >>> kernels = [rng.normal(size=(4, 4, 3, 3)) for _ in range(3)]
        >>> out = cs.clip_operator_norm_many(kernels, [8, 8, 8], 1.0)
        >>> one = cs.clip_operator_norm(kernels[1], 8, 1.0)
        >>> bool(np.allclose(out[1], one, rtol=0, atol=1e-12))
        True
    """
    if isinstance(kernels, (str, bytes)) or not isinstance(kernels, Sequence):
        raise ParameterTypeError(f"kernels: expected a list of kernels, got {type(kernels).__name__}")
    count = len(kernels)
    options = _options(method, iterations, workers, False)
    if isinstance(input_shapes, numbers.Integral) and not isinstance(input_shapes, bool):
        shapes: list[Any] = [input_shapes] * count
    elif isinstance(input_shapes, Sequence) and not isinstance(input_shapes, (str, bytes)):
        shapes = list(input_shapes)
        if len(shapes) != count:
            raise ParameterError(
                f"input_shapes: expected one input size per kernel ({count}) or one int, got {len(shapes)}"
            )
    else:
        raise ParameterTypeError(f"input_shapes: expected a list of input sizes or an int, got {input_shapes!r}")
    highs = list(max_norm) if isinstance(max_norm, Sequence) else [max_norm] * count
    if len(highs) != count:
        raise ParameterError(f"max_norm: expected one bound per kernel ({count}) or one number, got {len(highs)}")
    lows = list(min_norm) if isinstance(min_norm, Sequence) else [min_norm] * count
    if len(lows) != count:
        raise ParameterError(f"min_norm: expected one bound per kernel ({count}) or one number, got {len(lows)}")
    per_kernel = {
        name: _per_kernel(name, value, count)
        for name, value in (
            ("layout", layout),
            ("stride", stride),
            ("dilation", dilation),
            ("groups", groups),
            ("transposed", transposed),
        )
    }
    items = []
    for index, kernel in enumerate(kernels):
        high, low = _check_bounds(highs[index], lows[index])
        items.append(
            _prepare(
                kernel,
                shapes[index],
                high,
                low,
                per_kernel["layout"][index],
                per_kernel["stride"][index],
                per_kernel["dilation"][index],
                per_kernel["groups"][index],
                per_kernel["transposed"][index],
            )
        )
    _run(items, options)
    return [item.result for item in items]
