"""Power-of-two rescaling: solve a problem at unit scale and give the answer back at the kernel's.

A norm is positively homogeneous, ``||alpha A|| = |alpha| ||A||``, but floating point is not:
squares of entries near 1e-160 underflow and those near 1e160 overflow, well inside the range
of float64 itself. The solvers therefore run on the kernel divided by ``2**e``, the power of two
that brings its largest ``|entry|`` into ``[0.5, 1)`` (:func:`exponent_of`, via ``frexp``), and
multiply what they return by ``2**e``. Multiplying by a power of two is exact (outside the
subnormal range), so a kernel ``2**k K`` is solved on exactly the same numbers as ``K``: results
in the normal range are bit-identical to ``2**k`` times those of ``K``, and only kernels at the
extremes of the range see any change.

Example:
    >>> import numpy as np
    >>> from convspectra._rescale import exponent_of, scale_down, scale_up
    >>> kernel = np.array([3e-300, -1e-300])
    >>> e = exponent_of(kernel)
    >>> unit = scale_down(kernel, e)
    >>> e, bool(0.5 <= np.abs(unit).max() < 1), bool((scale_up(unit, e) == kernel).all())
    (-994, True, True)
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from ._backend import is_tensor

__all__ = ["exponent_of", "extreme_exponent", "scale_down", "scale_up"]


def exponent_of(array: Any) -> int:
    """The ``e`` with ``max|component| / 2**e`` in ``[0.5, 1)``; 0 for an empty or all-zero (or non-finite) array.

    ``array`` is a NumPy array (or anything ``np.asarray`` takes) or a torch tensor (any device).
    The peak is taken over the real and imaginary components by reductions (no copy of the
    array); a complex entry then has modulus below ``sqrt(2)`` at the working scale.
    """
    if is_tensor(array):
        if array.numel() == 0:
            return 0
        values = array.detach()
        if values.is_complex():
            values = sys.modules["torch"].view_as_real(values)
        peak = max(float(values.max().item()), -float(values.min().item()))
    else:
        values = np.asarray(array)
        if values.size == 0:
            return 0
        parts = (values.real, values.imag) if np.iscomplexobj(values) else (values,)
        peak = max(max(float(part.max()), -float(part.min())) for part in parts)
    if peak == 0.0 or not np.isfinite(peak):
        return 0
    return int(np.frexp(peak)[1])


def extreme_exponent(array: Any) -> int:
    """:func:`exponent_of` when it lies outside the safe range of ``array``'s real dtype, else 0.

    Safe: ``|e| <= maxexp / 4`` (about 1e-77 to 1e77 in float64, 2e-10 to 4e9 in float32), where
    sums of squares of the entries can neither overflow nor underflow; a computation that only
    rescales kernels outside it leaves results at ordinary scales untouched, bit for bit.

    Example:
        >>> extreme_exponent(np.array([3.0, -1e-3])), extreme_exponent(np.array([1e200, 1.0]))
        (0, 665)
    """
    exponent = exponent_of(array)
    if is_tensor(array):
        maxexp = int(np.frexp(sys.modules["torch"].finfo(array.dtype).max)[1])
    else:
        maxexp = np.finfo(np.asarray(array).real.dtype).maxexp
    return exponent if abs(exponent) > maxexp // 4 else 0


def _factors(e: int) -> tuple[float, float]:
    """``2**e`` as the product of two Python floats (each representable for ``|e| <= 2046``)."""
    half = e // 2
    return 2.0**half, 2.0 ** (e - half)


def _times_power_of_two(value: Any, e: int) -> Any:
    if e == 0:
        return value
    if is_tensor(value):
        first, second = _factors(e)
        return value * first * second
    with np.errstate(over="ignore", under="ignore"):
        if np.iscomplexobj(value):
            array = np.asarray(value)
            out = np.empty_like(array)
            out.real, out.imag = np.ldexp(array.real, e), np.ldexp(array.imag, e)
            return out
        return np.ldexp(value, e)


def scale_down(value: Any, e: int) -> Any:
    """``value / 2**e`` (NumPy: exact ``ldexp``; torch: two exact multiplications, differentiable)."""
    return _times_power_of_two(value, -e)


def scale_up(value: Any, e: int) -> Any:
    """``value * 2**e``; a result beyond float64's range is ``inf`` (the honest answer), never an error.

    Python floats and NumPy values come back as NumPy float64 (or arrays); torch tensors stay tensors.
    """
    if isinstance(value, float):
        value = np.float64(value)
    return _times_power_of_two(value, e)
