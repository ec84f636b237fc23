r"""Largest singular values of transfer matrices at given frequencies, with cheap filters.

The branch and bound (:mod:`convspectra.norm._circular`) needs :math:`\sigma_{\max}(T(g))` at
many frequencies, and often only to know whether it beats the best value found so far (the
*floor*). Matrices that provably cannot are settled by upper bounds that cost matrix products:
the Frobenius norm, then Gram iteration (Delattre et al. 2023),
:math:`\sigma \le \|G^{2^k}\|_F^{1/2^{k+1}}` for :math:`G = M^H M`; only the survivors are
decomposed. The exact value is :math:`\sqrt{\lambda_{\max}(G)}` of the smaller Gram matrix
(LAPACK ``heevd``, values only; the top eigenvalue of a Hermitian matrix has relative accuracy
~eps, so the top singular value too, unlike the small ones). Measured single-threaded against the
SVD's values (``gesdd``): 1.1x faster on square 512x512 complex matrices, 2.2-3x on rectangular
ones (512x2048, 2048x512, 64x12), with agreement to 2e-15.

Example:
    >>> import numpy as np
    >>> from convspectra.norm._sigma import sigma_max
    >>> sigma_max(np.array([[[3.0, 0.0], [0.0, 1.0]], [[0.0, 2.0], [0.0, 0.0]]]))
    array([3., 2.])
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache
from typing import Any

import numpy as np

from .._threads import run_chunks
from ..transfer import FrequencyPlan

__all__ = [
    "gram_bound",
    "herk_routine",
    "lower_gram",
    "sigma_max",
    "sigma_max_at",
    "squared_norms",
    "top_singular_values",
]

#: Bytes of transfer matrices per chunk of a batch.
_CHUNK_BYTES = 8 * 2**20
#: Gram-iteration steps tried before the eigensolver when a floor is given.
_GRAM_STEPS = 3


def squared_norms(matrices: np.ndarray) -> np.ndarray:
    """``(B,)`` squared Frobenius norms of contiguous ``(B, p, q)`` matrices, without copies."""
    flat = matrices.reshape(len(matrices), -1)
    if np.iscomplexobj(flat):
        flat = flat.view(np.float64 if flat.dtype == np.complex128 else np.float32)
    return np.einsum("bk,bk->b", flat, flat)


def gram_bound(matrices: np.ndarray) -> np.ndarray:
    """``(B,)`` upper bounds on the spectral norms: ``||M^H M||_F^(1/2)``."""
    matrices = np.ascontiguousarray(matrices)
    p, q = matrices.shape[1:]
    herm = np.ascontiguousarray(np.swapaxes(matrices, 1, 2).conj())
    gram = matrices @ herm if p <= q else herm @ matrices
    return np.sqrt(np.sqrt(squared_norms(gram)))


@cache
def herk_routine(dtype: type) -> Callable[..., Any] | None:
    """SciPy's BLAS ``herk`` for ``dtype`` (complex), or None without SciPy.

    Call it once before entering a thread limit, so that SciPy's own BLAS is loaded, and limited, too.
    """
    try:
        from scipy.linalg.blas import get_blas_funcs
    except ImportError:  # SciPy is optional: a full matmul then
        return None
    return get_blas_funcs("herk", dtype=np.dtype(dtype))


def lower_gram(matrices: np.ndarray) -> np.ndarray:
    """The smaller Gram matrix of each of ``(B, p, q)`` complex matrices, or its conjugate (the same
    eigenvalues, the same definiteness); only the lower triangle is meaningful.

    With SciPy, one BLAS ``herk`` per matrix (half the products of a ``matmul``); else a ``matmul``.
    """
    p, q = matrices.shape[1:]
    herk = herk_routine(matrices.dtype.type) if matrices.dtype in (np.complex64, np.complex128) else None
    if herk is None:
        herm = np.ascontiguousarray(np.swapaxes(matrices, 1, 2).conj())
        return matrices @ herm if p <= q else herm @ matrices
    matrices = np.ascontiguousarray(matrices)
    trans = 2 if p <= q else 0  # on the Fortran-ordered view M.T: A^H A = conj(M M^H), A A^H = conj(M^H M)
    out = np.empty((len(matrices), min(p, q), min(p, q)), dtype=matrices.dtype)
    for index, matrix in enumerate(matrices):
        out[index] = herk(1.0, matrix.T, trans=trans, lower=1)
    return out


def top_singular_values(matrices: np.ndarray) -> np.ndarray:
    """``(B,)`` largest singular value of each of ``(B, p, q)`` matrices: ``sqrt(lambda_max(M M^H))``
    with the smaller Gram matrix (see the module docstring).

    Example:
        >>> import numpy as np
        >>> from convspectra.norm._sigma import top_singular_values
        >>> m = np.random.default_rng(0).normal(size=(3, 5, 2))
        >>> bool(np.allclose(top_singular_values(m), np.linalg.svd(m, compute_uv=False)[:, 0], rtol=1e-14))
        True
    """
    p, q = matrices.shape[1:]
    herm = np.ascontiguousarray(np.swapaxes(matrices, 1, 2).conj())
    gram = matrices @ herm if p <= q else herm @ matrices
    return np.sqrt(np.maximum(np.linalg.eigvalsh(gram)[:, -1], 0.0))


def sigma_max(matrices: np.ndarray, floor: float = -np.inf) -> np.ndarray:
    """Largest singular value of each of ``(B, p, q)`` matrices (:func:`top_singular_values`).

    With a finite ``floor``, matrices that provably cannot exceed it are settled by cheap upper
    bounds and skip the eigensolver (their returned value is that bound, itself at most
    ``floor``): the Frobenius norm, then Gram iteration, each step one matrix product,
    renormalised, the scale kept as a logarithm.
    """
    p, q = matrices.shape[1:]
    if not np.isfinite(floor) and min(p, q) > 1:
        return top_singular_values(matrices)
    matrices = np.ascontiguousarray(matrices)
    frobenius = np.sqrt(squared_norms(matrices))
    if min(p, q) == 1:
        return frobenius
    result = frobenius.copy()
    todo = np.flatnonzero(frobenius > floor)
    if not len(todo):
        return result
    if np.isfinite(floor) and len(todo) < 0.9 * len(matrices):  # the Frobenius norm pruned: a peaked spectrum
        part = matrices[todo]
        herm = np.ascontiguousarray(np.swapaxes(part, 1, 2).conj())
        gram = part @ herm if p <= q else herm @ part
        log_floor = np.log(floor) if floor > 0 else -np.inf
        current, log_scale, power = gram, np.zeros(len(todo)), 1  # G^power = exp(log_scale) * current
        keep_idx = np.arange(len(todo))
        for _ in range(_GRAM_STEPS):
            norm = np.sqrt(squared_norms(current))
            with np.errstate(divide="ignore"):
                log_scale = log_scale + np.log(norm)
            bound_log = log_scale / (2 * power)  # log of the bound on sigma
            result[todo[keep_idx]] = np.minimum(result[todo[keep_idx]], np.exp(bound_log))
            alive = bound_log > log_floor
            if alive.mean() > 0.9:  # this step settled too few: more steps would not pay for themselves
                keep_idx = keep_idx[alive]
                break
            if not alive.all():
                keep_idx, current, log_scale, norm = keep_idx[alive], current[alive], log_scale[alive], norm[alive]
            if not len(keep_idx):
                return result
            current = current / np.maximum(norm, np.finfo(float).tiny)[:, None, None]
            current = current @ current
            log_scale, power = 2 * log_scale, 2 * power
        todo = todo[keep_idx]
    if np.isfinite(floor) and floor > 0:  # a flat spectrum: certify most values below the floor by Cholesky
        gram = lower_gram(matrices[todo])
        above = np.array([not _below(g, floor) for g in gram], dtype=bool)
        result[todo] = np.minimum(result[todo], floor)
        if above.any():
            top = np.linalg.eigvalsh(gram[above], UPLO="L")[:, -1]
            result[todo[above]] = np.sqrt(np.maximum(top, 0.0))
        return result
    result[todo] = top_singular_values(matrices[todo])  # the exact value
    return result


def _below(gram: np.ndarray, floor: float) -> bool:
    """Whether ``floor**2 I - gram`` has a Cholesky factor: then ``lambda_max(gram) <= floor**2``
    (to rounding, ~n eps relative), at a third of the eigensolver's cost."""
    shifted = -gram
    shifted.flat[:: len(gram) + 1] += floor * floor
    try:
        np.linalg.cholesky(shifted)
    except np.linalg.LinAlgError:
        return False
    return True


