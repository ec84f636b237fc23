r"""A convolution layer as a linear operator: matrix-free products with it and its adjoint.

:class:`ConvOperator` applies a layer with zero padding, or with circular padding of any width,
or with wrap-around boundary, to arrays ``(in_channels, *input_shape)``, tap by tap:

* the input is extended to the ``L = s (m - 1) + delta (k - 1) + 1`` positions the outputs read
  (per axis): position ``p`` holds ``x[p - p_left]`` inside the input and 0 outside (zero
  padding), or ``x[(p - p_left) mod n]`` (circular padding; ``p_left = 0`` for wrap-around),
* each tap ``t`` is one matrix product: its ``(out x in)`` channel matrix times the strided
  slice ``p = s u + delta t`` of the extended input (``in x outputs``), accumulated,
* taps whose slice lies wholly in the zero padding are skipped.

The adjoint multiplies by each tap's conjugate transpose, adds into the slices and folds the
extension back onto the input. Nothing larger than the input, the output and one slice is
held (no kernel spread on a grid, no transform). It is what the iterative solver
of :func:`convspectra.operator_norm` runs on for padded layers, and it is public so that other
matrix-free methods can use the exact padded layer too (for instance
``scipy.sparse.linalg.svds`` for its largest few singular values). The test-suite checks it
against PyTorch's ``conv1d/2d/3d`` and ``conv_transpose1d/2d/3d``.

Example:
    >>> import numpy as np
    >>> from convspectra.norm import ConvOperator
    >>> op = ConvOperator.create(np.ones((1, 1, 3)), input_shape=4, padding=1)
    >>> op.matvec(np.array([[1.0, 2.0, 3.0, 4.0]])).round(12)  # conv1d(x, ones(3), padding=1)
    array([[3., 6., 9., 7.]])
    >>> op.rmatvec(np.array([[1.0, 0.0, 0.0, 0.0]])).round(12)  # the adjoint: conv_transpose1d
    array([[1., 1., 0., 0.]])
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._backend import to_numpy
from .._checks import as_tuple, choice, integer
from ..errors import ParameterError
from ..spec import parse_kernel

__all__ = ["ConvOperator", "good_fft_size", "operator_product_bytes", "padding_pairs"]

#: The boundary handlings :meth:`ConvOperator.create` accepts.
MODES = ("zeros", "circular", "wrap")
#: Bytes of stacked input slices a product holds at once (taps are taken in runs of this size).
CHUNK_BYTES = 32 * 2**20


def good_fft_size(n: int) -> int:
    """The smallest ``2^a 3^b 5^c >= n`` (fast FFT lengths)."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            size = p35
            while size < n:
                size *= 2
            best = min(best, size)
            p35 *= 3
        p5 *= 5
    return best


def padded_output_shape(
    input_shape: Sequence[int],
    padding: Sequence[tuple[int, int]],
    *,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
) -> tuple[int, ...]:
    """Output size of a padded convolution, as PyTorch computes it; an empty output is refused.

    Example:
        >>> from convspectra.norm._operator import padded_output_shape
        >>> padded_output_shape((8, 8), ((1, 1), (0, 0)), kernel_size=(3, 3), stride=(2, 1), dilation=(1, 1))
        (4, 6)
    """
    m = tuple(
        (ni + pl + pr - di * (ki - 1) - 1) // si + 1
        for ni, (pl, pr), di, ki, si in zip(input_shape, padding, dilation, kernel_size, stride, strict=True)
    )
    if min(m) < 1:
        raise ParameterError(
            f"input_shape: expected an input at least as large as the dilated kernel minus the padding "
            f"(kernel {tuple(kernel_size)}, dilation {tuple(dilation)}, padding {tuple(padding)}), "
            f"got {tuple(input_shape)}: the output would be empty"
        )
    return m


