"""Keras 3: operator-norm constraint and callback for convolution layers, on every Keras backend.

* :class:`OperatorNormConstraint`: a ``kernel_constraint`` / ``depthwise_constraint`` written in
  ``keras.ops`` (:mod:`convspectra.keras.clip`), so it runs inside a compiled ``model.fit``;
* :class:`OperatorNormCallback`: every N steps, the NumPy engine projects every convolution of the
  model at its recorded input size and the results are assigned back;
* :mod:`convspectra.keras.layouts`: Keras kernel layouts described for the engine (``Conv*D`` are
  ``"HWIO"``; depthwise ``(k..., C, multiplier)`` is ``(k..., 1, C * multiplier)`` with ``groups=C``;
  ``Conv*DTranspose`` is ``"HWIO"`` with ``transposed=True``).

Needs ``keras>=3`` (``pip install "convspectra[keras]"``) and a backend (``KERAS_BACKEND`` =
``jax``, ``torch`` or ``tensorflow``, chosen before Keras is first imported). ``import convspectra``
does not import Keras; this package does.

Example:
    >>> import keras, numpy as np, convspectra as cs
    >>> from convspectra.keras.layouts import layer_kernels, to_engine
    >>> layer = keras.layers.DepthwiseConv2D(3, depth_multiplier=2)
    >>> layer.build((None, 8, 8, 4))
    >>> (info,) = layer_kernels(layer, 8)
    >>> kernel = to_engine(keras.ops.convert_to_numpy(layer.kernel), info.depthwise)
    >>> cs.singular_values(kernel, 8, **info.engine_options()).shape   # 4 channels x 64 positions
    (256,)
"""

from .callback import OperatorNormCallback, conv_layers
from .constraint import KINDS, OperatorNormConstraint
from .layouts import KerasKernel, layer_input_shape, layer_kernels

__all__ = [
    "KINDS",
    "KerasKernel",
    "OperatorNormCallback",
    "OperatorNormConstraint",
    "conv_layers",
    "layer_input_shape",
    "layer_kernels",
]
