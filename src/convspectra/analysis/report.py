r"""Whole-model spectral report: every conv and linear layer's exact spectrum and norms.

For each ``Conv1d/2d/3d``, ``ConvTranspose*`` and ``Linear`` module that an example forward pass
calls, at the input size it actually sees:

- the full spectrum of the layer with wrap-around (circular) padding, exact
  (:func:`convspectra.singular_values`, in float64), summarised by
  ``sigma_max`` (operator norm), ``sigma_min``, the condition number ``sigma_max / sigma_min``,
  the stable rank ``sum_i sigma_i^2 / sigma_max^2 = ||A||_F^2 / ||A||_2^2`` and the effective
  rank ``#{i : sigma_i > relative_threshold * sigma_max}``;
- with ``padding="model"``, the operator norm with the layer's own padding (zero padding for
  most networks, which is not circulant), exact value and certified bracket from
  :func:`convspectra.operator_norm` / :func:`convspectra.operator_norm_bounds` with
  ``padding="module"``;
- Linear layers: the SVD of the weight matrix (no padding, both columns agree).

A network-level Lipschitz upper bound is derived from these norms (see
:mod:`convspectra.analysis.lipschitz`).

Example:
    >>> import torch
    >>> from convspectra.analysis import spectral_report
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
    ...                             torch.nn.Conv2d(8, 8, 3, stride=2, padding=1))
    >>> report = spectral_report(model, (3, 16, 16))
    >>> [(layer.name, layer.input_shape, layer.num_singular_values) for layer in report.layers]
    [('0', (16, 16), 768), ('2', (16, 16), 512)]
    >>> report.network_bound.value > 0
    True
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .._threads import single_threaded_blas
from ..errors import ParameterError, ParameterTypeError
from ..spectrum import singular_values
from .folding import fold_batchnorm
from .schema import LAYER_FIELDS
from .walk import LayerCall, collect_layers, detached_copy, make_example_input

__all__ = [
    "CSV_COLUMNS",
    "SCHEMA_VERSION",
    "LayerReport",
    "NetworkBound",
    "SpectralReport",
    "spectral_report",
    "spectrum_summary",
]

#: Version of the JSON layout (see :data:`convspectra.analysis.REPORT_SCHEMA`).
SCHEMA_VERSION = 1

PADDINGS = ("circular", "model")

#: Columns of :meth:`SpectralReport.to_csv`, in order (every scalar field of :class:`LayerReport`).
CSV_COLUMNS = tuple(name for name in LAYER_FIELDS if name != "spectrum")


def spectrum_summary(values: np.ndarray, relative_threshold: float) -> dict[str, Any]:
    r"""Summary statistics of a spectrum (descending singular values).

    Returns a dict with ``sigma_max``, ``sigma_min``, ``condition_number`` (``sigma_max / sigma_min``,
    None when ``sigma_min`` is 0), ``stable_rank`` (``sum sigma^2 / sigma_max^2``, None for the zero
    operator), ``effective_rank`` (count of ``sigma > relative_threshold * sigma_max``) and
    ``num_singular_values``.

    Example:
        >>> import numpy as np
        >>> from convspectra.analysis import spectrum_summary
        >>> s = spectrum_summary(np.array([2.0, 1.0, 1e-6]), 1e-3)
        >>> s["stable_rank"], s["effective_rank"], s["condition_number"]
        (1.25, 2, 2000000.0)
    """
    values = np.asarray(values, dtype=np.float64)
    top = float(values[0]) if values.size else 0.0
    bottom = float(values[-1]) if values.size else 0.0
    return {
        "num_singular_values": int(values.size),
        "sigma_max": top,
        "sigma_min": bottom,
        "condition_number": top / bottom if bottom > 0 else None,
        "stable_rank": float(np.sum((values / top) ** 2)) if top > 0 else None,
        "effective_rank": int(np.count_nonzero(values > relative_threshold * top)) if top > 0 else 0,
    }


@dataclass
class LayerReport:
    """The spectral facts of one layer (see the module docstring for the definitions).

    Every ``sigma_*`` is a float, or None where it does not apply (``note`` says why). Shapes are
    tuples of ints: ``kernel_shape`` as PyTorch stores the weight, ``input_shape`` and
    ``output_shape`` the spatial sizes the layer saw (``(features,)`` for Linear). ``spectrum``
    is the descending array of all circular singular values when requested.
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
    seconds: float = 0.0
    note: str | None = None
    spectrum: np.ndarray | None = field(default=None, repr=False)

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
class NetworkBound:
    """An UPPER bound on the network's Lipschitz constant (l2 to l2), never its exact value.

    Attributes:
        value: the bound, or None when the model's graph has an operation with no known constant.
        padding: which layer norms it uses ("circular": the network with wrap-around convolutions;
            "model": certified upper ends of the layers' own-padding brackets, so it bounds the model
            as it runs).
        description: how it was obtained, in words.
    """

    value: float | None
    padding: str
    description: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"value": self.value, "padding": self.padding, "description": self.description}


