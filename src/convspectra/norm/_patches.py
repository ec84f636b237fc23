"""The norm of a layer whose windows do not overlap: kernel = stride, no dilation, no padding.

Patch embeddings (ViT's 16x16 stride 16) and ConvNeXt's stem and downsamplers (4x4 stride 4, 2x2
stride 2) read each input position through exactly one output position. When the stride divides
the input, the layer is block diagonal: one block per output position, every block the same
``out x (in k_1 ... k_d)`` matrix (per group). Its norm is that matrix's largest singular value
(the largest over the groups), with zero padding and with wrap-around alike, for every input
size; one small eigendecomposition instead of a branch and bound over frequencies or an iteration.

Example:
    >>> import numpy as np
    >>> from convspectra.norm._patches import is_patchwise, solve_patchwise
    >>> from convspectra.norm._request import resolve_request
    >>> request = resolve_request(np.ones((1, 1, 2, 2)), (8, 8), stride=2, padding=0)
    >>> is_patchwise(request), solve_patchwise(request.at_unit_scale()).value   # ||[1, 1, 1, 1]|| = 2
    (True, 2.0)
"""

from __future__ import annotations

import math

import numpy as np

from .._memory import check_budget
from .._rescale import scale_up
from .._threads import single_threaded_blas
from ._request import NormRequest
from ._solution import Solution, rounding_allowance

__all__ = ["is_patchwise", "solve_patchwise"]

EPS = float(np.finfo(np.float64).eps)


def is_patchwise(request: NormRequest) -> bool:
    """Whether the windows of ``request``'s real layer tile its input: kernel = stride > 1 tap, dilation 1,
    no padding, the stride dividing the input (zero padding and wrap-around are then the same layer)."""
    spec = request.spec
    return (
        request.mode in ("zeros", "wrap")
        and not request.is_complex
        and math.prod(spec.kernel_size) > 1
        and spec.kernel_size == spec.stride
        and all(d == 1 for d in spec.dilation)
        and all(p == (0, 0) for p in request.padding)
        and all(n % s == 0 for n, s in zip(request.input_shape, spec.stride, strict=True))
    )


def solve_patchwise(request: NormRequest) -> Solution:
    """The exact norm of the patchwise layer of ``request`` (:func:`is_patchwise`); the budget is
    checked first (the groups' matrices and Gram matrices).

    The top eigenpair of each group's smaller Gram matrix (``M M^T`` or ``M^T M``, single-threaded
    LAPACK: a busy machine's BLAS threads slowed a 768 x 1536 SVD 20-fold) gives the unit input
    vector ``v``; the value is ``||M v||`` (an actual Rayleigh quotient, a lower end up to
    rounding). The upper end is the computed eigenvalue plus the Gram matrix's rounding
    (``gamma_k ||M||_F^2``) and the eigensolver's (``k eps lambda``), square-rooted.
    """
    spec = request.spec
    g = spec.groups
    out_per, columns = spec.out_channels // g, (spec.in_channels // g) * math.prod(spec.kernel_size)
    side = min(out_per, columns)
    estimate = 8 * g * (2 * out_per * columns + 3 * side * side)
    check_budget(
        estimate, request.max_memory, f"this layer's {g} patch matrices ({out_per} x {columns}) and their Gram matrices"
    )
    weight = request.working_weight()  # divided by 2**exponent: scaled back below
    matrices = weight.reshape(g, out_per, columns)
    with single_threaded_blas():
        if out_per <= columns:
            eigenvalues, vectors = np.linalg.eigh(matrices @ np.swapaxes(matrices, 1, 2))
            right = np.einsum("gac,ga->gc", matrices, vectors[:, :, -1])
            right /= np.maximum(np.linalg.norm(right, axis=1, keepdims=True), np.finfo(float).tiny)
        else:
            eigenvalues, vectors = np.linalg.eigh(np.swapaxes(matrices, 1, 2) @ matrices)
            right = vectors[:, :, -1]
        images = np.linalg.norm(np.einsum("gac,gc->ga", matrices, right), axis=1)
    best = int(np.argmax(images))
    value = float(images[best])
    inner = max(out_per, columns)
    gamma = inner * EPS / (1 - inner * EPS)
    frobenius = np.einsum("gac,gac->g", matrices, matrices)
    top = eigenvalues[:, -1] + gamma * frobenius + side * EPS * np.abs(eigenvalues[:, -1])
    upper = float(np.sqrt(np.max(top)))
    x = np.zeros((spec.in_channels, *request.input_shape))  # the top right singular vector, on the first patch
    per = spec.in_channels // g
    patch = (slice(best * per, (best + 1) * per), *(slice(0, k) for k in spec.kernel_size))
    x[patch] = right[best].reshape(per, *spec.kernel_size)
    allowance = rounding_allowance(spec)
    e = request.exponent
    return Solution(
        float(scale_up(value, e)),
        float(scale_up(value * (1 - allowance), e)),
        float(scale_up(max(upper, value) * (1 + allowance), e)),
        True,
        f"exact: the windows tile the input (kernel = stride); the top of the {out_per} x {columns} patch matrix"
        + (f" of each of {g} groups" if g > 1 else ""),
        vector=x.ravel(),
    )
