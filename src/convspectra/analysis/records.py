"""The records of a spectral report and their exports: per-layer rows, the network bound, JSON/CSV/table.

:class:`LayerReport` (one row per layer), :class:`NetworkBound` (the network's Lipschitz upper
bound) and :class:`SpectralReport` (what :func:`~convspectra.analysis.spectral_report` returns,
with :meth:`~SpectralReport.to_json`, :meth:`~SpectralReport.to_csv`,
:meth:`~SpectralReport.to_dataframe`, :meth:`~SpectralReport.to_table` and the plots). The JSON
layout is :data:`~convspectra.analysis.REPORT_SCHEMA`; the CSV columns are :data:`CSV_COLUMNS`.
NumPy only: the records can be built, read and exported without torch.

Example:
    >>> from convspectra.analysis.records import CSV_COLUMNS, NetworkBound, SpectralReport
    >>> bound = NetworkBound(None, "circular", "no layers")
    >>> report = SpectralReport("empty", (1, 3, 8, 8), "circular", False, 1e-3, [], bound, 0.0)
    >>> report.to_csv().strip() == ",".join(CSV_COLUMNS)
    True
    >>> document = report.to_dict()
    >>> document["schema_version"], document["complete"], document["missing_layers"]
    (3, True, [])
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .schema import LAYER_FIELDS

__all__ = [
    "CSV_COLUMNS",
    "MODEL_NORM_STATUSES",
    "SCHEMA_VERSION",
    "LayerReport",
    "NetworkBound",
    "NodeRule",
    "SpectralReport",
    "write_atomically",
]

#: Version of the JSON layout (see :data:`convspectra.analysis.REPORT_SCHEMA`).
SCHEMA_VERSION = 3

#: The values of :attr:`LayerReport.sigma_max_model_status` (None: no own-padding norm was computed).
MODEL_NORM_STATUSES = (
    "exact",
    "bracket (requested)",
    "bracket (time limit)",
    "bracket (max_iter)",
    "bracket (memory budget)",
)

#: Columns of :meth:`SpectralReport.to_csv`, in order (every scalar field of :class:`LayerReport`).
CSV_COLUMNS = tuple(name for name in LAYER_FIELDS if name != "spectrum")


@dataclass
class LayerReport:
    """The spectral facts of one layer (see :mod:`convspectra.analysis.report` for the definitions).

    Every ``sigma_*`` is a float, or None where it does not apply (``note`` says why). Shapes are
    tuples of ints: ``kernel_shape`` as PyTorch stores the weight, ``input_shape`` and
    ``output_shape`` the spatial sizes the layer saw (``(features,)`` for Linear). ``spectrum``
    is the descending array of all circular singular values when requested. ``error`` is set
    (the exception's type and message) when the layer's computation failed: its numbers are
    then all None, and :attr:`SpectralReport.notes` names it (see :attr:`failed`).

    ``sigma_max_model_status`` says what the own-padding columns hold (one of
    :data:`MODEL_NORM_STATUSES`): ``"exact"`` (``sigma_max_model`` is the norm to the solver's
    ``rtol``, inside the certified ``[sigma_max_model_lower, sigma_max_model_upper]``), or
    ``"bracket (...)"``: only the certified bracket is known (``sigma_max_model`` is None),
    because it was asked for (``refine=False``), the layer's time budget ran out
    (``layer_timeout``), the solver reached ``max_iter`` or the refinement was over the memory
    budget (``max_memory``). None when no own-padding norm was computed (``padding="circular"``,
    a failed layer, a padding that is not a fixed linear map).

    ``error`` may also be set on a row that has its circular numbers: when only its own-padding
    norm failed (e.g. even its bracket is over the memory budget); it then starts with
    ``"own-padding norm: "``.
    """

    index: int
    name: str
    type: str
    kind: str
    kernel_shape: tuple[int, ...]
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int
    padding: str
    padding_mode: str
    transposed: bool
    calls: int
    folded_batchnorm: str | None
    num_singular_values: int | None
    sigma_max: float | None
    sigma_min: float | None
    condition_number: float | None
    stable_rank: float | None
    effective_rank: int | None
    sigma_max_model: float | None = None
    sigma_max_model_lower: float | None = None
    sigma_max_model_upper: float | None = None
    sigma_max_model_status: str | None = None
    seconds: float = 0.0
    note: str | None = None
    spectrum: np.ndarray | None = field(default=None, repr=False)
    error: str | None = None

    @property
    def failed(self) -> bool:
        """Whether the layer's computation failed (its numbers are missing; ``error`` says why)."""
        return self.error is not None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples as lists, the spectrum as a list or None)."""
        out: dict[str, Any] = {}
        for name in LAYER_FIELDS:
            value = getattr(self, name)
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, np.ndarray):
                value = value.tolist()
            out[name] = value
        return out

    def norm(self, padding: str) -> float | None:
        """The operator norm used for ``padding``: circular sigma_max, or the certified upper end for the model's."""
        return self.sigma_max if padding == "circular" else self.sigma_max_model_upper


