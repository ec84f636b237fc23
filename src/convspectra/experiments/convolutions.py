"""The convolutions a training run controls and logs, as :mod:`convspectra.nn` layer records.

A run selects every ``Conv1d/2d/3d`` and ``ConvTranspose1d/2d/3d`` of its model with
:func:`convspectra.nn.conv_layers` and learns the input size of each from one forward pass
(:func:`conv_records`, through the package's input-size recorder). The same records then serve
both the ``clip=C`` arms' projection (:func:`project_convolutions`: the paper's Section 3 step,
one alternating iteration of :func:`convspectra.nn.projected_kernels` in float64, for every kind
of convolution with its dilation, groups and transposition, on the layer's stride-1 operator as
the paper's method does) and the logged spectra (:func:`sigma_max`: the exact operator norm of
every layer's circular operator, stride included).

Example:
    >>> import torch
    >>> from convspectra.experiments.convolutions import conv_records, project_convolutions, sigma_max
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Conv2d(4, 4, 3, stride=2, padding=1))
    >>> layers = conv_records(model, (1, 8, 8), max_norm=0.5)
    >>> [(layer.name, layer.input_shape) for layer in layers]
    [('0', (8, 8)), ('1', (8, 8))]
    >>> project_convolutions(layers)
    >>> all(value < 1.0 for value in sigma_max(layers).values())
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..nn import ConvLayer, capture_input_shapes, conv_layers
from ..nn.layers import LayerKey, ShapeLike
from ..nn.projector import projected_kernels
from ..nn.recording import assign_input_shapes
from ..norm import operator_norm

__all__ = ["PROJECTION", "PROJECTION_OPTIONS", "conv_records", "project_convolutions", "sigma_max"]

#: The options of the ``clip=C`` arms' projection (the paper's single clip-and-restrict step).
PROJECTION_OPTIONS: dict[str, Any] = {"iterations": 1, "method": "alternating"}
#: How the ``clip=C`` arms project (recorded in every run's log).
PROJECTION = (
    "convspectra.nn.projected_kernels(iterations=1, method='alternating'): clip_operator_norm_many of every "
    "convolution's stride-1 circular operator at its input size (dilation, groups and transposition included), "
    "in float64"
)


def conv_records(model: torch.nn.Module, image_shape: Sequence[int], max_norm: float) -> list[ConvLayer]:
    """Every convolution of ``model`` with the bound ``max_norm`` and its input size, in model order.

    The sizes come from one forward pass of a zero image of ``image_shape`` ``(C, H, W)`` (eval
    mode, no gradients; the model is left as it was).

    Args:
        model: the model.
        image_shape: the shape of one input image, without the batch axis.
        max_norm: the bound c of the projection (used only by the ``clip=C`` arms).

    Returns:
        :class:`~convspectra.nn.ConvLayer` records with their input sizes.
    """
    layers = conv_layers(model, max_norm)
    parameter = next(model.parameters())
    example = torch.zeros((1, *image_shape), dtype=parameter.dtype, device=parameter.device)
    sizes: dict[LayerKey, ShapeLike] = {name: size for name, size in capture_input_shapes(model, example).items()}
    assign_input_shapes(layers, sizes)
    return layers


def project_convolutions(layers: Sequence[ConvLayer]) -> None:
    """Project every layer onto its operator-norm ball in place: one clip-and-restrict step (:data:`PROJECTION`).

    Each frequency's singular values of the layer's stride-1 circular operator at its input size
    are clipped at the layer's bound and the kernel is restricted to its ``k x k`` support again
    (the paper's Section 3 step; the paper's method ignores the stride, and for a strided layer
    the stride-1 bound also bounds the strided operator: subsampling the output is a
    contraction). Computed in float64 on the weight's device and copied back in the weight's dtype.
    """
    jobs = [
        (layer.module.weight, layer.require_input_shape(), layer.max_norm, {**layer.geometry(), "stride": 1})
        for layer in layers
    ]
    with torch.no_grad():
        for layer, new in zip(
            layers,
            projected_kernels(jobs, rescale=False, device=None, **PROJECTION_OPTIONS, min_norm=None),
            strict=True,
        ):
            layer.module.weight.copy_(new)


def sigma_max(layers: Sequence[ConvLayer], *, workers: int | None = None) -> dict[str, float]:
    """``{layer name: exact operator norm}`` of every layer's circular operator on its input size (float64, CPU).

    Args:
        layers: records with input sizes (see :func:`conv_records`).
        workers: threads for the per-frequency decompositions (default: every core).
    """
    out = {}
    for layer in layers:
        weight = layer.module.weight.detach().to("cpu", torch.float64)
        out[layer.name] = float(
            operator_norm(weight, layer.require_input_shape(), layout="OIHW", workers=workers, **layer.geometry())
        )
    return out
