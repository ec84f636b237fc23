"""Exact norm of a residual block whose branches are all linear, for the network bound.

At a sum node (a residual join), the graph is walked back through affine nodes only (conv and
linear layers, eval BatchNorm, average pooling, sums, constant scaling, reshapes, slicing,
zero padding, eval dropout). When that walk ends at ONE node (the split), the join is an affine
function of the split, and the Lipschitz constant of that block is the operator norm of its
linear part: the largest singular value of its Jacobian, computed densely in float64 when it
has at most :data:`MAX_ENTRIES` entries. ``L(join) <= ||J|| L(split)``, which can be far smaller
than the sum rule's ``L(a) + L(b)`` (e.g. ``x - conv(x)`` with a conv close to the identity).

Example:
    >>> import torch
    >>> from convspectra.analysis import spectral_report
    >>> class Linear(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__(); self.conv = torch.nn.Conv2d(2, 2, 1, bias=False)
    ...         torch.nn.init.eye_(self.conv.weight[:, :, 0, 0])
    ...     def forward(self, x):
    ...         return x - self.conv(x)          # the identity minus the identity: zero
    >>> bound = spectral_report(Linear(), (2, 4, 4)).network_bound
    >>> bound.value < 1e-12, bound.rules[-2].rule.startswith("linear block")
    (True, True)
"""

from __future__ import annotations

import copy
import math
import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .lipschitz_graph import shape

__all__ = ["MAX_ENTRIES", "linear_block_norm"]

#: Largest dense Jacobian (entries) formed for a linear block (2**22 float64: 32 MiB).
MAX_ENTRIES = 2**22

_AFFINE_MODULES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.Flatten,
    nn.Unflatten,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
)
_AFFINE_FUNCTIONS = {
    operator.add,
    operator.iadd,
    operator.sub,
    operator.isub,
    operator.neg,
    operator.getitem,
    operator.mul,
    operator.truediv,
    torch.add,
    torch.sub,
    torch.mul,
    torch.div,
    torch.cat,
    torch.flatten,
    torch.reshape,
    torch.mean,
    F.pad,
    F.dropout,
}
_AFFINE_METHODS = {"add", "sub", "mul", "div", "neg", "flatten", "view", "reshape", "contiguous", "permute", "mean"}


def _affine(walk: Any, node: Any) -> bool:
    if node.op == "call_module":
        module = walk.graph.get_submodule(str(node.target))
        return str(node.target) in walk.norms or (
            isinstance(module, _AFFINE_MODULES) and not (module.training or getattr(module, "running_var", 0) is None)
        )
    if node.op == "call_function":
        if node.target in (operator.mul, operator.truediv, torch.mul, torch.div):
            return sum(1 for a in node.args if hasattr(a, "op") and a.op != "get_attr") == 1
        return node.target in _AFFINE_FUNCTIONS
    if node.op == "call_method":
        if node.target in ("mul", "div"):
            return sum(1 for a in node.args if hasattr(a, "op") and a.op != "get_attr") == 1
        return node.target in _AFFINE_METHODS
    return False


def _wraps_around(walk: Any, nodes: list[Any]) -> bool:
    """Whether every convolution among ``nodes`` already pads circularly (or not at all)."""
    for node in nodes:
        if node.op == "call_module" and str(node.target) in walk.norms:
            module = walk.graph.get_submodule(str(node.target))
            padding = getattr(module, "padding", 0)
            padded = padding not in (0, (0,), (0, 0), (0, 0, 0), "valid") and not isinstance(module, nn.Linear)
            if padded and getattr(module, "padding_mode", "zeros") != "circular":
                return False
            if not isinstance(module, nn.Linear) and any(s != 1 for s in getattr(module, "stride", (1,))):
                return False
    return True


def linear_block_norm(walk: Any, join: Any) -> tuple[float, str] | None:
    """``(bound at join, rule)`` from the exact norm of the affine block ending at ``join``, or None.

    ``walk`` is the network bound's graph walk (its ``graph``, ``norms``, ``values`` and
    ``padding``). None when the block is not affine in a single split node, is too large for its
    dense Jacobian, or (circular bound) contains a convolution that does not wrap around.
    """
    inside: list[Any] = []
    leaves: set[Any] = set()
    stack = [a for a in join.args if hasattr(a, "op")]
    seen = {join}
    while stack:
        node = stack.pop()
        if node in seen or node.op == "get_attr":
            continue
        seen.add(node)
        if _affine(walk, node):
            inside.append(node)
            stack.extend(a for a in node.args if hasattr(a, "op"))
            stack.extend(a for a in node.kwargs.values() if hasattr(a, "op"))
        else:
            leaves.add(node)
        if len(leaves) > 1:
            return None
    if len(leaves) != 1 or not inside:
        return None
    (split,) = leaves
    source, target = shape(split), shape(join)
    bound = walk.values.get(split)
    if source is None or target is None or bound is None or source[0] != 1:
        return None
    if math.prod(source) * math.prod(target) > MAX_ENTRIES:
        return None
    if walk.padding == "circular" and not _wraps_around(walk, inside):
        return None
    norm = _dense_norm(walk.graph, split, join, [*inside, join], source)
    if norm is None:
        return None
    return norm * bound, f"linear block from {split.name}: exact norm {norm:.6g} of its dense Jacobian"


def _dense_norm(root: Any, split: Any, join: Any, nodes: list[Any], source: tuple[int, ...]) -> float | None:
    from torch import fx

    graph = fx.Graph()
    env: dict[Any, Any] = {split: graph.placeholder("x")}
    order = {node: i for i, node in enumerate(root.graph.nodes)}
    for node in sorted(set(nodes), key=order.__getitem__):
        for arg in [*node.args, *node.kwargs.values()]:
            if hasattr(arg, "op") and arg.op == "get_attr" and arg not in env:
                env[arg] = graph.node_copy(arg, lambda n: env[n])
        env[node] = graph.node_copy(node, lambda n: env[n])
    graph.output(env[join])
    block = copy.deepcopy(fx.GraphModule(root, graph)).double().eval()
    x0 = torch.zeros(source, dtype=torch.float64)
    try:
        jacobian = torch.autograd.functional.jacobian(block, x0, vectorize=True)
    except Exception:  # vmap does not support some op: the plain loop
        try:
            jacobian = torch.autograd.functional.jacobian(block, x0)
        except Exception:
            return None
    matrix = jacobian.reshape(math.prod(shape(join) or ()), -1)
    norm = float(torch.linalg.matrix_norm(matrix, ord=2))
    return norm * (1 + 1e-12) + 1e-300  # a rounding allowance: the bound stays an upper bound
