"""Native JAX: the exact spectrum, operator norm and projection of convolution layers (``jit``/``vmap``/``grad``).

Import it explicitly (``import convspectra.jax``): ``import convspectra`` never imports JAX. The
spectral-normalisation wrappers for Flax (linen, nnx) and Equinox are imported on first use, so
that ``import convspectra.jax`` needs neither Flax nor Equinox.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .clip_transform import ClipConvKernelsState, ConvKernel, clip_conv_kernels, path_name
from .discovery import find_conv_kernels_equinox, find_conv_kernels_linen, find_conv_kernels_nnx
from .projection import clip_operator_norm
from .spectrum import operator_norm, singular_values

_LAZY = {
    "SpectralNormLinen": "sn_linen",
    "converge_spectral_norm_linen": "sn_linen",
    "SpectralNormNNX": "sn_nnx",
    "converge_spectral_norm_nnx": "sn_nnx",
    "SpectralNormEquinox": "sn_equinox",
    "converge_spectral_norm_equinox": "sn_equinox",
    "Convergence": "_power",
}

__all__ = [
    "ClipConvKernelsState",
    "ConvKernel",
    "Convergence",
    "SpectralNormEquinox",
    "SpectralNormLinen",
    "SpectralNormNNX",
    "clip_conv_kernels",
    "clip_operator_norm",
    "converge_spectral_norm_equinox",
    "converge_spectral_norm_linen",
    "converge_spectral_norm_nnx",
    "find_conv_kernels_equinox",
    "find_conv_kernels_linen",
    "find_conv_kernels_nnx",
    "operator_norm",
    "path_name",
    "singular_values",
]


def __getattr__(name: str) -> Any:
    """The spectral-normalisation names, imported from their module (Flax or Equinox) on first use."""
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
