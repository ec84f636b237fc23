r"""Loss penalties on the operator norms of a model's convolutions.

* :func:`l1_penalty`: :math:`\sum_l \sum |K_l|`, the bound of Proposition 11 (and 6) of Sedghi,
  Gupta & Long (2019), :math:`\|A(K)\|_2 \le \sum_{c,d,p,q} |K_{c,d,p,q}|`: the comparison
  regulariser of the paper's Section 4.2. Cheap, but often a loose bound.
* :func:`operator_norm_penalty`: the hinge :math:`\sum_l \max(\sigma_{\max}(A(K_l)) - c_l, 0)` on
  the exact operator norm of each layer's circular convolution on its input size
  (:func:`convspectra.operator_norm`; or of the layer with its own padding). Differentiable:
  the gradient of :math:`\sigma_{\max}` is :math:`\mathrm{Re}(u v^H)` mapped back to the kernel
  through the (linear) Fourier transform, finite everywhere.

Example:
    >>> import torch
    >>> from convspectra.nn import l1_penalty, operator_norm_penalty
    >>> conv = torch.nn.Conv2d(1, 1, 2, bias=False)
    >>> with torch.no_grad():
    ...     _ = conv.weight.fill_(1.0)
    >>> float(l1_penalty(conv))
    4.0
    >>> float(operator_norm_penalty(conv, 1.0, input_shapes=8))   # sigma_max = 4 (footnote 2 of the paper)
    3.0
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from ..errors import ParameterError, ParameterTypeError
from ..norm import operator_norm
from .layers import CONV_TYPES, LayerKey, LayerSelection, ShapeLike, conv_layers
from .recording import assign_input_shapes

__all__ = ["l1_penalty", "operator_norm_penalty"]


def _modules(model: nn.Module | Iterable[nn.Module], layers: LayerSelection) -> list[Any]:
    if isinstance(model, nn.Module):
        return [layer.module for layer in conv_layers(model, 1.0, layers, allow_parametrized=True)]
    if layers is not None:
        raise ParameterError("layers: expected None when an iterable of modules is given (it is the selection)")
    if isinstance(model, (str, bytes)) or not isinstance(model, Iterable):
        raise ParameterTypeError(f"model: expected a module or an iterable of conv modules, got {model!r}")
    modules: list[Any] = list(model)
    for module in modules:
        if not isinstance(module, CONV_TYPES):
            raise ParameterTypeError(
                f"model: expected Conv1d/2d/3d or ConvTranspose1d/2d/3d modules, got a {type(module).__qualname__}"
            )
    if not modules:
        raise ParameterError("model: expected at least one conv module, got an empty iterable")
    return modules


def l1_penalty(model: nn.Module | Iterable[nn.Module], *, layers: LayerSelection = None) -> torch.Tensor:
    r"""Sum of the absolute values of every conv kernel: :math:`\sum_l \sum_{c,d,p,q} |K^{(l)}_{c,d,p,q}|`.

    Each layer's term bounds its operator norm for any input size, stride, dilation or
    groups (Proposition 11 of Sedghi et al. 2019; a strided layer is a subsampling, of norm 1,
    after the unstrided one; a transposed layer has its adjoint's norm).

    Args:
        model: a module (its convolutions are used, selected by ``layers``) or an iterable of conv modules.
        layers: as :func:`~convspectra.nn.conv_layers` (only with a module).

    Returns:
        A 0-d tensor on the weights' device, differentiable (add ``weight_decay * l1_penalty(model)`` to the loss).

    Raises:
        ParameterTypeError, ParameterError: no conv layers, or modules that are not convolutions.

    Example:
        >>> import torch
        >>> from convspectra.nn import l1_penalty
        >>> conv = torch.nn.Conv1d(1, 2, 3, bias=False)
        >>> bool(l1_penalty([conv]) == conv.weight.abs().sum())
        True
    """
    terms = [module.weight.abs().sum() for module in _modules(model, layers)]
    return torch.stack(terms).sum()


def operator_norm_penalty(
    model: nn.Module,
    max_norm: float | Mapping[LayerKey, float],
    input_shapes: ShapeLike | Mapping[LayerKey, ShapeLike],
    *,
    layers: LayerSelection = None,
    padding: str | int | tuple[int, ...] = "circular",
) -> torch.Tensor:
    r"""Hinge on the exact operator norms: :math:`\sum_l \max(\sigma_{\max}(A(K_l)) - c_l,\ 0)`.

    :math:`A(K_l)` is layer l's circular convolution on its input size (stride, dilation,
    groups and transposition from the module), :math:`\sigma_{\max}` its largest singular
    value, computed exactly by :func:`convspectra.operator_norm`. Gradients are finite: a layer
    under its bound contributes 0; above it, the gradient of its :math:`\sigma_{\max}`.

    Cost: one :func:`convspectra.operator_norm` per selected layer at each call, i.e. a branch
    and bound over the layer's frequencies that decomposes only the frequencies whose cheap
    bounds may still hold the maximum (not every singular value), with an autograd graph
    through the top singular pair of the maximising frequency only. For a CIFAR ResNet-32 at
    batch 128 one call with its backward pass takes about half to two thirds of a training
    step on a CPU (see the docs' cost table); apply it every few steps, or use
    :class:`~convspectra.nn.OperatorNormProjector` for a hard bound.

    Args:
        model: the model (or one conv module).
        max_norm: the bound c, or a mapping from layer name or module to its bound.
        input_shapes: one size for every layer, or a mapping by layer name or module (for
            instance :func:`~convspectra.nn.capture_input_shapes`'s result); every selected layer needs one.
        layers: as :func:`~convspectra.nn.conv_layers`.
        padding: ``"circular"`` (default, the paper's operator) or ``"module"``: each layer's
            own padding and ``padding_mode``, i.e. the norm of the layer as the network
            computes it (iterative solver for zero padding; see :func:`convspectra.operator_norm`).

    Returns:
        A 0-d tensor (the weights' dtype, at least float32, on their device), differentiable.

    Raises:
        ParameterError, ParameterTypeError: invalid layers, bounds or sizes, or a layer without a size.

    Example:
        >>> import torch
        >>> from convspectra.nn import operator_norm_penalty
        >>> conv = torch.nn.Conv2d(3, 8, 3, stride=2)
        >>> penalty = operator_norm_penalty(conv, 0.1, input_shapes=16)
        >>> penalty.backward()
        >>> bool(torch.isfinite(conv.weight.grad).all())
        True
    """
    selected = conv_layers(model, max_norm, layers, allow_parametrized=True)
    assign_input_shapes(selected, input_shapes)
    terms = []
    for layer in selected:
        if layer.input_shape is None:
            raise ParameterError(f"input_shapes: expected a size for every selected layer, got none for {layer.name!r}")
        if padding == "module":
            sigma = operator_norm(layer.module, layer.input_shape, padding="module")
        else:
            sigma = operator_norm(
                layer.module.weight, layer.input_shape, padding=padding, layout="OIHW", **layer.geometry()
            )
        terms.append(torch.clamp(sigma - layer.max_norm, min=0))
    return torch.stack(terms).sum()
