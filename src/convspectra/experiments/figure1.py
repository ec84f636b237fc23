"""Figure 1 of the paper: time to compute all singular values of a convolution layer, by method.

Two panels, as in the paper: 3x3 kernels on 16x16 inputs and 11x11 kernels on 64x64 inputs, over a
range of channel counts (``c`` input and ``c`` output channels), kernels of standard normal entries
(float64). Methods:

* ``full-matrix SVD``: the layer's dense ``c n^2 x c n^2`` matrix built by PyTorch's convolution
  (:func:`convspectra.operator.dense_matrix`) and ``numpy.linalg.svd`` of it. Skipped, with the
  reason recorded, when its estimated time exceeds the budget or its memory the limit;
* ``paper (NumPy)``: the paper's snippet, :func:`convspectra.baselines.paper_singular_values`;
* ``convspectra (CPU)``: :func:`convspectra.singular_values` on a NumPy array;
* ``convspectra (CUDA float64)`` and ``(CUDA float32)`` when a GPU is available: on a CUDA tensor,
  timed between ``torch.cuda.synchronize()`` calls, the kernel already on the GPU and the values
  left there.

Every method gets one untimed warm-up call, then ``repeats`` timed calls (fewer when they would
exceed the budget; the count is recorded) and reports the median. Each point's largest error
``max |s - s_ref| / s_ref[0]`` is measured against the full-matrix SVD when it ran, otherwise
against the paper's method (exact for kernels no larger than the input). A point is skipped before
running when the time estimated from the method's previous point (times ``(c'/c)^3``) or, for the
dense method, from a calibration SVD, exceeds the budget.

Example:
    >>> from convspectra.experiments.figure1 import Panel, run_figure1
    >>> result = run_figure1([Panel("3x3@16x16", 3, 16, (1,))], repeats=1, budget=5.0, device="cpu")
    >>> sorted({row.method for row in result.rows})
    ['convspectra (CPU)', 'full-matrix SVD', 'paper (NumPy)']
    >>> [(row.method, row.reference) for row in result.rows if row.max_error is not None and row.max_error < 1e-12]
    [('paper (NumPy)', 'full-matrix SVD'), ('convspectra (CPU)', 'full-matrix SVD')]
"""

from __future__ import annotations

import csv
import functools
import io
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .._backend import resolve_device
from .._checks import integer, real
from ..errors import ParameterError

__all__ = [
    "FULL_PANELS",
    "QUICK_PANELS",
    "Figure1Result",
    "Figure1Row",
    "Panel",
    "plot_figure1",
    "run_figure1",
]

DENSE = "full-matrix SVD"
PAPER = "paper (NumPy)"
CPU = "convspectra (CPU)"
CUDA64 = "convspectra (CUDA float64)"
CUDA32 = "convspectra (CUDA float32)"
METHOD_COLORS = {DENSE: "#7f7f7f", PAPER: "#1f77b4", CPU: "#d62728", CUDA64: "#2ca02c", CUDA32: "#9467bd"}
CSV_FIELDS = (
    "panel",
    "kernel_size",
    "input_size",
    "channels",
    "method",
    "median_seconds",
    "repeats",
    "status",
    "reason",
    "max_error",
    "reference",
)


@dataclass(frozen=True)
class Panel:
    """One panel of Figure 1: ``kernel_size`` x ``kernel_size`` kernels on ``input_size`` inputs."""

    name: str
    kernel_size: int
    input_size: int
    channels: tuple[int, ...]


FULL_PANELS = (
    Panel("3x3@16x16", 3, 16, (4, 8, 16, 32, 64, 128, 256)),
    Panel("11x11@64x64", 11, 64, (2, 4, 8, 16, 32)),
)
QUICK_PANELS = (Panel("3x3@16x16", 3, 16, (1, 2)), Panel("11x11@64x64", 11, 64, (1, 2)))