@dataclass
class SpectralReport:
    """The result of :func:`spectral_report`: per-layer :class:`LayerReport` rows and a network bound."""

    model: str
    input_shape: tuple[int, ...]
    padding: str
    fold_bn: bool
    relative_threshold: float
    layers: list[LayerReport]
    network_bound: NetworkBound
    seconds: float
    version: str = ""

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
            "seconds": self.seconds,
            "network_bound": self.network_bound.to_dict(),
            "layers": layers,
        }

    def to_json(
        self, path: str | os.PathLike[str] | None = None, *, indent: int | None = 2, include_spectra: bool = True
    ) -> str:
        """The report as JSON text (see :data:`~convspectra.analysis.REPORT_SCHEMA`); also written to ``path``."""
        text = json.dumps(self.to_dict(include_spectra=include_spectra), indent=indent, allow_nan=False)
        if path is not None:
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(text + "\n")
        return text

    def to_csv(self, path: str | os.PathLike[str] | None = None) -> str:
        """CSV text, one row per layer with the :data:`CSV_COLUMNS` (shapes as ``AxB``, None as empty).

        Also written to ``path`` when given.
        """
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for layer in self.layers:
            row = []
            for name in CSV_COLUMNS:
                value = getattr(layer, name)
                if isinstance(value, tuple):
                    value = "x".join(map(str, value))
                elif value is None:
                    value = ""
                elif isinstance(value, float):
                    value = repr(value)
                row.append(value)
            writer.writerow(row)
        text = buffer.getvalue()
        if path is not None:
            with open(path, "w", encoding="utf-8", newline="") as handle:
                handle.write(text)
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

        def num(value: float | None, width: int, fmt: str = ".4f") -> str:
            return f"{value:>{width}{fmt}}" if value is not None else f"{'-':>{width}}"

        for layer in self.layers:
            model = ""
            if model_cols:
                if layer.sigma_max_model is not None:
                    model = (
                        f"{layer.sigma_max_model:>9.4f} in [{layer.sigma_max_model_lower:.4f}, "
                        f"{layer.sigma_max_model_upper:.4f}] "
                    )
                    model = f"{model:>37}"
                else:
                    model = f"{'-':>36} "
            lines.append(
                f"{layer.index:>3} {layer.name[-22:]:<22} {'x'.join(map(str, layer.kernel_shape)):<13} "
                f"{'x'.join(map(str, layer.input_shape)):<9} {max(layer.stride):>2} "
                f"{num(layer.num_singular_values, 7, 'd')} {num(layer.sigma_max, 9)} {model}"
                f"{num(layer.sigma_min, 9, '.2e')} {num(layer.condition_number, 9, '.3g')} "
                f"{num(layer.stable_rank, 7, '.2f')} {num(layer.effective_rank, 8, 'd')}"
            )
        notes = [f"  {layer.name}: {layer.note}" for layer in self.layers if layer.note]
        if notes:
            lines += ["", "notes:", *notes]
        bound = self.network_bound
        lines.append("")
        lines.append(
            "network Lipschitz UPPER bound: "
            + (f"{bound.value:.6g}" if bound.value is not None else "not available")
            + f" ({bound.description})"
        )
        return "\n".join(lines)


def _describe_padding(module: Any) -> tuple[str, str]:
    if isinstance(module, nn.Linear):
        return "none", "none"
    padding = module.padding
    text = padding if isinstance(padding, str) else "x".join(map(str, padding))
    return text, str(module.padding_mode)


