"""The part of a zero-padded layer that ever meets the input: taps, inputs and outputs that matter.

A tap whose every read lands in the zero padding contributes nothing, an input position no live
tap reads is a zero column, and an output that reads only padding is a zero row: removing them
changes no singular value. On a dilated layer over a small map (DeepLabV3's ASPP, dilation 12-36
on 1x1-4x4 inputs) only the centre tap is left, and the layer is one channel matrix.

:func:`live_request` does this arithmetically, per axis, before anything is allocated: the taps
``t`` and outputs ``u`` with a read ``s u + delta t - p_left`` inside ``[0, n)``, the inputs they
read, and the kernel, padding and input cropped to them. The layer it returns is the original
one restricted to those rows and columns, exactly.

Example:
    >>> import numpy as np
    >>> from convspectra.norm._request import resolve_request
    >>> from convspectra.norm._support import live_request
    >>> request = resolve_request(np.ones((4, 8, 3, 3)), (2, 2), padding=12, dilation=12)
    >>> support = live_request(request)
    >>> support.request.spec.kernel_size, support.request.input_shape, support.request.padding
    ((1, 1), (2, 2), ((0, 0), (0, 0)))
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ._request import NormRequest

__all__ = ["Support", "live_request"]


@dataclass(frozen=True)
class Support:
    """The request restricted to what meets the input.

    Attributes:
        request: the restricted request (the same object when nothing was removed).
        inputs: per axis, the slice of the original input that the restricted layer's input is.
        empty: no tap ever reads the input: the layer is zero.
    """

    request: NormRequest
    inputs: tuple[slice, ...]
    empty: bool = False

    def embed(self, vector: np.ndarray, original: NormRequest) -> np.ndarray:
        """A flat vector of the restricted input placed in the original input (zeros elsewhere)."""
        shape = (original.spec.in_channels, *original.input_shape)
        if self.request is original:
            return np.asarray(vector).ravel()
        full = np.zeros(shape, dtype=vector.dtype)
        full[(slice(None), *self.inputs)] = np.reshape(vector, (shape[0], *self.request.input_shape))
        return full.ravel()


def _axis(n: int, m: int, k: int, s: int, d: int, pl: int) -> tuple[int, int, int, int, int, int] | None:
    """``(t0, t1, u0, u1, q0, q1)``: the live taps, outputs and inputs on one axis (inclusive), or None.

    Integer arithmetic in O(k): tap ``t`` of output ``u`` reads input ``q = s u + d t - pl``, inside
    the input for ``u`` in ``[ceil((pl - d t) / s), floor((n - 1 + pl - d t) / s)]`` (and ``0 <= u < m``).
    """
    live = []
    for t in range(k):
        lo = max(0, -((d * t - pl) // s))  # ceil((pl - d t) / s)
        hi = min(m - 1, (n - 1 + pl - d * t) // s)
        if lo <= hi:
            live.append((t, lo, hi))
    if not live:
        return None
    q0 = min(s * lo + d * t - pl for t, lo, _ in live)
    q1 = max(s * hi + d * t - pl for t, _, hi in live)
    return live[0][0], live[-1][0], min(lo for _, lo, _ in live), max(hi for _, _, hi in live), q0, q1


def live_request(request: NormRequest) -> Support:
    """``request`` (mode ``"zeros"``) restricted to its live taps, read inputs and reached outputs.

    Other modes, and layers where nothing is removed, are returned unchanged.
    """
    spec = request.spec
    whole = tuple(slice(0, n) for n in request.input_shape)
    if request.mode != "zeros":
        return Support(request, whole)
    axes = [
        _axis(n, m, k, s, d, pl)
        for n, m, k, s, d, (pl, _) in zip(
            request.input_shape,
            spec.output_shape,
            spec.kernel_size,
            spec.stride,
            spec.dilation,
            request.padding,
            strict=True,
        )
    ]
    if any(a is None for a in axes):
        return Support(request, whole, empty=True)
    kernel, inputs, pads, n_new, m_new, taps = [], [], [], [], [], []
    for a, s, d, (pl, _) in zip(axes, spec.stride, spec.dilation, request.padding, strict=True):
        assert a is not None
        t0, t1, u0, u1, q0, q1 = a
        k_new, m_a, n_a = t1 - t0 + 1, u1 - u0 + 1, q1 - q0 + 1
        left = pl + q0 - d * t0 - s * u0  # >= 0: the first read is at or after the first live tap's
        right = s * (m_a - 1) + d * (k_new - 1) + 1 - n_a - left  # >= 0: the last read likewise
        kernel.append(slice(t0, t1 + 1))
        inputs.append(slice(q0, q1 + 1))
        pads.append((left, right))
        n_new.append(n_a)
        m_new.append(m_a)
        taps.append(k_new)
    unchanged = tuple(n_new) == request.input_shape and tuple(taps) == spec.kernel_size
    unchanged = unchanged and tuple(m_new) == spec.output_shape and tuple(pads) == request.padding
    if unchanged:
        return Support(request, whole)
    weight = request.weight[(slice(None), slice(None), *kernel)]
    new_spec = dataclasses.replace(spec, kernel_size=tuple(taps), input_shape=tuple(n_new), output_shape=tuple(m_new))
    restricted = dataclasses.replace(
        request, spec=new_spec, weight=weight, input_shape=tuple(n_new), padding=tuple(pads)
    )
    return Support(restricted, tuple(inputs))
