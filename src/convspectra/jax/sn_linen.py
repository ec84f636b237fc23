r"""Spectral normalisation of a ``flax.linen.Conv`` by the operator norm of the convolution it computes.

A drop-in for ``flax.linen.SpectralNorm`` on conv layers (the same attributes ``layer_instance``,
``n_steps``, ``epsilon``, ``collection_name`` and call ``__call__(x, *, update_stats)``), but the
power iteration runs on the layer's real operator (:mod:`convspectra.jax._power`: its padding,
strides, dilations and feature groups at the input's size), not on the kernel reshaped into a
matrix. The vectors ``u`` (output shape) and ``v`` (input shape, batch 1) and the estimate
``sigma`` live in the ``"batch_stats"`` collection (``collection_name``); they are created at
``init`` (fixed-seed start, 15 iterations) at the size of the input seen then (or
``input_shape``) and updated by ``n_steps`` iterations per call with ``update_stats=True`` only.
:math:`\sigma = \langle u, A v\rangle` is computed with the kernel traced, so gradients flow through it.

Example:
    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> import convspectra.jax as csj
    >>> layer = csj.SpectralNormLinen(nn.Conv(4, (3, 3), strides=2), padding="circular")
    >>> x = jnp.ones((2, 8, 8, 3))
    >>> variables = layer.init(jax.random.key(0), x, update_stats=False)
    >>> jax.tree.map(jnp.shape, variables["batch_stats"])
    {'sigma': (), 'u': (1, 4, 4, 4), 'v': (1, 8, 8, 3)}
    >>> variables, found = csj.converge_spectral_norm_linen(layer, variables, x, update_stats=False)
    >>> kernel = layer.apply(variables, method=lambda m: m.normalized_kernel())
    >>> round(float(csj.operator_norm(kernel, 8, stride=2)), 4)    # the exact norm of the wrap-around operator
    1.0
"""

from __future__ import annotations

import contextvars
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ..errors import ParameterTypeError
from ._power import (
    FIRST_ITERATIONS,
    Convergence,
    ConvOperator,
    check_options,
    converge,
    flax_operator,
    power_iteration,
    sigma,
    start_vectors,
    warn_unconverged,
)
from ._power import (
    normalized_kernel as scaled_kernel,
)

__all__ = ["SpectralNormLinen", "converge_spectral_norm_linen"]

# Set by converge_spectral_norm_linen for the duration of one apply: (tol, max_iter, results).
_CONVERGING: contextvars.ContextVar[tuple[Any, int, dict[str, Convergence]] | None] = contextvars.ContextVar(
    "convspectra_sn_linen", default=None
)


