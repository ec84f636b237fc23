r"""Fold an eval-mode BatchNorm into the convolution (or Linear layer) that feeds it.

In eval mode a BatchNorm is the per-channel affine map
``y_c = gamma_c (x_c - mu_c) / sqrt(var_c + eps) + beta_c``. Composed with a layer
``x = W * u + b`` it is again such a layer, with the weight of every output channel ``c``
scaled by ``s_c = gamma_c / sqrt(var_c + eps)`` and bias ``s_c (b_c - mu_c) + beta_c``.
The singular values of the folded layer are those of the linear map the pair computes.

Example:
    >>> import torch
    >>> from convspectra.analysis import fold_batchnorm
    >>> conv, bn = torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.BatchNorm2d(4).eval()
    >>> bn.running_var.fill_(4.0); bn.weight.data.fill_(3.0)  # doctest: +ELLIPSIS
    tensor(...)
    >>> folded = fold_batchnorm(conv, bn)
    >>> bool(torch.allclose(folded.weight, conv.weight * 1.5, atol=1e-3))
    True
    >>> x = torch.randn(1, 2, 8, 8)
    >>> bool(torch.allclose(folded(x), bn(conv(x)), atol=1e-5))
    True
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from .._backend import conv_module_types, is_transposed_module, module_geometry
from ..errors import ParameterError, ParameterTypeError

__all__ = ["batchnorm_scale", "fold_batchnorm"]

_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def batchnorm_scale(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The eval-mode BatchNorm as ``y = scale * x + shift`` per channel.

    ``scale = gamma / sqrt(running_var + eps)`` and ``shift = beta - scale * running_mean``
    (``gamma = 1``, ``beta = 0`` when the BatchNorm is not affine).

    Raises:
        ParameterTypeError: ``bn`` is not a ``BatchNorm1d/2d/3d``.
        ParameterError: it keeps no running statistics (it normalises with batch statistics even
            in eval mode, which is not a fixed affine map).

    Example:
        >>> import torch
        >>> from convspectra.analysis.folding import batchnorm_scale
        >>> scale, shift = batchnorm_scale(torch.nn.BatchNorm2d(3, eps=0.0).eval())
        >>> scale.tolist(), shift.tolist()
        ([1.0, 1.0, 1.0], [0.0, 0.0, 0.0])
    """
    if not isinstance(bn, _BATCHNORM):
        raise ParameterTypeError(f"bn: expected a torch.nn.BatchNorm1d/2d/3d, got {type(bn).__name__}")
    if bn.running_mean is None or bn.running_var is None:
        raise ParameterError(
            "bn: expected a BatchNorm with running statistics (track_running_stats=True); this one normalises "
            "with batch statistics, which is not a fixed affine map"
        )
    mean = bn.running_mean.detach()
    var = bn.running_var.detach()
    gamma = bn.weight.detach() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.detach() if bn.bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)
    return scale, beta - scale * mean


def fold_batchnorm(layer: nn.Module, bn: nn.Module) -> nn.Module:
    """A copy of ``layer`` (Conv, ConvTranspose or Linear) that computes ``bn(layer(x))`` in eval mode.

    Args:
        layer: a ``torch.nn.Conv1d/2d/3d``, ``ConvTranspose1d/2d/3d`` or ``Linear``.
        bn: the ``BatchNorm1d/2d/3d`` applied to its output (``num_features`` = its output channels).

    Returns:
        A new module of the same type with the folded weight and a bias (the originals are not
        modified), in eval mode.

    Raises:
        ParameterTypeError: unsupported layer or BatchNorm type.
        ParameterError: channel counts differ, or the BatchNorm has no running statistics.

    Example:
        >>> import torch
        >>> from convspectra.analysis import fold_batchnorm
        >>> folded = fold_batchnorm(torch.nn.Linear(3, 2, bias=False), torch.nn.BatchNorm1d(2).eval())
        >>> folded.bias.tolist()
        [0.0, 0.0]
    """
    forward, transposed_types = conv_module_types()
    if not isinstance(layer, (*forward, *transposed_types, nn.Linear)):
        raise ParameterTypeError(
            f"layer: expected a torch.nn.Conv1d/2d/3d, ConvTranspose1d/2d/3d or Linear, got {type(layer).__name__}"
        )
    scale, shift = batchnorm_scale(bn)
    module: Any = layer  # one of the types above (checked at run time: the tuple is built at run time)
    weight = module.weight.detach()
    transposed = is_transposed_module(module)
    if transposed:  # weight (in, out/groups, k...): output channel g*(out/groups) + j
        groups = module_geometry(module)["groups"]
        in_channels, per_group = weight.shape[0], weight.shape[1]
        out_channels = per_group * groups
    else:
        out_channels = weight.shape[0]
    if scale.shape[0] != out_channels:
        raise ParameterError(
            f"bn: expected a BatchNorm over the layer's {out_channels} output channels, got num_features="
            f"{scale.shape[0]}"
        )
    scale = scale.to(weight.dtype)
    shift = shift.to(weight.dtype)
    if transposed:
        grouped = weight.reshape(groups, in_channels // groups, per_group, *weight.shape[2:])
        factor = scale.reshape(groups, 1, per_group, *([1] * (weight.dim() - 2)))
        new_weight = (grouped * factor).reshape(weight.shape)
    else:
        new_weight = weight * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    bias = module.bias.detach() if module.bias is not None else torch.zeros(out_channels, dtype=weight.dtype)
    folded = copy.deepcopy(module)
    folded.weight = nn.Parameter(new_weight.clone(), requires_grad=False)
    folded.bias = nn.Parameter((scale * bias + shift).clone(), requires_grad=False)
    return folded.eval()
