"""What :func:`convspectra.operator_norm` is asked: the layer as computed, its boundary, the solver's options.

A request is validated once and normalised to a :class:`NormRequest`: the forward convolution
(a transposed layer is the adjoint of its forward convolution, whose input is the transposed
layer's output), its padding as ``(left, right)`` pairs per axis, and one of three boundary
modes:

* ``"wrap"``: the wrap-around layer of the paper, exact by branch and bound. This is
  ``padding="circular"``, and also a circular ``padding_mode`` whose outputs tile the input (a
  shifted wrap-around layer);
* ``"zeros"``: PyTorch zero padding (an int, one int per axis, ``"same"``, ``"valid"``, or a
  module's own);
* ``"circular"``: a module's circular ``padding_mode`` whose outputs do not tile the input.

Example:
    >>> import numpy as np
    >>> from convspectra.norm._request import resolve_request
    >>> request = resolve_request(np.ones((2, 3, 3, 3)), (8, 8), padding="same")
    >>> request.mode, request.padding, request.spec.output_shape, request.rtol, request.max_iter
    ('zeros', ((1, 1), (1, 1)), (8, 8), 1e-06, 3000)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._backend import is_torch_module, to_numpy
from .._checks import as_tuple, choice, flag, integer, real
from .._memory import resolve_budget
from .._rescale import exponent_of, scale_down
from .._threads import resolve_workers
from ..errors import ParameterError
from ..spec import ConvSpec, parse_kernel, parse_layer
from ._operator import padded_output_shape, padding_pairs

__all__ = ["DEFAULT_MAX_ITER", "DEFAULT_RTOL", "PADDINGS", "NormRequest", "resolve_request"]

#: The Lanczos solver's default relative residual target (padded layers).
DEFAULT_RTOL = 1e-6
#: The Lanczos solver's default budget of products with ``A^H A`` (padded layers).
DEFAULT_MAX_ITER = 3000
#: The padding names ``operator_norm`` accepts (besides an int or one int per axis).
PADDINGS = ("circular", "module", "same", "valid")


@dataclass(frozen=True)
class NormRequest:
    """A validated request: the forward convolution, its boundary handling, the solver's options.

    Attributes:
        spec: the forward convolution on the input ``input_shape`` (its ``output_shape`` is the
            padded layer's real output size).
        weight: the forward weight, NumPy or torch as given (working precision).
        mode: ``"wrap"``, ``"zeros"`` or ``"circular"`` (see the module docstring).
        input_shape: the forward convolution's input size n.
        padding: ``(left, right)`` per axis (zeros for ``"wrap"`` given as ``padding="circular"``).
        rtol, max_iter: the iterative solver's residual target and product budget.
        workers: threads for the per-frequency decompositions.
        max_memory: the byte budget.
        refine: padded layers: run the iterative solver (False: only the certified bracket from
            the circular layer on the enlarged grid and its top singular vector).
        time_limit: padded layers: seconds after which the iterative solver stops and the
            bracket reached so far is returned (None: no limit).
        exponent: the solvers work on the weight divided by ``2**exponent`` and scale back; 0
            as resolved, set by :meth:`at_unit_scale` (see :mod:`convspectra._rescale`).
    """

    spec: ConvSpec
    weight: Any
    mode: str
    input_shape: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    rtol: float
    max_iter: int
    workers: int
    max_memory: int
    refine: bool = True
    time_limit: float | None = None
    exponent: int = 0

    def numpy_weight(self) -> np.ndarray:
        """The forward weight as NumPy float64 (complex128 for a complex kernel)."""
        array = to_numpy(self.weight)
        return array.astype(np.complex128 if np.iscomplexobj(array) else np.float64, copy=False)

    @property
    def is_complex(self) -> bool:
        """Whether the kernel is complex (read from its dtype; nothing is copied)."""
        weight = self.weight
        return bool(weight.is_complex()) if hasattr(weight, "is_complex") else bool(np.iscomplexobj(weight))

    def at_unit_scale(self) -> NormRequest:
        """This request with ``exponent`` set so that the working weight's largest entry is in ``[0.5, 1)``."""
        return dataclasses.replace(self, exponent=exponent_of(self.weight))

    def enlarged_grid(self) -> tuple[int, ...]:
        """A grid on which the circular layer contains the zero-padded one: ``n + p_left + p_right``,
        rounded up to a multiple of the stride (the padded solver's certificate)."""
        return tuple(
            -(-(n + pl + pr) // s) * s
            for n, (pl, pr), s in zip(self.input_shape, self.padding, self.spec.stride, strict=True)
        )

    def working_weight(self) -> np.ndarray:
        """:meth:`numpy_weight` divided by ``2**exponent`` (exactly): what the solvers work on."""
        return np.asarray(scale_down(self.numpy_weight(), self.exponent))


def _pairs(padding: Any, spec: ConvSpec, name: str) -> tuple[tuple[int, int], ...]:
    """PyTorch's padding forms (an int, one int per axis, ``"same"``, ``"valid"``), or one ``(left, right)``
    pair per axis, as (left, right) pairs."""
    d = spec.ndim
    if isinstance(padding, str):
        choice(name, padding, ("same", "valid") if name != "padding" else PADDINGS)
        if padding == "valid":
            return ((0, 0),) * d
        if any(s != 1 for s in spec.stride):
            raise ParameterError(
                f"{name}: 'same' needs stride 1 (as in PyTorch), got stride {spec.stride}; pass explicit padding"
            )
        totals = [dl * (k - 1) for dl, k in zip(spec.dilation, spec.kernel_size, strict=True)]
        return tuple((t // 2, t - t // 2) for t in totals)
    if padding is None:  # refused here (a type error), as ever: operator_norm has no "no padding" None
        return tuple((p, p) for p in as_tuple(name, padding, d, minimum=0))  # the usual type error
    return padding_pairs(padding, d, name)  # also one (left, right) pair per axis (TF, JAX, ONNX: uneven "SAME")


def _module_padding(kernel: Any, spec: ConvSpec) -> tuple[str, tuple[tuple[int, int], ...], tuple[int, ...]]:
    """``(mode, pairs, output_padding)`` read from a torch conv module (``padding="module"``)."""
    if not is_torch_module(kernel):
        raise ParameterError(
            "padding: 'module' reads a torch conv module's own padding, but the kernel is "
            f"{type(kernel).__name__}; pass the padding explicitly"
        )
    padding_mode = getattr(kernel, "padding_mode", "zeros")
    if padding_mode not in ("zeros", "circular"):
        raise ParameterError(
            f"padding: the module's padding_mode is {padding_mode!r}; expected 'zeros' or 'circular' "
            "(reflect and replicate padding are not linear maps of the input alone with a fixed kernel layout "
            "supported here)"
        )
    pairs = _pairs(kernel.padding, spec, "padding (from the module)")
    output_padding = tuple(int(v) for v in kernel.output_padding) if spec.transposed else (0,) * spec.ndim
    return padding_mode, pairs, output_padding


def _transposed_input(
    n_user: tuple[int, ...], spec: ConvSpec, pairs: tuple[tuple[int, int], ...], output_padding: tuple[int, ...]
) -> tuple[int, ...]:
    """The forward convolution's input: the ``ConvTranspose`` layer's output size for the input ``n_user``."""
    n = tuple(
        (nt - 1) * si - pl - pr + di * (ki - 1) + op + 1
        for nt, si, (pl, pr), di, ki, op in zip(
            n_user, spec.stride, pairs, spec.dilation, spec.kernel_size, output_padding, strict=True
        )
    )
    if min(n) < 1:
        raise ParameterError(
            f"input_shape: the transposed layer's output would be {n} for input {n_user} and padding {pairs}; "
            "expected a positive size"
        )
    return n


def _layer(
    kernel: Any,
    input_shape: Any,
    padding: Any,
    geometry: dict[str, Any],
) -> tuple[ConvSpec, Any, str, tuple[int, ...], tuple[tuple[int, int], ...]]:
    """``(spec, weight, mode, input_shape, padding)`` of the layer as it is computed."""
    if isinstance(padding, str) and padding == "circular":
        spec, weight = parse_layer(kernel, input_shape, **geometry)
        return spec, weight, "wrap", spec.input_shape, ((0, 0),) * spec.ndim
    spec0, weight = parse_kernel(kernel, **geometry)
    d = spec0.ndim
    n_user = as_tuple("input_shape", input_shape, d)
    mode, output_padding = "zeros", (0,) * d
    if isinstance(padding, str) and padding == "module":
        mode, pairs, output_padding = _module_padding(kernel, spec0)
    else:
        pairs = _pairs(padding, spec0, "padding")
    k, s, dl = spec0.kernel_size, spec0.stride, spec0.dilation
    if spec0.transposed:
        if mode != "zeros":
            raise ParameterError(f"padding: transposed convolutions support only zero padding, got mode {mode!r}")
        n = _transposed_input(n_user, spec0, pairs, output_padding)
    else:
        n = n_user
    m = padded_output_shape(n, pairs, kernel_size=k, stride=s, dilation=dl)
    if mode == "circular":
        if any(max(pair) > ni for pair, ni in zip(pairs, n, strict=True)):
            raise ParameterError(f"padding: circular padding {pairs} larger than the input {n} (PyTorch refuses it)")
        if all(mi * si == ni for mi, si, ni in zip(m, s, n, strict=True)):  # a shifted wrap-around layer
            spec, weight = parse_layer(weight, n, layout="OIHW", stride=s, dilation=dl, groups=spec0.groups)
            return spec, weight, "wrap", n, pairs
    spec = ConvSpec(
        ndim=d,
        out_channels=spec0.out_channels,
        in_channels=spec0.in_channels,
        groups=spec0.groups,
        kernel_size=k,
        stride=s,
        dilation=dl,
        input_shape=n,
        output_shape=m,
        transposed=spec0.transposed,
    )
    return spec, weight, mode, n, pairs


def resolve_request(
    kernel: Any,
    input_shape: int | Sequence[int],
    *,
    padding: Any = "circular",
    layout: str | None = None,
    stride: Any = None,
    dilation: Any = None,
    groups: Any = None,
    transposed: Any = None,
    rtol: Any = None,
    max_iter: Any = None,
    workers: Any = None,
    max_memory: Any = None,
    refine: Any = True,
    time_limit: Any = None,
) -> NormRequest:
    """Validate the arguments of :func:`convspectra.operator_norm` and normalise them.

    Args:
        kernel, input_shape, padding, layout, stride, dilation, groups, transposed, rtol,
            max_iter, workers, max_memory, refine, time_limit: as
            :func:`convspectra.operator_norm_bounds` (``None``: the default).

    Returns:
        The :class:`NormRequest`.

    Raises:
        ParameterError, ParameterTypeError: the first bad argument, named.
    """
    rtol_f = real(
        "rtol", DEFAULT_RTOL if rtol is None else rtol, minimum=0, maximum=1, open_below=True, open_above=True
    )
    max_iter_i = integer("max_iter", DEFAULT_MAX_ITER if max_iter is None else max_iter)
    geometry = {"layout": layout, "stride": stride, "dilation": dilation, "groups": groups, "transposed": transposed}
    spec, weight, mode, n, pairs = _layer(kernel, input_shape, padding, geometry)
    refine_b = flag("refine", refine)
    limit = None if time_limit is None else real("time_limit", time_limit, minimum=0, open_below=True)
    budget = resolve_budget(max_memory)
    return NormRequest(
        spec, weight, mode, n, pairs, rtol_f, max_iter_i, resolve_workers(workers), budget, refine_b, limit
    )