@dataclass(frozen=True)
class Figure1Row:
    """One (panel, channels, method) measurement: median seconds, or why it was skipped."""

    panel: str
    kernel_size: int
    input_size: int
    channels: int
    method: str
    median_seconds: float | None
    repeats: int
    status: str
    reason: str = ""
    max_error: float | None = None
    reference: str = ""


@dataclass
class Figure1Result:
    """All rows, plus the machine they were measured on."""

    rows: list[Figure1Row]
    machine: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dictionary."""
        return {"machine": self.machine, "settings": self.settings, "rows": [asdict(row) for row in self.rows]}

    def to_csv(self) -> str:
        """CSV text, one row per measurement, columns :data:`CSV_FIELDS`."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            values = asdict(row)
            values["median_seconds"] = "" if row.median_seconds is None else f"{row.median_seconds:.6g}"
            values["max_error"] = "" if row.max_error is None else f"{row.max_error:.3g}"
            writer.writerow(values)
        return buffer.getvalue()

    def table(self) -> str:
        """A text table per panel: seconds per method and the speed-ups of convspectra over the others."""
        lines = []
        for panel in dict.fromkeys(row.panel for row in self.rows):
            rows = [row for row in self.rows if row.panel == panel]
            methods = list(dict.fromkeys(row.method for row in rows))
            lines.append(f"\n{panel}: median seconds (max relative error vs reference)")
            names = " ".join(f"{m:>28}" for m in methods)
            header = f"{'channels':>8} {names}   paper/convspectra  dense/convspectra"
            lines.append(header)
            for channels in dict.fromkeys(row.channels for row in rows):
                cells: list[str] = []
                times: dict[str, float] = {}
                for method in methods:
                    row = next((r for r in rows if r.channels == channels and r.method == method), None)
                    if row is None or row.median_seconds is None:
                        cells.append(f"{'skipped' if row else '-':>28}")
                        continue
                    times[method] = row.median_seconds
                    err = "" if row.max_error is None else f" ({row.max_error:.0e})"
                    cells.append(f"{_format_seconds(row.median_seconds) + err:>28}")
                ratio_paper = _ratio(times, PAPER, CPU)
                ratio_dense = _ratio(times, DENSE, CPU)
                lines.append(f"{channels:>8} " + " ".join(cells) + f"   {ratio_paper:>17}  {ratio_dense:>17}")
            skipped = {(r.method, r.reason) for r in rows if r.status == "skipped"}
            lines.extend(f"  skipped {method}: {reason}" for method, reason in sorted(skipped))
        return "\n".join(lines).lstrip("\n") + "\n"


