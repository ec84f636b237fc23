"""PyTorch tools to control the operator norms of convolutions during training.

* :class:`OperatorNormProjector`: attach to an optimizer; every N steps, project the selected
  convolutions onto ``{operator norm <= c}`` (the regulariser of Sedghi, Gupta & Long 2019).
* :func:`register_operator_norm_constraint` / :func:`remove_operator_norm_constraint`: a hard
  constraint at every forward pass (``torch.nn.utils.parametrize``).
* :func:`l1_penalty`, :func:`operator_norm_penalty`: loss terms (Proposition 11's bound, and a
  hinge on the exact operator norm).
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

from .layers import ConvLayer, conv_layers
from .parametrization import (
    OperatorNormConstraint,
    register_operator_norm_constraint,
    remove_operator_norm_constraint,
)
from .penalties import l1_penalty, operator_norm_penalty
from .projector import OperatorNormProjector, project_layers
from .recording import InputSizeRecorder, capture_input_shapes

__all__ = [
    "ConvLayer",
    "InputSizeRecorder",
    "OperatorNormConstraint",
    "OperatorNormProjector",
    "capture_input_shapes",
    "conv_layers",
    "l1_penalty",
    "operator_norm_penalty",
    "project_layers",
    "register_operator_norm_constraint",
    "remove_operator_norm_constraint",
]