def padding_pairs(padding: Any, ndim: int, name: str = "padding") -> tuple[tuple[int, int], ...]:
    """``None`` (none), an int or one int per axis (both sides), or one ``(left, right)`` pair per axis;
    errors name the parameter ``name``."""
    if padding is None:
        return ((0, 0),) * ndim
    is_sequence = isinstance(padding, Sequence) and not isinstance(padding, (str, bytes))
    if is_sequence and any(isinstance(p, Sequence) and not isinstance(p, (str, bytes)) for p in padding):
        if len(padding) != ndim:
            raise ParameterError(
                f"{name}: expected one (left, right) pair per spatial axis ({ndim}), got {len(padding)}: {padding!r}"
            )
        pairs = [as_tuple(f"{name}[{axis}]", pair, 2, minimum=0) for axis, pair in enumerate(padding)]
        return tuple((left, right) for left, right in pairs)
    return tuple((p, p) for p in as_tuple(name, padding, ndim, minimum=0))


def operator_product_bytes(
    in_channels: int, out_channels: int, extended: Sequence[int], outputs: int, item: int
) -> int:
    """Peak bytes of one :meth:`ConvOperator.matvec` or ``rmatvec`` (Python ints): the extended input,
    one slice copy, one tap's product, the output and the folded input."""
    return item * (2 * in_channels * math.prod(extended) + in_channels * outputs + 2 * out_channels * outputs)


