"""The input size each layer sees: checked, recorded by forward pre-hooks, or given by the user.

The operator whose spectrum is computed or controlled is a layer's circular (wrap-around)
convolution on the spatial size of its input, as in Sedghi, Gupta & Long (2019). Every part of
convspectra that learns that size from a forward pass (the projector, the parametrization,
:func:`capture_input_shapes`, the report's layer walk, the training runner, the demo) does it
with the one :class:`InputSizeRecorder` of this module:

* :meth:`InputSizeRecorder.record_first`: set a record's ``input_shape`` to the first size its
  layer runs at, checked by :func:`check_input_shape`, then remove the hook. A size the stride
  does not divide raises :class:`~convspectra.errors.ParameterError` from that forward pass and
  leaves the hook in place, so a later pass at a valid size still records.
* :meth:`InputSizeRecorder.record_calls`: append every call (name, module, size) to
  :attr:`InputSizeRecorder.calls` until :meth:`~InputSizeRecorder.remove`.

The hooks are objects, not closures: ``copy.deepcopy`` of a module (or of a projector, or of a
model with its projector) copies each pending hook together with the record it writes into, so a
copy made before the first forward pass records into the copy and never into the original.

Example:
    >>> import copy, torch
    >>> from convspectra.nn import capture_input_shapes, conv_layers
    >>> from convspectra.nn.recording import InputSizeRecorder
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Conv2d(4, 4, 3, stride=2))
    >>> layers = conv_layers(model, 1.0)
    >>> recorder = InputSizeRecorder()
    >>> for layer in layers:
    ...     recorder.record_first(layer, layer.module, label=layer.name)
    >>> twin = copy.deepcopy(model)                  # its hooks write into copies of the records
    >>> _ = twin(torch.zeros(1, 1, 6, 6))
    >>> [layer.input_shape for layer in layers], recorder.pending
    ([None, None], 2)
    >>> _ = model(torch.zeros(1, 1, 8, 8))
    >>> [layer.input_shape for layer in layers], recorder.pending
    ([(8, 8), (8, 8)], 0)
    >>> capture_input_shapes(model, torch.zeros(1, 1, 10, 10))
    {'0': (10, 10), '1': (10, 10)}
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch
from torch import nn

from .._backend import is_transposed_module
from ..errors import ParameterError, ParameterTypeError
from .layers import ConvLayer, LayerKey, LayerSelection, ShapeLike, conv_layers

__all__ = [
    "InputCall",
    "InputSizeRecorder",
    "assign_input_shapes",
    "capture_input_shapes",
    "check_input_shape",
    "eval_mode",
    "input_size",
]


def input_size(module: Any, tensor: Any) -> tuple[int, ...]:
    """The size a layer call sees: the trailing spatial axes of ``tensor`` for a convolution, the last one for a Linear.

    Args:
        module: a ``Conv*d`` / ``ConvTranspose*d`` module (its ``kernel_size`` gives the number
            of spatial axes) or a ``Linear``.
        tensor: the call's input.

    Example:
        >>> import torch
        >>> from convspectra.nn.recording import input_size
        >>> input_size(torch.nn.Conv2d(3, 4, 3), torch.zeros(2, 3, 9, 7))
        (9, 7)
        >>> input_size(torch.nn.Linear(5, 2), torch.zeros(4, 5))
        (5,)
    """
    if isinstance(module, nn.Linear):
        return (int(tensor.shape[-1]),)
    ndim = len(module.kernel_size)
    return tuple(int(size) for size in tensor.shape[-ndim:])


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
        >>> from convspectra.nn.recording import check_input_shape
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
    if not is_transposed_module(module):
        stride = tuple(module.stride)
        if any(n % s for n, s in zip(sides, stride, strict=True)):
            raise ParameterError(
                f"input_shape: layer {name!r} has stride {stride}, which does not divide its input size {sides}; "
                "the circular operator whose norm is controlled is defined only when every side is a multiple "
                "of its stride (crop or pad the input, or leave this layer out with `layers`)"
            )
    return sides


@dataclass(frozen=True)
class InputCall:
    """One call of a recorded layer: its name, the module, and the size of its input (see :func:`input_size`)."""

    name: str
    module: nn.Module
    input_shape: tuple[int, ...]


class _FirstSize:
    """Forward pre-hook: ``target.input_shape`` := the first valid input size, then the hook removes itself.

    An object rather than a closure so that ``copy.deepcopy`` of the module copies it together
    with its target (and its handle, which then points at the copy's hook table).
    """

    def __init__(self, target: Any, label: str, check: Callable[[str, Any, Any], tuple[int, ...]]) -> None:
        self.target, self.label, self.check = target, label, check
        self.handle: Any = None

    def __call__(self, module: nn.Module, inputs: tuple[Any, ...]) -> None:
        shape = self.check(self.label, module, input_size(module, inputs[0]))  # raises: the hook stays
        self.target.input_shape = shape
        self.remove()

    @property
    def pending(self) -> bool:
        return self.handle is not None

    def remove(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None


class _EveryCall:
    """Forward pre-hook: append ``InputCall(name, module, size)`` to the recorder at every call."""

    def __init__(self, recorder: InputSizeRecorder, name: str) -> None:
        self.recorder, self.name = recorder, name

    def __call__(self, module: nn.Module, inputs: tuple[Any, ...]) -> None:
        recorder = self.recorder
        recorder.last_call[self.name] = len(recorder.calls)
        recorder.calls.append(InputCall(self.name, module, input_size(module, inputs[0])))


class InputSizeRecorder:
    """Forward pre-hooks that record the size of the input each layer sees (see the module docstring).

    Also a context manager: leaving the ``with`` block removes every hook that is still in place.

    Attributes:
        calls: with :meth:`record_calls`, every call in order, as :class:`InputCall` records.
        last_call: ``{name: index in calls of that layer's latest call}``.

    Example:
        >>> import torch
        >>> from convspectra.nn.recording import InputSizeRecorder
        >>> conv = torch.nn.Conv1d(1, 1, 3)
        >>> with InputSizeRecorder() as recorder:
        ...     recorder.record_calls("conv", conv)
        ...     _ = conv(torch.zeros(1, 1, 8)), conv(torch.zeros(1, 1, 5))
        >>> [(call.name, call.input_shape) for call in recorder.calls], len(conv._forward_pre_hooks)
        ([('conv', (8,)), ('conv', (5,))], 0)
    """

    def __init__(self) -> None:
        self.calls: list[InputCall] = []
        self.last_call: dict[str, int] = {}
        self._first: list[_FirstSize] = []
        self._handles: list[Any] = []

    def record_first(
        self,
        target: Any,
        module: nn.Module,
        *,
        label: str,
        check: Callable[[str, Any, Any], tuple[int, ...]] = check_input_shape,
    ) -> None:
        """Set ``target.input_shape`` to the first size ``module`` runs at (checked), then stop recording it.

        Args:
            target: the record to fill in (a :class:`~convspectra.nn.layers.ConvLayer`, a
                constraint...): any object with an ``input_shape`` attribute.
            module: the conv module whose input is measured.
            label: the layer's name in error messages.
            check: ``(label, module, size) -> size``: validates the size (raising keeps the hook
                in place); default :func:`check_input_shape` (the circular operator's rules).
        """
        hook = _FirstSize(target, label, check)
        hook.handle = module.register_forward_pre_hook(hook)
        self._first.append(hook)

    def record_calls(self, name: str, module: nn.Module) -> None:
        """Append every call of ``module`` (a convolution or a Linear) to :attr:`calls`, until :meth:`remove`."""
        self._handles.append(module.register_forward_pre_hook(_EveryCall(self, name)))

    @property
    def pending(self) -> int:
        """Number of :meth:`record_first` layers whose size has not been recorded yet."""
        return sum(hook.pending for hook in self._first)

    def remove(self) -> None:
        """Remove every hook still in place (the recorded sizes stay)."""
        for hook in self._first:
            hook.remove()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> InputSizeRecorder:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.remove()


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode for the block, then restore each one's own training flag.

    Example:
        >>> import torch
        >>> from convspectra.nn.recording import eval_mode
        >>> model = torch.nn.Sequential(torch.nn.BatchNorm1d(2), torch.nn.BatchNorm1d(2).eval())
        >>> with eval_mode(model):
        ...     print(model.training, model[0].training)
        False False
        >>> model.training, model[0].training, model[1].training
        (True, True, False)
    """
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, flag in flags:
            module.training = flag


def assign_input_shapes(layers: Sequence[ConvLayer], input_shapes: ShapeLike | Mapping[LayerKey, ShapeLike]) -> None:
    """Set the input sizes given by the user: one size for all layers, or a mapping by name or module.

    Args:
        layers: the :class:`~convspectra.nn.layers.ConvLayer` records to fill in.
        input_shapes: an int or tuple for every layer, or ``{layer name or module: size}``.

    Raises:
        ParameterTypeError: a key that is neither a name nor a module.
        ParameterError: a key that is not a selected layer, or an invalid size.

    Example:
        >>> import torch
        >>> from convspectra.nn import conv_layers
        >>> from convspectra.nn.recording import assign_input_shapes
        >>> layers = conv_layers(torch.nn.Sequential(torch.nn.Conv1d(1, 1, 3), torch.nn.Conv1d(1, 1, 3)), 1.0)
        >>> assign_input_shapes(layers, {"1": 6})
        >>> [layer.input_shape for layer in layers]
        [None, (6,)]
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

    The model runs in eval mode (BatchNorm statistics are not updated); every module's training
    flag is restored afterwards.

    Args:
        model: the model.
        *inputs, **kwargs: what its forward takes (a batch of one is enough).
        layers: which convolutions (see :func:`~convspectra.nn.conv_layers`); default all.

    Returns:
        ``{layer name: spatial input size}`` for every selected layer that ran.

    Raises:
        ParameterError: as :func:`~convspectra.nn.conv_layers`, or a stride that does not divide a layer's input size.

    Example:
        >>> import torch
        >>> from convspectra.nn import capture_input_shapes
        >>> capture_input_shapes(torch.nn.Conv1d(2, 2, 3, stride=2), torch.zeros(1, 2, 10))
        {'': (10,)}
    """
    selected = conv_layers(model, 1.0, layers, allow_parametrized=True)
    with eval_mode(model), InputSizeRecorder() as recorder, torch.no_grad():  # eval: BatchNorm statistics kept
        for layer in selected:
            recorder.record_first(layer, layer.module, label=layer.name)
        model(*inputs, **kwargs)
    return {layer.name: layer.input_shape for layer in selected if layer.input_shape is not None}
