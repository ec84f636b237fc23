r"""Largest singular value of a matrix-free operator: restarted Lanczos on :math:`A^H A`.

Full reorthogonalisation within a basis of at most ``basis`` vectors, explicit restart from the
best Ritz vector. The Ritz value :math:`\theta \le \lambda_{\max}(A^H A)` always; the residual
:math:`\|A^H A y - \theta y\| = \beta_j |e_j^T s|` bounds the distance from :math:`\theta` to an
eigenvalue, and the iteration stops when it is below ``rtol * theta`` (relative accuracy of
``rtol / 2`` in the singular value), or when the Ritz value meets a known upper bound to ``rtol``.
(An error estimate ``residual^2 / gap`` from the Ritz values stops earlier but was measured to stop
1e-4 short on clustered spectra: not used.) The value returned
is :math:`\|A y\| / \|y\|` for the final Ritz vector, computed through the operator: an actual
Rayleigh quotient, so a certified lower bound whatever happened.

Example:
    >>> import numpy as np
    >>> from convspectra.norm._lanczos import largest_singular_value
    >>> a = np.diag([3.0, 2.0, 1.0])
    >>> result = largest_singular_value(a.__matmul__, a.T.__matmul__, np.ones(3), rtol=1e-12, max_iter=50)
    >>> round(result.value, 12), result.converged
    (3.0, True)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .._threads import limit_threads

__all__ = ["LanczosResult", "largest_singular_value"]


@dataclass(frozen=True)
class LanczosResult:
    """Outcome of :func:`largest_singular_value`.

    Attributes:
        value: ``||A y|| / ||y||`` for the returned vector (a lower bound on the norm).
        vector: the unit vector ``y`` (input space, flat).
        converged: whether the residual test passed within the budget.
        iterations: operator applications of ``A^H A``.
        residual: the final relative residual ``||A^H A y - theta y|| / theta``.
        timed_out: the deadline stopped the iteration.
    """

    value: float
    vector: np.ndarray
    converged: bool
    iterations: int
    residual: float
    timed_out: bool = False


def largest_singular_value(
    matvec: Callable[[np.ndarray], np.ndarray],
    rmatvec: Callable[[np.ndarray], np.ndarray],
    start: np.ndarray,
    *,
    rtol: float,
    max_iter: int,
    basis: int = 40,
    deadline: float | None = None,
    target: float | None = None,
    threads: int = 1,
) -> LanczosResult:
    """Largest singular value of ``A`` (given by ``matvec``/``rmatvec`` on flat vectors).

    Args:
        matvec, rmatvec: ``x -> A x`` and ``y -> A^H y`` on flat vectors.
        start: the starting vector (any shape; flattened).
        rtol: the relative residual at which the iteration stops.
        max_iter: the most products with ``A^H A``.
        basis: the most Lanczos vectors kept before a restart.
        deadline: a :func:`time.monotonic` reading after which the iteration stops at its next
            Ritz check, unconverged (None: no deadline).
        target: a known upper bound on the norm: the iteration also stops (converged) when the
            Ritz value's square root is within ``rtol`` of it (None: the residual test only).
        threads: BLAS threads for the products and the vector operations.

    Returns:
        The :class:`LanczosResult`; ``converged`` is False when ``max_iter`` or the deadline was
        reached first (``timed_out`` says which).

    Raises:
        ValueError: ``start`` is zero or not finite.
    """
    q = np.asarray(start).ravel().copy()
    norm = np.linalg.norm(q)
    if norm == 0 or not np.isfinite(norm):
        raise ValueError("start: expected a finite non-zero vector")
    q /= norm
    iterations, residual = 0, np.inf
    converged = timed_out = False
    basis = max(1, min(basis, q.size))
    closing = np.inf if target is None else (target * (1 - rtol)) ** 2  # theta above this: the bracket has closed
    with limit_threads(threads):
        while True:
            vectors = np.zeros((basis + 1, q.size), dtype=q.dtype)  # rows: the Lanczos vectors
            vectors[0] = q
            alphas = np.zeros(basis)
            betas = np.zeros(basis)
            ritz = q
            for j in range(basis):
                w = rmatvec(matvec(vectors[j])).ravel()
                iterations += 1
                alphas[j] = float(np.real(np.vdot(vectors[j], w)))
                before = float(np.linalg.norm(w))
                w = w - (vectors[: j + 1].conj() @ w) @ vectors[: j + 1]  # full reorthogonalisation
                beta = float(np.linalg.norm(w))
                if beta < 0.7 * before:  # cancellation: once more ("twice is enough", Kahan)
                    w = w - (vectors[: j + 1].conj() @ w) @ vectors[: j + 1]
                    beta = float(np.linalg.norm(w))
                invariant = beta <= 1e-13 * max(abs(alphas[j]), np.finfo(float).tiny)  # the Krylov space is exhausted
                last = invariant or iterations >= max_iter or j == basis - 1
                if last or j % 4 == 3 or j < 12:  # the Ritz values every few steps (an eigensolve of j x j)
                    tri = np.diag(alphas[: j + 1]) + np.diag(betas[:j], 1) + np.diag(betas[:j], -1)
                    values, vecs = np.linalg.eigh(tri)
                    theta = float(values[-1])
                    residual = beta * abs(vecs[-1, -1]) / max(theta, np.finfo(float).tiny)
                    ritz = vecs[:, -1] @ vectors[: j + 1]
                    if residual <= rtol or invariant or theta >= closing:
                        converged = True
                        break
                    timed_out = deadline is not None and time.monotonic() >= deadline
                    if iterations >= max_iter or timed_out:
                        break
                betas[j] = beta
                vectors[j + 1] = w / beta
            if converged or timed_out or iterations >= max_iter:
                break
            q = ritz / np.linalg.norm(ritz)
        ritz = ritz / np.linalg.norm(ritz)
        value = float(np.linalg.norm(matvec(ritz)))
    return LanczosResult(value, ritz, converged, iterations, float(residual), timed_out)
