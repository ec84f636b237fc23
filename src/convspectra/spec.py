"""One normalised description of a convolution layer.

Every public entry point starts by calling :func:`parse_layer`, which validates the user's
arguments once, with messages that name the parameter, and returns

* a :class:`ConvSpec` (shapes, stride, dilation, groups, transposition) and
* the kernel as the weight of the *forward* convolution in channels-first layout
  ``(out_channels, in_channels // groups, k_1, ..., k_d)``, as a NumPy array or a
  ``torch.Tensor`` in the precision the computation runs in.

A transposed convolution is handled as the adjoint of its forward convolution: PyTorch's
``ConvTranspose`` weight ``(in_T, out_T // groups, k...)`` read as a channels-first
(``"OIHW"``) kernel, and TensorFlow's ``Conv2DTranspose`` kernel ``(k..., out_T, in_T)`` read
as a channels-last (``"HWIO"``) kernel, are exactly the weights of that forward convolution.
The adjoint has the same singular values.

Example:
    >>> import numpy as np
    >>> from convspectra.spec import parse_layer
    >>> spec, weight = parse_layer(np.zeros((3, 3, 4, 8)), 16, layout="HWIO", stride=2)
    >>> spec.out_channels, spec.in_channels, spec.input_shape, spec.output_shape
    (8, 4, (16, 16), (8, 8))
    >>> weight.shape
    (8, 4, 3, 3)
"""

from __future__ import annotations

import math
import numbers
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._backend import conv_module_types, dense_tensor, is_tensor, is_torch_module, module_geometry
from ._checks import MAX_SIZE, as_tuple, choice, describe, flag
from .errors import LayoutWarning, ParameterError, ParameterTypeError

__all__ = ["LAYOUTS", "MAX_DILATION", "ConvSpec", "layout_warning", "parse_kernel", "parse_layer"]

#: Accepted kernel layouts: name -> (where the channels are, number of spatial dims or None).
#: "OIHW" and "HWIO" name a family and accept any number of spatial dimensions (1 to 3);
#: the other names fix it.
LAYOUTS: dict[str, tuple[str, int | None]] = {
    "OIHW": ("first", None),
    "OIW": ("first", 1),
    "OIDHW": ("first", 3),
    "HWIO": ("last", None),
    "WIO": ("last", 1),
    "DHWIO": ("last", 3),
}

_MAX_SPATIAL_DIMS = 3

#: The largest dilation accepted: ``dilation * tap`` must stay within int64 for any kernel.
MAX_DILATION = 2**31 - 1

#: A default-layout kernel whose leading axes are all equal and at most this (a small square
#: kernel read as channels) may be a channels-last kernel: see :func:`layout_warning`.
_SMALL_KERNEL = 7


