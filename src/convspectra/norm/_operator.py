r"""A convolution layer as a linear operator: matrix-free products with it and its adjoint.

:class:`ConvOperator` applies a layer with zero padding, or with circular padding of any width,
or with wrap-around boundary, to arrays ``(in_channels, *input_shape)``, by FFT on a grid large
enough that nothing wraps where it must not:

* the input is placed at offset ``p_left`` in a grid of size ``N >= n + p_left + p_right``
  (zero padding; ``N = n`` for the circular modes),
* the stride-1 correlation ``y1[v] = sum_t W_t x[(v + delta t) mod N]`` is one product per
  frequency, ``Y(f) = W^(f) X(f)`` with ``W^(f) = sum_t W_t exp(+2 pi i f delta t / N)``,
* the outputs are the samples ``y1[(s u - shift) mod N]``, ``u = 0 .. m - 1``.

The adjoint scatters, transforms and multiplies by ``W^(f)^H``. It is what the iterative solver
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

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._backend import to_numpy
from .._checks import as_tuple, choice, integer
from ..errors import ParameterError
from ..spec import parse_kernel

__all__ = ["ConvOperator", "good_fft_size"]

#: The boundary handlings :meth:`ConvOperator.create` accepts.
MODES = ("zeros", "circular", "wrap")


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


def _padding_pairs(padding: Any, ndim: int) -> tuple[tuple[int, int], ...]:
    """``None`` (none), an int or one int per axis (both sides), or one ``(left, right)`` pair per axis."""
    if padding is None:
        return ((0, 0),) * ndim
    is_sequence = isinstance(padding, Sequence) and not isinstance(padding, (str, bytes))
    if is_sequence and any(isinstance(p, Sequence) and not isinstance(p, (str, bytes)) for p in padding):
        if len(padding) != ndim:
            raise ParameterError(
                f"padding: expected one (left, right) pair per spatial axis ({ndim}), got {len(padding)}: {padding!r}"
            )
        pairs = [as_tuple(f"padding[{axis}]", pair, 2, minimum=0) for axis, pair in enumerate(padding)]
        return tuple((left, right) for left, right in pairs)
    return tuple((p, p) for p in as_tuple("padding", padding, ndim, minimum=0))


@dataclass(frozen=True)
class ConvOperator:
    """A forward convolution ``(in_channels, *input_shape) -> (out_channels, *output_shape)``, matrix-free.

    Build it with :meth:`create`. Attributes are the normalised geometry: FFT ``grid``, the
    input ``offset`` in it, the output sampling ``shift``, the frequency-domain kernel ``hat``
    ``(F, groups, out/groups, in/groups)`` on the (real-to-complex when ``real``) FFT grid.
    """

    weight: np.ndarray
    groups: int
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    grid: tuple[int, ...]
    offset: tuple[int, ...]
    shift: tuple[int, ...]
    real: bool
    hat: np.ndarray

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
        pads = _padding_pairs(padding, d)
        if mode == "wrap":
            if any(ni % si for ni, si in zip(n, s, strict=True)):
                raise ParameterError(
                    f"input_shape: the wrap-around mode needs a multiple of the stride {s} on every axis, got {n}"
                )
            grid, offset, shift = n, (0,) * d, (0,) * d
            m = tuple(a // b for a, b in zip(n, s, strict=True))
        else:
            m = padded_output_shape(n, pads, kernel_size=k, stride=s, dilation=dl)
            if mode == "zeros":
                grid = tuple(good_fft_size(ni + pl + pr) for ni, (pl, pr) in zip(n, pads, strict=True))
                offset, shift = tuple(pl for pl, _ in pads), (0,) * d
            else:
                grid, offset, shift = n, (0,) * d, tuple(pl for pl, _ in pads)
        array = to_numpy(parsed)
        real = not np.iscomplexobj(array)
        array = np.asarray(array, dtype=np.float64 if real else np.complex128)
        # taps scattered on the grid (added where they wrap onto each other)
        taps = np.stack(np.unravel_index(np.arange(math.prod(k)), k), axis=1)
        positions = (taps * np.asarray(dl)) % np.asarray(grid)
        spread = np.zeros((*array.shape[:2], *grid), dtype=array.dtype)
        flat_w = array.reshape(*array.shape[:2], -1)
        for index, pos in enumerate(positions):
            where = (slice(None), slice(None), *pos)
            spread[where] += flat_w[..., index]
        axes = tuple(range(2, 2 + d))
        if real:
            hat = np.conj(np.fft.rfftn(spread, axes=axes))
        else:
            hat = np.conj(np.fft.fftn(np.conj(spread), axes=axes))
        out_c, in_g = array.shape[:2]
        hat = hat.reshape(groups, out_c // groups, in_g, -1).transpose(3, 0, 1, 2).copy()
        return cls(array, groups, s, dl, n, m, grid, offset, shift, real, hat)

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

    def _samples(self) -> tuple[np.ndarray, ...]:
        return tuple(
            (s * np.arange(m) - sh) % g
            for s, m, sh, g in zip(self.stride, self.output_shape, self.shift, self.grid, strict=True)
        )

    def _forward_fft(self, z: np.ndarray) -> np.ndarray:
        axes = tuple(range(1, z.ndim))
        return np.fft.rfftn(z, axes=axes) if self.real else np.fft.fftn(z, axes=axes)

    def _inverse_fft(self, z: np.ndarray) -> np.ndarray:
        axes = tuple(range(1, z.ndim))
        if self.real:
            return np.fft.irfftn(z, s=self.grid, axes=axes)
        return np.fft.ifftn(z, axes=axes)

    def _multiply(self, spectrum: np.ndarray, adjoint: bool) -> np.ndarray:
        channels = spectrum.shape[0]
        freq_shape = spectrum.shape[1:]
        per_group = spectrum.reshape(self.groups, channels // self.groups, -1).transpose(2, 0, 1)[..., None]
        hat = np.conj(np.swapaxes(self.hat, 2, 3)) if adjoint else self.hat
        out = (hat @ per_group)[..., 0]  # (F, G, c)
        return out.transpose(1, 2, 0).reshape(-1, *freq_shape)

    def matvec(self, x: np.ndarray) -> np.ndarray:
        """``A x`` for ``x`` of shape ``(in_channels, *input_shape)`` (or flat).

        Returns:
            ``(out_channels, *output_shape)``, float64 or complex128.
        """
        x = self._reshaped("x", x, (self.in_channels, *self.input_shape))
        padded = np.zeros((self.in_channels, *self.grid), dtype=np.result_type(x, self.weight))
        padded[self._input_window()] = x
        full = self._inverse_fft(self._multiply(self._forward_fft(padded), adjoint=False))
        return full[self._output_samples()]

    def rmatvec(self, y: np.ndarray) -> np.ndarray:
        """``A^H y`` for ``y`` of shape ``(out_channels, *output_shape)`` (or flat).

        Returns:
            ``(in_channels, *input_shape)``, float64 or complex128.
        """
        y = self._reshaped("y", y, (self.out_channels, *self.output_shape))
        full = np.zeros((self.out_channels, *self.grid), dtype=np.result_type(y, self.weight))
        if all(len(np.unique(axis)) == len(axis) for axis in self._samples()):
            full[self._output_samples()] = y
        else:  # circular padding wider than the input: an input position feeds several outputs
            np.add.at(full, self._output_samples(), y)
        back = self._inverse_fft(self._multiply(self._forward_fft(full), adjoint=True))
        return back[self._input_window()]

    def _input_window(self) -> tuple[slice, ...]:
        """Index of the input inside the FFT grid (channels first)."""
        window = (slice(None), *(slice(o, o + n) for o, n in zip(self.offset, self.input_shape, strict=True)))
        return window

    def _output_samples(self) -> tuple[Any, ...]:
        """Index of the outputs among the stride-1 correlation's values (channels first)."""
        samples = (slice(None), *np.ix_(*self._samples()))
        return samples