@dataclass
class NodeRule:
    """How the network bound treated one node of the model's ``torch.fx`` graph.

    Attributes:
        node: the graph node's name.
        op: what the node computes (module name and type, function or method).
        rule: the rule used, in words (e.g. "layer norm (exact)", "SiLU: max slope 1.09984",
            "sum: L(a) + L(b)", "no global constant: LayerNorm").
        factor: for a node with one input, its Lipschitz constant (the bound at the node is
            ``factor`` times the bound at its input); None for sums, concatenations, constants and
            nodes with no global constant.
        bound: the bound on the Lipschitz constant of the map from the network input to this
            node; None downstream of a node with no global constant.
    """

    node: str
    op: str
    rule: str
    factor: float | None
    bound: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"node": self.node, "op": self.op, "rule": self.rule, "factor": self.factor, "bound": self.bound}


@dataclass
class NetworkBound:
    """An UPPER bound on the network's Lipschitz constant (l2 to l2), never its exact value.

    Attributes:
        value: the bound, or None when the model's graph has an operation with no known constant
            or with no global constant (LayerNorm, a product of two activations...).
        padding: which layer norms it uses ("circular": the network with wrap-around convolutions;
            "model": certified upper ends of the layers' own-padding brackets, so it bounds the model
            as it runs).
        description: how it was obtained, in words (when ``value`` is None: why).
        rules: one :class:`NodeRule` per node of the traced graph, in graph order (empty when the
            model could not be traced).
    """

    value: float | None
    padding: str
    description: str
    rules: list[NodeRule] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "value": self.value,
            "padding": self.padding,
            "description": self.description,
            "rules": [rule.to_dict() for rule in self.rules],
        }

    def to_table(self) -> str:
        """A fixed-width text table of the per-node rules (the nodes that change the bound or have none).

        Identity-like nodes (factor 1, e.g. ReLU, reshapes) are left out of the table; they are in
        :attr:`rules`.
        """
        header = f"{'node':<28} {'op':<34} {'factor':>10} {'bound':>11}  rule"
        lines = [header, "-" * len(header)]
        for rule in self.rules:
            if rule.factor == 1.0 and rule.bound is not None:
                continue
            if rule.factor is None and rule.bound is not None and rule.rule.startswith("constant"):
                continue
            lines.append(
                f"{rule.node[-28:]:<28} {rule.op[-34:]:<34} {_number(rule.factor, 10, '.5g')} "
                f"{_number(rule.bound, 11, '.5g')}  {rule.rule}"
            )
        value = f"{self.value:.6g}" if self.value is not None else "not available"
        lines += ["", f"network Lipschitz UPPER bound: {value} ({self.description})"]
        return "\n".join(lines)