@dataclass(frozen=True)
class ConvSpec:
    """A convolution layer, normalised to its forward (non-transposed) convolution.

    Attributes:
        ndim: number of spatial dimensions d (1, 2 or 3).
        out_channels: output channels of the forward convolution.
        in_channels: input channels of the forward convolution.
        groups: number of channel groups.
        kernel_size: taps per spatial axis (k_1, ..., k_d).
        stride: stride per axis.
        dilation: dilation per axis.
        input_shape: spatial size n of the forward convolution's input (wrap-around grid).
        output_shape: spatial size m = n / stride of the forward convolution's output.
        transposed: whether the user's layer is the transposed convolution (the adjoint).
    """

    ndim: int
    out_channels: int
    in_channels: int
    groups: int
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    transposed: bool = False

    @property
    def aliases(self) -> int:
        """Number of input frequencies folded onto each output frequency (product of strides)."""
        return math.prod(self.stride)

    @property
    def matrix_shape(self) -> tuple[int, int]:
        """(rows, columns) of the dense matrix of the layer as the user sees it."""
        rows = self.out_channels * math.prod(self.output_shape)
        cols = self.in_channels * math.prod(self.input_shape)
        return (cols, rows) if self.transposed else (rows, cols)

    @property
    def num_singular_values(self) -> int:
        """min(rows, columns): the length of the full spectrum."""
        return min(self.matrix_shape)

    @property
    def block_shape(self) -> tuple[int, int]:
        """Shape of one group's transfer matrix at one frequency: (out/groups, aliases*in/groups)."""
        return (self.out_channels // self.groups, self.aliases * (self.in_channels // self.groups))


def _work_dtype_numpy(dtype: np.dtype) -> np.dtype:
    """The dtype the computation runs in for a NumPy kernel of this dtype."""
    if dtype.kind == "f":
        if dtype.itemsize <= 4:
            return np.dtype(np.float32)  # float16 is upcast: LAPACK has no half precision
        if dtype.itemsize == 8:
            return np.dtype(np.float64)
    elif dtype.kind == "c":
        if dtype.itemsize == 8:
            return np.dtype(np.complex64)
        if dtype.itemsize == 16:
            return np.dtype(np.complex128)
    elif dtype.kind in "iu":
        return np.dtype(np.float64)
    raise ParameterTypeError(
        f"kernel: expected a real or complex floating-point or integer dtype "
        f"(float16/32/64, complex64/128, int), got {dtype}"
    )


def _work_dtype_torch(tensor: Any) -> Any:
    torch = sys.modules["torch"]
    dtype = tensor.dtype
    if dtype in (torch.float32, torch.float64, torch.complex64, torch.complex128):
        return dtype
    if dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    if dtype == torch.complex32:
        return torch.complex64
    if not dtype.is_floating_point and not dtype.is_complex and dtype != torch.bool:
        return torch.float64
    raise ParameterTypeError(f"kernel: expected a floating-point, complex or integer tensor, got dtype {dtype}")


def layout_warning(shape: Sequence[int]) -> str | None:
    """Why a kernel of this shape, read in the default layout ``"OIHW"``, looks channels-last; None if it does not.

    The sign of a ``"HWIO"`` kernel read as ``"OIHW"``: its leading axes (the spatial kernel of
    the HWIO reading) are equal and small (at most 7), and its last two axes (the channels of the
    HWIO reading, the spatial kernel of the OIHW one) are both at least 8 and larger than those
    and, for 2 spatial axes, differ (an OIHW kernel is nearly always square). Small tests' kernels,
    such as ``(1, 1, 2, 3)`` or ``(3, 3, 3, 3)``, and kernels with one spatial axis never warn.

    Example:
        >>> from convspectra.spec import layout_warning
        >>> layout_warning((3, 3, 16, 32)).split(";")[0]
        "kernel: shape (3, 3, 16, 32) is read as 'OIHW' (3 out, 3 in channels, a 16x32 kernel) but looks like a \
channels-last 'HWIO' kernel (a 3x3 kernel, 16 in, 32 out channels)"
        >>> [layout_warning(shape) is None for shape in [(32, 16, 3, 3), (3, 3, 3, 3), (1, 1, 2, 3), (3, 3, 16, 16)]]
        [True, True, True, True]
    """
    shape = tuple(int(size) for size in shape)
    ndim = len(shape) - 2
    if ndim < 2:
        return None
    leading, trailing = shape[:ndim], shape[ndim:]
    side = leading[0]
    if any(size != side for size in leading) or side > _SMALL_KERNEL or min(trailing) <= max(side, _SMALL_KERNEL):
        return None
    if ndim == 2 and trailing[0] == trailing[1]:
        return None
    taps = "x".join(map(str, shape[2:]))
    hwio = "x".join(map(str, leading))
    return (
        f"kernel: shape {shape} is read as 'OIHW' ({shape[0]} out, {shape[1]} in channels, a {taps} kernel) but looks "
        f"like a channels-last 'HWIO' kernel (a {hwio} kernel, {trailing[0]} in, {trailing[1]} out channels); "
        "pass layout='HWIO' if it is one, or layout='OIHW' to confirm the reading (which silences this warning; "
        "so does warnings.filterwarnings('ignore', category=convspectra.LayoutWarning))"
    )


def _stacklevel() -> int:
    """The ``stacklevel`` of a warning that points at the first caller outside the convspectra package."""
    frame = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_globals.get("__name__", "").partition(".")[0] == "convspectra":
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level


def _kernel_from_module(module: Any, layout: str, overrides: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Weight and hyper-parameters of a torch conv module; explicit arguments must agree."""
    torch = sys.modules["torch"]
    weight = module.weight
    if isinstance(weight, torch.nn.parameter.UninitializedParameter):
        raise ParameterError(
            f"kernel: the {type(module).__name__} module has not been initialised yet "
            "(a lazy module); run one forward pass before asking for its spectrum"
        )
    if layout not in ("OIHW", "OIW", "OIDHW"):
        raise ParameterError(
            f"layout: a torch module's weight is channels-first; expected 'OIHW' (or omit it), got {layout!r}"
        )
    from_module = module_geometry(module)
    ndim = weight.dim() - 2
    for name, given in overrides.items():
        if given is None:
            continue
        mine = from_module[name]
        normalised = given if name in ("groups", "transposed") else as_tuple(name, given, ndim)
        if normalised != mine:
            raise ParameterError(
                f"{name}: the module {type(module).__name__} has {name}={mine!r}, but {name}={given!r} was "
                "passed; omit it to use the module's value"
            )
    return weight, from_module


def parse_layer(
    kernel: Any,
    input_shape: int | Sequence[int],
    *,
    layout: str | None = None,
    stride: int | Sequence[int] | None = None,
    dilation: int | Sequence[int] | None = None,
    groups: int | None = None,
    transposed: bool | None = None,
) -> tuple[ConvSpec, Any]:
    """Validate a layer description and normalise it (see the module docstring).

    Args:
        kernel: NumPy array (or anything ``np.asarray`` accepts, e.g. a JAX array), a
            ``torch.Tensor``, or a ``torch.nn.Conv1d/2d/3d`` / ``ConvTranspose1d/2d/3d`` module.
        input_shape: spatial size of the layer's input: an int (same on every axis) or one
            int per spatial axis (each at most ``2**62``). For a transposed layer this is the
            transposed layer's input. Required (``None`` is refused); functions that do not
            depend on it, such as the kernel-only bounds, call :func:`parse_kernel`.
        layout: ``"OIHW"`` (channels first, PyTorch; also ``"OIW"``, ``"OIDHW"``) or ``"HWIO"``
            (channels last, TensorFlow/JAX; also ``"WIO"``, ``"DHWIO"``). ``"OIHW"`` and
            ``"HWIO"`` accept any number of spatial dimensions; the others fix it. ``None``
            (the default) reads the kernel as ``"OIHW"`` and warns (:class:`~convspectra.errors.LayoutWarning`)
            when its shape looks channels-last (:func:`layout_warning`); an explicit layout never warns.
        stride, dilation: an int or one int per axis (default 1, or the module's); a stride at
            most ``2**62``, a dilation at most :data:`MAX_DILATION`.
        groups: channel groups (default 1, or the module's).
        transposed: the kernel is the weight of a transposed convolution (default False, or
            whether the module is a ``ConvTranspose``).

    Returns:
        ``(spec, weight)``: the :class:`ConvSpec` and the forward convolution's weight,
        ``(out, in // groups, k_1, ..., k_d)``, NumPy or torch as given, in the working
        precision (float32, float64, complex64 or complex128; float16/bfloat16 are upcast
        to float32, integers to float64).

    Raises:
        ParameterTypeError: an unsupported kernel type, tensor kind (sparse, quantized, nested,
            meta) or dtype, non-integer sizes, or no ``input_shape``.
        ParameterError: bad layout, dimensions, groups, stride, sizes, or a NaN/Inf kernel.

    Warns:
        LayoutWarning: ``layout`` was not given and the shape looks channels-last.
    """
    if input_shape is None:
        raise ParameterTypeError(
            "input_shape: expected the spatial size of the layer's input, an int or one int per spatial axis "
            "(e.g. 32 or (32, 32)), got None"
        )
    return _parse(kernel, input_shape, layout, stride, dilation, groups, transposed)


def parse_kernel(
    kernel: Any,
    *,
    layout: str | None = None,
    stride: int | Sequence[int] | None = None,
    dilation: int | Sequence[int] | None = None,
    groups: int | None = None,
    transposed: bool | None = None,
) -> tuple[ConvSpec, Any]:
    """:func:`parse_layer` for what does not depend on the input size (kernel-only bounds, padded layers).

    The spec's grid is the smallest the stride allows (``input_shape = stride``); callers that
    need a size check theirs themselves.

    Example:
        >>> import numpy as np
        >>> from convspectra.spec import parse_kernel
        >>> spec, weight = parse_kernel(np.zeros((4, 2, 3, 3)), stride=2)
        >>> spec.input_shape, spec.kernel_size
        ((2, 2), (3, 3))
    """
    return _parse(kernel, None, layout, stride, dilation, groups, transposed)


def _parse(
    kernel: Any,
    input_shape: int | Sequence[int] | None,
    layout: str | None,
    stride: int | Sequence[int] | None,
    dilation: int | Sequence[int] | None,
    groups: int | None,
    transposed: bool | None,
) -> tuple[ConvSpec, Any]:
    """The work of :func:`parse_layer` (``input_shape=None``: the grid ``stride``, for :func:`parse_kernel`)."""
    explicit = layout is not None
    layout = choice("layout", "OIHW" if layout is None else layout, sorted(LAYOUTS))
    forward_classes, transposed_classes = conv_module_types()
    if forward_classes and isinstance(kernel, forward_classes + transposed_classes):
        weight, from_module = _kernel_from_module(
            kernel, layout, {"stride": stride, "dilation": dilation, "groups": groups, "transposed": transposed}
        )
        stride, dilation = from_module["stride"], from_module["dilation"]
        groups, transposed = from_module["groups"], from_module["transposed"]
        layout, explicit = "OIHW", True
        weight = dense_tensor("kernel", weight)
    elif is_tensor(kernel):
        weight = dense_tensor("kernel", kernel)
    else:
        if is_torch_module(kernel):
            raise ParameterTypeError(
                "kernel: expected a NumPy array, a torch.Tensor or a torch.nn.Conv1d/2d/3d or "
                f"ConvTranspose1d/2d/3d module, got the module {describe(kernel)}"
            )
        if isinstance(kernel, (str, bytes, dict)) or kernel is None:
            raise ParameterTypeError(f"kernel: expected an array of kernel weights, got {describe(kernel)}")
        try:
            weight = np.asarray(kernel)
        except Exception as err:  # pragma: no cover - depends on exotic inputs
            raise ParameterTypeError(f"kernel: could not convert {describe(kernel)} to an array: {err}") from err

    is_torch = is_tensor(weight)
    work = _work_dtype_torch(weight) if is_torch else _work_dtype_numpy(weight.dtype)
    shape = tuple(int(size) for size in weight.shape)
    family, fixed_ndim = LAYOUTS[layout]
    ndim = len(shape) - 2
    if not 1 <= ndim <= _MAX_SPATIAL_DIMS or (fixed_ndim is not None and ndim != fixed_ndim):
        expected = f"{fixed_ndim + 2}" if fixed_ndim is not None else "3, 4 or 5"
        raise ParameterError(
            f"kernel: expected {expected} dimensions for layout {layout!r} "
            f"(two channel axes and 1 to {_MAX_SPATIAL_DIMS} spatial axes), got shape {shape}"
        )
    if any(size == 0 for size in shape):
        raise ParameterError(f"kernel: expected no empty axis, got shape {shape}")
    if not explicit:
        message = layout_warning(shape)
        if message is not None:
            warnings.warn(message, LayoutWarning, stacklevel=_stacklevel())

    if family == "last":  # (k..., I/G, O) -> (O, I/G, k...)
        order = (ndim + 1, ndim, *range(ndim))
        weight = weight.permute(*order) if is_torch else np.transpose(weight, order)

    stride_t = as_tuple("stride", 1 if stride is None else stride, ndim)
    input_shape_t = as_tuple("input_shape", input_shape, ndim) if input_shape is not None else stride_t
    dilation_t = as_tuple("dilation", 1 if dilation is None else dilation, ndim, maximum=MAX_DILATION)
    groups_i = 1 if groups is None else groups
    if isinstance(groups_i, (bool, np.bool_)) or not isinstance(groups_i, numbers.Integral):
        raise ParameterTypeError(f"groups: expected a positive int, got {groups!r}")
    groups_i = int(groups_i)
    transposed_b = False if transposed is None else flag("transposed", transposed)

    out_channels, in_per_group = int(weight.shape[0]), int(weight.shape[1])
    if groups_i < 1 or out_channels % groups_i:
        what = "in_channels of the transposed layer" if transposed_b else "out_channels"
        raise ParameterError(
            f"groups: expected a positive divisor of the kernel's {what} ({out_channels}, kernel shape "
            f"{shape} in layout {layout!r}), got {groups_i}"
        )

    if transposed_b:
        output_shape = input_shape_t
        forward_input = tuple(m * s for m, s in zip(input_shape_t, stride_t, strict=True))
        if max(forward_input) > MAX_SIZE:
            raise ParameterError(
                f"input_shape: expected a transposed layer's output (input_shape x stride) of at most 2**62 per "
                f"axis, got {forward_input} for input_shape {input_shape_t} and stride {stride_t}"
            )
    else:
        bad = [(n, s) for n, s in zip(input_shape_t, stride_t, strict=True) if n % s]
        if bad:
            raise ParameterError(
                f"stride: expected a stride that divides every input side, got stride {stride_t} for "
                f"input_shape {input_shape_t}; the exact spectrum of a strided wrap-around convolution is "
                "defined here only when each side is a multiple of its stride (crop or pad the input)"
            )
        forward_input = input_shape_t
        output_shape = tuple(n // s for n, s in zip(input_shape_t, stride_t, strict=True))

    weight = weight.to(work) if is_torch else weight.astype(work, copy=False)
    finite = sys.modules["torch"].isfinite(weight) if is_torch else np.isfinite(weight)
    count = int((~finite).sum())
    if count:
        raise ParameterError(f"kernel: expected finite values, got {count} NaN or infinite entries (shape {shape})")

    spec = ConvSpec(
        ndim=ndim,
        out_channels=out_channels,
        in_channels=in_per_group * groups_i,
        groups=groups_i,
        kernel_size=tuple(int(k) for k in weight.shape[2:]),
        stride=stride_t,
        dilation=dilation_t,
        input_shape=forward_input,
        output_shape=output_shape,
        transposed=transposed_b,
    )
    return spec, weight
