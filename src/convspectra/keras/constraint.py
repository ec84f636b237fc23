"""``OperatorNormConstraint``: a Keras ``kernel_constraint`` that projects onto an operator-norm ball.

Keras applies a variable's constraint after every optimizer step, inside the compiled train step
(``model.fit`` with ``jit_compile`` on, the JAX backend's default). The projection is therefore
written in ``keras.ops`` (:mod:`convspectra.keras.clip`): no NumPy, no host callback, traceable on
every backend. The layer's geometry is not visible to a constraint (it receives the variable only),
so it is given here: the input size, the stride, dilation and groups, and what kind of kernel it is.

Example:
    >>> import keras, numpy as np, convspectra as cs
    >>> from convspectra.keras import OperatorNormConstraint
    >>> constraint = OperatorNormConstraint(1.0, (8, 8), stride=2)
    >>> layer = keras.layers.Conv2D(8, 3, strides=2, padding="same", kernel_constraint=constraint)
    >>> layer.build((None, 8, 8, 4))
    >>> projected = keras.ops.convert_to_numpy(constraint(layer.kernel))
    >>> float(cs.operator_norm(projected, 8, layout="HWIO", stride=2)) <= 1.0 + 1e-5
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .._checks import choice, flag, integer, norm_bounds
from ._threads import owned_threads
from .clip import CircularPlan, clip_kernel
from .layouts import from_engine, to_engine

try:
    from keras.constraints import Constraint
except ImportError:  # pragma: no cover - depends on the environment
    Constraint = object  # type: ignore[assignment,misc]

__all__ = ["KINDS", "OperatorNormConstraint"]

#: The kernels a constraint can be attached to: ``kernel_constraint`` of ``Conv1D/2D/3D`` ("conv"),
#: ``depthwise_constraint`` of ``DepthwiseConv1D/2D`` and ``SeparableConv1D/2D`` ("depthwise"),
#: ``pointwise_constraint`` of ``SeparableConv1D/2D`` ("conv", stride 1), ``kernel_constraint`` of
#: ``Conv1D/2D/3DTranspose`` ("transpose").
KINDS = ("conv", "depthwise", "transpose")


class OperatorNormConstraint(Constraint):
    """Keep a convolution kernel's circular operator norm on ``input_shape`` at most ``max_norm``.

    Each call runs ``iterations`` rounds of the paper's projection (clip every frequency's singular
    values at ``max_norm``, restore the kernel's support) and, with ``rescale`` (the default), scales
    the result by ``min(1, max_norm / sigma_max)`` so that the constraint holds exactly (to the
    rounding of the variable's dtype). It equals :func:`convspectra.clip_operator_norm` with
    ``method="alternating"`` (followed by the rescaling).

    Args:
        max_norm: the bound ``c > 0``.
        input_shape: spatial size of the layer's input (an int or one per axis); for a transposed layer
            its own input.
        stride, dilation, groups: the layer's ``strides``, ``dilation_rate`` and ``groups``.
        kind: ``"conv"``, ``"depthwise"`` (a ``(k..., C, multiplier)`` kernel, ``groups = C``) or
            ``"transpose"`` (see :data:`KINDS`).
        iterations: projection rounds per call (at least 1).
        rescale: finish with the rescaling above.
        max_memory: byte budget of the tables and the per-frequency matrices (default 4 GiB), checked when
            the constraint first sees its kernel's shape.

    Raises:
        ParameterError, ParameterTypeError: a bad bound, shape, kind or option (at creation), or a layer
            description the kernel does not fit (at the first call).
        MemoryBudgetError: the estimate exceeds ``max_memory`` (at the first call).
    """

    def __init__(
        self,
        max_norm: float,
        input_shape: int | Sequence[int],
        *,
        stride: int | Sequence[int] = 1,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        kind: str = "conv",
        iterations: int = 1,
        rescale: bool = True,
        max_memory: int | None = None,
    ) -> None:
        self.max_norm, _ = norm_bounds(max_norm, None)
        self.input_shape = input_shape if isinstance(input_shape, int) else tuple(input_shape)
        self.stride, self.dilation, self.groups = stride, dilation, integer("groups", groups)
        self.kind = choice("kind", kind, KINDS)
        self.iterations = integer("iterations", iterations)
        self.rescale = flag("rescale", rescale)
        self.max_memory = max_memory
        self._plans: dict[tuple[int, ...], CircularPlan] = {}

    def plan(self, shape: Sequence[int]) -> CircularPlan:
        """The :class:`~convspectra.keras.clip.CircularPlan` of a kernel of this (Keras) shape, built once."""
        shape = tuple(int(size) for size in shape)
        if shape not in self._plans:
            depthwise = self.kind == "depthwise"
            engine_shape = (*shape[:-2], 1, shape[-2] * shape[-1]) if depthwise else shape
            self._plans[shape] = CircularPlan.create(
                engine_shape,
                self.input_shape,
                stride=self.stride,
                dilation=self.dilation,
                groups=shape[-2] if depthwise else self.groups,
                transposed=self.kind == "transpose",
                max_memory=self.max_memory,
            )
        return self._plans[shape]

    def __call__(self, w: Any) -> Any:
        """The projected kernel (same shape and dtype as ``w``)."""
        plan = self.plan(w.shape)
        with owned_threads():  # the torch backend's ops at the library's thread limit, restored after
            engine = to_engine(w, self.kind == "depthwise")
            clipped = clip_kernel(engine, plan, self.max_norm, iterations=self.iterations, rescale=self.rescale)
            return from_engine(clipped, w.shape)

    def get_config(self) -> dict[str, Any]:
        """The constructor's arguments (Keras serialisation)."""
        return {
            "max_norm": self.max_norm,
            "input_shape": self.input_shape,
            "stride": self.stride,
            "dilation": self.dilation,
            "groups": self.groups,
            "kind": self.kind,
            "iterations": self.iterations,
            "rescale": self.rescale,
            "max_memory": self.max_memory,
        }
