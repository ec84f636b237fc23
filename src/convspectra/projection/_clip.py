r"""The per-frequency clip: every transfer matrix's singular values into ``[min_norm, max_norm]``.

Clipping the largest singular values at ``c`` uses the Hermitian eigensolver on the smaller Gram
matrix ``G = T T^H = V diag(sigma^2) V^H``: ``T' = T - V diag(1 - min(1, c / sigma)) V^H T``,
restricted to the eigenvectors with ``sigma > c``; matrices whose trace or Gershgorin bound
shows ``sigma_max <= c`` are not decomposed at all. The two-sided band uses the SVD, which
stays accurate for small singular values. NumPy arrays go through LAPACK (complex128); torch
tensors through ``torch.linalg`` on their device.

Example:
    >>> import numpy as np
    >>> t = np.diag([3.0, 0.5]).astype(np.complex128)[None]
    >>> clipped, changed = clip(t, np.array([1.0]), np.array([0.0]), False, 1)
    >>> np.round(np.linalg.svd(clipped[0], compute_uv=False), 12).tolist(), changed.tolist()
    ([1.0, 0.5], [True])
"""

from __future__ import annotations

import itertools
import math
import sys
from typing import Any

import numpy as np

from .._threads import run_chunks
from ._tables import Geometry

__all__ = ["clip", "extremes"]

#: Below this many multiply-adds (sum of p^2 q over the decompositions), the clip stays on one thread.
_PARALLEL_MIN_WORK = 2 * 10**7
#: At most about this many multiply-adds per piece of a NumPy clip (~0.1 s of eigh here): a KeyboardInterrupt
#: waits for the pieces running, never for the whole batch.
_PIECE_WORK = 10**7


def _mh(x: Any) -> Any:
    """Conjugate transpose of a batch; contiguous for NumPy (a strided operand makes matmul 3x slower)."""
    return np.ascontiguousarray(np.swapaxes(x, -1, -2).conj()) if isinstance(x, np.ndarray) else x.mH


def _clip_max(t: Any, high: Any) -> tuple[Any, Any]:
    """Clip every matrix's singular values at ``high`` (per matrix). Returns (clipped, changed mask).

    The Hermitian eigensolver on the smaller Gram matrix, ``G = T T^H = V diag(sigma^2) V^H``:
    ``T' = T - V diag(1 - min(1, c / sigma)) V^H T`` (``T V ...`` for a tall ``T``). Matrices with
    ``trace G = ||T||_F^2 <= c^2`` or a Gershgorin bound ``max_i sum_j |G_ij| <= c^2`` cannot
    have ``sigma_max > c`` and are not decomposed; matrices that need no change are returned bit
    for bit.
    """
    if not isinstance(t, np.ndarray):
        return _clip_max_torch(t, high)
    tall = t.shape[1] > t.shape[2]
    # conj(G) from a contiguous conj and a transposed view (a conj-transposed copy costs more
    # than the product); its eigenvectors are W = conj(V).
    conj = t.conj()
    gram = np.swapaxes(t, 1, 2) @ conj if tall else conj @ np.swapaxes(t, 1, 2)
    trace = np.einsum("bii->b", gram).real
    index = np.flatnonzero(trace > high**2)
    changed = np.zeros(len(t), dtype=bool)
    if len(index) == 0:
        return t, changed
    everything = len(index) == len(t)
    if not everything:
        gram, high = gram[index], high[index]
    # Gershgorin: lambda_max(G) <= max_i sum_j |G_ij| <= max_i sum_j (|Re G_ij| + |Im G_ij|)
    inside = np.abs(gram.view(np.float64)).sum(axis=2).max(axis=1) <= high**2
    if inside.any():
        keep = ~inside
        index, gram, high = index[keep], gram[keep], high[keep]
        everything = False
        if len(index) == 0:
            return t, changed
    lam, w = np.linalg.eigh(gram)
    cap = high[:, None]
    sigma = np.sqrt(np.maximum(lam, 0.0))
    shrink = np.where(sigma > cap, 1.0 - cap / np.where(sigma > 0, sigma, 1.0), 0.0)
    hit = shrink[:, -1] > 0  # eigenvalues ascending: the largest decides
    if not hit.any():
        return t, changed
    if not hit.all():
        index, w, shrink = index[hit], w[hit], shrink[hit]
        everything = False
    sub = t if everything else t[index]
    # only the eigenvectors with sigma > c move anything: the last `top` columns (ascending order)
    top = int((shrink > 0).sum(axis=1).max())
    if top < shrink.shape[1]:
        w, shrink = w[:, :, -top:], shrink[:, -top:]
    if tall:  # T - (T V) diag(shrink) V^H,  V = conj(W), V^H = W^T
        sub = sub - ((sub @ w.conj()) * shrink[:, None, :]) @ np.swapaxes(w, 1, 2)
    else:  # T - V diag(shrink) (V^H T)
        sub = sub - w.conj() @ ((np.swapaxes(w, 1, 2) @ sub) * shrink[:, :, None])
    if everything:
        changed[:] = True
        return sub, changed
    t = t.copy()
    t[index] = sub
    changed[index] = True
    return t, changed


