"""One kernel to project: its layer, its taps as a working matrix, and how to give the result back.

The user's kernel (NumPy array, torch tensor on any device, or conv module; any layout and
dtype) becomes the forward convolution's taps ``(taps, O * I/G)`` in float64/complex128, on the
backend that will compute with it: a NumPy array (LAPACK) or a torch tensor on its device. The
result is given back in the user's kind, layout, device and dtype.

Example:
    >>> import numpy as np
    >>> item = prepare(np.ones((3, 2, 1, 1), dtype=np.float32), 4, 1.0, None, {}, "auto")
    >>> item.flat.shape, item.flat.dtype, item.real
    ((1, 6), dtype('float64'), True)
    >>> item.restore(item.flat).dtype
    dtype('float32')
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._backend import is_tensor, is_torch_module, loaded_torch, to_numpy
from .._rescale import exponent_of, scale_down, scale_up
from ..errors import ParameterError
from ..spec import LAYOUTS, ConvSpec, parse_layer
from ._report import ProjectionReport

__all__ = ["BACKENDS", "Item", "distance", "parse_item", "prepare", "unchanged"]

#: Where the computation runs: ``"auto"``, ``"torch"`` or ``"numpy"`` (see :func:`convspectra.clip_operator_norm`).
BACKENDS = ("auto", "torch", "numpy")


@dataclass
class Item:
    """One kernel to project: its normalised layer, working data and how to give it back.

    Attributes:
        spec: the forward layer (a transposed layer's weight is projected as its forward one's).
        flat: ``(taps, O * I/G)`` float64/complex128, a NumPy array or a torch tensor (its backend).
        high, low: the bounds (``low`` None without a band).
        real: whether the kernel is real.
        restore: ``(taps, C)`` result -> the user's kind, layout, device and dtype.
        original: the user's weight (for an unchanged result and the report's distance).
        exponent: ``flat`` is the kernel divided by ``2**exponent`` (largest entry in ``[0.5, 1)``,
            see :mod:`convspectra._rescale`); ``restore`` scales back.
        result, report: filled in by the projection.
    """

    spec: ConvSpec
    flat: Any
    high: float
    low: float | None
    real: bool
    restore: Callable[[Any], Any]
    original: Any
    exponent: int = 0
    result: Any = None
    report: ProjectionReport | None = None

    @property
    def scaled_high(self) -> float:
        """``high / 2**exponent``: the bound at the working scale of ``flat``."""
        return float(scale_down(np.float64(self.high), self.exponent))

    @property
    def scaled_low(self) -> float | None:
        """``low / 2**exponent`` (None without a band)."""
        return None if self.low is None else float(scale_down(np.float64(self.low), self.exponent))


def parse_item(kernel: Any, input_shape: Any, layer: dict[str, Any]) -> tuple[ConvSpec, Any, bool]:
    """``(forward spec, forward weight, real)`` of one layer description, nothing copied beyond validation.

    Raises:
        ParameterError, ParameterTypeError: a bad layer description (from ``parse_layer``).
    """
    geometry = {key: layer.get(key) for key in ("stride", "dilation", "groups", "transposed")}
    spec, weight = parse_layer(kernel, input_shape, layout=layer.get("layout"), **geometry)
    spec = dataclasses.replace(spec, transposed=False)  # the adjoint's projection is the adjoint of the projection
    real = not (bool(weight.is_complex()) if is_tensor(weight) else np.iscomplexobj(weight))
    return spec, weight, real


def prepare(
    kernel: Any,
    input_shape: Any,
    high: float,
    low: float | None,
    layer: dict[str, Any],
    backend: str,
    parsed: tuple[ConvSpec, Any, bool] | None = None,
) -> Item:
    """Validate one layer description and put its taps on the backend that will compute with them.

    Args:
        kernel: the user's kernel (array, tensor or conv module).
        input_shape: the layer's input size, as for :func:`~convspectra.spec.parse_layer`.
        high, low: the validated bounds.
        layer: ``layout``, ``stride``, ``dilation``, ``groups``, ``transposed`` (missing or None:
            the defaults of :func:`~convspectra.spec.parse_layer`, or the module's).
        backend: one of :data:`BACKENDS`; ``"auto"`` keeps tensors off the CPU on their device.
        parsed: :func:`parse_item` of this kernel, when already done.

    Returns:
        The :class:`Item`.

    Raises:
        ParameterError, ParameterTypeError: a bad layer description (from ``parse_layer``), or
            ``backend="torch"`` without PyTorch.
    """
    layout = "OIHW" if layer.get("layout") is None else layer["layout"]
    spec, weight, _ = parse_item(kernel, input_shape, layer) if parsed is None else parsed
    is_module = is_torch_module(kernel)
    source = kernel.weight if is_module else kernel
    family = "first" if is_module else LAYOUTS[layout][0]
    ndim = spec.ndim
    shape = tuple(weight.shape)  # forward weight (O, I/G, k...)
    taps = math.prod(spec.kernel_size)
    if is_tensor(weight):
        torch = loaded_torch()
        real = not bool(weight.is_complex())
        numpy = backend == "numpy" or (backend == "auto" and weight.device.type == "cpu")
        target_dtype = source.dtype if (source.dtype.is_floating_point or source.dtype.is_complex) else torch.float64
        device = source.device
        w = weight.detach().to(torch.float64 if real else torch.complex128)
        exponent = exponent_of(w)
        flat = w.reshape(shape[0] * shape[1], taps).T
        flat = scale_down(to_numpy(flat).copy(), exponent) if numpy else scale_down(flat.contiguous(), exponent)

        def restore(result: Any) -> Any:
            result = scale_up(result, exponent)
            out = torch.from_numpy(np.ascontiguousarray(result)) if isinstance(result, np.ndarray) else result
            out = out.T.reshape(shape)
            if family == "last":
                out = out.permute(*range(2, 2 + ndim), 1, 0)
            return out.to(device=device, dtype=target_dtype).contiguous()

        original = source.detach()
    else:
        array = np.asarray(source)
        real = not np.iscomplexobj(weight)
        target = array.dtype if array.dtype.kind in "fc" else np.dtype(np.float64)
        w = np.asarray(weight, dtype=np.float64 if real else np.complex128)
        exponent = exponent_of(w)
        flat = np.ascontiguousarray(scale_down(w.reshape(shape[0] * shape[1], taps).T, exponent))
        if backend == "torch":
            flat = _torch_module().from_numpy(flat)

        def restore(result: Any) -> Any:
            out = scale_up(to_numpy(result), exponent).T.reshape(shape)
            if family == "last":
                out = np.transpose(out, (*range(2, 2 + ndim), 1, 0))
            return np.ascontiguousarray(out, dtype=target)

        original = array
    return Item(
        spec=spec, flat=flat, high=high, low=low, real=real, restore=restore, original=original, exponent=exponent
    )


def _torch_module() -> Any:
    """``torch``, imported on request (``backend="torch"`` for a NumPy kernel)."""
    try:
        import torch
    except ImportError as err:
        raise ParameterError("backend: expected 'auto' or 'numpy' (PyTorch is not installed), got 'torch'") from err
    return torch


def unchanged(item: Item) -> Any:
    """The user's kernel, as a fresh array/tensor of the result's kind."""
    original = item.original
    if is_tensor(original):
        torch = loaded_torch()
        target = original.dtype if (original.dtype.is_floating_point or original.dtype.is_complex) else torch.float64
        return original.detach().clone().to(target)
    return np.array(original, dtype=original.dtype if original.dtype.kind in "fc" else np.float64)


def distance(item: Item) -> float:
    """Frobenius norm of ``item.result - item.original`` (in the kernel's own layout), float64.

    Computed at the working scale and scaled back, so that it neither underflows nor overflows.
    """
    a = scale_down(to_numpy(item.original).astype(np.complex128), item.exponent)
    b = scale_down(to_numpy(item.result).astype(np.complex128), item.exponent)
    return float(scale_up(np.linalg.norm((b - a).ravel()), item.exponent))
