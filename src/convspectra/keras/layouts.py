"""Keras 3 convolution layers described for the convspectra engine: kernels, layouts and geometry.

Keras stores every convolution kernel spatial-first (whatever the layer's ``data_format``):

* ``Conv1D/2D/3D``: ``(k..., in // groups, out)``, the engine's ``"HWIO"`` layout with ``groups``;
* ``DepthwiseConv1D/2D`` and the depthwise half of ``SeparableConv1D/2D``: ``(k..., C, multiplier)``;
  output channel ``c * multiplier + m`` is input channel ``c`` convolved with ``kernel[..., c, m]``,
  which is the ``"HWIO"`` kernel ``(k..., 1, C * multiplier)`` (a reshape) with ``groups=C``;
* the pointwise half of ``SeparableConv1D/2D``: ``(1..., C * multiplier, out)``, ``"HWIO"``;
* ``Conv1D/2D/3DTranspose``: ``(k..., out, in)``, read as ``"HWIO"`` it is the weight of the forward
  convolution whose adjoint the layer computes: ``transposed=True``.

:func:`layer_kernels` lists a layer's kernels as :class:`KerasKernel` records; :func:`to_engine` and
:func:`from_engine` reshape a depthwise kernel to the engine's layout and back (an exact reshape).

Example:
    >>> import numpy as np
    >>> from convspectra.keras.layouts import from_engine, to_engine
    >>> depthwise = np.arange(3 * 3 * 4 * 2.0).reshape(3, 3, 4, 2)     # C=4 channels, multiplier 2
    >>> hwio = to_engine(depthwise, True)
    >>> hwio.shape, bool(hwio[1, 2, 0, 3 * 2 + 1] == depthwise[1, 2, 3, 1])
    ((3, 3, 1, 8), True)
    >>> bool(np.array_equal(from_engine(hwio, depthwise.shape), depthwise))
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._checks import as_tuple
from ..errors import ParameterError, ParameterTypeError

__all__ = ["KerasKernel", "conv_kind", "from_engine", "layer_input_shape", "layer_kernels", "to_engine"]


@dataclass(frozen=True)
class KerasKernel:
    """One kernel of a Keras convolution layer, as the engine sees it.

    Attributes:
        attribute: the layer's attribute holding the variable (``"kernel"``, ``"depthwise_kernel"``,
            ``"pointwise_kernel"``).
        input_shape: spatial size of the input this kernel's convolution sees.
        stride, dilation, groups, transposed: the engine's layer description (layout ``"HWIO"``).
        depthwise: the variable is stored ``(k..., C, multiplier)`` (see :func:`to_engine`).
    """

    attribute: str
    input_shape: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int
    transposed: bool
    depthwise: bool

    def engine_options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`convspectra.singular_values` / ``clip_operator_norm`` for this kernel."""
        return {
            "layout": "HWIO",
            "stride": self.stride,
            "dilation": self.dilation,
            "groups": self.groups,
            "transposed": self.transposed,
        }


def to_engine(kernel: Any, depthwise: bool) -> Any:
    """The kernel in the engine's ``"HWIO"`` layout: a depthwise ``(k..., C, M)`` becomes ``(k..., 1, C*M)``.

    Works on NumPy arrays and on backend tensors (``keras.ops.reshape``); other kernels are returned as given.
    """
    if not depthwise:
        return kernel
    shape = tuple(int(size) for size in kernel.shape)
    new_shape = (*shape[:-2], 1, shape[-2] * shape[-1])
    if isinstance(kernel, np.ndarray):
        return kernel.reshape(new_shape)
    import keras

    return keras.ops.reshape(kernel, new_shape)


def from_engine(kernel: Any, shape: Sequence[int]) -> Any:
    """The inverse of :func:`to_engine`: the kernel reshaped to the variable's own ``shape``."""
    shape = tuple(int(size) for size in shape)
    if tuple(int(size) for size in kernel.shape) == shape:
        return kernel
    if isinstance(kernel, np.ndarray):
        return kernel.reshape(shape)
    import keras

    return keras.ops.reshape(kernel, shape)


