"""Which convolutions of a model to control, at which bound, and the input size each one sees.

Shared by the projector, the parametrization, the Lightning callback and the penalties:

* :func:`conv_layers` selects the ``Conv1d/2d/3d`` and ``ConvTranspose1d/2d/3d`` modules of a
  model (all of them, a list of names or modules, or a predicate) and attaches a bound to each;
* :func:`capture_input_shapes` runs one forward pass and records the spatial size of every
  selected layer's input;
* :class:`ShapeRecorder` does the same lazily: forward pre-hooks that record the size the first
  time each layer runs and then remove themselves.

The size matters because the operator whose norm is controlled is the layer's circular
(wrap-around) convolution on an input of that size, as in Sedghi, Gupta & Long (2019).

Example:
    >>> import torch
    >>> from convspectra.nn import capture_input_shapes, conv_layers
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
    ...                             torch.nn.Conv2d(4, 4, 3, stride=2, padding=1))
    >>> [(layer.name, layer.max_norm) for layer in conv_layers(model, 1.0)]
    [('0', 1.0), ('2', 1.0)]
    >>> capture_input_shapes(model, torch.zeros(1, 1, 8, 8))
    {'0': (8, 8), '2': (8, 8)}
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import ConvSpectraError, ParameterError, ParameterTypeError

__all__ = [
    "CONV_TYPES",
    "TRANSPOSED_TYPES",
    "ConvLayer",
    "ShapeRecorder",
    "assign_input_shapes",
    "capture_input_shapes",
    "check_input_shape",
    "conv_layers",
]

#: The module types whose weights are controlled.
CONV_TYPES: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)
#: The transposed ones (their weight is the adjoint's; the input size is the transposed layer's input).
TRANSPOSED_TYPES: tuple[type[nn.Module], ...] = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)

LayerKey = str | nn.Module
LayerSelection = Iterable[LayerKey] | Callable[[str, nn.Module], bool] | None
ShapeLike = int | Sequence[int]


@dataclass
class ConvLayer:
    """One controlled convolution.

    Attributes:
        name: qualified name in the model (``""`` when the model is the layer itself).
        module: the ``Conv*d`` / ``ConvTranspose*d`` module.
        max_norm: the bound c on its operator norm.
        input_shape: spatial size of its input (``None`` until known).
    """

    name: str
    module: Any  # a Conv1d/2d/3d or ConvTranspose1d/2d/3d module
    max_norm: float
    input_shape: tuple[int, ...] | None = None

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions (1, 2 or 3)."""
        return len(self.module.kernel_size)

    @property
    def transposed(self) -> bool:
        """Whether the layer is a ``ConvTranspose``."""
        return isinstance(self.module, TRANSPOSED_TYPES)

    def geometry(self) -> dict[str, Any]:
        """``stride``, ``dilation``, ``groups`` and ``transposed`` as keyword arguments for the core."""
        module = self.module
        return {
            "stride": tuple(module.stride),
            "dilation": tuple(module.dilation),
            "groups": int(module.groups),
            "transposed": self.transposed,
        }

    def require_input_shape(self) -> tuple[int, ...]:
        """The input size, or a clear error when no forward pass has recorded it."""
        if self.input_shape is None:
            raise ConvSpectraError(
                f"input_shape: the input size of layer {self.name or type(self.module).__name__!r} is not known "
                "yet; run one forward pass through the model (sizes are recorded on the first pass) or pass "
                "input_shapes explicitly"
            )
        return self.input_shape


def _display(name: str, module: nn.Module) -> str:
    return repr(name) if name else f"the model itself ({type(module).__name__})"


def check_input_shape(name: str, module: Any, shape: ShapeLike) -> tuple[int, ...]:
    """Validate a layer's input size: one positive int per spatial axis, divisible by the stride.

    Args:
        name: the layer's name (for the message).
        module: the conv module.
        shape: an int (every axis) or one int per spatial axis.

    Returns:
        The size as a tuple of ints.

    Raises:
        ParameterTypeError: not an int or a sequence of ints.
        ParameterError: wrong length, non-positive sides, or (for a forward convolution) a side
            that the stride does not divide: the circular operator is then undefined.

    Example:
        >>> import torch
        >>> from convspectra.nn.layers import check_input_shape
        >>> check_input_shape("c", torch.nn.Conv2d(1, 1, 3, stride=2), 8)
        (8, 8)
    """
    ndim = len(module.kernel_size)
    if isinstance(shape, bool) or not (
        isinstance(shape, numbers.Integral) or (isinstance(shape, Sequence) and not isinstance(shape, (str, bytes)))
    ):
        raise ParameterTypeError(f"input_shape: expected an int or {ndim} ints for layer {name!r}, got {shape!r}")
    sides = (shape,) * ndim if isinstance(shape, numbers.Integral) else tuple(shape)
    if len(sides) != ndim:
        raise ParameterError(
            f"input_shape: expected {ndim} spatial sizes for layer {name!r} ({type(module).__name__}), got {shape!r}"
        )
    if any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1 for s in sides):
        raise ParameterError(f"input_shape: expected positive integers for layer {name!r}, got {shape!r}")
    sides = tuple(int(s) for s in sides)
    if not isinstance(module, TRANSPOSED_TYPES):
        stride = tuple(module.stride)
        if any(n % s for n, s in zip(sides, stride, strict=True)):
            raise ParameterError(
                f"input_shape: layer {name!r} has stride {stride}, which does not divide its input size {sides}; "
                "the circular operator whose norm is controlled is defined only when every side is a multiple "
                "of its stride (crop or pad the input, or leave this layer out with `layers`)"
            )
    return sides


