"""convspectra: exact singular values of convolutional layers.

Example:
    >>> import numpy as np, convspectra as cs
    >>> float(cs.singular_values(np.ones((1, 1, 2, 2)), (8, 8))[0])
    4.0
"""

from typing import Any

from . import bounds
from ._memory import DEFAULT_MEMORY_BUDGET
from .errors import (
    CheckpointError,
    CheckpointWarning,
    ConvergenceWarning,
    ConvSpectraError,
    LayoutWarning,
    MemoryBudgetError,
    ParameterError,
    ParameterTypeError,
)
from .norm import NormBounds, operator_norm, operator_norm_bounds
from .projection import (
    ProjectionReport,
    clip_operator_norm,
    clip_operator_norm_many,
    clip_operator_norm_report,
)
from .spec import LAYOUTS, ConvSpec
from .spectrum import FrequencySpectrum, frequency_spectrum, singular_values

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "LAYOUTS",
    "CheckpointError",
    "CheckpointWarning",
    "ConvSpec",
    "ConvSpectraError",
    "ConvergenceWarning",
    "FrequencySpectrum",
    "LayoutWarning",
    "MemoryBudgetError",
    "NormBounds",
    "ParameterError",
    "ParameterTypeError",
    "ProjectionReport",
    "__version__",
    "bounds",
    "clip_operator_norm",
    "clip_operator_norm_many",
    "clip_operator_norm_report",
    "frequency_spectrum",
    "operator_norm",
    "operator_norm_bounds",
    "singular_values",
]


def __getattr__(name: str) -> Any:
    """``convspectra.spectral_report`` / ``SpectralReport``: the whole-model report, imported (with torch) on use."""
    if name in ("spectral_report", "SpectralReport"):
        from . import analysis

        return getattr(analysis, name)
    raise AttributeError(f"module 'convspectra' has no attribute {name!r}")
