"""Native JAX: the exact spectrum, operator norm and projection of convolution layers (``jit``/``vmap``/``grad``).

Import it explicitly (``import convspectra.jax``): ``import convspectra`` never imports JAX.
"""

from __future__ import annotations

from .clip_transform import ClipConvKernelsState, ConvKernel, clip_conv_kernels, path_name
from .discovery import find_conv_kernels_equinox, find_conv_kernels_linen, find_conv_kernels_nnx
from .projection import clip_operator_norm
from .spectrum import operator_norm, singular_values

__all__ = [
    "ClipConvKernelsState",
    "ConvKernel",
    "clip_conv_kernels",
    "clip_operator_norm",
    "find_conv_kernels_equinox",
    "find_conv_kernels_linen",
    "find_conv_kernels_nnx",
    "operator_norm",
    "path_name",
    "singular_values",
]
