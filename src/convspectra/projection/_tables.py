r"""The tables of one layer shape: its support, the phases on it, and the two transforms they give.

A layer shape (a :class:`~convspectra.spec.ConvSpec`, a real or complex kernel, with or without
a ``min_norm`` band) has one :class:`~convspectra.transfer.FrequencyPlan`: the representative
output frequencies ``g`` (one per conjugate pair of a real kernel, single-tap axes collapsed) and
the support, the distinct offsets ``r = dilation * t mod n`` of the taps. From them:

* the forward transform ``T = phi @ K``: the folded kernel ``K`` ``(P, C)`` to the transfer
  matrices at every representative frequency and alias;
* the support-restricted inverse ``K = Re(psi @ T)`` (``psi`` without ``Re`` for a complex
  kernel): the inverse DFT evaluated only at the support, with ``psi[r, (g, j)] =
  w_g conj(phi[(g, j), r]) / M`` (``M`` computed output frequencies, ``w_g = 2`` for a conjugate
  pair, else 1).

:class:`Tables` names these arrays (NumPy on the host, or torch tensors on one device, cached per
device); :class:`Geometry` holds them with the plan and applies them to batches of layers.

Example:
    >>> import numpy as np
    >>> from convspectra.spec import parse_layer
    >>> spec, _ = parse_layer(np.ones((2, 2, 3, 3)), 8)
    >>> geometry = shape_geometry(spec, True, False)
    >>> geometry.support.size, geometry.batch, geometry.host.phi.shape, geometry.host.psi.shape
    (9, 34, (34, 9), (9, 34))
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any

import numpy as np

from ..spec import ConvSpec
from ..transfer import FrequencyPlan, Support

__all__ = ["Geometry", "Tables", "shape_geometry"]


@dataclass(frozen=True, eq=False)
class Tables:
    """The phase tables of one layer shape: NumPy arrays, or torch tensors on one device.

    Attributes:
        phi: ``(B * S, P)`` complex128, the forward phases at the support (scaled by S^(-1/2)).
        phi_real, phi_imag: its real and imaginary parts (contiguous), for real kernels.
        psi: ``(P, B * S)`` complex128, the inverse DFT at the support, conjugate pairs weighted.
        psi_real, psi_imag: its real and imaginary parts (contiguous).
        psi_stacked: ``(2P, B * S)`` float64, ``[Re psi; Im psi]`` (one real product on NumPy).
        fold: ``(P, taps)`` float64 0/1 matrix summing colliding taps; None without collisions.
        counts: ``(P,)`` float64, taps per position; None without collisions.
        tap_to_position: ``(taps,)`` int64, the position each tap lands on.
    """

    phi: Any
    phi_real: Any
    phi_imag: Any
    psi: Any
    psi_real: Any
    psi_imag: Any
    psi_stacked: Any
    fold: Any
    counts: Any
    tap_to_position: Any

    @classmethod
    def build(cls, phases: np.ndarray, row_weight: np.ndarray, support: Support) -> Tables:
        """The NumPy tables from the phases ``(B * S, P)`` and the inverse's row weights ``w_g / M``."""
        psi = np.ascontiguousarray((phases.conj() * row_weight[:, None]).T)
        psi_real, psi_imag = np.ascontiguousarray(psi.real), np.ascontiguousarray(psi.imag)
        fold = counts = None
        if support.collides:
            taps = len(support.tap_to_position)
            fold = np.zeros((support.size, taps))
            fold[support.tap_to_position, np.arange(taps)] = 1.0
            counts = support.counts.astype(np.float64)
        return cls(
            phi=phases,
            phi_real=np.ascontiguousarray(phases.real),
            phi_imag=np.ascontiguousarray(phases.imag),
            psi=psi,
            psi_real=psi_real,
            psi_imag=psi_imag,
            psi_stacked=np.concatenate((psi_real, psi_imag)),
            fold=fold,
            counts=counts,
            tap_to_position=support.tap_to_position,
        )

    def to(self, device: Any) -> Tables:
        """These tables as torch tensors on ``device`` (same dtypes)."""
        torch = sys.modules["torch"]

        def put(array: np.ndarray | None) -> Any:
            return None if array is None else torch.from_numpy(np.ascontiguousarray(array)).to(device)

        return Tables(**{field.name: put(getattr(self, field.name)) for field in fields(self)})