def write_atomically(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file in the same folder and :func:`os.replace`.

    A reader, or a run killed in the middle, sees the old file or the new one, never a part of one.

    Example:
        >>> import pathlib, tempfile
        >>> from convspectra.analysis.records import write_atomically
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "r.json"
        >>> write_atomically(path, "{}\\n"); path.read_text()
        '{}\\n'
    """
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        try:  # mkstemp makes it 0600: keep the old file's permissions, or give a new one the usual 0644
            mode = os.stat(path).st_mode & 0o7777
        except OSError:
            mode = 0o644
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


#: What :meth:`SpectralReport.to_csv` writes in the ``error`` column of a layer a partial report has not reached.
MISSING_LAYER = "not reported: the run stopped before this layer"


def _cell(value: Any) -> Any:
    """One CSV cell: shapes as ``AxB``, None as empty, floats with full precision."""
    if isinstance(value, tuple):
        return "x".join(map(str, value))
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return value


def _number(value: float | None, width: int, fmt: str = ".4f") -> str:
    return f"{value:>{width}{fmt}}" if value is not None else f"{'-':>{width}}"


@dataclass
class SpectralReport:
    """The result of :func:`~convspectra.analysis.spectral_report`: per-layer :class:`LayerReport` rows and a bound.

    ``complete`` is False for the partial reports handed to ``on_layer`` while a report runs
    (what an interrupted run leaves in its files): ``missing_layers`` then names the layers not
    reported yet, in call order, and the network bound is not computed. ``layer_timeout`` and
    ``refine`` record how the own-padding norms were asked for (see
    :func:`~convspectra.analysis.spectral_report`).
    """

    model: str
    input_shape: tuple[int, ...]
    padding: str
    fold_bn: bool
    relative_threshold: float
    layers: list[LayerReport]
    network_bound: NetworkBound
    seconds: float
    version: str = ""
    notes: list[str] = field(default_factory=list)
    complete: bool = True
    missing_layers: list[str] = field(default_factory=list)
    layer_timeout: float | None = None
    refine: bool = True

    def to_dict(self, *, include_spectra: bool = True) -> dict[str, Any]:
        """JSON-ready dict following :data:`~convspectra.analysis.REPORT_SCHEMA` (spectra as null when excluded)."""
        layers = [layer.to_dict() for layer in self.layers]
        if not include_spectra:
            for layer in layers:
                layer["spectrum"] = None
        return {
            "schema_version": SCHEMA_VERSION,
            "convspectra_version": self.version,
            "model": self.model,
            "input_shape": list(self.input_shape),
            "padding": self.padding,
            "fold_bn": self.fold_bn,
            "relative_threshold": self.relative_threshold,
            "layer_timeout": self.layer_timeout,
            "refine": self.refine,
            "complete": self.complete,
            "missing_layers": list(self.missing_layers),
            "seconds": self.seconds,
            "network_bound": self.network_bound.to_dict(),
            "layers": layers,
            "notes": list(self.notes),
        }

    def to_json(
        self, path: str | os.PathLike[str] | None = None, *, indent: int | None = 2, include_spectra: bool = True
    ) -> str:
        """The report as JSON text (see :data:`~convspectra.analysis.REPORT_SCHEMA`); also written to ``path``.

        The file is replaced atomically (:func:`write_atomically`): it always holds a whole report.
        """
        text = json.dumps(self.to_dict(include_spectra=include_spectra), indent=indent, allow_nan=False)
        if path is not None:
            write_atomically(path, text + "\n")
        return text

    def to_csv(self, path: str | os.PathLike[str] | None = None) -> str:
        """CSV text, one row per layer with the :data:`CSV_COLUMNS` (shapes as ``AxB``, None as empty).

        Also written to ``path`` when given (atomically, see :func:`write_atomically`). A partial
        report (``complete`` False) also has a row for each of its ``missing_layers``: its index
        and name, the ``error`` column :data:`MISSING_LAYER`, every other cell empty.
        """
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for layer in self.layers:
            writer.writerow([_cell(getattr(layer, name)) for name in CSV_COLUMNS])
        for index, name in enumerate(self.missing_layers, start=len(self.layers)):
            known = {"index": index, "name": name, "error": MISSING_LAYER}
            writer.writerow([known.get(column, "") for column in CSV_COLUMNS])
        text = buffer.getvalue()
        if path is not None:
            write_atomically(path, text)
        return text

    def to_dataframe(self) -> Any:
        """A ``pandas.DataFrame`` with one row per layer (needs pandas) and the :data:`CSV_COLUMNS`."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("to_dataframe needs pandas: pip install pandas") from None
        return pd.DataFrame([{name: getattr(layer, name) for name in CSV_COLUMNS} for layer in self.layers])

    def plot_spectra(self, path: str | os.PathLike[str] | None = None, **kwargs: Any) -> Any:
        """Figure-4 style plot of every layer's sorted spectrum (see :func:`~convspectra.analysis.plot_spectra`)."""
        from .plots import plot_spectra

        return plot_spectra(self, path, **kwargs)

    def plot_sigma_max(self, path: str | os.PathLike[str] | None = None, **kwargs: Any) -> Any:
        """Bar chart of the per-layer operator norms (see :func:`~convspectra.analysis.plot_sigma_max`)."""
        from .plots import plot_sigma_max

        return plot_sigma_max(self, path, **kwargs)

    def to_table(self) -> str:
        """A fixed-width text table of the layers (what ``convspectra report`` prints)."""
        model_cols = self.padding == "model"
        header = (
            f"{'#':>3} {'layer':<22} {'kernel':<13} {'input':<9} {'s':>2} {'values':>7} {'sigma_max':>9} "
            + (f"{'own padding: value in [lower, upper]':>36} " if model_cols else "")
            + f"{'sigma_min':>9} {'cond':>9} {'stable':>7} {'eff.rank':>8}"
        )
        lines = [header, "-" * len(header)]
        for layer in self.layers:
            model = ""
            if model_cols:
                if layer.sigma_max_model_lower is not None and layer.sigma_max_model_upper is not None:
                    value = f"{layer.sigma_max_model:>9.4f}" if layer.sigma_max_model is not None else "  bracket"
                    model = f"{value} in [{layer.sigma_max_model_lower:.4f}, {layer.sigma_max_model_upper:.4f}] "
                    model = f"{model:>37}"
                else:
                    model = f"{'-':>36} "
            lines.append(
                f"{layer.index:>3} {layer.name[-22:]:<22} {'x'.join(map(str, layer.kernel_shape)):<13} "
                f"{'x'.join(map(str, layer.input_shape)):<9} {max(layer.stride, default=1):>2} "
                f"{_number(layer.num_singular_values, 7, 'd')} {_number(layer.sigma_max, 9)} {model}"
                f"{_number(layer.sigma_min, 9, '.2e')} {_number(layer.condition_number, 9, '.3g')} "
                f"{_number(layer.stable_rank, 7, '.2f')} {_number(layer.effective_rank, 8, 'd')}"
            )
        notes = [f"  {layer.name}: {layer.note}" for layer in self.layers if layer.note]
        notes += [f"  {note}" for note in self.notes]
        if notes:
            lines += ["", "notes:", *notes]
        if not self.complete:
            missing = ", ".join(self.missing_layers) if self.missing_layers else "none (the network bound is missing)"
            lines += ["", f"PARTIAL report: {len(self.layers)} layers reported; missing: {missing}"]
        bound = self.network_bound
        lines.append("")
        lines.append(
            "network Lipschitz UPPER bound: "
            + (f"{bound.value:.6g}" if bound.value is not None else "not available")
            + f" ({bound.description})"
        )
        return "\n".join(lines)
