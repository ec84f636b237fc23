r"""A network-level UPPER bound on the Lipschitz constant, composed from exact layer norms.

The model is traced with ``torch.fx``; every value ``v`` of its graph gets a bound ``L(v)`` on
the Lipschitz constant (l2 to l2) of the map from the network input to ``v``, and every node
records the rule it used (:class:`~convspectra.analysis.records.NodeRule`):

- the input: 1; constants, shapes and parameters: 0;
- a conv or linear layer: its exact operator norm from the report times ``L(x)`` (circular, or
  the certified upper end with the model's own padding);
- an eval-mode BatchNorm right after a conv or linear layer: the norm of the folded pair
  (:func:`~convspectra.analysis.fold_batchnorm`) times the layer's input bound -- from the report
  when it folded (``fold_bn=True``), computed here otherwise; elsewhere ``max |gamma| / sqrt(var + eps)``;
- ``x + y`` and ``x - y``: ``L(x) + L(y)`` (so ``x + g(x)`` gets ``(1 + ||g||) L(x)``), unless the
  whole block between the split and the join is linear and small enough for its dense Jacobian:
  then its exact norm (see :func:`network_bound`);
- concatenation: ``sqrt(sum L_i^2)``; multiplication or division by a constant: its largest
  absolute entry; a mean over ``n`` entries: ``1/sqrt(n)``;
- activations and pooling: their exact Lipschitz constants
  (:mod:`convspectra.analysis.lipschitz_rules`: ReLU family, SiLU, GELU, Hardswish, Sigmoid...,
  average pooling by its exact norm, max pooling ``sqrt(N)``).

Every rule is an upper bound and they compose, so the result is an UPPER bound on the network's
Lipschitz constant, usually far from tight: it is never presented as the exact value.
LayerNorm, GroupNorm, InstanceNorm (which divide by a statistic of their input) and products of
two input-dependent tensors (squeeze-and-excitation, attention) have no global Lipschitz
constant: the bound is then None, the description names the first such node and the bound on
the part of the network before it. An operation without a rule also gives None, with its name.

Example:
    >>> import torch
    >>> from convspectra.analysis import spectral_report
    >>> block = torch.nn.Conv2d(2, 2, 3, padding=1, padding_mode="circular", bias=False)
    >>> class Residual(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__(); self.conv = block
    ...     def forward(self, x):
    ...         return torch.relu(x + self.conv(torch.relu(x)))
    >>> report = spectral_report(Residual(), (2, 8, 8))
    >>> abs(report.network_bound.value - (1 + report.layers[0].sigma_max)) < 1e-12
    True
    >>> [rule.rule for rule in report.network_bound.rules][2:4]
    ['layer norm (exact, circular)', 'sum: L(a) + L(b)']
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .folding import batchnorm_scale
from .lipschitz_blocks import linear_block_norm
from .lipschitz_graph import GraphRules, NoConstant, Unknown
from .lipschitz_rules import adaptive_avg_pool_norm
from .records import NetworkBound, NodeRule
from .walk import eval_mode

__all__ = ["adaptive_avg_pool_norm", "network_bound"]

_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _folded_norm(conv: nn.Module, bn: nn.Module, size: tuple[int, ...], padding: str) -> float:
    """The norm of ``bn(conv(.))`` for the bound: exact circular, or the certified upper end of the bracket."""
    from .. import operator_norm, operator_norm_bounds
    from .folding import fold_batchnorm
    from .walk import detached_copy

    folded: Any = fold_batchnorm(detached_copy(conv), detached_copy(bn))
    if isinstance(folded, nn.Linear):
        return float(torch.linalg.matrix_norm(folded.weight.detach(), ord=2))
    if padding == "circular":
        return float(operator_norm(folded, size, padding="circular"))
    return float(operator_norm_bounds(folded, size, padding="module", refine=False).upper)


class _Walk(GraphRules):
    """The bound of every node, in graph order, with its rule."""

    def __init__(self, graph: Any, model: nn.Module, layers: Sequence[Any], padding: str) -> None:
        super().__init__(graph)
        self.padding = padding
        self.kind = "exact, circular" if padding == "circular" else "certified upper end, own padding"
        self.norms: dict[str, float] = {}
        self.sizes: dict[str, set[tuple[int, ...]]] = {}
        self.folded: dict[str, str] = {}  # conv -> BatchNorm folded by the report
        for layer in layers:
            base = layer.name.split("#")[0]
            self.norms[base] = max(self.norms.get(base, 0.0), float(layer.norm(padding)))
            self.sizes.setdefault(base, set()).add(tuple(layer.input_shape))
            if layer.folded_batchnorm:
                self.folded[base] = layer.folded_batchnorm
        self.folded_bns = {bn: conv for conv, bn in self.folded.items()}
        self.rules: list[NodeRule] = []
        self.first_unbounded: tuple[str, str, float | None] | None = None

    def module_rule(self, node: Any, module: nn.Module) -> tuple[float, str] | None:
        name = str(node.target)
        if name in self.norms:
            if name in self.folded:
                if any(str(user.target) != self.folded[name] for user in node.users):
                    raise Unknown(f"BatchNorm {self.folded[name]} was folded but the output of {name} is also used")
                return self.norms[name], f"layer norm with BatchNorm {self.folded[name]} folded ({self.kind})"
            return self.norms[name], f"layer norm ({self.kind})"
        if isinstance(module, _BATCHNORM):
            return self.batchnorm(node, name, module)
        return None

    def batchnorm(self, node: Any, name: str, module: nn.Module) -> tuple[float, str]:
        if module.training or module.running_var is None:
            raise NoConstant(f"BatchNorm {name} normalises with batch statistics")
        if name in self.folded_bns:
            return 1.0, f"folded into {self.folded_bns[name]} by the report"
        scales = batchnorm_scale(module)[0].detach().double().abs()
        scale = float(scales.max())
        if float(scales.min()) >= scale * (1 - 1e-6):  # one scale for every channel: folding cannot lower it
            return scale, "BatchNorm (eval): max |gamma| / sqrt(var + eps), the same for every channel"
        source = node.args[0] if node.args else None
        conv = str(source.target) if getattr(source, "op", None) == "call_module" else None
        if conv in self.norms and len(self.sizes[conv]) == 1 and self.norms[conv] > 0:
            try:
                size = next(iter(self.sizes[conv]))
                folded = _folded_norm(self.graph.get_submodule(conv), module, size, self.padding)
            except Exception:  # a layer the solver refuses: keep the unfolded rule
                folded = None
            if folded is not None and folded < scale * self.norms[conv]:  # else the scale rule is as good
                factor = min(folded / self.norms[conv], scale)
                return factor, f"folded with {conv} for the bound: ||{name} o {conv}|| = {folded:.6g}"
        return scale, "BatchNorm (eval): max |gamma| / sqrt(var + eps)"

    def record(self, node: Any, op: str, rule: str, factor: float | None, bound: float | None) -> None:
        self.rules.append(NodeRule(node.name, op, rule, factor, bound))

    def run(self) -> float | None:
        result: float | None = None
        for node in self.graph.graph.nodes:
            op = self.describe(node)
            try:
                kind, factor, rule = self.rule(node)
            except NoConstant as err:
                source = self.input_bound(node)
                if self.first_unbounded is None:
                    self.first_unbounded = (node.name, str(err), source)
                self.values[node] = None
                self.record(node, op, f"no global constant: {err}", None, None)
                continue
            if kind == "unary":
                source = self.input_bound(node)
                value = None if source is None else factor * source
            else:  # an n-ary rule computed its bound itself
                value = factor
                factor = None
            if kind == "sum" and value is not None:
                exact = linear_block_norm(self, node)
                if exact is not None and exact[0] < value:
                    value, rule = exact[0], exact[1]
            self.values[node] = value
            self.record(node, op, rule, factor, value)
            if node.op == "output":
                result = value
        return result


def network_bound(model: nn.Module, example: torch.Tensor, layers: Sequence[Any], *, padding: str) -> NetworkBound:
    """The :class:`~convspectra.analysis.NetworkBound` of ``model`` from its layers' norms (see module docstring).

    Where the map between a split and the join of a residual sum is linear (no activation in any
    branch) and the dense Jacobian of that block fits (at most 2**22 entries), its exact norm
    replaces the sum rule when smaller (with ``padding="circular"`` only when every convolution
    in the block already wraps around, so that the block is the circular one).

    Args:
        model: the model the report describes.
        example: the example input (shapes for pooling layers and means).
        layers: the report's :class:`~convspectra.analysis.LayerReport` rows.
        padding: ``"circular"`` (use circular norms) or ``"model"`` (use certified upper ends).

    Returns:
        A ``NetworkBound``; its ``value`` is None when the bound is not available, with the
        reason in ``description``, and its ``rules`` list every node's rule.
    """
    kind = "circular" if padding == "circular" else "model"
    meaning = (
        "of the network with every convolution made circular (wrap-around), the paper's setting"
        if kind == "circular"
        else "of the model as it runs, from each layer's certified upper norm with its own padding"
    )

    def unavailable(reason: str, rules: list[NodeRule] | None = None) -> NetworkBound:
        return NetworkBound(None, padding, f"not available: {reason}", rules or [])

    if isinstance(model, torch.jit.ScriptModule):
        return unavailable("a TorchScript model cannot be traced by torch.fx")
    for layer in layers:
        if layer.norm(padding) is None:
            why = f"failed: {layer.error}" if layer.error else layer.note or "not computed"
            return unavailable(f"layer {layer.name} has no {kind} norm ({why})")
    try:
        from torch import fx
        from torch.fx.passes.shape_prop import ShapeProp

        with eval_mode(model):  # traced as the report ran it: `self.training` is baked into the graph
            graph = fx.symbolic_trace(model)
        with eval_mode(graph), torch.no_grad():
            ShapeProp(graph).propagate(example)
    except Exception as err:  # fx raises many types for untraceable code
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return unavailable(f"the model could not be traced by torch.fx ({first[:200]})")
    with eval_mode(graph):
        walk = _Walk(graph, model, layers, padding)
        try:
            value = walk.run()
        except Unknown as err:
            return unavailable(f"no Lipschitz rule for {err}", walk.rules)
    if walk.first_unbounded is not None:
        name, why, before = walk.first_unbounded
        partial = f"; the part of the network before it has bound {before:.6g}" if before is not None else ""
        return NetworkBound(
            None,
            padding,
            f"no global Lipschitz constant: node {name} ({why}) can amplify differences without limit{partial}; "
            "see rules for every node's constant",
            walk.rules,
        )
    if value is None or not math.isfinite(value):  # pragma: no cover - guarded above
        return unavailable("the bound is not finite", walk.rules)
    return NetworkBound(
        float(value),
        padding,
        f"UPPER bound on the Lipschitz constant (l2) {meaning}: product of layer norms along chains, "
        "sum at residual joins, each activation/pooling its exact constant (rules per node); not the exact constant",
        walk.rules,
    )
