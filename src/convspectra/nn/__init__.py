"""PyTorch tools to control the operator norms of convolutions during training.

* :class:`OperatorNormProjector`: attach to an optimizer; every N steps, project the selected
  convolutions onto ``{operator norm <= c}`` (the regulariser of Sedghi, Gupta & Long 2019).
* :func:`register_operator_norm_constraint` / :func:`remove_operator_norm_constraint`: a hard
  constraint at every forward pass (``torch.nn.utils.parametrize``).
* :func:`l1_penalty`, :func:`operator_norm_penalty`: loss terms (Proposition 11's bound, and a
  hinge on the exact operator norm).
* :func:`spectral_norm`: a drop-in for ``torch.nn.utils.parametrizations.spectral_norm`` that
  normalises by the layer's true operator norm (the convolution as computed, not the reshaped
  kernel); :func:`converge_spectral_norm` runs it to a fixed point, :func:`certify` proves a
  bracket per layer, :func:`operator_norm_estimate` is the differentiable estimate for penalties.
* :func:`conv_layers`: layer selection; :func:`capture_input_shapes` and
  :class:`~convspectra.nn.recording.InputSizeRecorder`: the input size each layer sees (the one
  recorder of the package, also used by the report's layer walk, the training runner and the demo).
* ``convspectra.nn.lightning.OperatorNormCallback``: the projector as a Lightning callback
  (imported separately; needs ``lightning``).

The operator of a layer is its circular (wrap-around) convolution on the spatial size of its
input, as in the paper. Importing this package imports ``torch``.

Example:
    >>> import torch
    >>> from convspectra.nn import OperatorNormProjector
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1))
    >>> projector = OperatorNormProjector(model, max_norm=1.0, every=100)
    >>> projector
    OperatorNormProjector(1 layers, every=100, method='alternating', iterations=1, steps=0, projections=0)
"""

from .estimate import operator_norm_estimate
from .layers import ConvLayer, conv_layers
from .parametrization import (
    OperatorNormConstraint,
    register_operator_norm_constraint,
    remove_operator_norm_constraint,
)
from .penalties import l1_penalty, operator_norm_penalty
from .projector import OperatorNormProjector, project_layers
from .recording import InputSizeRecorder, capture_input_shapes
from .spectral_norm import Convergence, SpectralNorm, certify, converge_spectral_norm, spectral_norm, spectral_norms

__all__ = [
    "ConvLayer",
    "Convergence",
    "InputSizeRecorder",
    "OperatorNormConstraint",
    "OperatorNormProjector",
    "SpectralNorm",
    "capture_input_shapes",
    "certify",
    "conv_layers",
    "converge_spectral_norm",
    "l1_penalty",
    "operator_norm_estimate",
    "operator_norm_penalty",
    "project_layers",
    "register_operator_norm_constraint",
    "remove_operator_norm_constraint",
    "spectral_norm",
    "spectral_norms",
]
