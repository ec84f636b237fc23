"""Whole-model spectral analysis (PyTorch): walk a model, report every layer's exact spectrum.

- :func:`spectral_report` -> :class:`SpectralReport` (per-layer :class:`LayerReport` rows, a
  network Lipschitz UPPER bound, JSON/CSV/pandas export, plots);
- :func:`spectrum_summary`: sigma_max, sigma_min, condition number, stable and effective rank of
  one spectrum (NumPy only);
- :func:`fold_batchnorm`: fold an eval-mode BatchNorm into the conv before it;
- :data:`REPORT_SCHEMA` and :func:`validate_report`: the JSON layout and its check (jsonschema);
- :func:`plot_spectra` (Figure 4 of the paper) and :func:`plot_sigma_max` (matplotlib, optional);
- :func:`figure4_observations`: the paper's Figure-4 observations checked on a report.

Where things live: :mod:`~convspectra.analysis.report` (the analysis), :mod:`~.records` (rows and
exports), :mod:`~.summary`, :mod:`~.schema`, :mod:`~.plots`, :mod:`~.figure4`, :mod:`~.folding`,
:mod:`~.lipschitz` (the network bound) and :mod:`~.walk` (input sizes). The names that need torch
(:func:`spectral_report`, :func:`fold_batchnorm`, :func:`collect_layers`, ...) are imported on first
use, so the NumPy-only ones (:func:`spectrum_summary`, the records, the schema) work without it.

Example:
    >>> import torch
    >>> from convspectra.analysis import spectral_report
    >>> from convspectra.models import resnet20
    >>> report = spectral_report(resnet20(), (3, 32, 32))
    >>> len(report.layers), report.layers[0].name, report.layers[-1].kind
    (20, 'conv1', 'linear')
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .figure4 import Figure4Observations, figure4_observations
from .plots import plot_sigma_max, plot_spectra
from .records import CSV_COLUMNS, SCHEMA_VERSION, LayerReport, NetworkBound, NodeRule, SpectralReport
from .schema import REPORT_SCHEMA, validate_report
from .summary import spectrum_summary

if TYPE_CHECKING:
    from .folding import batchnorm_scale, fold_batchnorm
    from .lipschitz import adaptive_avg_pool_norm, network_bound
    from .report import layers_report, spectral_report
    from .walk import LayerCall, collect_layers

__all__ = [
    "CSV_COLUMNS",
    "REPORT_SCHEMA",
    "SCHEMA_VERSION",
    "Figure4Observations",
    "LayerCall",
    "LayerReport",
    "NetworkBound",
    "NodeRule",
    "SpectralReport",
    "adaptive_avg_pool_norm",
    "batchnorm_scale",
    "collect_layers",
    "figure4_observations",
    "fold_batchnorm",
    "layers_report",
    "network_bound",
    "plot_sigma_max",
    "plot_spectra",
    "spectral_report",
    "spectrum_summary",
    "validate_report",
]

#: The names that need torch, and the submodule of each (imported on first use).
_WITH_TORCH = {
    "LayerCall": "walk",
    "adaptive_avg_pool_norm": "lipschitz",
    "batchnorm_scale": "folding",
    "collect_layers": "walk",
    "fold_batchnorm": "folding",
    "layers_report": "report",
    "network_bound": "lipschitz",
    "spectral_report": "report",
}


def __getattr__(name: str) -> Any:
    """Import a name that needs torch from its submodule when first used."""
    if name not in _WITH_TORCH:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WITH_TORCH[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
