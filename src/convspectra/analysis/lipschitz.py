r"""A network-level UPPER bound on the Lipschitz constant, composed from exact layer norms.

The model is traced with ``torch.fx``; every value ``v`` in its graph gets a bound ``L(v)`` on
the Lipschitz constant (l2 to l2) of the map from the network input to ``v``:

- the input: 1; constants and shapes: 0;
- a linear layer ``f``: ``||f|| * L(x)`` with ``||f||`` its exact operator norm from the report
  (circular, or the certified upper end with the model's own padding);
- ``x + y`` and ``x - y``: ``L(x) + L(y)``; so a residual block ``x + g(x)`` gets
  ``(1 + ||g||) L(x)`` (the residual rule) and a plain chain gets the product of its norms;
- concatenation: ``sqrt(sum L_i^2)``; multiplication or division by a constant ``c``: ``|c|``;
- an eval-mode BatchNorm: ``max_c |gamma_c| / sqrt(var_c + eps)`` (1 when folded into its conv);
- ReLU, Tanh, Hardtanh, ReLU6, ELU (alpha <= 1), Softplus, Dropout, reshapes, slicing, zero
  padding: 1; LeakyReLU: ``max(1, |slope|)``; Sigmoid: 1/4; max pooling:
  ``sqrt(prod ceil(k/s))`` (how many windows share an input); average pooling: 1 (norm <= 1);
  adaptive average pooling: its exact norm, computed from the bins.

Every rule is an upper bound and they compose, so the result is an UPPER bound on the
network's Lipschitz constant, usually far from tight: it is never presented as the exact
value. Any operation without a known rule makes the bound unavailable (the reason says which).

Example:
    >>> import torch
    >>> from convspectra.analysis import spectral_report
    >>> block = torch.nn.Conv2d(2, 2, 3, padding=1, padding_mode="circular", bias=False)
    >>> class Residual(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__(); self.conv = block
    ...     def forward(self, x):
    ...         return torch.relu(x + self.conv(x))
    >>> report = spectral_report(Residual(), (2, 8, 8))
    >>> abs(report.network_bound.value - (1 + report.layers[0].sigma_max)) < 1e-12
    True
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .folding import batchnorm_scale
from .records import NetworkBound
from .walk import eval_mode

__all__ = ["adaptive_avg_pool_norm", "network_bound"]

_ONE_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.Tanh,
    nn.Hardtanh,
    nn.Softplus,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.Flatten,
    nn.Unflatten,
)
_ONE_FUNCTIONS = {
    F.relu,
    F.relu6,
    F.hardtanh,
    F.softplus,
    F.dropout,
    F.dropout1d,
    F.dropout2d,
    F.dropout3d,
    torch.relu,
    torch.tanh,
    torch.flatten,
    torch.reshape,
    torch.squeeze,
    torch.unsqueeze,
    torch.permute,
    torch.transpose,
    torch.clone,
    operator.neg,
    operator.pos,
    getattr,
}
_ONE_METHODS = {
    "relu",
    "relu_",
    "tanh",
    "flatten",
    "view",
    "reshape",
    "contiguous",
    "permute",
    "transpose",
    "squeeze",
    "unsqueeze",
    "clone",
    "neg",
    "detach",
    "float",
    "double",
    "to",
}
_SUM_FUNCTIONS = {operator.add, operator.iadd, operator.sub, operator.isub, torch.add, torch.sub}
_SUM_METHODS = {"add", "add_", "sub", "sub_"}
_CAT_FUNCTIONS = {torch.cat, torch.stack, torch.concat}


class _Unknown(Exception):
    """An operation of the graph with no known Lipschitz constant."""


def adaptive_avg_pool_norm(input_shape: Sequence[int], output_shape: Sequence[int]) -> float:
    """Exact operator norm of ``adaptive_avg_pool`` from ``input_shape`` to ``output_shape`` (spatial sizes).

    The pooling is separable: its matrix is the Kronecker product of one averaging matrix per
    axis (PyTorch's bins ``[floor(i n / m), ceil((i + 1) n / m))``), so its norm is the product of
    theirs.

    Example:
        >>> from convspectra.analysis.lipschitz import adaptive_avg_pool_norm
        >>> adaptive_avg_pool_norm((8, 8), (1, 1))    # global average pooling: 1 / sqrt(64)
        0.125
    """
    norm = 1.0
    for n, m in zip(input_shape, output_shape, strict=True):
        matrix = np.zeros((m, n))
        for i in range(m):
            start, stop = (i * n) // m, -((-(i + 1) * n) // m)
            matrix[i, start:stop] = 1.0 / (stop - start)
        norm *= float(np.linalg.norm(matrix, 2))
    return norm


def _pool_overlap(kernel: Any, stride: Any, ndim: int) -> float:
    kernel = (kernel,) * ndim if isinstance(kernel, int) else tuple(kernel)
    stride = kernel if stride is None or stride == [] or stride == () else stride
    stride = (stride,) * ndim if isinstance(stride, int) else tuple(stride)
    return math.sqrt(math.prod(-(-k // s) for k, s in zip(kernel, stride, strict=True)))


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if hasattr(node, "meta") else None
    return tuple(int(s) for s in meta.shape) if meta is not None and hasattr(meta, "shape") else None


class _Bound:
    def __init__(self, model: nn.Module, norms: dict[str, float], folded: dict[str, str]) -> None:
        self.model = model
        self.norms = norms
        self.folded = folded
        self.folded_bns = {bn: conv for conv, bn in folded.items()}
        self.values: dict[Any, float] = {}

    def of(self, arg: Any) -> float:
        """Bound of an argument: a node's, 0 for constants, the max over a container's nodes."""
        if isinstance(arg, (list, tuple)):
            return max((self.of(a) for a in arg), default=0.0)
        if isinstance(arg, dict):
            return max((self.of(a) for a in arg.values()), default=0.0)
        return self.values.get(arg, 0.0) if hasattr(arg, "op") else 0.0

    def node(self, node: Any) -> float:
        op = node.op
        if op == "placeholder":
            return 1.0
        if op == "get_attr":
            return 0.0
        if op == "output":
            return self.of(node.args[0])
        if op == "call_module":
            return self.module(node)
        if op == "call_function":
            return self.function(node, node.target)
        if op == "call_method":
            return self.method(node, node.target)
        raise _Unknown(f"graph node {node.op} {node.target}")  # pragma: no cover

    def module(self, node: Any) -> float:
        name = str(node.target)
        module = self.model.get_submodule(name)
        x = self.of(node.args[0]) if node.args else 0.0
        if name in self.norms:
            return self.norms[name] * x
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            if name in self.folded_bns:
                source = node.args[0] if node.args and hasattr(node.args[0], "op") else None
                if source is None or len(source.users) != 1 or str(source.target) != self.folded_bns[name]:
                    raise _Unknown(f"BatchNorm {name} was folded but its conv's output is also used elsewhere")
                return x
            scale, _ = batchnorm_scale(module)
            return float(scale.abs().max()) * x
        if isinstance(module, _ONE_MODULES) or (isinstance(module, nn.ELU) and module.alpha <= 1):
            return x
        if isinstance(module, nn.LeakyReLU):
            return max(1.0, abs(module.negative_slope)) * x
        if isinstance(module, nn.Sigmoid):
            return 0.25 * x
        if isinstance(module, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)):
            ndim = int(type(module).__name__[-2])
            if module.dilation not in (1, (1,) * ndim, [1] * ndim):
                raise _Unknown(f"dilated max pooling {name}")
            return _pool_overlap(module.kernel_size, module.stride, ndim) * x
        if isinstance(module, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)):
            if getattr(module, "divisor_override", None) is None and (
                module.count_include_pad or module.padding in (0, (0,), (0, 0), (0, 0, 0))
            ):
                return x
            raise _Unknown(f"average pooling {name} with a custom divisor")
        if isinstance(module, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)):
            return self.adaptive(node, int(type(module).__name__[-2])) * x
        raise _Unknown(f"module {name} ({type(module).__name__})")

    def adaptive(self, node: Any, ndim: int) -> float:
        src, out = _shape(node.args[0]), _shape(node)
        if src is None or out is None:
            raise _Unknown(f"adaptive pooling {node.name} with unknown shapes")
        return adaptive_avg_pool_norm(src[-ndim:], out[-ndim:])

    def function(self, node: Any, target: Any) -> float:
        args = node.args
        if target in _SUM_FUNCTIONS:
            alpha = abs(float(node.kwargs.get("alpha", 1.0)))
            return self.of(args[0]) + alpha * self.of(args[1])
        if target in _ONE_FUNCTIONS:
            return self.of(args[0]) if args else 0.0
        if target is operator.getitem:
            return self.of(args[0])
        if target in (operator.mul, torch.mul, operator.truediv, torch.div):
            return self.scaled(args, divide=target in (operator.truediv, torch.div))
        if target in _CAT_FUNCTIONS:
            parts = args[0]
            return math.sqrt(sum(self.of(p) ** 2 for p in parts))
        if target is F.leaky_relu:
            slope = node.kwargs.get("negative_slope", args[1] if len(args) > 1 else 0.01)
            return max(1.0, abs(float(slope))) * self.of(args[0])
        if target is F.elu and float(node.kwargs.get("alpha", args[1] if len(args) > 1 else 1.0)) <= 1:
            return self.of(args[0])
        if target in (torch.sigmoid, F.sigmoid):
            return 0.25 * self.of(args[0])
        if target is F.pad:
            mode = node.kwargs.get("mode", args[2] if len(args) > 2 else "constant")
            value = node.kwargs.get("value", args[3] if len(args) > 3 else None)
            if mode == "constant" and not value:
                return self.of(args[0])
            raise _Unknown(f"F.pad with mode {mode!r}")
        if target in (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d):
            return self.adaptive(node, int(target.__name__[-2])) * self.of(args[0])
        if target in (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d):
            if node.kwargs.get("divisor_override") is None:
                return self.of(args[0])
        if target in (F.max_pool1d, F.max_pool2d, F.max_pool3d):
            ndim = int(target.__name__[-2]) if target.__name__[-2].isdigit() else 2
            kernel = node.kwargs.get("kernel_size", args[1] if len(args) > 1 else None)
            stride = node.kwargs.get("stride", args[2] if len(args) > 2 else None)
            if kernel is not None and node.kwargs.get("dilation", 1) == 1:
                return _pool_overlap(kernel, stride, ndim) * self.of(args[0])
        name = getattr(target, "__name__", str(target))
        raise _Unknown(f"function {name}")

    def method(self, node: Any, name: str) -> float:
        args = node.args
        if name in _SUM_METHODS:
            alpha = abs(float(node.kwargs.get("alpha", 1.0)))
            return self.of(args[0]) + alpha * self.of(args[1])
        if name in _ONE_METHODS:
            return self.of(args[0])
        if name in ("size", "dim", "numel"):
            return 0.0
        if name in ("mul", "mul_", "div", "div_"):
            return self.scaled(args, divide=name.startswith("div"))
        if name == "mean":
            return self.of(args[0])  # an average: norm <= 1
        raise _Unknown(f"method .{name}()")

    def scaled(self, args: Sequence[Any], *, divide: bool) -> float:
        tensors = [a for a in args if hasattr(a, "op") and self.values.get(a, 0.0) > 0]
        numbers = [a for a in args if isinstance(a, (int, float)) and not isinstance(a, bool)]
        if len(tensors) == 1 and len(numbers) == 1 and (not divide or args[0] is tensors[0]):
            factor = abs(float(numbers[0]))
            if divide:
                if factor == 0:
                    raise _Unknown("division by zero")
                factor = 1.0 / factor
            return factor * self.values[tensors[0]]
        if not tensors:
            return 0.0
        raise _Unknown("a product of two input-dependent tensors")


def network_bound(model: nn.Module, example: torch.Tensor, layers: Sequence[Any], *, padding: str) -> NetworkBound:
    """The :class:`~convspectra.analysis.NetworkBound` of ``model`` from its layers' norms (see module docstring).

    Args:
        model: the model the report describes.
        example: the example input (shapes for pooling layers).
        layers: the report's :class:`~convspectra.analysis.LayerReport` rows.
        padding: ``"circular"`` (use circular norms) or ``"model"`` (use certified upper ends).

    Returns:
        A ``NetworkBound``; its ``value`` is None when the bound is not available, with the
        reason in ``description``.
    """
    kind = "circular" if padding == "circular" else "model"
    meaning = (
        "of the network with every convolution made circular (wrap-around), the paper's setting"
        if kind == "circular"
        else "of the model as it runs, from each layer's certified upper norm with its own padding"
    )

    def unavailable(reason: str) -> NetworkBound:
        return NetworkBound(None, padding, f"not available: {reason}")

    if isinstance(model, torch.jit.ScriptModule):
        return unavailable("a TorchScript model cannot be traced by torch.fx")
    norms: dict[str, float] = {}
    folded: dict[str, str] = {}
    for layer in layers:
        value = layer.norm(padding)
        if value is None:
            why = f"failed: {layer.error}" if layer.error else layer.note or "not computed"
            return unavailable(f"layer {layer.name} has no {kind} norm ({why})")
        base = layer.name.split("#")[0]
        norms[base] = max(norms.get(base, 0.0), float(value))
        if layer.folded_batchnorm:
            folded[base] = layer.folded_batchnorm
    try:
        from torch import fx
        from torch.fx.passes.shape_prop import ShapeProp

        graph = fx.symbolic_trace(model)
        with eval_mode(graph), torch.no_grad():
            ShapeProp(graph).propagate(example)
    except Exception as err:  # fx raises many types for untraceable code
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return unavailable(f"the model could not be traced by torch.fx ({first[:200]})")
    bound = _Bound(graph, norms, folded)
    try:
        for node in graph.graph.nodes:
            bound.values[node] = bound.node(node)
            if node.op == "output":
                value = bound.values[node]
    except _Unknown as err:
        return unavailable(f"no Lipschitz rule for {err}")
    return NetworkBound(
        float(value),
        padding,
        f"UPPER bound on the Lipschitz constant (l2) {meaning}: product of layer norms along chains, "
        "1 + ||block|| for residual sums (each ReLU/pooling <= 1); not the exact constant",
    )
