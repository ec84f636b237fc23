r"""Spectral normalisation of a ``flax.nnx.Conv`` by the operator norm of the convolution it computes.

A drop-in for ``flax.nnx.SpectralNorm`` on conv layers (``layer_instance``, ``n_steps``,
``epsilon``, ``update_stats``; ``.train()``/``.eval()`` switch the updates on and off), but the
power iteration runs on the layer's real operator (:mod:`convspectra.jax._power`) and the
layer's parameter is never overwritten: each call applies the layer with the normalised kernel.
The vectors ``u`` (output shape), ``v`` (input shape, batch 1) and the estimate ``sigma`` are
``nnx.BatchStat`` variables, created from a fixed-seed start with 15 iterations when the input
size is known: at construction with ``input_shape``, else on the first call (make that call
outside ``nnx.jit``, or pass ``input_shape``).

Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> import convspectra.jax as csj
    >>> conv = nnx.Conv(3, 4, (3, 3), padding="CIRCULAR", rngs=nnx.Rngs(0))
    >>> layer = csj.SpectralNormNNX(conv, input_shape=(8, 8))
    >>> layer.v.shape, layer.u.shape
    ((1, 8, 8, 3), (1, 8, 8, 4))
    >>> _ = csj.converge_spectral_norm_nnx(layer)
    >>> round(float(csj.operator_norm(layer.normalized_kernel(), 8)), 4)  # circular padding: the exact norm
    1.0
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
from flax import nnx

from ..errors import ConvSpectraError, ParameterTypeError
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
from ._power import normalized_kernel as scaled_kernel

__all__ = ["SpectralNormNNX", "converge_spectral_norm_nnx"]


class SpectralNormNNX(nnx.Module):
    """``flax.nnx.SpectralNorm`` for a ``flax.nnx.Conv``, by the true operator norm.

    Args:
        layer_instance: the ``flax.nnx.Conv`` to normalise (1-3 spatial axes).
        n_steps: power-iteration steps per call with updates on (>= 1).
        epsilon: floor for the norms divided by.
        padding: ``"module"`` (the layer as it computes) or ``"circular"`` (the wrap-around operator).
        max_norm: the target c > 0; mode: ``"normalize"`` (:math:`cW/\\sigma`) or ``"clip"``
            (:math:`W/\\max(1, \\sigma/c)`).
        input_shape: the input's spatial size; ``None``: the first call's (calls at other sizes
            are normalised with the recorded one).
        update_stats: the default of ``__call__``'s (``.eval()`` turns it off, ``.train()`` on).
        rngs: accepted for ``flax.nnx.SpectralNorm``'s signature and unused (the start is fixed-seed).
    """

    def __init__(
        self,
        layer_instance: nnx.Module,
        *,
        n_steps: int = 1,
        epsilon: float = 1e-12,
        padding: str = "module",
        max_norm: float = 1.0,
        mode: str = "normalize",
        input_shape: int | Sequence[int] | None = None,
        update_stats: bool = True,
        rngs: nnx.Rngs | None = None,
    ) -> None:
        if type(layer_instance) is not nnx.Conv:
            raise ParameterTypeError(
                f"layer_instance: expected a flax.nnx.Conv, got {type(layer_instance).__qualname__}"
            )
        check_options(n_steps, epsilon, padding, max_norm, mode, steps_name="n_steps")
        self.layer_instance = layer_instance
        self.n_steps, self.epsilon, self.padding = int(n_steps), float(epsilon), padding
        self.max_norm, self.mode = float(max_norm), mode
        self.use_running_average = not update_stats  # what .train() / .eval() set
        self.u: nnx.BatchStat | None = nnx.data(None)  # data attributes: variables once the size is known
        self.v: nnx.BatchStat | None = nnx.data(None)
        self.sigma: nnx.BatchStat | None = nnx.data(None)
        if input_shape is not None:
            self._start(input_shape)

    def _effective(self) -> tuple[Any, Any]:
        kernel = self.layer_instance.kernel[...]
        mask = self.layer_instance.mask
        return kernel, (kernel if mask is None else kernel * mask)

    @property
    def operator(self) -> ConvOperator | None:
        """The layer's operator at the recorded input size (``None`` before it is known)."""
        if self.v is None:
            return None
        spatial = self.v.shape[1:-1]
        return flax_operator(self.layer_instance, spatial, padding=self.padding)

    def _start(self, input_shape: Any) -> None:
        op = flax_operator(self.layer_instance, input_shape, padding=self.padding)
        kernel, effective = self._effective()
        u, v, value, _ = power_iteration(
            op, effective, *start_vectors(op, kernel.dtype), FIRST_ITERATIONS, self.epsilon
        )
        self.u, self.v, self.sigma = nnx.BatchStat(u), nnx.BatchStat(v), nnx.BatchStat(value)

    def __call__(self, x: Any, update_stats: bool | None = None) -> Any:
        """The layer applied to ``x`` with its kernel normalised (``update_stats``: iterate first; default
        ``not self.use_running_average``)."""
        if update_stats is None:
            update_stats = not self.use_running_average
        if self.v is None:
            ndim = self.layer_instance.kernel.ndim - 2
            self._start(tuple(x.shape[-ndim - 1 : -1]))
        if update_stats:
            _, effective = self._effective()
            u, v, _, _ = power_iteration(self.operator, effective, self.u[...], self.v[...], self.n_steps, self.epsilon)
            self.u[...], self.v[...] = u, v
        kernel = self.normalized_kernel(update_sigma=bool(update_stats))
        graphdef, state = nnx.split(self.layer_instance)
        state["kernel"] = nnx.Param(kernel)  # a copy of the layer with the normalised kernel; the original stays
        return nnx.merge(graphdef, state)(x)

    def normalized_kernel(self, *, update_sigma: bool = False) -> Any:
        """The kernel the layer computes with, from the current vectors (no iteration)."""
        if self.v is None:
            raise ConvSpectraError(
                "input_shape: the input size of this layer is not known yet; call it once or pass input_shape"
            )
        kernel, effective = self._effective()
        value = sigma(self.operator, effective, self.u[...], self.v[...])
        if update_sigma:
            self.sigma[...] = value.astype(self.sigma.dtype)
        return scaled_kernel(kernel, value, max_norm=self.max_norm, mode=self.mode, eps=self.epsilon)


