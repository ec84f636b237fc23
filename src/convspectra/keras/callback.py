"""``OperatorNormCallback``: project a Keras model's convolutions onto an operator-norm ball every N steps.

Callbacks run eagerly between train steps, so the projection runs on the host with the NumPy
engine (:func:`convspectra.clip_operator_norm_many`, layers of the same shape batched) and the
results are assigned back to the variables. Every ``Conv1D/2D/3D``, ``Conv1D/2D/3DTranspose``,
``DepthwiseConv1D/2D`` and ``SeparableConv1D/2D`` (both kernels) is projected at its recorded input
size (``layer.input``; pass ``input_shapes`` for layers of subclassed models), on the layer's
circular operator, as in the paper. On the JAX backend the trainer's state is synchronised into the
variables first (``model.jax_state_sync``), and the fit continues from the projected values.

Example:
    >>> import keras, numpy as np, convspectra as cs
    >>> from convspectra.keras import OperatorNormCallback
    >>> model = keras.Sequential([keras.Input((8, 8, 2)), keras.layers.Conv2D(4, 3, padding="same"),
    ...                           keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(1)])
    >>> model.compile("sgd", "mse")
    >>> callback = OperatorNormCallback(max_norm=0.5, every=2)
    >>> x, y = np.ones((8, 8, 8, 2), "float32"), np.ones((8, 1), "float32")
    >>> _ = model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[callback])
    >>> callback.projections
    1
    >>> kernel = keras.ops.convert_to_numpy(model.layers[0].kernel)
    >>> bool(cs.operator_norm(kernel, 8, layout="HWIO") <= 0.5 * (1 + 1e-5))
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .._checks import choice, flag, integer, norm_bounds
from ..norm import operator_norm
from ..projection import clip_operator_norm_many
from ._threads import owned_threads
from .layouts import KerasKernel, conv_kind, from_engine, layer_kernels, to_engine

try:
    from keras.callbacks import Callback
except ImportError:  # pragma: no cover - depends on the environment
    Callback = object  # type: ignore[assignment,misc]

__all__ = ["OperatorNormCallback", "conv_layers"]

ShapeLike = int | Sequence[int]


def conv_layers(model: Any) -> list[Any]:
    """Every Keras convolution layer of ``model`` (nested models included), in ``model._flatten_layers`` order.

    Example:
        >>> import keras
        >>> from convspectra.keras import conv_layers
        >>> model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3),
        ...                           keras.layers.DepthwiseConv2D(3), keras.layers.Flatten()])
        >>> [type(layer).__name__ for layer in conv_layers(model)]
        ['Conv2D', 'DepthwiseConv2D']
    """
    found = []
    seen: set[int] = set()

    def visit(layer: Any) -> None:
        if id(layer) in seen:
            return
        seen.add(id(layer))
        if conv_kind(layer) is not None:
            found.append(layer)
        for inner in getattr(layer, "layers", ()) or ():
            visit(inner)

    for layer in model.layers:
        visit(layer)
    return found


class OperatorNormCallback(Callback):
    """Project every convolution of the model after each ``every``-th optimizer step.

    Args:
        max_norm: the bound ``c > 0``, or a mapping from layer name to its bound (layers not in the
            mapping are left alone).
        every: project after each train batch at which the optimizer's step count is a multiple of it.
        input_shapes: spatial input size of every layer (an int or a tuple), or a mapping from layer name
            to it; default: recorded from ``layer.input`` when fitting starts.
        iterations, method, min_norm: as :func:`convspectra.clip_operator_norm`.
        rescale: after the iterations, multiply a kernel whose exact circular norm still exceeds its
            bound by ``bound / norm``, so that every projection leaves the bound satisfied.
        on_train_end: also project once when training ends.

    Attributes:
        projections: how many projection rounds have run.
        kernels: ``{layer name: [KerasKernel, ...]}`` of the projected layers (set when fitting starts).

    Raises:
        ParameterError, ParameterTypeError: invalid arguments; a layer without a known input size
            (when fitting starts).
    """

    def __init__(
        self,
        max_norm: float | Mapping[str, float],
        *,
        every: int = 100,
        input_shapes: ShapeLike | Mapping[str, ShapeLike] | None = None,
        iterations: int = 1,
        method: str = "alternating",
        min_norm: float | None = None,
        rescale: bool = True,
        on_train_end: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(max_norm, Mapping):
            self.max_norm: float | dict[str, float] = {
                str(name): norm_bounds(bound, min_norm)[0] for name, bound in max_norm.items()
            }
        else:
            self.max_norm = norm_bounds(max_norm, min_norm)[0]
        self.every = integer("every", every)
        self.input_shapes = input_shapes
        self.iterations = integer("iterations", iterations)
        self.method = choice("method", method, ("alternating", "dykstra"))
        self.min_norm = min_norm
        self.rescale = flag("rescale", rescale)
        self.project_at_end = flag("on_train_end", on_train_end)
        self.projections = 0
        self.kernels: dict[str, list[KerasKernel]] = {}
        self._layers: dict[str, Any] = {}

    def _bound(self, name: str) -> float | None:
        if isinstance(self.max_norm, dict):
            return self.max_norm.get(name)
        return self.max_norm

    def _shape(self, name: str) -> ShapeLike | None:
        if isinstance(self.input_shapes, Mapping):
            return self.input_shapes.get(name)
        return self.input_shapes

    def on_train_begin(self, logs: Any = None) -> None:
        """Find the layers and record their input sizes."""
        self._layers, self.kernels = {}, {}
        for layer in conv_layers(self.model):
            if self._bound(layer.name) is not None:
                self._layers[layer.name] = layer
                self.kernels[layer.name] = layer_kernels(layer, self._shape(layer.name))

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        """Project when the optimizer's step count is a multiple of ``every``."""
        step = int(np.asarray(self.model.optimizer.iterations))
        if step % self.every == 0:
            self.project()

    def on_train_end(self, logs: Any = None) -> None:
        """Project once more if ``on_train_end`` was set."""
        if self.project_at_end:
            self.project()

    def project(self) -> None:
        """One projection round of every selected kernel, assigned back to the variables."""
        with owned_threads():  # the torch backend's transfers at the library's thread limit, restored after
            self._project()

    def _project(self) -> None:
        import keras

        sync = getattr(self.model, "jax_state_sync", None)
        if sync is not None:
            sync()  # the JAX trainer keeps the live values outside the variables between steps
        jobs = []
        for name, layer in self._layers.items():
            for kernel in self.kernels[name]:
                variable = getattr(layer, kernel.attribute)
                value = keras.ops.convert_to_numpy(variable).astype(np.float64)
                jobs.append((variable, to_engine(value, kernel.depthwise), kernel, self._bound(name)))
        if not jobs:
            return
        results = clip_operator_norm_many(
            [engine for _, engine, _, _ in jobs],
            [kernel.input_shape for _, _, kernel, _ in jobs],
            [bound for *_, bound in jobs],
            min_norm=self.min_norm,
            iterations=self.iterations,
            method=self.method,
            layout="HWIO",
            stride=[kernel.stride for _, _, kernel, _ in jobs],
            dilation=[kernel.dilation for _, _, kernel, _ in jobs],
            groups=[kernel.groups for _, _, kernel, _ in jobs],
            transposed=[kernel.transposed for _, _, kernel, _ in jobs],
        )
        for (variable, _, kernel, bound), result in zip(jobs, results, strict=True):
            if self.rescale:
                norm = float(operator_norm(result, kernel.input_shape, **kernel.engine_options()))
                if norm > bound:
                    result = result * (bound / norm)
            variable.assign(from_engine(result, variable.shape).astype(keras.backend.standardize_dtype(variable.dtype)))
        self.projections += 1