def _clip_max_torch(t: Any, high: Any) -> tuple[Any, Any]:
    """:func:`_clip_max` with torch operations (any device)."""
    torch = sys.modules["torch"]
    tall = t.shape[1] > t.shape[2]
    gram = t.mH @ t if tall else t @ t.mH
    trace = gram.diagonal(dim1=1, dim2=2).real.sum(dim=1)
    candidates = trace > high**2
    index = candidates.nonzero().reshape(-1)
    changed = torch.zeros(len(t), dtype=torch.bool, device=t.device)
    if len(index) == 0:
        return t, changed
    lam, vec = torch.linalg.eigh(gram[index])
    cap = high[index][:, None]
    sigma = lam.clamp_min(0.0).sqrt()
    shrink = torch.where(sigma > cap, 1.0 - cap / torch.where(sigma > 0, sigma, torch.ones_like(sigma)), 0.0)
    hit = shrink[:, -1] > 0
    if not bool(hit.any()):
        return t, changed
    index, vec, shrink = index[hit], vec[hit], shrink[hit].to(vec.dtype)
    sub = t[index]
    if tall:
        sub = sub - ((sub @ vec) * shrink[:, None, :]) @ vec.mH
    else:
        sub = sub - vec @ ((vec.mH @ sub) * shrink[:, :, None])
    t = t.clone()
    t[index] = sub
    changed[index] = True
    return t, changed


def _clip_band(t: Any, high: Any, low: Any) -> tuple[Any, Any]:
    """Clip every matrix's singular values into ``[low, high]`` (per matrix) by the SVD."""
    numpy = isinstance(t, np.ndarray)
    if numpy:
        u, s, vh = np.linalg.svd(t, full_matrices=False)
        target = np.clip(s, low[:, None], high[:, None])
        changed = (target != s).any(axis=1)
        index = np.flatnonzero(changed)
    else:
        torch = sys.modules["torch"]
        u, s, vh = torch.linalg.svd(t, full_matrices=False)
        target = torch.minimum(torch.maximum(s, low[:, None]), high[:, None])
        changed = (target != s).any(dim=1)
        index = changed.nonzero().reshape(-1)
    if len(index) == 0:
        return t, changed
    delta = (target - s)[index][:, None, :]
    correction = (u[index] * (delta if numpy else delta.to(u.dtype))) @ vh[index]
    t = t.copy() if numpy else t.clone()
    t[index] = t[index] + correction
    return t, changed


def extremes(geometry: Geometry, t: Any, layers: int, band: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Per layer: largest singular value, and smallest (if ``band``), of the transfer matrices ``t``."""
    numpy = isinstance(t, np.ndarray)
    if band:  # the SVD keeps the small singular values accurate
        values = np.linalg.svd(t, compute_uv=False) if numpy else sys.modules["torch"].linalg.svdvals(t).cpu().numpy()
    else:  # the largest only: eigenvalues of the smaller Gram matrix (relative accuracy ~eps)
        tall = t.shape[1] > t.shape[2]
        gram = (_mh(t) @ t if tall else t @ _mh(t)) if numpy else (t.mH @ t if tall else t @ t.mH)
        lam = np.linalg.eigvalsh(gram) if numpy else sys.modules["torch"].linalg.eigvalsh(gram).cpu().numpy()
        values = np.sqrt(np.maximum(lam[:, ::-1], 0.0))
    values = geometry.per_layer(values, layers)  # (B, layers, G, r)
    top = values[..., 0].max(axis=(0, 2))
    return top, (values[..., -1].min(axis=(0, 2)) if band else None)


def clip(t: Any, high: Any, low: Any, band: bool, workers: int) -> tuple[Any, Any]:
    """Clip every matrix's singular values at ``high`` (into ``[low, high]`` with ``band``), per matrix.

    Args:
        t: ``(N, p, q)`` transfer matrices, NumPy complex128 or a torch tensor.
        high, low: ``(N,)`` bounds per matrix, of ``t``'s kind (``low`` unused without ``band``).
        band: clip from below too (by the SVD).
        workers: threads for a NumPy batch (large batches only; BLAS single-threaded inside).

    Returns:
        ``(clipped, changed)``: the clipped batch (``t`` itself, or bit-for-bit copies of its
        matrices, where nothing changed) and the ``(N,)`` boolean mask of changed matrices.
    """
    if not isinstance(t, np.ndarray):
        return _clip_band(t, high, low) if band else _clip_max(t, high)
    p, q = t.shape[1:]
    work = len(t) * min(p, q) ** 2 * max(p, q)
    if work < _PARALLEL_MIN_WORK:
        workers = 1
    # pieces of bounded work, so that Ctrl-C is answered between them (LAPACK cannot be
    # interrupted), and at least two per worker to keep every worker busy
    pieces = max(math.ceil(work / _PIECE_WORK), 2 * workers if workers > 1 else 1)
    if pieces <= 1:
        return _clip_band(t, high, low) if band else _clip_max(t, high)
    bounds = np.linspace(0, len(t), min(pieces, len(t)) + 1).astype(int)
    ranges = [(a, b) for a, b in itertools.pairwise(bounds) if b > a]

    def part(index_range: tuple[int, int]) -> tuple[Any, Any]:
        a, b = index_range
        if band:
            return _clip_band(t[a:b], high[a:b], low[a:b])
        return _clip_max(t[a:b], high[a:b])

    parts = run_chunks(part, ranges, workers)
    if len(parts) == 1:
        return parts[0]
    if not any(changed.any() for _, changed in parts):
        return t, np.zeros(len(t), dtype=bool)
    return np.concatenate([clipped for clipped, _ in parts]), np.concatenate([changed for _, changed in parts])
