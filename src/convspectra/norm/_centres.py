r"""Second-order data of the transfer matrices at box centres, and the box bound it gives.

With :math:`T(g_0 + D) = T_0 + \sum_a D_a K_a + E` (phase-centred; :math:`K_a` the derivative
per grid step along axis a; :math:`\|E\| \le \sum_t \|W_t\| \alpha_t^2 / 2`) and
:math:`P_0 = T_0 T_0^H = \sum_i \lambda_i v_i v_i^H` (on the smaller side), the largest
eigenvalue :math:`\mu` of :math:`P_0 + \sum_a D_a H_a`, :math:`H_a = K_a T_0^H + T_0 K_a^H`,
obeys, with :math:`a = \lambda_1 + v^H (\sum_a D_a H_a) v`,
:math:`\|b\| \le \sum_a |D_a| \|H_a v\|` and :math:`c \le \lambda_2 + \sum_a |D_a| \|H_a\|`
(Schur complement of the top eigenvector):
:math:`\mu \le \max(c, a + \|b\|^2 / (a - c))` when :math:`a > c`, else
:math:`\mu \le \max(a, c) + \|b\|`. Near a maximum :math:`v^H H_a v` vanishes, so the bound grows
only quadratically with the box's size.

Example:
    >>> import numpy as np
    >>> from convspectra.spec import parse_layer
    >>> from convspectra.transfer import FrequencyPlan, flat_weight
    >>> from convspectra.norm._centres import centre_values
    >>> spec, weight = parse_layer(np.ones((1, 1, 3)), 12)
    >>> plan = FrequencyPlan.create(spec, real=True)
    >>> slopes = 2 * np.pi * (np.arange(3.0)[:, None] - 1) / 12  # centred taps, per grid step
    >>> centres = centre_values(plan, flat_weight(weight), np.array([[0]]), slopes)
    >>> float(centres.value[0])  # sigma at frequency 0: the sum of the taps
    3.0
    >>> bool(centres.bound(np.array([[1]]), np.zeros(1))[0] >= 3.0)  # over the frequencies -1, 0, 1
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..transfer import FrequencyPlan
from ._budget import CENTRE_CHUNK_BYTES
from ._sigma import gram_bound, squared_norms

__all__ = ["Centres", "centre_values"]


@dataclass(frozen=True)
class Centres:
    """First- and second-order data of the transfer matrices at box centres, per group block.

    Attributes:
        value: ``(B,)`` sigma_max at each centre, max over groups.
        lam1, lam2: ``(B*G,)`` the two largest eigenvalues of ``P0`` per group block.
        slope: ``(B*G, d)`` ``|v^H H_a v|``.
        coupling: ``(B*G, d)`` ``||H_a v||``.
        h_norm: ``(B*G, d)`` a bound on ``||H_a||``.
        k_norm: ``(B*G, d)`` a bound on ``||K_a||``.
        groups: the channel groups G.
    """

    value: np.ndarray
    lam1: np.ndarray
    lam2: np.ndarray
    slope: np.ndarray
    coupling: np.ndarray
    h_norm: np.ndarray
    k_norm: np.ndarray
    groups: int

    def select(self, keep: np.ndarray) -> Centres:
        """The centres where ``keep`` (B,) is true."""
        block = np.repeat(keep, self.groups)
        return Centres(
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
        """``(B,)`` upper bound on sigma_max over boxes of half-widths ``radius`` (B, d).

        ``remainder`` (B,) bounds the second-order remainder ``||E||`` over each box.
        """
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


def centre_values(plan: FrequencyPlan, flat: np.ndarray, freqs: np.ndarray, slopes: np.ndarray) -> Centres:
    """Largest singular values at ``freqs`` and the local expansion data of :class:`Centres`.

    The centres are processed in chunks of about :data:`~convspectra.norm._budget.CENTRE_CHUNK_BYTES`
    of matrices (the memory estimate counts one chunk).

    Args:
        plan: the layer's frequency plan.
        flat: its flat complex weight (:func:`convspectra.transfer.flat_weight`).
        freqs: ``(B, d)`` int64 centre frequencies.
        slopes: ``(taps, d)``: ``slopes[t, a]`` is the signed phase change of tap t per grid
            step along axis a (taps centred on the kernel's middle).

    Returns:
        The :class:`Centres` of the B frequencies.
    """
    rows, cols = plan.block_shape
    per_centre = 16 * plan.spec.groups * (6 + 3 * plan.spec.ndim) * rows * cols
    step = max(1, CENTRE_CHUNK_BYTES // per_centre)
    if len(freqs) <= step:
        return _centre_chunk(plan, flat, freqs, slopes)
    parts = [_centre_chunk(plan, flat, freqs[i : i + step], slopes) for i in range(0, len(freqs), step)]
    names = ("value", "lam1", "lam2", "slope", "coupling", "h_norm", "k_norm")
    joined = {name: np.concatenate([getattr(part, name) for part in parts]) for name in names}
    return Centres(**joined, groups=plan.spec.groups)


def _centre_chunk(plan: FrequencyPlan, flat: np.ndarray, freqs: np.ndarray, slopes: np.ndarray) -> Centres:
    """:func:`centre_values` of one chunk of centres."""
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
        k_norm[:, axis] = np.minimum(np.sqrt(squared_norms(k)), gram_bound(k))
        h = k @ t0h
        h = h + np.swapaxes(h, 1, 2).conj()  # H_a, Hermitian
        h_sq = h @ h
        h_norm[:, axis] = np.minimum(2 * sigma0 * k_norm[:, axis], np.sqrt(np.sqrt(squared_norms(h_sq))))
    value = sigma0.reshape(batch, groups).max(axis=1)
    return Centres(value, lam1, lam2, slope, coupling, h_norm, k_norm, groups)