class Geometry:
    """One layer shape: its plan, support and tables, and the transforms between kernels and transfer matrices.

    ``forward`` maps folded kernels ``(P, C)`` (``C = L * out * in/groups`` columns, L layers side
    by side) to the transfer matrices ``(B * L * groups, a, S * b)``; ``inverse`` maps transfer
    matrices back to the coefficients of the support (the inverse DFT followed by the support
    restriction). The torch tables are made on first use per device and kept.

    Attributes:
        plan: the frequency plan (single-tap strided axes are kept when a band is asked for).
        support: the kernel's support on the plan's input grid.
        batch: ``B``, the number of representative frequencies.
        aliases: ``S``, the aliased input frequencies per output frequency.
        groups, rows, cols_per_alias: ``G``, ``a = out/G`` and ``b = in/G``.
        columns: one layer's columns ``out * in/G``.
        row_weight: ``(B * S,)`` float64, ``w_g / M`` per row of the phase table.
        full_support: whether the support is the whole input grid (the restriction is the identity).
        host: the NumPy :class:`Tables`.
    """

    def __init__(self, spec: ConvSpec, real: bool, band: bool) -> None:
        plan = FrequencyPlan.create(spec, real=real, collapse_strided=not band)
        self.plan = plan
        self.support = plan.support()
        freqs, multiplicity = plan.representatives(0, plan.size)
        self.batch = len(freqs)
        self.aliases = plan.aliases
        self.groups = spec.groups
        self.rows = spec.out_channels // spec.groups
        self.cols_per_alias = spec.in_channels // spec.groups
        self.columns = spec.out_channels * self.cols_per_alias
        self.full_support = self.support.size == plan.size * plan.aliases
        weight = (multiplicity // plan.collapsed_multiplicity).astype(np.float64) / plan.size
        self.row_weight = np.repeat(weight, self.aliases)
        self.host = Tables.build(plan.phases(freqs, self.support.positions), self.row_weight, self.support)
        self._on_device: dict[Any, Tables] = {}

    def tables(self, x: Any) -> Tables:
        """The tables for operands like ``x``: :attr:`host` for NumPy, else on ``x``'s device (cached)."""
        if isinstance(x, np.ndarray):
            return self.host
        device = x.device
        if device not in self._on_device:
            self._on_device[device] = self.host.to(device)
        return self._on_device[device]

    # ---- kernel <-> folded support coefficients ------------------------------------------

    def fold_kernel(self, flat: Any) -> Any:
        """``(taps, C) -> (P, C)``: colliding taps summed (the kernel itself without collisions)."""
        if not self.support.collides:
            return flat
        fold = self.tables(flat).fold
        return (fold.astype(flat.dtype) if isinstance(flat, np.ndarray) else fold.to(flat.dtype)) @ flat

    def lift(self, flat: Any, folded_before: Any, folded_after: Any) -> Any:
        """``(P, C) -> (taps, C)``: the smallest change of the taps ``flat`` with the given folded change."""
        if not self.support.collides:
            return folded_after
        tables = self.tables(flat)
        share = (folded_after - folded_before) / tables.counts[:, None]
        return flat + share[tables.tap_to_position]

    # ---- transforms ------------------------------------------------------------------------

    def forward(self, x: Any, layers: int) -> Any:
        """Folded kernels ``(P, layers * columns)`` -> transfer matrices ``(B * layers * G, a, S * b)``.

        The batch axis runs over (frequency, layer, group), so that without stride the result is
        a view of one matrix product (no copy).
        """
        shape = (self.batch, self.aliases, layers, self.groups, self.rows, self.cols_per_alias)
        tables = self.tables(x)
        if isinstance(x, np.ndarray):
            if np.iscomplexobj(x):
                z = tables.phi @ x
            else:
                z = np.empty((tables.phi.shape[0], x.shape[1]), dtype=np.complex128)
                z.real = tables.phi_real @ x
                z.imag = tables.phi_imag @ x
            z = z.reshape(shape).transpose(0, 2, 3, 4, 1, 5)
        else:
            torch = sys.modules["torch"]
            z = tables.phi @ x if x.is_complex() else torch.complex(tables.phi_real @ x, tables.phi_imag @ x)
            z = z.reshape(shape).permute(0, 2, 3, 4, 1, 5)
        return z.reshape(self.batch * layers * self.groups, self.rows, self.aliases * self.cols_per_alias)

    def inverse(self, t: Any, layers: int, real: bool) -> Any:
        """Transfer matrices -> the support's coefficients ``(P, layers * columns)`` (inverse DFT, restricted)."""
        shape = (self.batch, layers, self.groups, self.rows, self.aliases, self.cols_per_alias)
        rows = self.batch * self.aliases
        tables = self.tables(t)
        if isinstance(t, np.ndarray):
            z = np.ascontiguousarray(t.reshape(shape).transpose(0, 4, 1, 2, 3, 5)).reshape(rows, -1)
            if not real:
                return tables.psi @ z
            # Re(psi @ z) from one real product with z's interleaved (re, im) columns
            both = tables.psi_stacked @ z.view(np.float64)
            support = self.support.size
            return both[:support, 0::2] - both[support:, 1::2]
        z = t.reshape(shape).permute(0, 4, 1, 2, 3, 5).reshape(rows, -1)
        if real:
            return tables.psi_real @ z.real.contiguous() - tables.psi_imag @ z.imag.contiguous()
        return tables.psi @ z

    def per_layer(self, values: Any, layers: int) -> Any:
        """``(B * layers * G, ...) -> (B, layers, G, ...)``: split the batch axis."""
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
def shape_geometry(spec: ConvSpec, real: bool, band: bool) -> Geometry:
    """The :class:`Geometry` of one layer shape (cached: layers of one shape share it)."""
    return Geometry(spec, real, band)