class SpectralNormLinen(nn.Module):
    """``flax.linen.SpectralNorm`` for a ``flax.linen.Conv``, by the true operator norm.

    Attributes:
        layer_instance: the ``flax.linen.Conv`` to normalise (1-3 spatial axes).
        n_steps: power-iteration steps per call with ``update_stats=True`` (>= 1).
        epsilon: floor for the norms divided by.
        padding: ``"module"``: the layer as it computes (``"SAME"``, ``"VALID"``, explicit pairs,
            ``"CIRCULAR"``, ``"CAUSAL"``); ``"circular"``: the wrap-around operator of the paper.
        max_norm: the target c > 0.
        mode: ``"normalize"`` (:math:`cW/\\sigma`) or ``"clip"`` (:math:`W/\\max(1, \\sigma/c)`).
        collection_name: where ``u``, ``v`` and ``sigma`` are kept (``"batch_stats"``).
        input_shape: the spatial size the vectors have; ``None``: the input's at ``init``. Calls at
            other sizes are normalised with the recorded one.
    """

    layer_instance: nn.Module
    n_steps: int = 1
    epsilon: float = 1e-12
    padding: str = "module"
    max_norm: float = 1.0
    mode: str = "normalize"
    collection_name: str = "batch_stats"
    input_shape: int | Sequence[int] | None = None

    def _operator(self, x: Any, kernel: Any) -> ConvOperator:
        ndim = kernel.ndim - 2
        if self.has_variable(self.collection_name, "v"):
            spatial = self.get_variable(self.collection_name, "v").shape[1:-1]
        elif self.input_shape is not None:
            spatial = self.input_shape
        else:
            spatial = x.shape[-ndim - 1 : -1]
        in_features = kernel.shape[-2] * int(self.layer_instance.feature_group_count)
        return flax_operator(self.layer_instance, spatial, in_features=in_features, padding=self.padding)

    def _normalize(self, x: Any, kernel: Any, update_stats: bool) -> Any:
        mask = getattr(self.layer_instance, "mask", None)
        effective = kernel if mask is None else kernel * mask
        op = self._operator(x, kernel)
        name = self.collection_name

        start: tuple[Any, ...] = (None, None)
        if not self.has_variable(name, "v"):  # init: the fixed-seed start and 15 iterations
            start = power_iteration(op, effective, *start_vectors(op, kernel.dtype), FIRST_ITERATIONS, self.epsilon)
        u_var = self.variable(name, "u", lambda: start[0])
        v_var = self.variable(name, "v", lambda: start[1])
        sigma_var = self.variable(name, "sigma", lambda: sigma(op, effective, u_var.value, v_var.value))
        converging = _CONVERGING.get()
        if converging is not None:
            tol, max_iter, results = converging
            u, v, result = converge(
                op, effective, u_var.value, v_var.value, tol=tol, max_iter=max_iter, eps=self.epsilon
            )
            results["/".join(self.scope.path)] = result
            u_var.value, v_var.value = u, v
        elif update_stats and not self.is_initializing():
            u, v, _, _ = power_iteration(op, effective, u_var.value, v_var.value, self.n_steps, self.epsilon)
            u_var.value, v_var.value = u, v
        value = sigma(op, effective, u_var.value, v_var.value)
        if converging is not None or (update_stats and not self.is_initializing()):
            sigma_var.value = value.astype(sigma_var.value.dtype)
        return scaled_kernel(kernel, value, max_norm=self.max_norm, mode=self.mode, eps=self.epsilon)

    @nn.compact
    def __call__(self, x: Any, *, update_stats: bool) -> Any:
        """The layer applied to ``x`` with its kernel normalised (``update_stats``: iterate ``n_steps`` first)."""
        check_options(self.n_steps, self.epsilon, self.padding, self.max_norm, self.mode, steps_name="n_steps")
        if type(self.layer_instance) is not nn.Conv:
            raise ParameterTypeError(
                f"layer_instance: expected a flax.linen.Conv, got {type(self.layer_instance).__qualname__}"
            )

        def transform(variables: Any) -> Any:
            params = variables.get("params", {})
            if "kernel" not in params:  # the first pass of init creates the kernel
                return variables
            kernel = self._normalize(x, jnp.asarray(params["kernel"]), update_stats)
            return {**variables, "params": {**params, "kernel": kernel}}

        # The kernel is read through the transform, never written back (the parameters stay the originals).
        return nn.map_variables(
            lambda layer: layer(x),
            mapped_collections="params",
            trans_in_fn=transform,
            init=self.is_initializing(),
            mutable=False,
        )(self.layer_instance)

    def normalized_kernel(self) -> Any:
        """The kernel the layer computes with, from the stored vectors (no iteration); use with ``method=``."""
        kernel = jnp.asarray(self.layer_instance.variables["params"]["kernel"])
        mask = getattr(self.layer_instance, "mask", None)
        effective = kernel if mask is None else kernel * mask
        u, v = (self.get_variable(self.collection_name, name) for name in ("u", "v"))
        value = sigma(self._operator(None, kernel), effective, u, v)
        return scaled_kernel(kernel, value, max_norm=self.max_norm, mode=self.mode, eps=self.epsilon)


def converge_spectral_norm_linen(
    module: nn.Module, variables: Any, *args: Any, tol: float | None = None, max_iter: int = 10000, **kwargs: Any
) -> tuple[Any, dict[str, Convergence]]:
    """Run power iterations on every :class:`SpectralNormLinen` that ``module.apply(variables, *args, **kwargs)``
    calls until its vectors stop moving; returns the updated ``variables`` and ``{module path: Convergence}``.

    Runs eagerly (not under ``jax.jit``: it decides when to stop), whatever ``update_stats`` the
    call passes; ``tol`` and ``max_iter`` as :func:`converge_spectral_norm_nnx`.

    Warns:
        ConvergenceWarning: layers that did not reach ``tol`` in ``max_iter`` steps.

    Example:
        >>> import jax, jax.numpy as jnp, flax.linen as nn
        >>> import convspectra.jax as csj
        >>> layer = csj.SpectralNormLinen(nn.Conv(2, (3,), padding="CIRCULAR"))
        >>> x = jnp.ones((1, 16, 2))
        >>> variables = layer.init(jax.random.key(0), x, update_stats=False)
        >>> variables, found = csj.converge_spectral_norm_linen(layer, variables, x, update_stats=False, tol=1e-4)
        >>> [(name, result.converged) for name, result in found.items()]
        [('', True)]
    """
    results: dict[str, Convergence] = {}
    token = _CONVERGING.set((tol, max_iter, results))
    try:
        mutable = sorted({str(name) for name in variables} - {"params"} | {"batch_stats"})
        _, updates = module.apply(variables, *args, mutable=mutable, **kwargs)
    finally:
        _CONVERGING.reset(token)
    warn_unconverged("converge_spectral_norm_linen", results, max_iter)
    return {**variables, **updates}, results