def _hyper(module: Any) -> dict[str, Any]:
    if isinstance(module, nn.Linear):
        return {"stride": (1,), "dilation": (1,), "groups": 1, "transposed": False}
    return {
        "stride": tuple(int(s) for s in module.stride),
        "dilation": tuple(int(d) for d in module.dilation),
        "groups": int(module.groups),
        "transposed": bool(module.transposed),
    }


def _output_shape(module: Any, size: tuple[int, ...], hyper: dict[str, Any]) -> tuple[int, ...]:
    if isinstance(module, nn.Linear):
        return (int(module.out_features),)
    if hyper["transposed"]:
        return tuple(n * s for n, s in zip(size, hyper["stride"], strict=True))
    return tuple(n // s for n, s in zip(size, hyper["stride"], strict=True))


def _model_norms(module: Any, size: tuple[int, ...]) -> tuple[float, float, float, str | None]:
    """Operator norm with the module's own padding, its certified bracket, and a note if not converged."""
    from .. import operator_norm, operator_norm_bounds
    from ..errors import ConvergenceWarning

    with warnings.catch_warnings():  # non-convergence is recorded in the layer's note instead
        warnings.simplefilter("ignore", ConvergenceWarning)
        bounds = operator_norm_bounds(module, size, padding="module")
    value = getattr(bounds, "value", None)  # the bracket carries the value: no second solve
    exact = float(value) if value is not None else float(operator_norm(module, size, padding="module"))
    note = None
    if getattr(bounds, "converged", True) is False:
        note = "own-padding norm: the iterative solver stopped at its budget; sigma_max_model is a lower bound"
    return exact, float(bounds.lower), float(bounds.upper), note


def _analyse(
    index: int, call: LayerCall, *, padding: str, fold_bn: bool, full_spectrum: bool, relative_threshold: float
) -> LayerReport:
    start = time.perf_counter()
    layer: Any = detached_copy(call.module)  # float64 on the CPU: analysis precision, the model is not touched
    folded = None
    note = None
    if fold_bn and call.batchnorm is not None:
        try:
            layer = fold_batchnorm(layer, detached_copy(call.batchnorm))
            folded = call.batchnorm_name
        except ParameterError as err:
            note = f"BatchNorm {call.batchnorm_name} not folded: {err}"
    hyper = _hyper(layer)
    pad_text, pad_mode = _describe_padding(layer)
    weight = layer.weight.detach().numpy()
    spectrum: np.ndarray | None = None
    if isinstance(layer, nn.Linear):
        spectrum = np.linalg.svd(weight, compute_uv=False)
    else:
        try:
            spectrum = singular_values(
                weight,
                call.input_shape,
                stride=hyper["stride"],
                dilation=hyper["dilation"],
                groups=hyper["groups"],
                transposed=hyper["transposed"],
            )
        except ParameterError as err:  # e.g. a stride that does not divide the input: no circulant operator
            note = "; ".join(filter(None, [note, f"no circular spectrum: {err}"]))
    summary = (
        spectrum_summary(spectrum, relative_threshold)
        if spectrum is not None
        else dict.fromkeys(
            ("num_singular_values", "sigma_max", "sigma_min", "condition_number", "stable_rank", "effective_rank")
        )
    )
    model_exact = model_lower = model_upper = None
    if isinstance(layer, nn.Linear):
        model_exact = model_lower = model_upper = summary["sigma_max"]
    elif padding == "model":
        try:
            model_exact, model_lower, model_upper, solver_note = _model_norms(layer, call.input_shape)
            note = "; ".join(filter(None, [note, solver_note])) or None
        except ParameterError as err:  # e.g. reflect/replicate padding: not a fixed linear map
            note = "; ".join(filter(None, [note, f"no own-padding norm: {err}"]))
    return LayerReport(
        index=index,
        name=call.name,
        type=type(call.module).__name__,
        kind="linear" if isinstance(layer, nn.Linear) else "conv",
        kernel_shape=tuple(int(s) for s in weight.shape),
        input_shape=tuple(call.input_shape),
        output_shape=_output_shape(layer, call.input_shape, hyper),
        stride=hyper["stride"],
        dilation=hyper["dilation"],
        groups=hyper["groups"],
        padding=pad_text,
        padding_mode=pad_mode,
        transposed=hyper["transposed"],
        calls=call.calls,
        folded_batchnorm=folded,
        sigma_max_model=model_exact,
        sigma_max_model_lower=model_lower,
        sigma_max_model_upper=model_upper,
        note=note,
        spectrum=spectrum if full_spectrum else None,
        seconds=time.perf_counter() - start,
        **summary,
    )


def spectral_report(
    model: nn.Module,
    example_input: torch.Tensor | Sequence[int],
    *,
    padding: str = "circular",
    fold_bn: bool = False,
    full_spectrum: bool = False,
    relative_threshold: float = 1e-3,
    progress: Callable[[int, int, str], None] | None = None,
) -> SpectralReport:
    """The spectral report of every conv and linear layer of ``model`` (see the module docstring).

    Args:
        model: an eager ``torch.nn.Module`` or a TorchScript module. It is run once in eval mode
            without gradients and left unchanged (training flag restored).
        example_input: a tensor with batch axis, or the shape of one example without batch axis,
            e.g. ``(3, 32, 32)`` (a zero tensor of batch 1 is used).
        padding: ``"circular"``: circular spectra only (the paper's setting, fast); ``"model"``:
            also each conv's operator norm with its own padding, exact and certified bracket,
            and a network bound that holds for the model as it runs.
        fold_bn: analyse ``bn(conv(x))`` instead of ``conv(x)`` where a BatchNorm (with running
            statistics) directly consumes a layer's output.
        full_spectrum: keep each layer's full descending spectrum in the report (``spectrum``).
        relative_threshold: singular values above ``relative_threshold * sigma_max`` count in the
            effective rank.
        progress: called as ``progress(done, total, layer_name)`` after each layer.

    Returns:
        A :class:`SpectralReport`.

    Raises:
        ParameterTypeError: ``model`` is not a module, bad ``example_input``.
        ParameterError: bad ``padding``/``relative_threshold``, or the model fails on the example.

    Example:
        >>> import torch
        >>> from convspectra.analysis import spectral_report
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular"))
        >>> torch.nn.init.ones_(model[0].weight); report = spectral_report(model, (1, 8, 8))  # doctest: +ELLIPSIS
        Parameter...
        >>> layer = report.layers[0]                 # sigma_max = sqrt(2) x 9, at frequency 0
        >>> layer.sigma_max, layer.num_singular_values, layer.effective_rank
        (12.727922061357855, 64, 64)
    """
    if padding not in PADDINGS:
        raise ParameterError(f"padding: expected one of {', '.join(map(repr, PADDINGS))}, got {padding!r}")
    if isinstance(relative_threshold, bool) or not isinstance(relative_threshold, (int, float)):
        raise ParameterTypeError(f"relative_threshold: expected a float in [0, 1), got {relative_threshold!r}")
    if not 0 <= relative_threshold < 1:
        raise ParameterError(f"relative_threshold: expected a float in [0, 1), got {relative_threshold!r}")
    if not isinstance(model, nn.Module):
        raise ParameterTypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    from .. import __version__
    from .lipschitz import network_bound

    start = time.perf_counter()
    example = make_example_input(model, example_input)
    calls = collect_layers(model, example)
    layers = []
    # Per-layer LAPACK calls on small matrices lose to OpenBLAS's own threads (3-5x on a loaded
    # 2-core machine); the engine's worker pool, used for large layers, limits them itself.
    with single_threaded_blas():
        for index, call in enumerate(calls):
            layers.append(
                _analyse(
                    index,
                    call,
                    padding=padding,
                    fold_bn=fold_bn,
                    full_spectrum=full_spectrum,
                    relative_threshold=relative_threshold,
                )
            )
            if progress is not None:
                progress(index + 1, len(calls), call.name)
    bound = network_bound(model, example, layers, padding=padding)
    return SpectralReport(
        model=str(model.original_name) if isinstance(model, torch.jit.ScriptModule) else type(model).__name__,
        input_shape=tuple(int(s) for s in example.shape),
        padding=padding,
        fold_bn=fold_bn,
        relative_threshold=float(relative_threshold),
        layers=layers,
        network_bound=bound,
        seconds=time.perf_counter() - start,
        version=__version__,
    )
