"""The outcome of running a spectral-norm estimate's power iteration to a fixed point.

Returned per layer by :func:`convspectra.nn.converge_spectral_norm` (PyTorch) and by the
``converge_spectral_norm_*`` helpers of :mod:`convspectra.jax` (Flax linen, nnx, Equinox).

Example:
    >>> from convspectra.convergence import Convergence
    >>> Convergence(sigma=2.5, iterations=40, residual=1e-9, converged=True).converged
    True
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Convergence"]


@dataclass(frozen=True)
class Convergence:
    """One layer's power iteration after a converge helper.

    Attributes:
        sigma: the estimate of the operator norm of the weight before normalisation.
        iterations: steps run; residual: the last step's relative change of ``v``; converged: residual <= tol.
    """

    sigma: float
    iterations: int
    residual: float
    converged: bool
