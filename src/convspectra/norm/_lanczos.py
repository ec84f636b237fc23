r"""Largest singular value of a matrix-free operator: restarted Lanczos on :math:`A^H A`.

Full reorthogonalisation within a basis of at most ``basis`` vectors (the three-term recurrence,
then one classical Gram-Schmidt pass against the whole basis, a second only when the first
cancelled much: "twice is enough"), explicit restart from the best Ritz vector. The Ritz value
:math:`\theta \le \lambda_{\max}(A^H A)` always; the residual
:math:`\|A^H A y - \theta y\| = \beta_j |e_j^T s|` bounds the distance from :math:`\theta` to an
eigenvalue, and the iteration stops when it is below ``rtol * theta`` (relative accuracy of
``rtol / 2`` in the singular value), or when the Ritz value meets a known upper bound to ``rtol``.
(An error estimate ``residual^2 / gap`` from the Ritz values stops earlier but was measured to stop
1e-4 short on clustered spectra: not used.)

Mixed precision: given ``fast``, an approximation of :math:`v \mapsto A^H A v` (the layer in
float32, twice the speed), the iteration runs on it first, as the classical Lanczos method (the
three-term recurrence alone: on large layers the reorthogonalisation against the whole basis costs
as much as the products, and for the largest eigenvalue the lost orthogonality only duplicates
converged Ritz values). Its answer is then checked with the exact products (the residual of the
Ritz vector, recomputed in full precision), and only where that check fails does the iteration go
on with the exact products and full reorthogonalisation, from that vector. Either way the stop is
decided by an exact residual or an exact value, and the value returned is :math:`\|A y\| / \|y\|`
for the final Ritz vector, computed through the exact operator: an actual Rayleigh quotient, so a
certified lower bound whatever happened.

Example:
    >>> import numpy as np
    >>> from convspectra.norm._lanczos import largest_singular_value
    >>> a = np.diag([3.0, 2.0, 1.0])
    >>> result = largest_singular_value(a.__matmul__, a.T.__matmul__, np.ones(3), rtol=1e-12, max_iter=50)
    >>> round(result.value, 12), result.converged
    (3.0, True)
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .._threads import limit_threads

__all__ = ["LanczosResult", "largest_singular_value"]

Gram = Callable[[np.ndarray], np.ndarray]
#: The smallest residual asked of the approximate products (float32 ones are good to a few 1e-7).
FAST_RTOL = 1e-6


@dataclass(frozen=True)
class LanczosResult:
    """Outcome of :func:`largest_singular_value`.

    Attributes:
        value: ``||A y|| / ||y||`` for the returned vector (a lower bound on the norm).
        vector: the unit vector ``y`` (input space, flat).
        converged: whether the residual test passed within the budget.
        iterations: operator applications of ``A^H A`` (approximate ones included).
        residual: the final relative residual ``||A^H A y - theta y|| / theta``.
        timed_out: the deadline stopped the iteration.
        fast_iterations: how many of ``iterations`` were by the approximate product ``fast``.
    """

    value: float
    vector: np.ndarray
    converged: bool
    iterations: int
    residual: float
    timed_out: bool = False
    fast_iterations: int = 0


@dataclass
class _Run:
    """One Lanczos run's outcome: the Ritz vector, its value and residual (from the recurrence)."""

    ritz: np.ndarray
    theta: float
    residual: float
    converged: bool
    iterations: int
    timed_out: bool


