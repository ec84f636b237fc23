r"""Spectral normalisation of an ``equinox.nn.Conv`` by the operator norm of the convolution it computes.

A drop-in for ``equinox.nn.SpectralNorm`` on conv layers (a ``StatefulLayer``:
``__init__(layer, weight_name, num_power_iterations, eps, inference, *, key)``,
``__call__(x, state, *, key, inference) -> (out, state)``), but the power iteration runs on the
layer's real operator (:mod:`convspectra.jax._power`: its padding and ``padding_mode``, stride,
dilation and groups at ``input_shape``), not on the weight reshaped into a matrix. The vectors
``(u, v)`` live in the ``equinox.nn.State`` (``u`` of the output's shape, ``v`` of the input's,
batch 1), start from a fixed seed (or ``key``) with 15 iterations at construction, and are updated
only when not ``inference``. Equinox's state is sized when the model is built, so ``input_shape``
(the spatial size of the layer's input) is required.

Example:
    >>> import jax, jax.numpy as jnp, equinox as eqx
    >>> import convspectra.jax as csj
    >>> conv = eqx.nn.Conv2d(3, 4, 3, padding=1, padding_mode="CIRCULAR", key=jax.random.key(0))
    >>> layer, state = eqx.nn.make_with_state(csj.SpectralNormEquinox)(conv, input_shape=(8, 8))
    >>> out, state = layer(jnp.ones((3, 8, 8)), state)                  # unbatched, as Equinox layers are
    >>> state, found = csj.converge_spectral_norm_equinox(layer, state)
    >>> round(float(csj.operator_norm(layer.normalized_weight(state), 8, layout="OIHW")), 4)
    1.0
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax

from ..errors import ParameterError, ParameterTypeError
from ._power import (
    FIRST_ITERATIONS,
    Convergence,
    ConvOperator,
    check_options,
    converge,
    equinox_operator,
    power_iteration,
    sigma,
    start_vectors,
    warn_unconverged,
)
from ._power import normalized_kernel as scaled_kernel

__all__ = ["SpectralNormEquinox", "converge_spectral_norm_equinox"]


class SpectralNormEquinox(eqx.nn.StatefulLayer):
    """``equinox.nn.SpectralNorm`` for an ``equinox.nn.Conv`` (``Conv1d/2d/3d``), by the true operator norm.

    Args:
        layer: the ``equinox.nn.Conv`` to normalise.
        weight_name: the attribute to normalise; only ``"weight"`` (what the layer convolves with).
        num_power_iterations: power-iteration steps per call when not ``inference`` (>= 1).
        eps: floor for the norms divided by.
        inference: the default of ``__call__``'s (no update of the state when ``True``).
        input_shape: the spatial size of the layer's input (required: the state is sized now).
        padding: ``"module"`` (the layer as it computes, zeros or circular ``padding_mode``) or
            ``"circular"`` (the wrap-around operator of the paper).
        max_norm: the target c > 0; mode: ``"normalize"`` (:math:`cW/\\sigma`) or ``"clip"``
            (:math:`W/\\max(1, \\sigma/c)`).
        key: the starting vectors' key; ``None``: a fixed one (the same on every process).
    """

    layer: eqx.nn.Conv
    uv_index: eqx.nn.StateIndex
    operator: ConvOperator = eqx.field(static=True)
    weight_name: str = eqx.field(static=True)
    num_power_iterations: int = eqx.field(static=True)
    eps: float = eqx.field(static=True)
    inference: bool
    padding: str = eqx.field(static=True)
    max_norm: float = eqx.field(static=True)
    mode: str = eqx.field(static=True)

    def __init__(
        self,
        layer: eqx.nn.Conv,
        weight_name: str = "weight",
        num_power_iterations: int = 1,
        eps: float = 1e-12,
        inference: bool = False,
        *,
        input_shape: int | Sequence[int],
        padding: str = "module",
        max_norm: float = 1.0,
        mode: str = "normalize",
        key: Any = None,
    ) -> None:
        if not isinstance(layer, eqx.nn.Conv):
            raise ParameterTypeError(
                f"layer: expected an equinox.nn.Conv (Conv1d/2d/3d), got {type(layer).__qualname__}"
            )
        if weight_name != "weight":
            raise ParameterError(f"weight_name: expected 'weight' (what the layer convolves with), got {weight_name!r}")
        check_options(num_power_iterations, eps, padding, max_norm, mode, steps_name="num_power_iterations")
        self.layer, self.weight_name, self.inference = layer, weight_name, inference
        self.num_power_iterations, self.eps = int(num_power_iterations), float(eps)
        self.padding, self.max_norm, self.mode = padding, float(max_norm), mode
        self.operator = equinox_operator(layer, input_shape, padding=padding)
        weight = layer.weight
        u, v = start_vectors(self.operator, weight.dtype, key)
        u, v, _, _ = power_iteration(self.operator, weight, u, v, FIRST_ITERATIONS, self.eps)
        self.uv_index = eqx.nn.StateIndex((u, v))

    def __call__(
        self, x: Any, state: eqx.nn.State, *, key: Any = None, inference: bool | None = None
    ) -> tuple[Any, eqx.nn.State]:
        """The layer applied to ``x`` (unbatched, ``(C, *spatial)``) with its weight normalised, and the new state."""
        if inference is None:
            inference = self.inference
        if not inference:
            u, v = state.get(self.uv_index)
            u, v, _, _ = power_iteration(self.operator, self.layer.weight, u, v, self.num_power_iterations, self.eps)
            state = state.set(self.uv_index, (u, v))
        layer = eqx.tree_at(lambda conv: conv.weight, self.layer, self.normalized_weight(state))
        return layer(x, key=key), state

    def normalized_weight(self, state: eqx.nn.State) -> Any:
        """The weight the layer computes with, from the vectors in ``state`` (no iteration)."""
        u, v = state.get(self.uv_index)
        value = sigma(self.operator, self.layer.weight, u, v)
        return scaled_kernel(self.layer.weight, value, max_norm=self.max_norm, mode=self.mode, eps=self.eps)


def converge_spectral_norm_equinox(
    model: Any, state: eqx.nn.State, *, tol: float | None = None, max_iter: int = 10000
) -> tuple[eqx.nn.State, dict[str, Convergence]]:
    """Run power iterations on every :class:`SpectralNormEquinox` of ``model`` until its vectors stop moving.

    ``tol`` and ``max_iter`` as :func:`converge_spectral_norm_nnx`; runs eagerly (not under ``jax.jit``).

    Returns:
        ``(new state, {layer path: Convergence})`` (paths as ``jax.tree_util.keystr``; ``""`` for the model itself).

    Warns:
        ConvergenceWarning: layers that did not reach ``tol`` in ``max_iter`` steps.

    Example:
        >>> import jax, equinox as eqx
        >>> import convspectra.jax as csj
        >>> conv = eqx.nn.Conv1d(2, 2, 3, key=jax.random.key(0))
        >>> layer, state = eqx.nn.make_with_state(csj.SpectralNormEquinox)(conv, input_shape=16)
        >>> state, found = csj.converge_spectral_norm_equinox(layer, state, tol=1e-4)
        >>> found[""].converged
        True
    """
    results: dict[str, Convergence] = {}
    leaves = jax.tree_util.tree_flatten_with_path(model, is_leaf=lambda node: isinstance(node, SpectralNormEquinox))[0]
    for path, node in leaves:
        if isinstance(node, SpectralNormEquinox):
            u, v = state.get(node.uv_index)
            u, v, result = converge(node.operator, node.layer.weight, u, v, tol=tol, max_iter=max_iter, eps=node.eps)
            state = state.set(node.uv_index, (u, v))
            results[jax.tree_util.keystr(path)] = result
    warn_unconverged("converge_spectral_norm_equinox", results, max_iter)
    return state, results