def sigma_max_at(
    plan: FrequencyPlan, flat: np.ndarray, freqs: np.ndarray, workers: int = 1, floor: float = -np.inf
) -> np.ndarray:
    """``(B,)`` largest singular value of the transfer matrix at each of ``freqs`` (max over groups).

    Values at most ``floor`` may be replaced by upper bounds that are also at most ``floor``
    (see :func:`sigma_max`). Batches are cut into chunks of about 8 MiB of matrices, spread over
    ``workers`` threads when the work is large enough to pay for them.
    """
    groups = plan.spec.groups
    rows, cols = plan.block_shape
    per_chunk = max(1, _CHUNK_BYTES // (16 * rows * cols * groups))
    chunks = [freqs[i : i + per_chunk] for i in range(0, len(freqs), per_chunk)]
    if workers > 1 and len(chunks) < 4 * workers and len(freqs) > 1:
        per = max(1, math.ceil(len(freqs) / (4 * workers)))
        chunks = [freqs[i : i + per] for i in range(0, len(freqs), per)]

    def one(part: np.ndarray) -> np.ndarray:
        return sigma_max(plan.transfer_numpy(flat, part), floor).reshape(len(part), groups).max(axis=1)

    if not chunks:
        return np.zeros(0)
    work = len(freqs) * groups * min(rows, cols) ** 2 * max(rows, cols)  # multiply-adds, roughly
    return np.concatenate(run_chunks(one, chunks, workers if work > 2 * 10**7 else 1))