def _check_bound(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ParameterTypeError(f"{name}: expected a positive finite number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ParameterError(f"{name}: expected a positive finite number, got {value!r}")
    return value


def _all_convs(model: nn.Module) -> list[tuple[str, nn.Module]]:
    if not isinstance(model, nn.Module):
        raise ParameterTypeError(f"model: expected a torch.nn.Module, got {type(model).__qualname__}")
    return [(name, module) for name, module in model.named_modules() if isinstance(module, CONV_TYPES)]


def _resolve(key: Any, convs: list[tuple[str, nn.Module]], what: str) -> tuple[str, nn.Module]:
    """Find a layer given by name or by module among the model's convolutions."""
    if isinstance(key, str):
        for name, module in convs:
            if name == key:
                return name, module
        names = [name for name, _ in convs]
        shown = ", ".join(repr(n) for n in names[:8]) + (", ..." if len(names) > 8 else "")
        raise ParameterError(f"{what}: expected names of conv layers of the model ({shown}), got {key!r}")
    if isinstance(key, nn.Module):
        for name, module in convs:
            if module is key:
                return name, module
        raise ParameterError(
            f"{what}: expected conv modules of the model (Conv1d/2d/3d, ConvTranspose1d/2d/3d), got a "
            f"{type(key).__name__} that is not one of them"
        )
    raise ParameterTypeError(f"{what}: expected layer names (str) or modules, got {key!r}")


def conv_layers(
    model: nn.Module,
    max_norm: float | Mapping[LayerKey, float],
    layers: LayerSelection = None,
    *,
    allow_parametrized: bool = False,
) -> list[ConvLayer]:
    """The convolutions of ``model`` to control, each with its bound.

    Args:
        model: any module; every ``Conv1d/2d/3d`` and ``ConvTranspose1d/2d/3d`` in it (the
            model itself included) is a candidate. Shared modules count once.
        max_norm: one bound c > 0 for every selected layer, or a mapping from layer name or
            module to its bound. With a mapping and ``layers=None`` the mapping's keys are the
            selection; with both, every selected layer needs an entry and every entry must be
            selected.
        layers: ``None`` (all convolutions), an iterable of layer names or modules, or a
            predicate ``(name, module) -> bool`` called for every convolution.
        allow_parametrized: accept layers whose weight has a parametrization (the penalties
            read the parametrized weight; the projector refuses them).

    Returns:
        The selected layers in model order, as :class:`ConvLayer` records (input size unknown).

    Raises:
        ParameterTypeError: a model that is not a module, keys of the wrong type, a bound that
            is not a number.
        ParameterError: unknown layer names, non-conv modules, non-positive bounds, a layer
            without a bound, a model without convolutions, or a layer whose weight already has
            a parametrization.

    Example:
        >>> import torch
        >>> from convspectra.nn import conv_layers
        >>> model = torch.nn.Sequential(torch.nn.Conv1d(2, 2, 3), torch.nn.Conv1d(2, 2, 3))
        >>> [(l.name, l.max_norm) for l in conv_layers(model, {"1": 2.0})]
        [('1', 2.0)]
    """
    convs = _all_convs(model)
    if not convs:
        raise ParameterError(
            f"model: expected a model with Conv1d/2d/3d or ConvTranspose1d/2d/3d layers, got a "
            f"{type(model).__name__} without any"
        )
    if isinstance(max_norm, Mapping):
        bounds = {}
        for key, value in max_norm.items():
            name, module = _resolve(key, convs, "max_norm")
            bounds[name] = _check_bound(f"max_norm[{name!r}]", value)
    else:
        common = _check_bound("max_norm", max_norm)
        bounds = None

    if layers is None:
        chosen = convs if bounds is None else [(n, m) for n, m in convs if n in bounds]
    elif callable(layers) and not isinstance(layers, nn.Module):
        chosen = [(name, module) for name, module in convs if layers(name, module)]
    elif isinstance(layers, (str, nn.Module)) or not isinstance(layers, Iterable):
        raise ParameterTypeError(
            f"layers: expected None, an iterable of layer names or modules, or a predicate (name, module) -> bool, "
            f"got {layers!r}"
        )
    else:
        wanted = {_resolve(key, convs, "layers")[0] for key in layers}
        chosen = [(name, module) for name, module in convs if name in wanted]
    if not chosen:
        raise ParameterError("layers: expected at least one conv layer to be selected, got none")

    selected = []
    chosen_names = {name for name, _ in chosen}
    if bounds is not None:
        extra = sorted(set(bounds) - chosen_names)
        if extra:
            raise ParameterError(f"max_norm: expected bounds only for selected layers, got bounds for {extra}")
    for name, module in chosen:
        if not allow_parametrized and parametrize.is_parametrized(module, "weight"):
            raise ParameterError(
                f"layers: layer {_display(name, module)} has a parametrization on its weight (for example "
                "register_operator_norm_constraint); a projector would change the unconstrained original "
                "behind it. Leave it out with `layers`"
            )
        if bounds is not None and name not in bounds:
            raise ParameterError(f"max_norm: expected a bound for every selected layer, got none for {name!r}")
        selected.append(ConvLayer(name, module, bounds[name] if bounds is not None else common))
    return selected


def _spatial_shape(module: Any, inputs: tuple[Any, ...]) -> tuple[int, ...]:
    ndim = len(module.kernel_size)
    return tuple(int(size) for size in inputs[0].shape[-ndim:])


class ShapeRecorder:
    """Forward pre-hooks that record each layer's input size once, then remove themselves.

    A layer that runs several times in one pass (a shared module) keeps the first size.
    The size is checked when recorded (a stride that does not divide it raises
    :class:`~convspectra.errors.ParameterError` from the forward pass).

    Args:
        layers: the layers whose ``input_shape`` is still ``None`` get a hook.

    Example:
        >>> import torch
        >>> from convspectra.nn.layers import ShapeRecorder, conv_layers
        >>> model = torch.nn.Conv2d(1, 1, 3)
        >>> layers = conv_layers(model, 1.0)
        >>> recorder = ShapeRecorder(layers)
        >>> _ = model(torch.zeros(1, 1, 6, 5))
        >>> layers[0].input_shape, recorder.pending
        ((6, 5), 0)
    """

    def __init__(self, layers: Iterable[ConvLayer]) -> None:
        self._handles: dict[int, Any] = {}
        for layer in layers:
            if layer.input_shape is None:
                self._handles[id(layer)] = layer.module.register_forward_pre_hook(self._hook(layer))

    def _hook(self, layer: ConvLayer) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def record(module: nn.Module, inputs: tuple[Any, ...]) -> None:
            handle = self._handles.pop(id(layer), None)
            if handle is not None:
                handle.remove()
            layer.input_shape = check_input_shape(layer.name, module, _spatial_shape(module, inputs))

        return record

    @property
    def pending(self) -> int:
        """Number of layers whose size has not been seen yet."""
        return len(self._handles)

    def remove(self) -> None:
        """Remove the hooks that have not fired."""
        for handle in self._handles.values():
            handle.remove()
        self._handles.clear()


def assign_input_shapes(layers: Sequence[ConvLayer], input_shapes: ShapeLike | Mapping[LayerKey, ShapeLike]) -> None:
    """Set the input sizes given by the user: one size for all layers, or a mapping by name or module.

    Raises:
        ParameterError: a key that is not a selected layer, or an invalid size.
    """
    if isinstance(input_shapes, Mapping):
        by_name = {layer.name: layer for layer in layers}
        by_module = {id(layer.module): layer for layer in layers}
        for key, shape in input_shapes.items():
            if isinstance(key, str):
                layer = by_name.get(key)
            elif isinstance(key, nn.Module):
                layer = by_module.get(id(key))
            else:
                raise ParameterTypeError(f"input_shapes: expected layer names or modules as keys, got {key!r}")
            if layer is None:
                raise ParameterError(f"input_shapes: expected keys naming selected conv layers, got {key!r}")
            layer.input_shape = check_input_shape(layer.name, layer.module, shape)
    else:
        for layer in layers:
            layer.input_shape = check_input_shape(layer.name, layer.module, input_shapes)


def capture_input_shapes(
    model: nn.Module, *inputs: Any, layers: LayerSelection = None, **kwargs: Any
) -> dict[str, tuple[int, ...]]:
    """Run ``model(*inputs, **kwargs)`` once without gradients and return each conv layer's input size.

    Args:
        model: the model.
        *inputs, **kwargs: what its forward takes (a batch of one is enough).
        layers: which convolutions (see :func:`conv_layers`); default all.

    Returns:
        ``{layer name: spatial input size}`` for every selected layer that ran.

    Raises:
        ParameterError: as :func:`conv_layers`, or a stride that does not divide a layer's input size.

    Example:
        >>> import torch
        >>> from convspectra.nn import capture_input_shapes
        >>> capture_input_shapes(torch.nn.Conv1d(2, 2, 3, stride=2), torch.zeros(1, 2, 10))
        {'': (10,)}
    """
    selected = conv_layers(model, 1.0, layers, allow_parametrized=True)
    recorder = ShapeRecorder(selected)
    modes = [(module, module.training) for module in model.modules()]
    model.eval()  # no side effects on BatchNorm statistics
    try:
        with torch.no_grad():
            model(*inputs, **kwargs)
    finally:
        recorder.remove()
        for module, training in modes:
            module.training = training
    return {layer.name: layer.input_shape for layer in selected if layer.input_shape is not None}
