"""A differentiable operator-norm estimate of a layer, cheap enough for a penalty at every step.

:func:`operator_norm_estimate` keeps a pair of power-iteration vectors per module (held by a
weak reference to it: they live as long as the module, follow its weight's device and dtype,
and are not part of its ``state_dict``), runs ``n_power_iterations`` steps on the layer as the
network computes it (:mod:`convspectra.nn._power`), and returns :math:`\\sigma = \\langle u, A v\\rangle`
with gradients flowing to the weight. Successive calls continue the same iteration, so one step
per training step tracks the norm as the weight moves, as in spectral normalisation.

Example:
    >>> import torch, convspectra as cs
    >>> from convspectra.nn import operator_norm_estimate
    >>> _ = torch.manual_seed(0)
    >>> conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    >>> sigma = operator_norm_estimate(conv, 16, n_power_iterations=200)
    >>> sigma.backward()                                     # differentiable: a penalty's term
    >>> conv.weight.grad.shape
    torch.Size([8, 3, 3, 3])
    >>> exact = float(cs.operator_norm(conv, 16, padding="module").detach())
    >>> abs(float(sigma.detach()) - exact) < 1e-4 * exact
    True
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._checks import choice, integer, real
from ._power import PADDINGS, LayerGeometry, LayerOperator, power_iteration, sigma

__all__ = ["operator_norm_estimate"]

_SEED = 20190101


@dataclass
class _State:
    operator: LayerOperator
    padding: str
    u: torch.Tensor
    v: torch.Tensor


_STATES: weakref.WeakKeyDictionary[nn.Module, _State] = weakref.WeakKeyDictionary()


def _state(module: nn.Module, weight: torch.Tensor, input_shape: Any, padding: str) -> _State:
    """The module's vectors for this size and padding on the weight's device and dtype (new ones when any differ)."""
    op = LayerOperator.of(LayerGeometry.of(module), input_shape, padding=padding)
    state = _STATES.get(module)
    if state is None or state.operator != op or state.padding != padding:
        generator = torch.Generator().manual_seed(_SEED)
        u, v = (
            torch.randn(shape, generator=generator, dtype=torch.float64) for shape in (op.output_shape, op.input_shape)
        )
        state = _State(op, padding, u / torch.linalg.vector_norm(u), v / torch.linalg.vector_norm(v))
        _STATES[module] = state
    if state.v.dtype != weight.dtype or state.v.device != weight.device:
        state.u, state.v = (x.to(device=weight.device, dtype=weight.dtype) for x in (state.u, state.v))
    return state


def operator_norm_estimate(
    module: nn.Module,
    input_shape: int | tuple[int, ...] | None = None,
    *,
    n_power_iterations: int = 1,
    padding: str = "module",
    eps: float = 1e-12,
) -> torch.Tensor:
    """The layer's operator norm by power iteration continued across calls, differentiable in its weight.

    Args:
        module: a ``Conv1d/2d/3d``, ``ConvTranspose1d/2d/3d`` or ``Linear``; its current
            ``weight`` is used (the normalised one if it has a parametrization).
        input_shape: the spatial size of its input (ignored for a Linear; required otherwise).
        n_power_iterations: steps to run in this call (>= 1).
        padding: ``"module"`` (the layer's own padding) or ``"circular"`` (wrap-around).
        eps: floor for the norms divided by.

    Returns:
        A 0-d tensor on the weight's device and in its dtype, an estimate from below of the true
        norm (exact at the fixed point), with gradients to the weight.

    Raises:
        ParameterTypeError, ParameterError: as :func:`~convspectra.nn.spectral_norm`.
    """
    n_power_iterations = integer("n_power_iterations", n_power_iterations)
    eps = real("eps", eps, minimum=0.0, open_below=True)
    choice("padding", padding, PADDINGS)
    weight = module.weight
    state = _state(module, weight, input_shape, padding)
    value, _ = power_iteration(state.operator, weight, state.u, state.v, n_power_iterations, eps)
    return sigma(state.operator, weight, state.u, state.v, value)
