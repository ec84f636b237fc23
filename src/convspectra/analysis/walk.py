"""Find a model's linear layers and the size of the input each one actually sees.

One forward pass of an example input through the model, in eval mode and without gradients,
records for every ``torch.nn.Conv1d/2d/3d``, ``ConvTranspose1d/2d/3d`` and ``Linear`` module the
spatial size of its input (so strides, pooling and any resizing inside the model are accounted
for) and whether its output goes straight into a ``BatchNorm`` (the pair that
:func:`~convspectra.analysis.fold_batchnorm` can fold). Eager modules are observed with forward
hooks: the sizes of every call by the package's one input-size recorder
(:class:`convspectra.nn.recording.InputSizeRecorder`), the conv -> BatchNorm links by hooks of
this module. TorchScript modules (which do not support hooks) are observed with a PyTorch
dispatch mode that sees every convolution and matrix product and matches their weights to the
module's parameters.

The model is left as it was: its training flag is restored and no parameter or buffer changes
(BatchNorm statistics are not updated in eval mode).

Example:
    >>> import torch
    >>> from convspectra.analysis.walk import collect_layers
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.BatchNorm2d(8),
    ...                             torch.nn.Flatten(), torch.nn.Linear(8 * 16 * 16, 10))
    >>> [(c.name, c.input_shape, c.batchnorm_name) for c in collect_layers(model, torch.zeros(1, 3, 32, 32))]
    [('0', (32, 32), '1'), ('3', (2048,), None)]
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._backend import conv_module_types, is_conv_module
from ..errors import ParameterError, ParameterTypeError
from ..nn.recording import InputCall, InputSizeRecorder, eval_mode, input_size

__all__ = ["LayerCall", "collect_layers", "detached_copy", "eval_mode", "make_example_input"]

_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_SCRIPT_CONV_NAMES = {cls.__name__: cls for kind in conv_module_types() for cls in kind}
_SCRIPT_BATCHNORM_NAMES = {cls.__name__: cls for cls in _BATCHNORM}


@dataclass
class LayerCall:
    """One linear layer of a model as the example forward pass used it.

    Attributes:
        name: qualified module name (``model.get_submodule(name)``); a module that ran on inputs of
            different sizes gets one entry per size, the later ones named ``name#2``, ``name#3``...
        module: the layer as an eager ``torch.nn`` module (for TorchScript, an eager copy).
        input_shape: spatial size of the layer's input (convolutions) or ``(in_features,)`` (Linear).
        calls: how many times the forward pass called it with this input size.
        batchnorm_name: qualified name of the BatchNorm that every one of those calls fed, if any.
        batchnorm: that BatchNorm module (eager; None when ``batchnorm_name`` is None).
    """

    name: str
    module: nn.Module
    input_shape: tuple[int, ...]
    calls: int = 1
    batchnorm_name: str | None = None
    batchnorm: nn.Module | None = None


def make_example_input(model: nn.Module, example_input: Any) -> torch.Tensor:
    """The tensor to run: ``example_input`` itself, or zeros of shape ``(1, *example_input)``.

    Args:
        model: the model (its first floating parameter sets the dtype and device of the zeros).
        example_input: a tensor (with its batch axis), or the shape of one example without the
            batch axis, e.g. ``(3, 32, 32)``.

    Raises:
        ParameterTypeError: neither a tensor nor a sequence of positive ints.
    """
    if isinstance(example_input, torch.Tensor):
        return example_input
    if (
        isinstance(example_input, (tuple, list))
        and example_input
        and all(isinstance(size, int) and not isinstance(size, bool) and size > 0 for size in example_input)
    ):
        reference = next((p for p in model.parameters() if p.is_floating_point()), None)
        dtype = reference.dtype if reference is not None else torch.float32
        device = reference.device if reference is not None else torch.device("cpu")
        return torch.zeros((1, *example_input), dtype=dtype, device=device)
    raise ParameterTypeError(
        "example_input: expected a torch.Tensor (with batch axis) or the shape of one example as positive ints, "
        f"e.g. (3, 32, 32), got {example_input!r}"
    )


class _Recorder:
    """The layer calls in order (name, module, input size) and the conv output -> BatchNorm links."""

    def __init__(self, calls: list[InputCall] | None = None) -> None:
        self.calls: list[InputCall] = [] if calls is None else calls
        self.outputs: dict[int, tuple[int, torch.Tensor]] = {}  # key -> (call index, tensor kept alive)
        self.links: dict[int, str] = {}  # call index -> BatchNorm name
        self.batchnorms: dict[str, nn.Module] = {}

    def call(self, name: str, module: nn.Module, size: tuple[int, ...]) -> int:
        self.calls.append(InputCall(name, module, size))
        return len(self.calls) - 1

    def layers(self) -> list[LayerCall]:
        grouped: dict[tuple[str, tuple[int, ...]], list[int]] = {}
        modules: dict[str, nn.Module] = {}
        for index, call in enumerate(self.calls):
            grouped.setdefault((call.name, call.input_shape), []).append(index)
            modules[call.name] = call.module
        result: list[LayerCall] = []
        seen: dict[str, int] = {}
        for (name, size), indices in grouped.items():
            seen[name] = seen.get(name, 0) + 1
            links = {self.links.get(index) for index in indices}
            bn_name = links.pop() if len(links) == 1 else None
            result.append(
                LayerCall(
                    name=name if seen[name] == 1 else f"{name}#{seen[name]}",
                    module=modules[name],
                    input_shape=size,
                    calls=len(indices),
                    batchnorm_name=bn_name,
                    batchnorm=self.batchnorms.get(bn_name) if bn_name is not None else None,
                )
            )
        return result


def _run(model: nn.Module, example: torch.Tensor, context: Any) -> None:
    try:
        with torch.no_grad(), context:
            model(example)
    except Exception as err:  # any failure of the user's forward pass is reported as a bad example
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ParameterError(
            f"example_input: the model {type(model).__name__} failed on an input of shape {tuple(example.shape)}: "
            f"{first}"
        ) from None


def _collect_eager(model: nn.Module, example: torch.Tensor) -> list[LayerCall]:
    sizes = InputSizeRecorder()
    recorder = _Recorder(sizes.calls)
    handles = []

    def post_hook(name: str) -> Any:
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            if isinstance(output, torch.Tensor):
                recorder.outputs[id(output)] = (sizes.last_call[name], output)

        return hook

    def bn_hook(name: str) -> Any:
        def hook(module: nn.Module, inputs: tuple[Any, ...]) -> None:
            entry = recorder.outputs.get(id(inputs[0]))
            if entry is not None and entry[1] is inputs[0]:
                recorder.links[entry[0]] = name
                recorder.batchnorms[name] = module

        return hook

    with sizes:
        try:
            for name, module in model.named_modules():
                if is_conv_module(module) or isinstance(module, nn.Linear):
                    sizes.record_calls(name, module)
                    handles.append(module.register_forward_hook(post_hook(name)))
                elif isinstance(module, _BATCHNORM):
                    handles.append(module.register_forward_pre_hook(bn_hook(name)))
            _run(model, example, contextlib.nullcontext())
        finally:
            for handle in handles:
                handle.remove()
    return recorder.layers()


def _eager_copy(module: Any) -> nn.Module:
    """An eager ``torch.nn`` copy of a TorchScript Conv/BatchNorm/Linear submodule."""
    kind = module.original_name
    state = {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}
    if kind in _SCRIPT_CONV_NAMES:
        cls = _SCRIPT_CONV_NAMES[kind]
        weight = state["weight"]
        groups = int(module.groups)
        transposed = kind.startswith("ConvTranspose")
        in_channels = weight.shape[0] if transposed else weight.shape[1] * groups
        out_channels = weight.shape[1] * groups if transposed else weight.shape[0]
        kwargs: dict[str, Any] = {
            "stride": tuple(module.stride),
            "padding": module.padding if isinstance(module.padding, str) else tuple(module.padding),
            "dilation": tuple(module.dilation),
            "groups": groups,
            "bias": "bias" in state and state["bias"] is not None,
            "padding_mode": module.padding_mode,
        }
        if transposed:
            kwargs["output_padding"] = tuple(module.output_padding)
        eager: nn.Module = cls(in_channels, out_channels, tuple(weight.shape[2:]), **kwargs)
    elif kind == "Linear":
        weight = state["weight"]
        eager = nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in state)
    elif kind in _SCRIPT_BATCHNORM_NAMES:
        eager = _SCRIPT_BATCHNORM_NAMES[kind](
            int(state["running_mean"].shape[0]) if "running_mean" in state else int(state["weight"].shape[0]),
            eps=float(module.eps),
            affine="weight" in state,
            track_running_stats="running_mean" in state,
        )
    else:  # pragma: no cover - guarded by the caller
        raise ParameterTypeError(f"model: cannot copy the TorchScript module {kind}")
    eager.load_state_dict(state, strict=False)
    return eager.to(next(iter(state.values())).dtype).eval()


def _collect_script(model: Any, example: torch.Tensor) -> list[LayerCall]:
    from torch.utils._python_dispatch import TorchDispatchMode

    kinds = {**_SCRIPT_CONV_NAMES, "Linear": nn.Linear}
    layer_weights: dict[tuple[int, tuple[int, ...]], str] = {}
    bn_weights: dict[tuple[int, tuple[int, ...]], str] = {}
    script_modules = dict(model.named_modules())
    for name, module in script_modules.items():
        kind = getattr(module, "original_name", "")
        params = dict(module.named_parameters(recurse=False))
        buffers = dict(module.named_buffers(recurse=False))
        if kind in kinds and "weight" in params:
            layer_weights[(params["weight"].data_ptr(), tuple(params["weight"].shape))] = name
        elif kind in _SCRIPT_BATCHNORM_NAMES and "running_mean" in buffers:
            tensor = buffers["running_mean"]
            bn_weights[(tensor.data_ptr(), tuple(tensor.shape))] = name
    recorder = _Recorder()
    eager: dict[str, nn.Module] = {}

    def key(tensor: torch.Tensor) -> tuple[int, tuple[int, ...]]:
        return (tensor.data_ptr(), tuple(tensor.shape))

    class Mode(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            packet = func.overloadpacket
            if packet is torch.ops.aten.convolution and len(tensors) >= 2:
                name = layer_weights.get(key(tensors[1]))
                if name is not None:
                    module = eager.setdefault(name, _eager_copy(script_modules[name]))
                    index = recorder.call(name, module, input_size(module, tensors[0]))
                    recorder.outputs[out.data_ptr()] = (index, out)
            elif packet in (torch.ops.aten.addmm, torch.ops.aten.mm, torch.ops.aten.matmul, torch.ops.aten.linear):
                for tensor in tensors:
                    candidate = (tensor.data_ptr(), tuple(reversed(tensor.shape)))
                    name = layer_weights.get(candidate) or layer_weights.get(key(tensor))
                    if name is not None and script_modules[name].original_name == "Linear":
                        linear: Any = eager.setdefault(name, _eager_copy(script_modules[name]))
                        recorder.call(name, linear, (int(linear.weight.shape[1]),))
                        break
            elif "batch_norm" in str(packet) and tensors:
                bn = next((bn_weights[key(t)] for t in tensors[1:] if key(t) in bn_weights), None)
                entry = recorder.outputs.get(tensors[0].data_ptr())
                if bn is not None and entry is not None and entry[1].shape == tensors[0].shape:
                    recorder.links[entry[0]] = bn
                    recorder.batchnorms.setdefault(bn, _eager_copy(script_modules[bn]))
            return out

    _run(model, example, Mode())
    return recorder.layers()


def collect_layers(model: nn.Module, example_input: Any) -> list[LayerCall]:
    """Run ``example_input`` through ``model`` once and list its conv and linear layers in call order.

    Args:
        model: an eager ``torch.nn.Module`` or a TorchScript module (``torch.jit.load``).
        example_input: a tensor with batch axis, or the shape of one example (see
            :func:`make_example_input`).

    Returns:
        One :class:`LayerCall` per (layer, input size), in the order of first use.

    Raises:
        ParameterTypeError: ``model`` is not a module, or a bad ``example_input``.
        ParameterError: the forward pass failed (the message gives the input shape and the error).
    """
    if not isinstance(model, nn.Module):
        raise ParameterTypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    example = make_example_input(model, example_input)
    with eval_mode(model):
        if isinstance(model, torch.jit.ScriptModule):
            return _collect_script(model, example)
        return _collect_eager(model, example)


def detached_copy(module: nn.Module, dtype: torch.dtype = torch.float64) -> nn.Module:
    """A deep copy of ``module`` in ``dtype`` on the CPU, in eval mode, without gradients."""
    clone = copy.deepcopy(module).to(device="cpu", dtype=dtype).eval()
    for parameter in clone.parameters():
        parameter.requires_grad_(False)
    return clone