def conv_kind(layer: Any) -> str | None:
    """``"conv"``, ``"depthwise"``, ``"separable"``, ``"transpose"`` for a Keras convolution layer, else None."""
    from keras import layers

    kinds = {
        "depthwise": (layers.DepthwiseConv1D, layers.DepthwiseConv2D),
        "separable": (layers.SeparableConv1D, layers.SeparableConv2D),
        "transpose": (layers.Conv1DTranspose, layers.Conv2DTranspose, layers.Conv3DTranspose),
        "conv": (layers.Conv1D, layers.Conv2D, layers.Conv3D),
    }
    for kind, classes in kinds.items():
        if isinstance(layer, classes):
            return kind
    return None


def layer_input_shape(layer: Any) -> tuple[int, ...]:
    """The spatial size of a built layer's input: from ``layer.input`` (functional and Sequential models).

    Raises:
        ParameterError: the layer has no recorded input (not called yet, or called in a subclassed
            model, where ``layer.input`` is undefined), or a spatial size is unknown (None).
    """
    try:
        shape = tuple(layer.input.shape)
    except (AttributeError, ValueError) as err:
        raise ParameterError(
            f"input_shapes: the layer {layer.name!r} has no recorded input shape ({err}); pass its spatial "
            f"input size, e.g. input_shapes={{{layer.name!r}: (32, 32)}}"
        ) from err
    ndim = len(tuple(layer.kernel_size))
    spatial = shape[1 : 1 + ndim] if layer.data_format == "channels_last" else shape[2 : 2 + ndim]
    if any(size is None for size in spatial):
        raise ParameterError(
            f"input_shapes: the layer {layer.name!r} has input shape {shape} with an unknown spatial size; pass "
            f"its spatial input size, e.g. input_shapes={{{layer.name!r}: (32, 32)}}"
        )
    return tuple(int(size) for size in spatial)


def layer_kernels(layer: Any, input_shape: int | Sequence[int] | None = None) -> list[KerasKernel]:
    """The kernels of a Keras convolution layer (two for a separable layer), described for the engine.

    Args:
        layer: a built ``Conv1D/2D/3D``, ``Conv1D/2D/3DTranspose``, ``DepthwiseConv1D/2D`` or
            ``SeparableConv1D/2D``.
        input_shape: the spatial size of the layer's input (an int or one per axis); default: recorded
            by :func:`layer_input_shape`.

    Returns:
        One :class:`KerasKernel` per kernel variable (depthwise first for a separable layer).

    Raises:
        ParameterTypeError: not a Keras convolution layer.
        ParameterError: no input shape known (see :func:`layer_input_shape`).

    Example:
        >>> import os
        >>> _ = os.environ.setdefault("KERAS_BACKEND", "torch")     # before keras is first imported
        >>> import keras
        >>> from convspectra.keras.layouts import layer_kernels
        >>> layer = keras.layers.SeparableConv2D(8, 3, strides=2, depth_multiplier=2)
        >>> layer.build((None, 16, 16, 4))
        >>> [(k.attribute, k.input_shape, k.groups, k.stride) for k in layer_kernels(layer, 16)]
        [('depthwise_kernel', (16, 16), 4, (2, 2)), ('pointwise_kernel', (8, 8), 1, (1, 1))]
    """
    kind = conv_kind(layer)
    if kind is None:
        raise ParameterTypeError(
            "layer: expected a Keras Conv1D/2D/3D, Conv1D/2D/3DTranspose, DepthwiseConv1D/2D or SeparableConv1D/2D "
            f"layer, got {type(layer).__name__}"
        )
    ndim = len(tuple(layer.kernel_size))
    shape = layer_input_shape(layer) if input_shape is None else as_tuple("input_shape", input_shape, ndim)
    stride = as_tuple("strides", layer.strides, ndim)
    dilation = as_tuple("dilation_rate", layer.dilation_rate, ndim)
    ones = (1,) * ndim
    if kind == "conv":
        return [KerasKernel("kernel", shape, stride, dilation, int(layer.groups), False, False)]
    if kind == "transpose":
        return [KerasKernel("kernel", shape, stride, dilation, int(getattr(layer, "groups", 1)), True, False)]
    channels = int(layer.depthwise_kernel.shape[-2] if kind == "separable" else layer.kernel.shape[-2])
    if kind == "depthwise":
        return [KerasKernel("kernel", shape, stride, dilation, channels, False, True)]
    inner = tuple(-(-n // s) for n, s in zip(shape, stride, strict=True))  # the depthwise output, "same"-sized
    return [
        KerasKernel("depthwise_kernel", shape, stride, dilation, channels, False, True),
        KerasKernel("pointwise_kernel", inner, ones, ones, 1, False, False),
    ]
