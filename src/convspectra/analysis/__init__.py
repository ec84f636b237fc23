"""Whole-model spectral analysis (PyTorch): walk a model, report every layer's exact spectrum.

- :func:`spectral_report` -> :class:`SpectralReport` (per-layer :class:`LayerReport` rows, a
  network Lipschitz UPPER bound, JSON/CSV/pandas export, plots);
- :func:`fold_batchnorm`: fold an eval-mode BatchNorm into the conv before it;
- :data:`REPORT_SCHEMA` and :func:`validate_report`: the JSON layout;
- :func:`plot_spectra` (Figure 4 of the paper) and :func:`plot_sigma_max` (matplotlib, optional);
- :func:`figure4_observations`: the paper's Figure-4 observations checked on a report.

Example:
    >>> import torch
    >>> from convspectra.analysis import spectral_report
    >>> from convspectra.models import resnet20
    >>> report = spectral_report(resnet20(), (3, 32, 32))
    >>> len(report.layers), report.layers[0].name, report.layers[-1].kind
    (20, 'conv1', 'linear')
"""

from .figure4 import Figure4Observations, figure4_observations
from .folding import batchnorm_scale, fold_batchnorm
from .lipschitz import adaptive_avg_pool_norm, network_bound
from .plots import plot_sigma_max, plot_spectra
from .report import (
    CSV_COLUMNS,
    SCHEMA_VERSION,
    LayerReport,
    NetworkBound,
    SpectralReport,
    spectral_report,
    spectrum_summary,
)
from .schema import REPORT_SCHEMA, validate_report
from .walk import LayerCall, collect_layers

__all__ = [
    "CSV_COLUMNS",
    "REPORT_SCHEMA",
    "SCHEMA_VERSION",
    "Figure4Observations",
    "LayerCall",
    "LayerReport",
    "NetworkBound",
    "SpectralReport",
    "adaptive_avg_pool_norm",
    "batchnorm_scale",
    "collect_layers",
    "figure4_observations",
    "fold_batchnorm",
    "network_bound",
    "plot_sigma_max",
    "plot_spectra",
    "spectral_report",
    "spectrum_summary",
    "validate_report",
]
