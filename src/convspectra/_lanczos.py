r"""Largest singular value of a matrix-free operator: restarted Lanczos on :math:`A^H A`.

Full reorthogonalisation within a basis of at most ``basis`` vectors, explicit restart from the
best Ritz vector. The Ritz value :math:`\theta \le \lambda_{\max}(A^H A)` always; the residual
:math:`\|A^H A y - \theta y\| = \beta_j |e_j^T s|` bounds the distance from :math:`\theta` to an
eigenvalue, and the iteration stops when it is below ``rtol * theta`` (relative accuracy of
``rtol / 2`` in the singular value). The value returned is :math:`\|A y\| / \|y\|` for the final
Ritz vector, computed through the operator: an actual Rayleigh quotient, so a certified lower
bound whatever happened.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

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
    """

    value: float
    vector: np.ndarray
    converged: bool
    iterations: int
    residual: float


def largest_singular_value(
    matvec: Callable[[np.ndarray], np.ndarray],
    rmatvec: Callable[[np.ndarray], np.ndarray],
    start: np.ndarray,
    *,
    rtol: float,
    max_iter: int,
    basis: int = 40,
) -> LanczosResult:
    """Largest singular value of ``A`` (given by ``matvec``/``rmatvec`` on flat vectors)."""
    q = np.asarray(start).ravel().copy()
    norm = np.linalg.norm(q)
    if norm == 0 or not np.isfinite(norm):
        raise ValueError("start: expected a finite non-zero vector")
    q /= norm
    iterations, residual, theta = 0, np.inf, 0.0
    converged = False
    while True:
        vectors = [q]
        alphas: list[float] = []
        betas: list[float] = []
        ritz = q
        for _ in range(basis):
            w = rmatvec(matvec(vectors[-1])).ravel()
            iterations += 1
            alpha = float(np.real(np.vdot(vectors[-1], w)))
            alphas.append(alpha)
            basis_matrix = np.stack(vectors, axis=1)
            for _ in range(2):  # full reorthogonalisation, twice is enough
                w = w - basis_matrix @ (basis_matrix.conj().T @ w)
            beta = float(np.linalg.norm(w))
            tri = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
            values, vecs = np.linalg.eigh(tri)
            theta = float(values[-1])
            residual = beta * abs(vecs[-1, -1]) / max(theta, np.finfo(float).tiny)
            ritz = basis_matrix @ vecs[:, -1]
            if residual <= rtol or beta <= 1e-300:
                converged = True
                break
            if iterations >= max_iter:
                break
            betas.append(beta)
            vectors.append(w / beta)
        if converged or iterations >= max_iter:
            break
        q = ritz / np.linalg.norm(ritz)
    ritz = ritz / np.linalg.norm(ritz)
    value = float(np.linalg.norm(matvec(ritz)))
    return LanczosResult(value, ritz, converged, iterations, float(residual))