def _orthogonalise(w: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``w`` minus its components along the rows of ``vectors`` (one pass, a second when it cancelled)."""
    before = float(np.linalg.norm(w))
    coefficients = vectors.conj() @ w
    w = w - coefficients @ vectors
    if float(np.linalg.norm(w)) < 0.7 * before:  # cancellation: once more ("twice is enough", Kahan)
        again = vectors.conj() @ w
        w = w - again @ vectors
        coefficients = coefficients + again
    return w, coefficients


def _lanczos(
    gram: Gram,
    q: np.ndarray,
    *,
    rtol: float,
    max_iter: int,
    basis: int,
    deadline: float | None,
    closing: float,
    reorthogonalise: bool = True,
) -> _Run:
    """Restarted Lanczos with ``gram`` (``v -> A^H A v``) from the unit vector ``q``; without
    ``reorthogonalise``, the three-term recurrence alone (the classical Lanczos method)."""
    iterations, residual, theta = 0, np.inf, 0.0
    converged = timed_out = False
    coefficients, used = np.ones(1), 1
    while True:
        vectors = np.zeros((basis + 1, q.size), dtype=q.dtype)  # rows: the Lanczos vectors
        vectors[0] = q
        alphas = np.zeros(basis)
        betas = np.zeros(basis)
        for j in range(basis):
            w = gram(vectors[j]).ravel()
            iterations += 1
            alphas[j] = float(np.real(np.vdot(vectors[j], w)))
            w = w - alphas[j] * vectors[j]  # the three-term recurrence, then the whole basis
            if j > 0:
                w = w - betas[j - 1] * vectors[j - 1]
            if reorthogonalise:
                w, corrections = _orthogonalise(w, vectors[: j + 1])
                alphas[j] += float(np.real(corrections[j]))
            beta = float(np.linalg.norm(w))
            invariant = beta <= 1e-13 * max(abs(alphas[j]), np.finfo(float).tiny)  # the Krylov space is exhausted
            last = invariant or iterations >= max_iter or j == basis - 1
            if last or j % 4 == 3 or j < 12:  # the Ritz values every few steps (an eigensolve of j x j)
                tri = np.diag(alphas[: j + 1]) + np.diag(betas[:j], 1) + np.diag(betas[:j], -1)
                values, vecs = np.linalg.eigh(tri)
                theta = float(values[-1])
                residual = beta * abs(vecs[-1, -1]) / max(theta, np.finfo(float).tiny)
                coefficients, used = vecs[:, -1], j + 1
                if residual <= rtol or invariant or theta >= closing:
                    converged = True
                    break
                timed_out = deadline is not None and time.monotonic() >= deadline
                if iterations >= max_iter or timed_out:
                    break
            betas[j] = beta
            vectors[j + 1] = w / beta
        ritz = coefficients @ vectors[:used]
        ritz /= np.linalg.norm(ritz)
        if converged or timed_out or iterations >= max_iter:
            break
        q = ritz
    return _Run(ritz, theta, float(residual), converged, iterations, timed_out)


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
    fast: Gram | None = None,
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
        fast: an approximation of ``v -> A^H A v`` (flat vectors of the input's dtype) to iterate
            with first; its result is checked with the exact products (None: exact products only).

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
    basis = max(1, min(basis, q.size))
    closing = np.inf if target is None else (target * (1 - rtol)) ** 2  # theta above this: the bracket has closed

    def exact(v: np.ndarray) -> np.ndarray:
        return rmatvec(matvec(v)).ravel()

    options = dict(rtol=rtol, basis=basis, deadline=deadline, closing=closing)
    run, used = None, 0
    with limit_threads(threads):
        if fast is not None:
            rough = dict(options, rtol=max(rtol, FAST_RTOL), reorthogonalise=False)
            run = _checked(_lanczos(fast, q, max_iter=max(1, max_iter - 1), **rough), matvec, rmatvec, rtol, closing)
            used, q = run.iterations, run.ritz
        if run is None or not (run.converged or run.timed_out or used >= max_iter):
            more = _lanczos(exact, q, max_iter=max_iter - used, **options)
            run = dataclasses.replace(more, iterations=more.iterations + used)
        value = float(np.linalg.norm(matvec(run.ritz)))
    fast_iterations = 0 if fast is None else used - 1
    return LanczosResult(value, run.ritz, run.converged, run.iterations, run.residual, run.timed_out, fast_iterations)


def _checked(run: _Run, matvec: Callable, rmatvec: Callable, rtol: float, closing: float) -> _Run:
    """``run`` (by approximate products) with its value and residual recomputed by the exact ones."""
    image = matvec(run.ritz).ravel()
    theta = float(np.real(np.vdot(image, image)))
    residual = float(np.linalg.norm(rmatvec(image).ravel() - theta * run.ritz)) / max(theta, np.finfo(float).tiny)
    converged = residual <= rtol or theta >= closing
    return _Run(run.ritz, theta, residual, converged, run.iterations + 1, run.timed_out)