@dataclass(frozen=True)
class ConvOperator:
    """A forward convolution ``(in_channels, *input_shape) -> (out_channels, *output_shape)``, matrix-free.

    Build it with :meth:`create`. Attributes are the normalised geometry: the boundary ``mode``,
    the ``padding`` as ``(left, right)`` per axis (the circular shift for ``"circular"``; zeros for
    ``"wrap"``), the ``extended`` input size the outputs read, and the ``live`` taps (flat
    indices into the kernel's taps) whose slice meets the input.
    """

    weight: np.ndarray
    groups: int
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    mode: str
    padding: tuple[tuple[int, int], ...]
    extended: tuple[int, ...]
    live: tuple[int, ...]
    taps: np.ndarray = dataclasses.field(repr=False, compare=False)
    taps_adjoint: np.ndarray = dataclasses.field(repr=False, compare=False)
    _runs: dict[int, Any] = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def create(
        cls,
        weight: Any,
        *,
        input_shape: int | Sequence[int],
        padding: int | Sequence[int] | Sequence[tuple[int, int]] | None = None,
        mode: str = "zeros",
        stride: int | Sequence[int] | None = None,
        dilation: int | Sequence[int] | None = None,
        groups: int = 1,
    ) -> ConvOperator:
        """The layer with forward weight ``(out_channels, in_channels / groups, k_1, ..., k_d)``.

        Args:
            weight: the forward convolution's weight, channels first (PyTorch's ``Conv*d``
                layout), a NumPy array or a torch tensor (copied to NumPy); real or complex.
            input_shape: spatial size n of the input (an int or one per axis).
            padding: ``None`` (none), an int or one int per axis (both sides, as PyTorch's
                ``padding``), or one ``(left, right)`` pair per axis.
            mode: ``"zeros"`` (PyTorch zero padding), ``"circular"`` (PyTorch
                ``padding_mode="circular"``: indices wrap modulo n, for any padding width), or
                ``"wrap"`` (the wrap-around operator of :func:`convspectra.singular_values`;
                ``padding`` ignored, n must be a multiple of the stride).
            stride, dilation: an int or one per axis (default 1).
            groups: channel groups.

        Returns:
            The operator, in float64 (complex128 for a complex weight).

        Raises:
            ParameterError, ParameterTypeError: a bad weight, size, padding, mode, stride,
                dilation or groups, or an empty output.
        """
        mode = choice("mode", mode, MODES)
        groups = integer("groups", groups)
        spec, parsed = parse_kernel(weight, layout="OIHW", stride=stride, dilation=dilation, groups=groups)
        d = spec.ndim
        n = as_tuple("input_shape", input_shape, d)
        s, dl, k = spec.stride, spec.dilation, spec.kernel_size
        pads = padding_pairs(padding, d)
        if mode == "wrap":
            if any(ni % si for ni, si in zip(n, s, strict=True)):
                raise ParameterError(
                    f"input_shape: the wrap-around mode needs a multiple of the stride {s} on every axis, got {n}"
                )
            pads = ((0, 0),) * d
            m = tuple(a // b for a, b in zip(n, s, strict=True))
        else:
            m = padded_output_shape(n, pads, kernel_size=k, stride=s, dilation=dl)
        array = to_numpy(parsed)
        array = np.asarray(array, dtype=np.complex128 if np.iscomplexobj(array) else np.float64)
        extended = tuple(si * (mi - 1) + di * (ki - 1) + 1 for si, mi, di, ki in zip(s, m, dl, k, strict=True))
        taps = np.stack(np.unravel_index(np.arange(math.prod(k)), k), axis=1)
        if mode == "zeros":  # a tap is live when some output reads the input through it, on every axis
            live = [
                index
                for index, tap in enumerate(taps)
                if all(
                    _meets(t * di - pl, si, mi, ni)
                    for t, di, (pl, _), si, mi, ni in zip(tap, dl, pads, s, m, n, strict=True)
                )
            ]
        else:
            live = list(range(len(taps)))
        out_c, per_group = array.shape[:2]
        grouped = array.reshape(groups, out_c // groups, per_group, -1)[..., live]  # (G, a, T, b0) below
        forward = np.ascontiguousarray(grouped.transpose(0, 1, 3, 2)).reshape(groups, out_c // groups, -1)
        adjoint = np.ascontiguousarray(np.conj(np.swapaxes(forward, 1, 2)))
        return cls(array, groups, s, dl, n, m, mode, pads, extended, tuple(live), forward, adjoint)

    def single(self) -> ConvOperator:
        """The same layer in single precision (float32, complex64): twice the speed, products good to a few 1e-7."""
        dtype = np.complex64 if np.iscomplexobj(self.weight) else np.float32
        return dataclasses.replace(
            self,
            weight=self.weight.astype(dtype),
            taps=self.taps.astype(dtype),
            taps_adjoint=self.taps_adjoint.astype(dtype),
        )

    @property
    def in_channels(self) -> int:
        """Input channels."""
        return self.weight.shape[1] * self.groups

    @property
    def out_channels(self) -> int:
        """Output channels."""
        return self.weight.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, columns)`` of the operator's matrix."""
        return self.out_channels * math.prod(self.output_shape), self.in_channels * math.prod(self.input_shape)

    @property
    def dtype(self) -> np.dtype:
        """float64, or complex128 for a complex kernel."""
        return self.weight.dtype

    @staticmethod
    def _reshaped(name: str, array: Any, shape: tuple[int, ...]) -> np.ndarray:
        values = np.asarray(array)
        if values.size != math.prod(shape):
            raise ParameterError(
                f"{name}: expected {math.prod(shape)} values, shape {shape} or flat, got shape {values.shape}"
            )
        return values.reshape(shape)

    def _indices(self) -> tuple[np.ndarray, ...]:
        """Per axis, the input index of each extended position (circular modes)."""
        return tuple(
            (np.arange(size) - pl) % n
            for size, (pl, _), n in zip(self.extended, self.padding, self.input_shape, strict=True)
        )

    def _overlap(self) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
        """Zero padding: the extended positions that hold the input, and the input positions they hold."""
        ext, inp = [], []
        for size, (pl, _), n in zip(self.extended, self.padding, self.input_shape, strict=True):
            lo, hi = max(0, pl), min(size, pl + n)
            hi = max(hi, lo)
            ext.append(slice(lo, hi))
            inp.append(slice(lo - pl, hi - pl))
        return (slice(None), *ext), (slice(None), *inp)

    def _slices(self) -> list[tuple[int, tuple[slice, ...]]]:
        """``(tap, index of its strided slice of the extended input)`` for every live tap."""
        k = self.weight.shape[2:]
        out = []
        for index in self.live:
            tap = np.unravel_index(index, k)
            window = tuple(
                slice(di * int(t), di * int(t) + si * (mi - 1) + 1, si)
                for t, di, si, mi in zip(tap, self.dilation, self.stride, self.output_shape, strict=True)
            )
            out.append((index, (slice(None), *window)))
        return out

    def _chunks(self, item: int) -> list[list[tuple[int, tuple[slice, ...]]]]:
        """The live taps' slices in runs whose stacked copies stay under :data:`CHUNK_BYTES` (once per item size)."""
        if item not in self._runs:
            slices = self._slices()
            per_tap = max(1, item * self.in_channels * math.prod(self.output_shape))
            size = max(1, CHUNK_BYTES // per_tap)
            self._runs[item] = [slices[i : i + size] for i in range(0, len(slices), size)]
        return self._runs[item]

    def matvec(self, x: np.ndarray) -> np.ndarray:
        """``A x`` for ``x`` of shape ``(in_channels, *input_shape)`` (or flat).

        Returns:
            ``(out_channels, *output_shape)``, float64 or complex128.
        """
        x = self._reshaped("x", x, (self.in_channels, *self.input_shape))
        dtype = np.result_type(x, self.weight)
        if self.mode == "zeros":
            ext = np.zeros((self.in_channels, *self.extended), dtype=dtype)
            into, outof = self._overlap()
            ext[into] = x[outof]
        else:
            ext = np.asarray(x, dtype=dtype)[(slice(None), *np.ix_(*self._indices()))]
        points = math.prod(self.output_shape)
        g, b0 = self.groups, self.in_channels // self.groups
        y = np.zeros((g, self.out_channels // g, points), dtype=dtype)
        done = 0
        for chunk in self._chunks(dtype.itemsize):  # im2col, a run of taps at a time: one product per run
            stacked = np.empty((g, len(chunk), b0, *self.output_shape), dtype=dtype)
            for j, (_, window) in enumerate(chunk):  # one copy of the strided slice (no reshape of it)
                stacked[:, j] = ext[window].reshape(g, b0, *self.output_shape)
            w = self.taps[:, :, done * b0 : (done + len(chunk)) * b0]
            y += _product(w, stacked.reshape(g, len(chunk) * b0, points))
            done += len(chunk)
        return y.reshape(self.out_channels, *self.output_shape)

    def rmatvec(self, y: np.ndarray) -> np.ndarray:
        """``A^H y`` for ``y`` of shape ``(out_channels, *output_shape)`` (or flat).

        Returns:
            ``(in_channels, *input_shape)``, float64 or complex128.
        """
        y = self._reshaped("y", y, (self.out_channels, *self.output_shape))
        dtype = np.result_type(y, self.weight)
        g, b0 = self.groups, self.in_channels // self.groups
        block = np.asarray(y, dtype=dtype).reshape(g, self.out_channels // g, -1)
        ext = np.zeros((self.in_channels, *self.extended), dtype=dtype)
        done = 0
        for chunk in self._chunks(dtype.itemsize):
            wh = self.taps_adjoint[:, done * b0 : (done + len(chunk)) * b0]
            spread = _product(wh, block).reshape(g, len(chunk), b0, -1)
            for j, (_, window) in enumerate(chunk):
                ext[window] += spread[:, j].reshape(self.in_channels, *self.output_shape)
            done += len(chunk)
        if self.mode == "zeros":
            x = np.zeros((self.in_channels, *self.input_shape), dtype=dtype)
            into, outof = self._overlap()
            x[outof] = ext[into]
            return x
        for axis, index in enumerate(self._indices()):  # fold the extension back onto the input, axis by axis
            shape = list(ext.shape)
            shape[axis + 1] = self.input_shape[axis]
            folded = np.zeros(shape, dtype=dtype)
            np.add.at(folded, (slice(None),) * (axis + 1) + (index,), ext)
            ext = folded
        return ext


def _product(matrices: np.ndarray, block: np.ndarray) -> np.ndarray:
    """``(G, r, c) @ (G, c, P)``: one BLAS product when there is one group, a broadcast one for c = 1."""
    if matrices.shape[0] == 1:
        return (matrices[0] @ block[0])[None]
    if matrices.shape[2] == 1:
        return matrices * block
    return matrices @ block


def _meets(offset: int, stride: int, outputs: int, n: int) -> bool:
    """Whether some ``offset + stride * u``, ``0 <= u < outputs``, lies in ``[0, n)``."""
    first = max(0, -(offset // stride))  # the first u with offset + s u >= 0
    return first < outputs and offset + stride * first < n