def _format_seconds(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def _ratio(times: dict[str, float], numerator: str, denominator: str) -> str:
    if numerator in times and denominator in times and times[denominator] > 0:
        return f"{times[numerator] / times[denominator]:.1f}x"
    return "-"


def _dense(kernel: np.ndarray, n: int) -> np.ndarray:
    from ..operator import dense_matrix

    return np.linalg.svd(dense_matrix(kernel, n), compute_uv=False)


def _calibrate_svd() -> float:
    """Seconds per ``N^3`` of a dense SVD on this machine (from a 512 x 512 SVD, best of two).

    Small SVDs run at a lower rate than large ones, so the estimate errs on the long side.
    """
    size = 512
    matrix = np.random.default_rng(0).standard_normal((size, size))
    best = math.inf
    for _ in range(2):
        start = time.perf_counter()
        np.linalg.svd(matrix, compute_uv=False)
        best = min(best, time.perf_counter() - start)
    return best / size**3


def _methods(device: str) -> dict[str, Callable[[np.ndarray, int], Callable[[], np.ndarray]]]:
    """Method name -> (kernel OIHW, n) -> a zero-argument call returning the values as float64 NumPy."""
    from ..baselines import paper_singular_values
    from ..spectrum import singular_values

    methods: dict[str, Callable[[np.ndarray, int], Callable[[], np.ndarray]]] = {
        DENSE: lambda k, n: lambda: _dense(k, n),
        PAPER: lambda k, n: (lambda hwio: lambda: paper_singular_values(hwio, (n, n)))(
            np.ascontiguousarray(k.transpose(2, 3, 1, 0))
        ),
        CPU: lambda k, n: lambda: singular_values(k, n),
    }
    if device == "cuda":
        import torch

        def on_gpu(dtype: Any) -> Callable[[np.ndarray, int], Callable[[], Any]]:
            def make(k: np.ndarray, n: int) -> Callable[[], Any]:
                tensor = torch.from_numpy(k).to("cuda", dtype)

                def call() -> Any:
                    torch.cuda.synchronize()
                    values = singular_values(tensor, n)
                    torch.cuda.synchronize()
                    return values

                return call

            return make

        methods[CUDA64] = on_gpu(torch.float64)
        methods[CUDA32] = on_gpu(torch.float32)
    return methods


def _as_sorted(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().double().numpy()
    return np.sort(np.asarray(values, dtype=np.float64).ravel())[::-1]


def run_figure1(
    panels: Sequence[Panel] = FULL_PANELS,
    *,
    repeats: int = 5,
    budget: float = 60.0,
    device: str = "auto",
    max_memory: int = 2 * 2**30,
    seed: int = 0,
    report: Callable[[Figure1Row], None] | None = None,
) -> Figure1Result:
    """Time every method on every panel and channel count (see the module docstring).

    Args:
        panels: the panels to run (:data:`FULL_PANELS`, :data:`QUICK_PANELS` or your own).
        repeats: timed calls per point after the warm-up (fewer if they would exceed ``budget``).
        budget: seconds one call of a method may be estimated to take; longer points are skipped.
        device: ``"auto"`` (adds the CUDA methods when a GPU is available), ``"cpu"`` or ``"cuda"``.
        max_memory: bytes the dense method may use (matrix plus SVD workspace, ``2 N^2`` doubles).
        seed: seed of the standard normal kernels.
        report: called with every row as soon as it is measured (progress output).

    Returns:
        A :class:`Figure1Result`.

    Raises:
        ParameterError, ParameterTypeError: for a bad ``repeats``, ``budget``, ``device`` or panel.
    """
    from .machine import machine_description

    repeats = integer("repeats", repeats)
    budget = real("budget", budget, minimum=0.0, open_below=True)
    for panel in panels:
        if panel.kernel_size > panel.input_size or not panel.channels or min(panel.channels) < 1:
            raise ParameterError(f"panels: expected kernel <= input and positive channel counts, got {panel!r}")
    device = resolve_device(device)
    methods = _methods(device)
    svd_rate = _calibrate_svd()
    rng = np.random.default_rng(seed)
    rows: list[Figure1Row] = []
    for panel in panels:
        k, n = panel.kernel_size, panel.input_size
        previous: dict[str, tuple[int, float]] = {}
        for channels in panel.channels:
            kernel = rng.standard_normal((channels, channels, k, k))
            reference: np.ndarray | None = None
            reference_name = ""
            for method, make in methods.items():
                base = functools.partial(
                    Figure1Row, panel=panel.name, kernel_size=k, input_size=n, channels=channels, method=method
                )
                estimate = 0.0
                if method in previous:
                    last_channels, last_seconds = previous[method]
                    estimate = last_seconds * (channels / last_channels) ** 3
                reason = ""
                if method == DENSE:
                    size = channels * n * n
                    estimate = max(estimate, svd_rate * size**3)
                    if 2 * size * size * 8 > max_memory:
                        reason = (
                            f"memory: the {size} x {size} matrix and SVD workspace need "
                            f"{2 * size * size * 8 / 2**30:.1f} GiB > {max_memory / 2**30:.1f} GiB"
                        )
                if not reason and estimate > budget:
                    reason = f"time: estimated {estimate:.3g} s per call > budget {budget:g} s"
                if reason:
                    row = base(median_seconds=None, repeats=0, status="skipped", reason=reason)
                    rows.append(row)
                    if report:
                        report(row)
                    continue
                call = make(kernel, n)
                start = time.perf_counter()
                values = call()  # warm-up (and the accuracy check)
                warm = time.perf_counter() - start
                count = max(1, min(repeats, int(budget // max(warm, 1e-9))))
                times = []
                for _ in range(count):
                    start = time.perf_counter()
                    call()
                    times.append(time.perf_counter() - start)
                seconds = statistics.median(times)
                previous[method] = (channels, seconds)
                values = _as_sorted(values)
                error: float | None = None
                if reference is None:
                    reference, reference_name = values, method
                else:
                    error = float(np.abs(values - reference).max() / reference[0])
                row = base(
                    median_seconds=seconds,
                    repeats=count,
                    status="ok",
                    max_error=error,
                    reference=reference_name if method != reference_name else "(reference)",
                )
                rows.append(row)
                if report:
                    report(row)
    settings = {
        "panels": [asdict(p) for p in panels],
        "repeats": repeats,
        "budget_seconds": budget,
        "device": device,
        "max_memory_bytes": max_memory,
        "seed": seed,
        "dtype": "float64 (CPU methods, CUDA float64); float32 where named",
    }
    return Figure1Result(rows, machine_description(), settings)


def plot_figure1(result: Figure1Result, path: str) -> None:
    """Write the log-log plot of Figure 1 (one panel per file for ``.svg``; both panels in one ``.png``).

    For ``.svg`` (no dependency) the panels go to ``path`` with ``-<panel>`` before the suffix when
    there is more than one panel; ``.png`` needs matplotlib.

    Raises:
        ParameterError: for another suffix, or nothing measured.
        ImportError: for ``.png`` without matplotlib.

    Example:
        >>> import tempfile, os
        >>> result = run_figure1([Panel("3x3@16x16", 3, 16, (1,))], repeats=1, budget=0.5, device="cpu")
        >>> path = os.path.join(tempfile.mkdtemp(), "figure1.svg")
        >>> plot_figure1(result, path)
        >>> open(path).read().startswith("<svg")
        True
    """
    from .plots import line_plot_svg, save_matplotlib

    panels: list[dict[str, Any]] = []
    for name in dict.fromkeys(row.panel for row in result.rows):
        rows = [row for row in result.rows if row.panel == name and row.median_seconds is not None]
        series: dict[str, tuple[list[float], list[float]]] = {}
        for method in dict.fromkeys(row.method for row in rows):
            points = [(row.channels, row.median_seconds or 0.0) for row in rows if row.method == method]
            series[method] = ([float(c) for c, _ in points], [float(t) for _, t in points])
        if series:
            panels.append(
                {
                    "name": name,
                    "series": series,
                    "title": f"{name.replace('@', ' kernels on ')} inputs",
                    "x_label": "input/output channels",
                    "y_label": "seconds (median)",
                    "log_x": True,
                    "log_y": True,
                }
            )
    if not panels:
        raise ParameterError("result: expected at least one measured point to plot, got none")
    if path.endswith(".png"):
        if not save_matplotlib(panels, path):
            raise ImportError("plot: writing a .png needs matplotlib (pip install matplotlib); .svg needs nothing")
        return
    if not path.endswith(".svg"):
        raise ParameterError(f"plot: expected a file name ending in .svg or .png, got {path!r}")
    for item in panels:
        target = path if len(panels) == 1 else f"{path[:-4]}-{item['name'].replace('@', '-')}.svg"
        svg = line_plot_svg(
            item["series"],
            title=item["title"],
            x_label=item["x_label"],
            y_label=item["y_label"],
            log_x=True,
            log_y=True,
            colors=METHOD_COLORS,
        )
        with open(target, "w", encoding="utf-8") as handle:
            handle.write(svg)