def converge_spectral_norm_nnx(
    model: nnx.Module, *, tol: float | None = None, max_iter: int = 10000
) -> dict[str, Convergence]:
    r"""Run power iterations on every :class:`SpectralNormNNX` of ``model`` until its vectors stop moving.

    A layer stops when :math:`\|A^T u - \sigma v\| / \sigma \le` ``tol`` (sigma is then correct
    to about tol² sigma when the top singular value is separated) or after ``max_iter`` steps.
    ``tol=None``: the kernel dtype's machine epsilon to the power 2/3 (2.4e-5 in float32, 3.7e-11
    in float64). Runs eagerly (not under ``nnx.jit``), whatever the train/eval mode. Layers whose
    input size is not known yet are skipped.

    Returns:
        ``{layer path ("block/conv"): Convergence}``.

    Warns:
        ConvergenceWarning: layers that did not reach ``tol`` in ``max_iter`` steps.

    Example:
        >>> from flax import nnx
        >>> import convspectra.jax as csj
        >>> layer = csj.SpectralNormNNX(nnx.Conv(2, 2, (3,), rngs=nnx.Rngs(0)), input_shape=16)
        >>> csj.converge_spectral_norm_nnx(layer, tol=1e-4)[""].converged
        True
    """
    results: dict[str, Convergence] = {}
    for path, node in nnx.iter_graph(model):
        if isinstance(node, SpectralNormNNX) and node.v is not None:
            _, effective = node._effective()
            u, v, result = converge(
                node.operator, effective, node.u[...], node.v[...], tol=tol, max_iter=max_iter, eps=node.epsilon
            )
            node.u[...], node.v[...] = u, v
            node.sigma[...] = jnp.asarray(result.sigma, node.sigma.dtype)
            results["/".join(str(p) for p in path)] = result
    warn_unconverged("converge_spectral_norm_nnx", results, max_iter)
    return results
