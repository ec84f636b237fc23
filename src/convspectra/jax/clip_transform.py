"""An optax transform that projects the conv kernels of a params pytree every ``every`` steps.

Put it last in an ``optax.chain``: its updates make ``params + updates`` the projection (see
:func:`convspectra.jax.clip_operator_norm`) of what the inner transforms would have produced. The
step count lives in the optimiser state (a NamedTuple of arrays: ``jit``-compatible and checkpointable);
the projection runs under ``lax.cond``, so no step is retraced.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ..errors import ParameterError
from .projection import clip_operator_norm

__all__ = ["ClipConvKernelsState", "ConvKernel", "clip_conv_kernels", "path_name"]


@dataclass(frozen=True)
class ConvKernel:
    """How to read one conv kernel leaf: its layer's input size and parameters (static)."""

    input_shape: tuple[int, ...]
    layout: str = "HWIO"
    stride: tuple[int, ...] | int = 1
    dilation: tuple[int, ...] | int = 1
    groups: int = 1
    transposed: bool = False
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def layer_args(self) -> dict[str, Any]:
        """The keyword arguments of :func:`convspectra.jax.clip_operator_norm` for this kernel."""
        return dict(
            layout=self.layout,
            stride=self.stride,
            dilation=self.dilation,
            groups=self.groups,
            transposed=self.transposed,
        )


class ClipConvKernelsState(NamedTuple):
    """The transform's state: the number of updates seen."""

    count: Any


def path_name(path: Sequence[Any]) -> str:
    """A pytree key path as ``"a/b/0/kernel"`` (dict keys, attribute names and indices joined by ``/``)."""
    parts = []
    for key in path:
        for attribute in ("key", "name", "idx"):
            if hasattr(key, attribute):
                parts.append(str(getattr(key, attribute)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def clip_conv_kernels(
    *, every: int, max_norm: float, kernels: Mapping[str, ConvKernel], iterations: int = 1, method: str = "alternating"
) -> Any:
    """An ``optax.GradientTransformation`` projecting the named conv kernels every ``every`` updates.

    Args:
        every: project after updates ``every``, ``2 * every``, ... (1: after every update).
        max_norm: the bound ``c`` on each conv's (wrap-around) operator norm.
        kernels: leaf path (as :func:`path_name` writes it, e.g. ``"params/Conv_0/kernel"``) to its
            :class:`ConvKernel`; :func:`convspectra.jax.find_conv_kernels` builds it from a model.
        iterations, method: as in :func:`convspectra.jax.clip_operator_norm`.

    Returns:
        The transform; ``update`` needs ``params``.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> import convspectra.jax as csj
        >>> params = {"conv": {"kernel": jnp.ones((2, 2, 1, 1))}}      # norm 4 on 4x4
        >>> tx = optax.chain(optax.sgd(0.0), csj.clip_conv_kernels(
        ...     every=1, max_norm=2.0, kernels={"conv/kernel": csj.ConvKernel((4, 4))}, iterations=50))
        >>> state = tx.init(params)
        >>> updates, state = tx.update(params, state, params)
        >>> params = optax.apply_updates(params, updates)
        >>> round(float(csj.operator_norm(params["conv"]["kernel"], 4)), 3)
        2.0
    """
    import optax

    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ParameterError(f"every: expected a positive int, got {every!r}")
    if not kernels:
        raise ParameterError("kernels: expected at least one conv kernel path, got none")

    def init(params: Any) -> ClipConvKernelsState:
        names = {path_name(path) for path, _ in jax.tree_util.tree_leaves_with_path(params)}
        missing = sorted(set(kernels) - names)
        if missing:
            raise ParameterError(f"kernels: expected paths of the params pytree, got {missing} (not in params)")
        return ClipConvKernelsState(count=jnp.zeros((), jnp.int32))

    def project(params: Any) -> Any:
        def one(path: Any, leaf: Any) -> Any:
            kernel = kernels.get(path_name(path))
            if kernel is None:
                return leaf
            return clip_operator_norm(
                leaf, kernel.input_shape, max_norm, iterations=iterations, method=method, **kernel.layer_args()
            )

        return jax.tree_util.tree_map_with_path(one, params)

    def update(updates: Any, state: ClipConvKernelsState, params: Any = None) -> tuple[Any, ClipConvKernelsState]:
        if params is None:
            raise ParameterError("params: clip_conv_kernels needs the params in update(updates, state, params)")
        count = state.count + 1
        new_params = optax.apply_updates(params, updates)

        def projected(_: Any) -> Any:
            target = project(new_params)
            return jax.tree_util.tree_map(lambda u, t, p: (u + (t - p)).astype(u.dtype), updates, target, new_params)

        updates = jax.lax.cond(count % every == 0, projected, lambda _: updates, None)
        return updates, ClipConvKernelsState(count=count)

    return optax.GradientTransformation(init, update)
