"""ONNX models: their conv, conv-transpose and linear layers at the input sizes the graph gives them.

Read with the ``onnx`` package (``pip install "convspectra[onnx]"``), imported when a graph is
opened. The layers are the graph's ``Conv`` and ``ConvTranspose`` nodes whose weight is a
constant (an initializer, possibly through ``Identity``, or a ``Constant`` node), each as a torch
module with the node's operator (:func:`convspectra.models.onnx_layers.conv_module`), and its
``Gemm`` (``transA=0``) and ``MatMul`` nodes with a constant 2-D weight, as ``Linear`` modules.
Each layer's input size comes from ONNX shape inference (``onnx.shape_inference.infer_shapes``);
a dynamic input dimension (other than the batch axis, which is set to 1) must be fixed with
``input_shape``. A ``BatchNormalization`` node that alone consumes a layer's output is attached
to it (``fold_bn`` folds it, as for a torch model).

Nothing runs the graph: the report is computed from the layers alone
(:func:`convspectra.analysis.layers_report`), so the network bound, which needs the graph between
the layers, is not available.

Example:
    >>> import os, tempfile
    >>> import numpy as np
    >>> from onnx import TensorProto, helper, numpy_helper, save
    >>> w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    >>> node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1], strides=[2, 2])
    >>> graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
    ...                           [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    >>> path = os.path.join(tempfile.mkdtemp(), "one.onnx"); save(helper.make_model(graph), path)
    >>> from convspectra.models.onnx_graph import OnnxGraph
    >>> graph = OnnxGraph(path)
    >>> graph.default_input_shape, [(c.name, c.input_shape, c.module.stride) for c in graph.layers().calls]
    ((3, 8, 8), [('conv', (8, 8), (2, 2))])
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ParameterError
from .onnx_layers import conv_module

__all__ = ["OnnxGraph", "OnnxLayers", "onnx_report", "require_onnx"]

_BATCHNORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def require_onnx() -> Any:
    """The ``onnx`` package, or a :class:`ParameterError` saying how to install it."""
    try:
        import onnx
    except ImportError:
        raise ParameterError(
            'model: reading an ONNX file needs the onnx package: pip install "convspectra[onnx]"'
        ) from None
    except Exception as err:  # a broken install
        raise ParameterError(f"model: the onnx package failed to import ({type(err).__name__}: {err})") from None
    return onnx


@dataclass
class OnnxLayers:
    """The layers of an ONNX graph at one input shape.

    Attributes:
        calls: one :class:`~convspectra.analysis.walk.LayerCall` per layer node, in graph order.
        input_shape: the graph input's shape used, with its batch axis.
        notes: nodes that could not be reported, with the reason.
        layer_notes: layer name -> how its ONNX padding is represented (see :mod:`.onnx_layers`).
        ops: layer name -> ONNX operator type.
        weights: layer name -> the name of its weight in the graph (an initializer's, usually).
    """

    calls: list[Any]
    input_shape: tuple[int, ...]
    notes: list[str] = field(default_factory=list)
    layer_notes: dict[str, str] = field(default_factory=dict)
    ops: dict[str, str] = field(default_factory=dict)
    weights: dict[str, str] = field(default_factory=dict)


def _dims(value_info: Any) -> list[int | str | None]:
    """The dims of a tensor ``ValueInfoProto``: an int, the symbol's name, or None when unknown."""
    dims: list[int | str | None] = []
    for dim in value_info.type.tensor_type.shape.dim:
        if dim.HasField("dim_value") and dim.dim_value > 0:
            dims.append(int(dim.dim_value))
        else:
            dims.append(dim.dim_param or None)
    return dims


class OnnxGraph:
    """An ONNX model file, read once; :meth:`layers` lists its layers at an input shape.

    Args:
        path: the ``.onnx`` file (external data files are read from beside it).

    Raises:
        ParameterError: no such file, the onnx package is missing, the file is not an ONNX
            model, or its graph has not exactly one input besides the initializers.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        onnx = require_onnx()
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise ParameterError(f"model: expected an existing ONNX file, got {self.path!r} (no such file)")
        try:
            self.proto = onnx.load(self.path)
        except Exception as err:  # protobuf's DecodeError, a missing external data file, ...
            raise ParameterError(f"model: could not read {self.path!r} as an ONNX model: {err}") from None
        self.name = os.path.basename(self.path)
        graph = self.proto.graph
        known = {init.name for init in graph.initializer}
        inputs = [value for value in graph.input if value.name not in known]
        if len(inputs) != 1:
            raise ParameterError(
                f"model: expected an ONNX graph with one input, got {len(inputs)} in {self.name!r}: "
                f"{[value.name for value in inputs]}"
            )
        self.input_name = inputs[0].name
        self.input_dims = _dims(inputs[0])

    @property
    def default_input_shape(self) -> tuple[int, ...] | None:
        """The input's shape without its batch axis when every such dim is fixed, else None."""
        rest = self.input_dims[1:]
        return tuple(int(v) for v in rest) if rest and all(isinstance(v, int) for v in rest) else None

    def _fixed(self, input_shape: Sequence[int] | None) -> tuple[int, ...]:
        dims = self.input_dims
        described = "x".join(str(v) if v is not None else "?" for v in dims)
        if input_shape is None:
            if self.default_input_shape is None:
                raise ParameterError(
                    f"input_shape: the ONNX input {self.input_name!r} of {self.name!r} has dynamic dims ({described}): "
                    f"give its shape without the batch axis ({len(dims) - 1} sizes, e.g. --input-shape 3 224 224)"
                )
            return (1, *self.default_input_shape)
        shape = tuple(int(v) for v in input_shape)
        if len(shape) != len(dims) - 1 or min(shape, default=0) < 1:
            raise ParameterError(
                f"input_shape: expected {len(dims) - 1} positive sizes (the ONNX input {self.input_name!r} is "
                f"{described}, without its batch axis), got {shape}"
            )
        return (1, *shape)

    def _inferred(self, shape: tuple[int, ...]) -> Any:
        onnx = require_onnx()
        model = self.proto
        if (1, *(self.default_input_shape or ())) != shape or not all(isinstance(v, int) for v in self.input_dims):
            model = onnx.ModelProto()
            model.CopyFrom(self.proto)
            for value in model.graph.input:
                if value.name == self.input_name:
                    for dim, size in zip(value.type.tensor_type.shape.dim, shape, strict=True):
                        dim.Clear()
                        dim.dim_value = size
            del model.graph.value_info[:]  # shapes recorded for another input size
            for value in model.graph.output:
                value.type.tensor_type.ClearField("shape")
        try:
            return onnx.shape_inference.infer_shapes(model, data_prop=True)
        except Exception as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ParameterError(f"input_shape: ONNX shape inference failed for input {shape}: {first[:300]}") from None

    def layers(self, input_shape: Sequence[int] | None = None) -> OnnxLayers:
        """The graph's layers with the input sizes shape inference gives for ``input_shape``.

        Args:
            input_shape: the graph input's shape without the batch axis (default: the file's,
                when it is fixed).

        Raises:
            ParameterError: a dynamic input without ``input_shape``, a wrong number of sizes,
                or a failing shape inference.
        """
        from ..analysis.walk import LayerCall

        shape = self._fixed(input_shape)
        graph = self._inferred(shape).graph
        onnx = require_onnx()
        shapes = {value.name: _dims(value) for value in [*graph.value_info, *graph.input, *graph.output]}
        constants = {init.name: init for init in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and node.output and any(a.name == "value" for a in node.attribute):
                constants[node.output[0]] = next(a.t for a in node.attribute if a.name == "value")
        aliases = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity" and n.input and n.output}
        consumers: dict[str, list[Any]] = {}
        for node in graph.node:
            for name in node.input:
                consumers.setdefault(name, []).append(node)

        def constant(name: str) -> np.ndarray | None:
            for _ in range(8):
                if name in constants:
                    return np.asarray(onnx.numpy_helper.to_array(constants[name]))
                if name not in aliases:
                    return None
                name = aliases[name]
            return None

        result = OnnxLayers([], shape)
        used: dict[str, int] = {}
        for index, node in enumerate(graph.node):
            if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
                continue
            name = node.name or f"{node.op_type}_{index}"
            used[name] = used.get(name, 0) + 1
            name = name if used[name] == 1 else f"{name}#{used[name]}"
            try:
                built = self._layer(node, constant, shapes)
            except ParameterError as err:
                result.notes.append(f"ONNX node {name!r} ({node.op_type}) not reported: {err}")
                continue
            if built is None:  # a product of two computed values (attention): no weight, not a layer
                continue
            module, size, note = built
            bn_name, bn = self._batchnorm(node, consumers, constant, module)
            result.calls.append(LayerCall(name, module, size, 1, bn_name, bn))
            result.ops[name] = node.op_type
            result.weights[name] = node.input[1]
            if note:
                result.layer_notes[name] = note
        return result

    @staticmethod
    def _layer(node: Any, constant: Any, shapes: dict[str, list[Any]]) -> tuple[nn.Module, tuple[int, ...], Any] | None:
        attrs = {a.name: _attribute(a) for a in node.attribute}
        weight = constant(node.input[1]) if len(node.input) > 1 else None
        x_dims = shapes.get(node.input[0])
        if node.op_type in ("Gemm", "MatMul"):
            if weight is None or weight.ndim != 2:
                return None
            if node.op_type == "Gemm":
                if int(attrs.get("transA", 0)):
                    raise ParameterError("Gemm with transA=1 (the weight multiplies from the left) is not a layer here")
                matrix = float(attrs.get("alpha", 1.0)) * (weight if int(attrs.get("transB", 0)) else weight.T)
            else:
                matrix = weight.T
            out_features, in_features = matrix.shape
            dtype = torch.float64 if matrix.dtype == np.float64 else torch.float32
            linear = nn.Linear(int(in_features), int(out_features), bias=False, dtype=dtype)
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(np.array(matrix)).to(dtype))
            return linear.eval().requires_grad_(False), (int(in_features),), None
        if weight is None:
            raise ParameterError(f"its weight {node.input[1]!r} is computed in the graph, not a constant")
        spatial = x_dims[2:] if x_dims is not None else None
        if not spatial or len(spatial) != weight.ndim - 2 or not all(isinstance(v, int) for v in spatial):
            raise ParameterError(f"the size of its input {node.input[0]!r} is not known after shape inference")
        bias = constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        module, note = conv_module(weight, bias, attrs, tuple(spatial), transposed=node.op_type == "ConvTranspose")
        return module, tuple(int(v) for v in spatial), note

    @staticmethod
    def _batchnorm(node: Any, consumers: dict[str, list[Any]], constant: Any, module: nn.Module) -> tuple[Any, Any]:
        after = consumers.get(node.output[0], [])
        if len(after) != 1 or after[0].op_type != "BatchNormalization" or len(after[0].input) < 5:
            return None, None
        bn_node = after[0]
        scale, shift, mean, var = (constant(name) for name in bn_node.input[1:5])
        if any(v is None or v.ndim != 1 for v in (scale, shift, mean, var)):
            return None, None
        eps = next((float(a.f) for a in bn_node.attribute if a.name == "epsilon"), 1e-5)
        nd = len(getattr(module, "kernel_size", (1,)))
        bn = _BATCHNORM[nd](int(scale.size), eps=eps, dtype=torch.float64).eval()
        with torch.no_grad():
            targets = (bn.weight, bn.bias, bn.running_mean, bn.running_var)
            for tensor, values in zip(targets, (scale, shift, mean, var), strict=True):
                tensor.copy_(torch.from_numpy(np.array(values, dtype=np.float64)))
        return bn_node.name or f"BatchNormalization after {node.output[0]}", bn.requires_grad_(False)


def _attribute(attribute: Any) -> Any:
    from onnx import helper

    value = helper.get_attribute_value(attribute)
    return value.decode() if isinstance(value, bytes) else value


def onnx_report(
    model: OnnxGraph | str | os.PathLike[str], input_shape: Sequence[int] | None = None, **options: Any
) -> Any:
    """The spectral report of an ONNX model's layers (:func:`convspectra.analysis.layers_report`).

    Args:
        model: an :class:`OnnxGraph` or the path of a ``.onnx`` file.
        input_shape: the graph input's shape without the batch axis (default: the file's).
        **options: ``padding``, ``fold_bn``, ``full_spectrum``, ``relative_threshold``,
            ``progress``, ``max_memory``... as :func:`~convspectra.analysis.spectral_report`.

    Returns:
        A :class:`~convspectra.analysis.SpectralReport`: the nodes that could not be reported
        are in its ``notes``, how an asymmetric ONNX padding is represented in the layer's
        ``note``; the network bound is not available.
    """
    from ..analysis import NetworkBound, layers_report

    graph = model if isinstance(model, OnnxGraph) else OnnxGraph(model)
    found = graph.layers(input_shape)
    padding = options.get("padding", "circular")
    bound = NetworkBound(None, padding, "not available: the graph between an ONNX model's layers is not analysed")
    report = layers_report(
        found.calls, model_name=graph.name, input_shape=found.input_shape, network_bound=bound, **options
    )
    rows = []
    for row in report.layers:
        extra = found.layer_notes.get(row.name)
        rows.append(dataclasses.replace(row, note="; ".join(n for n in (row.note, extra) if n)) if extra else row)
    return dataclasses.replace(report, layers=rows, notes=[*found.notes, *report.notes])
