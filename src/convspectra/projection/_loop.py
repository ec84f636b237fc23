r"""The iterations: alternating projections or Dykstra's algorithm, for batches of layers of one shape.

Kernels are grouped by layer shape (and kind and backend) and cut into cache-sized batches; a
batch is one matrix of folded kernels side by side, so that every step is one product or one
batched decomposition for all its layers. One round is

.. math:: T \leftarrow \mathcal F K,\quad T' = \mathrm{clip}(T + D),\quad
          D \leftarrow T + D - T' \text{ (Dykstra only)},\quad K \leftarrow P_{\mathrm{supp}} \mathcal F^{-1} T',

and a layer that a round leaves unchanged keeps its kernel bit for bit (alternating projections
then stop for it).

Example:
    >>> Options.create(method="dykstra", iterations=5, workers=1, backend="auto", report=False)
    Options(method='dykstra', iterations=5, workers=1, backend='auto', report=False)
    >>> Options.create(method="newton", iterations=5, workers=1, backend="auto", report=False)
    Traceback (most recent call last):
    ...
    convspectra.errors.ParameterError: method: expected one of 'alternating', 'dykstra', got 'newton'
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._backend import loaded_torch
from .._checks import choice, integer
from .._rescale import scale_up
from .._threads import resolve_workers, run_chunks, single_threaded_blas
from ._clip import clip, extremes
from ._items import BACKENDS, Item, distance, unchanged
from ._report import ProjectionReport
from ._tables import Geometry, shape_geometry

__all__ = ["METHODS", "Options", "run"]

#: The projection algorithms: ``"alternating"`` (Cheney-Goldstein) and ``"dykstra"``.
METHODS = ("alternating", "dykstra")

#: Layers of one shape are processed together up to about this many bytes of transfer matrices
#: (cache-sized: one round of ResNet-32 took 1.35x the CPU time with 64 MiB batches).
_BATCH_BYTES = 2 * 2**20


@dataclass(frozen=True)
class Options:
    """The options shared by every kernel of one call (validated by :meth:`create`)."""

    method: str
    iterations: int
    workers: int
    backend: str
    report: bool

    @classmethod
    def create(cls, *, method: Any, iterations: Any, workers: Any, backend: Any, report: bool) -> Options:
        """Check ``method`` (one of :data:`METHODS`), ``iterations`` (a positive int), ``workers``
        (None or a positive int) and ``backend`` (one of ``BACKENDS``)."""
        return cls(
            method=choice("method", method, METHODS),
            iterations=integer("iterations", iterations),
            workers=resolve_workers(workers),
            backend=choice("backend", backend, BACKENDS),
            report=report,
        )


def run(items: list[Item], options: Options) -> None:
    """Project every item (filling ``result``, and ``report`` when asked), batched by shape."""
    torch = loaded_torch()
    # Small batched LAPACK calls gain nothing from BLAS threads and lose a lot when the cores are
    # busy (measured when this was written: 10x slower eigh with OpenBLAS's two threads on a loaded
    # 2-core Intel machine).
    with single_threaded_blas():
        if torch is not None:
            with torch.no_grad():
                _run_groups(items, options)
        else:
            _run_groups(items, options)


def _run_groups(items: list[Item], options: Options) -> None:
    groups: dict[Any, list[Item]] = {}
    for item in items:
        device = "numpy" if isinstance(item.flat, np.ndarray) else str(item.flat.device)
        key = (item.spec, item.real, item.low is not None, device)
        groups.setdefault(key, []).append(item)
    numpy_batches: list[list[Item]] = []
    device_batches: list[list[Item]] = []
    for (spec, real, band, device), members in groups.items():
        geometry = shape_geometry(spec, real, band)
        per_layer = 16 * geometry.batch * geometry.aliases * max(geometry.columns, geometry.support.size)
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


@dataclass
class _Diagnostics:
    """Per layer of a batch: what the report needs besides the result."""

    before: tuple[np.ndarray, np.ndarray | None] | None
    after: tuple[np.ndarray, np.ndarray | None] | None
    residual: np.ndarray
    support_changed: np.ndarray


def _project_batch(items: list[Item], options: Options) -> None:
    first = items[0]
    band = first.low is not None
    geometry = shape_geometry(first.spec, first.real, band)
    layers = len(items)
    if isinstance(first.flat, np.ndarray):
        flat = np.concatenate([item.flat for item in items], axis=1) if layers > 1 else first.flat
    else:
        flat = sys.modules["torch"].cat([item.flat for item in items], dim=1)
    x0 = geometry.fold_kernel(flat)
    x, used, diagnostics = _iterate(geometry, items, x0, options)
    result = geometry.lift(flat, x0, x)
    columns = geometry.columns
    for index, item in enumerate(items):
        if used[index] == 0:
            item.result = unchanged(item)
        else:
            item.result = item.restore(result[:, index * columns : (index + 1) * columns])
        if options.report:
            before, after = diagnostics.before, diagnostics.after
            assert before is not None and after is not None
            e = item.exponent  # the diagnostics are at the working scale

            def back(values: np.ndarray | None, e: int = e, index: int = index) -> float | None:
                return None if values is None else float(scale_up(np.float64(values[index]), e))

            item.report = ProjectionReport(
                sigma_max_before=float(scale_up(np.float64(before[0][index]), e)),
                sigma_max_after=float(scale_up(np.float64(after[0][index]), e)),
                sigma_min_before=back(before[1]),
                sigma_min_after=back(after[1]),
                distance=0.0 if used[index] == 0 else distance(item),
                iterations=int(used[index]),
                support_residual=float(scale_up(np.float64(diagnostics.residual[index]), e)),
                support_changed=bool(diagnostics.support_changed[index]),
                method=options.method,
                max_norm=item.high,
                min_norm=item.low,
            )


def _iterate(geometry: Geometry, items: list[Item], x0: Any, options: Options) -> tuple[Any, np.ndarray, _Diagnostics]:
    """The rounds for the folded kernels ``x0`` of ``items``: ``(x, rounds used per layer, diagnostics)``."""
    first = items[0]
    band = first.low is not None
    layers = len(items)
    numpy = isinstance(x0, np.ndarray)
    want_report = options.report
    x = x0
    # per matrix of the (frequency, layer, group) batch
    # the bounds at the working scale of each layer's taps (see Item.exponent)
    high = np.tile(np.repeat([item.scaled_high for item in items], geometry.groups), geometry.batch)
    low = np.tile(np.repeat([item.scaled_low or 0.0 for item in items], geometry.groups), geometry.batch)
    if not numpy:
        torch = sys.modules["torch"]
        high = torch.from_numpy(high).to(x.device)
        low = torch.from_numpy(low).to(x.device)
    columns = geometry.columns
    used = np.zeros(layers, dtype=np.int64)
    correction = None  # Dykstra's increment for the clip set, in Fourier coordinates
    pending = np.zeros(layers, dtype=bool)  # layers whose Dykstra increment is non-zero
    diagnostics = _Diagnostics(None, None, np.zeros(layers), np.zeros(layers, dtype=bool))
    t = geometry.forward(x, layers)
    if want_report:
        diagnostics.before = extremes(geometry, t, layers, band)
    for _ in range(options.iterations):
        if t is None:
            t = geometry.forward(x, layers)
        t_in = t if correction is None else t + correction
        t_clip, changed = clip(t_in, high, low, band, options.workers if numpy else 1)
        changed = changed if numpy else changed.cpu().numpy()
        layer_changed = geometry.per_layer(changed, layers).any(axis=(0, 2))
        active = layer_changed | pending
        if not active.any():
            break
        if options.method == "dykstra":
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
                diagnostics.residual[:] = 0.0
            else:
                diagnostics.residual = np.sqrt(geometry.squared_norms(t_clip - t, layers)) * active
            clipped_norm = np.sqrt(geometry.squared_norms(t_clip, layers))
            threshold = 64 * np.finfo(np.float64).eps * np.maximum(clipped_norm, 1e-300)
            diagnostics.support_changed |= diagnostics.residual > threshold
    if want_report:
        diagnostics.after = extremes(geometry, geometry.forward(x, layers) if t is None else t, layers, band)
    return x, used, diagnostics
