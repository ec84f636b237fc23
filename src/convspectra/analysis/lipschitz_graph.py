"""The rule of each ``torch.fx`` node for the network bound (:mod:`convspectra.analysis.lipschitz`).

:class:`GraphRules` maps one node of a traced, shape-propagated graph to its rule: ``("unary",
factor, rule)`` (the node's bound is ``factor`` times its input's), ``("sum", value, rule)`` or
``("nary", value, rule)`` (the bound computed from several inputs), or raises
:class:`NoConstant` (no global Lipschitz constant) or :class:`Unknown` (no rule). The layer norms
and BatchNorm folding are the subclass's business (:meth:`GraphRules.module_rule`).

Example:
    >>> import torch
    >>> from torch import fx
    >>> from convspectra.analysis.lipschitz_graph import GraphRules
    >>> graph = fx.symbolic_trace(torch.nn.Sequential(torch.nn.SiLU()))
    >>> rules = GraphRules(graph)
    >>> [rules.rule(node)[1:] for node in graph.graph.nodes][1]
    (1.0998393201288669, 'SiLU: max slope 1.09984 at x = 2.39936')
"""

from __future__ import annotations

import math
import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .lipschitz_rules import (
    METHODS,
    activation_constant,
    adaptive_avg_pool_norm,
    avg_pool_norm,
    function_constant,
    max_pool_factor,
)

__all__ = ["GraphRules", "NoConstant", "Unknown"]

_SUM_FUNCTIONS = {operator.add, operator.iadd, operator.sub, operator.isub, torch.add, torch.sub}
_SUM_METHODS = {"add", "add_", "sub", "sub_"}
_CAT_FUNCTIONS = {torch.cat, torch.stack, torch.concat}
_SHAPE_METHODS = {"size", "dim", "numel", "shape"}
_NORMS_WITHOUT_CONSTANT = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LocalResponseNorm,
)
_FUNCTIONAL_NORMS = {F.layer_norm, F.group_norm, F.instance_norm, F.local_response_norm, F.normalize}
if hasattr(nn, "RMSNorm"):
    _NORMS_WITHOUT_CONSTANT = (*_NORMS_WITHOUT_CONSTANT, nn.RMSNorm)
    _FUNCTIONAL_NORMS.add(F.rms_norm)


class Unknown(Exception):
    """An operation of the graph with no known Lipschitz rule."""


class NoConstant(Exception):
    """An operation with no global Lipschitz constant (LayerNorm, a product of two activations...)."""


