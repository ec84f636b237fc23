r"""From a kernel to its per-frequency transfer matrices.

The forward convolution of a :class:`~convspectra.spec.ConvSpec` with wrap-around boundary is

.. math::  y_o[u] = \sum_i \sum_t W_{o,i}[t]\; x_i[(s\,u + \delta\,t) \bmod n],
           \qquad u \in \mathbb{Z}_m^d,\ m = n / s,

(per axis, stride s, dilation δ). In unitary Fourier coordinates it is block diagonal: the
output frequency :math:`g \in \mathbb{Z}_m^d` receives the s^d input frequencies
:math:`f = g + j\,m`, :math:`j \in \mathbb{Z}_s^d`, through the matrix

.. math::  T(g) = S^{-1/2}\,\big[\hat W(g + j m)\big]_{j},\qquad
           \hat W(f)_{o,i} = \sum_t W_{o,i}[t]\, e^{2\pi\mathrm{i}\,\sum_a f_a \delta_a t_a / n_a},

with :math:`S = \prod_a s_a`, columns ordered (j, i). With groups, T(g) is block diagonal,
one ``(out/groups) x (S*in/groups)`` block per group. The singular values of the layer are the
union over g of those of T(g) (Sedghi et al. 2019, Theorem 8, extended to stride, dilation
and groups).

The phases are computed from integers, ``(f*δ*t) mod n``, so taps that wrap around (a kernel
larger than the input, or a large dilation) land exactly where the operator puts them; no
FFT crops anything. Further savings:

* a real kernel has ``T(-g) = conj(T(g))`` up to a column permutation, so only one frequency
  of each conjugate pair is computed (with multiplicity 2);
* on an axis where the kernel has a single tap the transfer matrix does not depend on the
  frequency, so that axis is collapsed to one frequency with multiplicity ``m_a``, and its
  ``s_a`` equal alias blocks to one (the dropped copies only add zero singular values): a
  1x1 convolution, strided or not, is one SVD of the ``out x in`` matrix.

The same plan serves the projection (:mod:`convspectra.projection`), which also needs the
kernel's *support*, the distinct offsets ``dilation * t mod n`` its taps land on
(:meth:`FrequencyPlan.support`), and the phases at those offsets (:meth:`FrequencyPlan.phases`
with ``offsets``).

Example:
    >>> import numpy as np
    >>> from convspectra.spec import parse_layer
    >>> from convspectra.transfer import FrequencyPlan, flat_weight
    >>> spec, weight = parse_layer(np.ones((1, 1, 2, 2)), 4)
    >>> plan = FrequencyPlan.create(spec, real=True)
    >>> freqs, mult = plan.representatives(0, plan.size)
    >>> T = plan.transfer_numpy(flat_weight(weight), freqs)
    >>> T.shape, int(mult.sum())
    ((10, 1, 1), 16)
    >>> float(abs(T[0, 0, 0]))  # frequency 0 of the all-ones 2x2 kernel
    4.0
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._backend import is_tensor
from .spec import ConvSpec

__all__ = ["ChunkRanges", "FrequencyPlan", "Support", "flat_weight"]


@dataclass(frozen=True, eq=False)
class Support:
    """Where a kernel's taps land on the input grid: the distinct offsets ``dilation * t mod n``.

    Taps of a kernel larger than the input (or dilated past it) can land on the same offset; the
    operator only sees their sum there.

    Attributes:
        positions: ``(P, d)`` int64, the distinct offsets. Without a collision, the taps' own
            offsets in row-major tap order (``P = taps``); with one, the distinct offsets sorted.
        tap_to_position: ``(taps,)`` int64, the row of ``positions`` each tap lands on.
        counts: ``(P,)`` int64, how many taps land on each position.
    """

    positions: np.ndarray
    tap_to_position: np.ndarray
    counts: np.ndarray

    @property
    def size(self) -> int:
        """Number of distinct positions ``P``."""
        return len(self.positions)

    @property
    def collides(self) -> bool:
        """Whether two taps land on the same position."""
        return self.size < len(self.tap_to_position)


@dataclass(frozen=True)
class FrequencyPlan:
    """Which output frequencies to compute, and how often each one counts.

    On an axis where the kernel has a single tap, every frequency has the same transfer
    matrix and the ``s_a`` aliases of that axis are equal blocks; such an axis is planned as
    one frequency (multiplicity ``m_a``) with one alias: the matrix without the repeated blocks
    has the same non-zero singular values, and the rest are zeros (see ``collapse_strided`` of
    :meth:`create` for when the zeros matter).

    Attributes:
        spec: the layer.
        grid: the output-frequency grid actually enumerated: ``m_a``, or 1 on collapsed axes.
        stride: the aliases folded per axis: ``s_a``, or 1 on collapsed axes.
        collapsed_multiplicity: product of ``m_a`` over collapsed (single-tap) axes.
        real: whether conjugate symmetry is used (real kernels).
    """

    spec: ConvSpec
    grid: tuple[int, ...]
    stride: tuple[int, ...]
    collapsed_multiplicity: int
    real: bool

    @classmethod
    def create(cls, spec: ConvSpec, *, real: bool, collapse_strided: bool = True) -> FrequencyPlan:
        """Plan the frequencies of ``spec``.

        Args:
            spec: the layer.
            real: use the conjugate-pair saving (the kernel is real).
            collapse_strided: also collapse single-tap axes that have a stride. Their ``s_a``
                equal alias blocks make the matrix ``T_red Q`` with ``Q Q^H = I``: the same
                non-zero singular values as ``T_red``, and clipping the *largest* ones commutes
                with ``Q``. Raising the *smallest* ones (the projection's ``min_norm`` band)
                also raises the extra zero singular values and does not commute, so the band
                projection plans with ``collapse_strided=False``. Unstrided single-tap axes are
                always collapsed.

        Returns:
            The plan.

        Example:
            >>> from convspectra.spec import parse_layer
            >>> spec, _ = parse_layer(np.ones((2, 2, 1, 3)), 8, stride=2)
            >>> plan = FrequencyPlan.create(spec, real=True)
            >>> plan.grid, plan.stride, plan.collapsed_multiplicity
            ((1, 4), (1, 2), 4)
            >>> FrequencyPlan.create(spec, real=True, collapse_strided=False).grid
            (4, 4)
        """
        grid, stride, collapsed = [], [], 1
        for k, m, s in zip(spec.kernel_size, spec.output_shape, spec.stride, strict=True):
            collapse = k == 1 and (s == 1 or collapse_strided)
            grid.append(1 if collapse else m)
            stride.append(1 if collapse else s)
            collapsed *= m if collapse else 1
        return cls(spec, tuple(grid), tuple(stride), collapsed, real)

    @property
    def input_grid(self) -> tuple[int, ...]:
        """The input grid the phases are taken on (``grid * stride``)."""
        return tuple(m * s for m, s in zip(self.grid, self.stride, strict=True))

    @property
    def aliases(self) -> int:
        """Input frequencies folded onto each output frequency in the computed matrices."""
        return math.prod(self.stride)

    @property
    def block_shape(self) -> tuple[int, int]:
        """Shape of one group's computed transfer matrix: (out/groups, aliases*in/groups)."""
        spec = self.spec
        return (spec.out_channels // spec.groups, self.aliases * (spec.in_channels // spec.groups))

    @property
    def zeros_per_block(self) -> int:
        """Zero singular values each block has beyond those of its computed matrix."""
        return min(self.spec.block_shape) - min(self.block_shape)

    @property
    def size(self) -> int:
        """Number of points of the enumerated grid."""
        return math.prod(self.grid)

    @property
    def count(self) -> int:
        """Number of transfer matrices that will be decomposed (one per conjugate pair)."""
        if not self.real:
            return self.size
        self_conjugate = math.prod(2 if m % 2 == 0 else 1 for m in self.grid)
        return (self.size + self_conjugate) // 2

    def tap_offsets(self) -> np.ndarray:
        """``(taps, d)`` int64: the kernel's taps in row-major order, as coordinates ``t`` (before dilation)."""
        size = self.spec.kernel_size
        return np.stack(np.unravel_index(np.arange(math.prod(size)), size), axis=1).astype(np.int64)

    def alias_shifts(self) -> np.ndarray:
        """``(aliases, d)`` int64: the alias indices ``j`` (row-major over the computed strides); the input
        frequency ``g + j * grid`` is folded onto the output frequency ``g``."""
        return np.stack(np.unravel_index(np.arange(self.aliases), self.stride), axis=1).astype(np.int64)

    def dilated_offsets(self) -> np.ndarray:
        """``(taps, d)`` int64: the taps' offsets ``dilation * t mod n`` on :attr:`input_grid`, row-major tap order.

        Reduced in Python integers first, so any dilation (``2**70`` included) gives the exact offset.
        """
        taps = self.tap_offsets()
        axes = zip(self.spec.dilation, self.input_grid, self.spec.kernel_size, strict=True)
        columns = [(taps[:, axis] * ((dilation % n) if k > 1 else 0)) % n for axis, (dilation, n, k) in enumerate(axes)]
        return np.stack(columns, axis=1).astype(np.int64) if columns else taps

    def support(self) -> Support:
        """The distinct offsets ``dilation * t mod n`` of the taps on :attr:`input_grid`.

        On collapsed axes the input grid has one point and every offset is 0 (a single tap).

        Example:
            >>> from convspectra.spec import parse_layer
            >>> spec, _ = parse_layer(np.ones((1, 1, 5)), 3)      # 5 taps on 3 points
            >>> support = FrequencyPlan.create(spec, real=True).support()
            >>> support.positions.ravel().tolist(), support.tap_to_position.tolist(), support.counts.tolist()
            ([0, 1, 2], [0, 1, 2, 0, 1], [2, 2, 1])
        """
        offsets = self.dilated_offsets()
        unique, tap_to_position, counts = np.unique(offsets, axis=0, return_inverse=True, return_counts=True)
        if len(unique) == len(offsets):  # no collision: keep the taps' order
            return Support(offsets, np.arange(len(offsets), dtype=np.int64), np.ones(len(offsets), dtype=np.int64))
        return Support(unique, tap_to_position.reshape(-1).astype(np.int64), counts.astype(np.int64))

    def representatives(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Frequencies with row-major index in ``[start, stop)`` that represent their class.

        Returns:
            ``(freqs, multiplicity)``: ``freqs`` is ``(B, d)`` int64 (grid coordinates),
            ``multiplicity`` is ``(B,)`` int64, the number of frequencies of the full output
            grid that share each one's transfer matrix up to conjugation.
        """
        index = np.arange(start, stop, dtype=np.int64)
        freqs = np.stack(np.unravel_index(index, self.grid), axis=1).astype(np.int64)
        if not self.real:
            return freqs, np.full(len(index), self.collapsed_multiplicity, dtype=np.int64)
        grid = np.asarray(self.grid, dtype=np.int64)
        partner = np.ravel_multi_index(tuple(((-freqs) % grid).T), self.grid)
        keep = index <= partner
        multiplicity = np.where(index[keep] < partner[keep], 2, 1) * self.collapsed_multiplicity
        return freqs[keep], multiplicity.astype(np.int64)

    def count_before(self, index: int) -> int:
        """How many representatives (see :meth:`representatives`) have row-major index ``< index``.

        Pure integer arithmetic, ``O(d)``, whatever the grid's size: a frequency ``g`` represents
        its class when ``g <= -g`` in row-major (lexicographic) order.

        Example:
            >>> from convspectra.spec import parse_layer
            >>> plan = FrequencyPlan.create(parse_layer(np.ones((1, 1, 3, 3)), 6)[0], real=True)
            >>> [plan.count_before(i) for i in (0, 6, 18, 36)], plan.count
            ([0, 4, 16, 20], 20)
        """
        index = int(index)
        if index <= 0:
            return 0
        if index >= self.size:
            return self.count
        if not self.real:
            return index
        coords = []
        for m in reversed(self.grid):
            index, coord = divmod(index, m)
            coords.append(coord)
        coords.reverse()
        total, decided = 0, None  # decided: None while the prefix equals its conjugate, else prefix < conjugate
        for axis, (g, m) in enumerate(zip(coords, self.grid, strict=True)):
            rest = math.prod(self.grid[axis + 1 :])
            if decided is None:  # h_axis < g: below its conjugate (all of the rest counts), self-conjugate, or above
                below = max(0, min(g - 1, (m - 1) // 2))
                self_conjugate = (1 if g > 0 else 0) + (1 if m % 2 == 0 and m // 2 < g else 0)
                total += below * rest + self_conjugate * _pair_count(self.grid[axis + 1 :])
                if (2 * g) % m:
                    decided = 2 * g < m
            elif decided:
                total += g * rest
        return total

    def index_of(self, rank: int) -> int:
        """Row-major index of the ``rank``-th representative (0-based, ``0 <= rank < count``), by bisection
        on :meth:`count_before`."""
        low, high = int(rank), self.size - 1  # the answer is in [rank, size - 1]
        while low < high:
            middle = (low + high) // 2
            if self.count_before(middle + 1) > rank:
                high = middle
            else:
                low = middle + 1
        return low

    def chunks(self, per_chunk: int) -> ChunkRanges:
        """Row-major index ranges holding at most ``per_chunk`` representatives each, none empty.

        Lazy: the ranges are computed while iterating (a few integer operations each), so
        planning a request never allocates in proportion to the grid. Each range starts at a
        representative and spans at most ``2 * per_chunk`` indices (which bounds the index
        arrays of :meth:`representatives`); ``.bound`` is an upper bound on their number, arithmetically.

        Example:
            >>> from convspectra.spec import parse_layer
            >>> plan = FrequencyPlan.create(parse_layer(np.ones((1, 1, 3, 3)), 6)[0], real=True)
            >>> list(plan.chunks(8))
            [(0, 10), (10, 18), (18, 22)]
            >>> [len(plan.representatives(*r)[0]) for r in plan.chunks(8)]
            [8, 8, 4]
        """
        return ChunkRanges(self, max(1, int(per_chunk)))

    def phases(self, freqs: np.ndarray, offsets: np.ndarray | None = None) -> np.ndarray:
        """Phase table ``(B * aliases, P)`` complex128, scaled by S^(-1/2).

        Row ``b * S + j`` holds ``exp(2 pi i sum_a f_a r_a / n_a) / sqrt(S)`` for the input
        frequency ``f = freqs[b] + j * m`` (j in row-major order over the strides) and the
        input-grid offset ``r = offsets[p]``. The products ``f_a r_a`` are reduced modulo ``n_a``
        in integers, then the n-th roots of unity are looked up: exact whatever the offsets.

        Args:
            freqs: ``(B, d)`` int64 output frequencies (grid coordinates).
            offsets: ``(P, d)`` integer offsets on the input grid; default the dilated taps
                ``dilation * t mod n`` (:meth:`dilated_offsets`) in row-major tap order (``P = taps``), e.g.
                ``support().positions`` for the distinct offsets of the support.

        Returns:
            The table; column ``p`` belongs to ``offsets[p]``.
        """
        offsets = self.dilated_offsets() if offsets is None else np.asarray(offsets, dtype=np.int64)
        aliases = self.alias_shifts()
        grid = np.asarray(self.grid, dtype=np.int64)
        n = np.asarray(self.input_grid, dtype=np.int64)
        f = freqs[:, None, :] + aliases[None, :, :] * grid  # (B, S, d), 0 <= f < n
        phases = np.full((f.shape[0], f.shape[1], len(offsets)), 1 / math.sqrt(self.aliases), dtype=np.complex128)
        for axis in range(self.spec.ndim):  # exact integer reduction, then the n-th roots of unity
            size = int(n[axis])
            r = offsets[:, axis] % size
            if not r.any():
                continue  # every offset 0 on this axis (a single tap): phase 1
            fa = f[..., axis, None]
            if size <= _EXACT_INT64_SIDE:  # f * r < n^2 fits in int64
                step = (fa * r) % size
            else:  # n^2 would overflow int64: reduce the product in Python integers
                step = ((fa.astype(object) * r.astype(object)) % size).astype(np.int64)
            if size <= step.size:  # a lookup table of the roots is cheaper than one exp per entry
                phases *= np.exp((2j * np.pi / size) * np.arange(size))[step]
            else:  # the same expression per entry: the same bits, without a table of n roots
                phases *= np.exp((2j * np.pi / size) * step)
        return phases.reshape(-1, len(offsets))

    def block_layout(self, matrices: Any, batch: int) -> Any:
        """(B*S, G*a*b0) -> (B*G, a, S*b0): gather the aliased frequencies into columns."""
        spec = self.spec
        groups = spec.groups
        a = spec.out_channels // groups
        b0 = spec.in_channels // groups
        aliases = self.aliases
        matrices = matrices.reshape(batch, aliases, groups, a, b0)
        if aliases > 1:
            matrices = matrices.permute(0, 2, 3, 1, 4) if is_tensor(matrices) else matrices.transpose(0, 2, 3, 1, 4)
        return matrices.reshape(batch * groups, a, aliases * b0)

    def transfer_numpy(self, flat: np.ndarray, freqs: np.ndarray) -> np.ndarray:
        """Transfer matrices ``(B * groups, out/groups, S * in/groups)`` at ``freqs``.

        ``flat`` is :func:`flat_weight` of a NumPy weight (complex64 or complex128). When every
        frequency is self-conjugate (``2g = 0``) with no aliases and the kernel is real (the only
        frequency of a 1x1 layer), the phases are +-1 and the matrices are returned real, for
        real LAPACK (about 4x cheaper).
        """
        matrices = self.phases(freqs).astype(flat.dtype, copy=False) @ flat
        if self.real and self.aliases == 1 and not np.any((2 * freqs) % np.asarray(self.grid)):
            matrices = np.ascontiguousarray(matrices.real)
        return self.block_layout(matrices, len(freqs))

    def transfer_torch(self, flat: Any, freqs: np.ndarray) -> Any:
        """As :meth:`transfer_numpy` for :func:`flat_weight` of a torch weight (on its device,
        keeping autograd)."""
        torch = sys.modules["torch"]
        phases = torch.from_numpy(self.phases(freqs)).to(device=flat.device, dtype=flat.dtype)
        return self.block_layout(phases @ flat, len(freqs))


#: Largest side for which ``f * r`` (both ``< n``) cannot overflow int64.
_EXACT_INT64_SIDE = 3 * 10**9


def _pair_count(grid: tuple[int, ...]) -> int:
    """Conjugate classes of a full grid: ``(size + self-conjugate points) / 2``."""
    return (math.prod(grid) + math.prod(2 if m % 2 == 0 else 1 for m in grid)) // 2


@dataclass(frozen=True)
class ChunkRanges:
    """The lazy sequence of index ranges of :meth:`FrequencyPlan.chunks`."""

    plan: FrequencyPlan
    per_chunk: int

    @property
    def bound(self) -> int:
        """An upper bound on the number of ranges, a Python int (exact unless a range is cut at ``2 * per_chunk``
        indices). There is no ``len()``: the number can exceed what an index holds."""
        count = self.plan.count
        if not self.plan.real:
            return -(-count // self.per_chunk)
        return -(-count // self.per_chunk) + -(-self.plan.size // (2 * self.per_chunk))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        plan, per_chunk = self.plan, self.per_chunk
        if not plan.real:
            for start in range(0, plan.size, per_chunk):
                yield start, min(plan.size, start + per_chunk)
            return
        done, count = 0, plan.count
        while done < count:
            start = plan.index_of(done)
            last = plan.index_of(min(done + per_chunk, count) - 1) if start + 1 < plan.size else start
            stop = min(last + 1, start + 2 * per_chunk)
            yield start, stop
            done = plan.count_before(stop)


def flat_weight(weight: Any) -> Any:
    """(O, I/G, k...) -> (taps, O * I/G) complex, rows in row-major tap order.

    complex64 for float32/complex64 weights, complex128 otherwise; NumPy or torch as given.
    """
    out_channels, in_per_group = weight.shape[0], weight.shape[1]
    flat = weight.reshape(out_channels * in_per_group, -1).T
    if is_tensor(flat):
        torch = sys.modules["torch"]
        single = flat.dtype in (torch.float32, torch.complex64)
        return flat.to(torch.complex64 if single else torch.complex128).contiguous()
    single = flat.dtype in (np.float32, np.complex64)
    return np.ascontiguousarray(flat, dtype=np.complex64 if single else np.complex128)
