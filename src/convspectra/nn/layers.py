"""Which convolutions of a model to control, and at which bound.

Shared by the projector, the parametrization, the Lightning callback, the penalties and the
training runner: :func:`conv_layers` selects the ``Conv1d/2d/3d`` and ``ConvTranspose1d/2d/3d``
modules of a model (all of them, a list of names or modules, or a predicate) and attaches a bound
to each, as a :class:`ConvLayer` record. The record's input size (the operator whose norm is
controlled is the layer's circular convolution on an input of that size) is filled in by
:mod:`convspectra.nn.recording`.

Example:
    >>> import torch
    >>> from convspectra.nn import conv_layers
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
    ...                             torch.nn.Conv2d(4, 4, 3, stride=2, padding=1))
    >>> [(layer.name, layer.max_norm, layer.geometry()["stride"]) for layer in conv_layers(model, 1.0)]
    [('0', 1.0, (1, 1)), ('2', 1.0, (2, 2))]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn
from torch.nn.utils import parametrize

from .._backend import conv_module_types, is_conv_module, is_transposed_module, module_geometry
from .._checks import real
from ..errors import ConvSpectraError, ParameterError, ParameterTypeError

__all__ = ["CONV_TYPES", "TRANSPOSED_TYPES", "ConvLayer", "LayerKey", "LayerSelection", "ShapeLike", "conv_layers"]

_FORWARD_TYPES, _TRANSPOSED_TYPES = conv_module_types()
#: The transposed module types (their weight is the adjoint's; the input size is the transposed layer's input).
TRANSPOSED_TYPES: tuple[type[nn.Module], ...] = _TRANSPOSED_TYPES
#: The module types whose weights are controlled (``Conv1d/2d/3d``, ``ConvTranspose1d/2d/3d``).
CONV_TYPES: tuple[type[nn.Module], ...] = _FORWARD_TYPES + _TRANSPOSED_TYPES

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
        return is_transposed_module(self.module)

    def geometry(self) -> dict[str, Any]:
        """``stride``, ``dilation``, ``groups`` and ``transposed`` as keyword arguments for the core."""
        return module_geometry(self.module)

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


def _all_convs(model: nn.Module) -> list[tuple[str, nn.Module]]:
    if not isinstance(model, nn.Module):
        raise ParameterTypeError(f"model: expected a torch.nn.Module, got {type(model).__qualname__}")
    return [(name, module) for name, module in model.named_modules() if is_conv_module(module)]


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
            bounds[name] = real(f"max_norm[{name!r}]", value, minimum=0.0, open_below=True)
    else:
        common = real("max_norm", max_norm, minimum=0.0, open_below=True)
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