def shape(node: Any) -> tuple[int, ...] | None:
    """The tensor shape ``ShapeProp`` recorded for ``node`` (None when it is not a tensor)."""
    meta = node.meta.get("tensor_meta") if hasattr(node, "meta") else None
    return tuple(int(s) for s in meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _is_node(value: Any) -> bool:
    return hasattr(value, "op") and hasattr(value, "users")


class GraphRules:
    """The rule of every node of ``graph`` (a traced ``fx.GraphModule``), given the bounds of earlier nodes."""

    def __init__(self, graph: Any) -> None:
        self.graph = graph
        self.values: dict[Any, float | None] = {}

    # -- bounds of arguments -------------------------------------------------------------------
    def of(self, arg: Any) -> float | None:
        """Bound of an argument: a node's (None: unbounded), 0 for constants, the max over a container."""
        if isinstance(arg, (list, tuple)):
            parts = [self.of(a) for a in arg]
            return None if any(p is None for p in parts) else max(parts, default=0.0)
        if isinstance(arg, dict):
            return self.of(list(arg.values()))
        return self.values.get(arg, 0.0) if _is_node(arg) else 0.0

    def input_bound(self, node: Any) -> float | None:
        """The bound of the node's first argument (its input for a one-input rule)."""
        return self.of(node.args[0]) if node.args else 0.0

    def describe(self, node: Any) -> str:
        """What the node computes, for the rules table."""
        if node.op == "call_module":
            return f"{node.target} ({type(self.graph.get_submodule(str(node.target))).__name__})"
        if node.op == "call_function":
            return getattr(node.target, "__name__", str(node.target))
        if node.op == "call_method":
            return f".{node.target}()"
        return f"{node.op} {node.target}"

    # -- the rules -----------------------------------------------------------------------------
    def module_rule(self, node: Any, module: nn.Module) -> tuple[float, str] | None:
        """Layer norms and BatchNorm (the subclass's); None: not one of them."""
        return None

    def rule(self, node: Any) -> tuple[str, float, str]:
        """``(kind, factor or value, rule)`` of ``node`` (see the module docstring)."""
        op = node.op
        if op == "placeholder":
            return "nary", 1.0, "network input"
        if op == "get_attr":
            return "nary", 0.0, "constant (a parameter or buffer)"
        if op == "output":
            return "unary", 1.0, "network output"
        if op == "call_module":
            return ("unary", *self.module(node))
        if op == "call_function":
            return self.function(node, node.target)
        if op == "call_method":
            return self.method(node, str(node.target))
        raise Unknown(f"graph node {node.op} {node.target}")  # pragma: no cover

    def module(self, node: Any) -> tuple[float, str]:
        name = str(node.target)
        module = self.graph.get_submodule(name)
        found = self.module_rule(node, module) or activation_constant(module)
        if found is not None:
            return found
        kind = type(module).__name__
        src, out = shape(node.args[0]) if node.args else None, shape(node)
        if isinstance(module, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)) and src and out:
            ndim = len(src) - 2 if len(src) > 2 else 1
            factor = max_pool_factor(
                src[-ndim:], out[-ndim:], kernel=module.kernel_size, stride=module.stride,
                padding=module.padding, dilation=module.dilation,
            )  # fmt: skip
            return factor, f"{kind}: sqrt(max windows sharing an input position) = {factor:.6g}"
        if isinstance(module, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)) and src:
            ndim = int(kind[-2])
            norm = avg_pool_norm(
                src[-ndim:], kernel=module.kernel_size, stride=module.stride, padding=module.padding,
                ceil_mode=module.ceil_mode, count_include_pad=module.count_include_pad,
                divisor_override=getattr(module, "divisor_override", None),
            )  # fmt: skip
            return norm, f"{kind}: exact norm of the pooling at {'x'.join(map(str, src[-ndim:]))}"
        if isinstance(module, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)) and src and out:
            ndim = int(kind[-2])
            return adaptive_avg_pool_norm(src[-ndim:], out[-ndim:]), f"{kind}: exact norm of the pooling"
        if isinstance(module, (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)) and src and out:
            ndim = int(kind[-2])
            if all(n % m == 0 for n, m in zip(src[-ndim:], out[-ndim:], strict=True)):
                return 1.0, f"{kind}: non-overlapping windows"
        if isinstance(module, _NORMS_WITHOUT_CONSTANT):
            raise NoConstant(f"{kind} {name} divides by a statistic of its input")
        raise Unknown(f"module {name} ({kind})")

    def function(self, node: Any, target: Any) -> tuple[str, float, str]:
        args, kwargs = node.args, node.kwargs
        if target in _SUM_FUNCTIONS:
            return self.sum(node)
        if target is operator.getitem:
            return "unary", 1.0, "indexing / slicing: a restriction"
        if target in _CAT_FUNCTIONS:
            parts = [self.of(p) for p in args[0]]
            if any(p is None for p in parts):
                return "nary", None, "concatenation: sqrt(sum L_i^2)"  # type: ignore[return-value]
            return "nary", math.sqrt(sum(p * p for p in parts)), "concatenation: sqrt(sum L_i^2)"
        if target in (operator.mul, torch.mul, operator.truediv, torch.div, operator.imul, operator.itruediv):
            return self.scaled(node, divide=target in (operator.truediv, torch.div, operator.itruediv))
        if target in (operator.neg, operator.pos):
            return "unary", 1.0, "negation: an isometry"
        if target is getattr:
            return "nary", 0.0, "constant (an attribute)"
        if target is F.pad:
            mode = kwargs.get("mode", args[2] if len(args) > 2 else "constant")
            if mode == "constant":
                return "unary", 1.0, "constant padding: an isometry onto its image"
            raise Unknown(f"F.pad with mode {mode!r}")
        if target in (torch.mean, torch.sum):
            return self.reduction(node, "mean" if target is torch.mean else "sum")
        found = function_constant(target, args, kwargs)
        if found is not None:
            return ("unary", *found)
        name = getattr(target, "__name__", str(target))
        if name == "stochastic_depth" and not kwargs.get("training", args[3] if len(args) > 3 else True):
            return "unary", 1.0, "stochastic depth (eval): identity"
        if target in (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d):
            src, out = shape(args[0]), shape(node)
            if src and out:
                ndim = int(name[-2])
                return "unary", adaptive_avg_pool_norm(src[-ndim:], out[-ndim:]), f"{name}: exact norm of the pooling"
        if target in _FUNCTIONAL_NORMS:
            raise NoConstant(f"{name} divides by a statistic of its input")
        if target in (torch.matmul, torch.bmm, operator.matmul, torch.einsum):
            raise NoConstant(f"{name} of two input-dependent tensors")
        raise Unknown(f"function {name}")

    def method(self, node: Any, name: str) -> tuple[str, float, str]:
        if name in _SUM_METHODS:
            return self.sum(node)
        if name in _SHAPE_METHODS:
            return "nary", 0.0, f"constant (.{name}())"
        if name in METHODS:
            return ("unary", *METHODS[name])
        if name in ("mul", "mul_", "div", "div_"):
            return self.scaled(node, divide=name.startswith("div"))
        if name in ("mean", "sum"):
            return self.reduction(node, name)
        raise Unknown(f"method .{name}()")

    # -- n-ary rules ---------------------------------------------------------------------------
    def sum(self, node: Any) -> tuple[str, float, str]:
        alpha = abs(float(node.kwargs.get("alpha", 1.0)))
        a, b = self.of(node.args[0]), self.of(node.args[1] if len(node.args) > 1 else node.kwargs.get("other"))
        value = None if a is None or b is None else a + alpha * b
        return "sum", value, "sum: L(a) + L(b)" if alpha == 1 else f"sum: L(a) + {alpha:g} L(b)"  # type: ignore[return-value]

    def reduction(self, node: Any, kind: str) -> tuple[str, float, str]:
        src, out = shape(node.args[0]), shape(node)
        if src is None or out is None:
            raise Unknown(f"{kind} with unknown shapes")
        count = math.prod(src) // max(math.prod(out), 1)
        if kind == "mean":
            return "unary", 1.0 / math.sqrt(count), f"mean over {count} entries: 1/sqrt({count})"
        return "unary", math.sqrt(count), f"sum over {count} entries: sqrt({count})"

    def constant_scale(self, value: Any) -> float | None:
        """The largest |entry| of a constant argument (a number or a parameter/buffer node), else None."""
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return abs(float(value))
        if _is_node(value) and value.op == "get_attr":
            tensor = self.graph
            for part in str(value.target).split("."):
                tensor = getattr(tensor, part)
            return float(torch.as_tensor(tensor).detach().abs().max())
        return None

    def scaled(self, node: Any, *, divide: bool) -> tuple[str, float, str]:
        args = list(node.args)
        if len(args) < 2:
            args.append(node.kwargs.get("other"))
        tensors = [a for a in args if _is_node(a) and a.op != "get_attr" and self.values.get(a, 0.0) != 0.0]
        constants = [a for a in args if a not in tensors]
        if not tensors:
            return "nary", 0.0, "constant"
        if len(tensors) == 1 and len(constants) == 1 and (not divide or args[0] is tensors[0]):
            scale = self.constant_scale(constants[0])
            if scale is not None:
                if divide:
                    if scale == 0:
                        raise Unknown("division by zero")
                    if _is_node(constants[0]):
                        raise Unknown("division by a parameter")
                    scale = 1.0 / scale
                source = self.values[tensors[0]]
                value = None if source is None else scale * source
                return "nary", value, f"scaling by a constant: max |c| = {scale:.6g}"  # type: ignore[return-value]
        raise NoConstant("a product of two input-dependent tensors (e.g. squeeze-and-excitation gating)")
