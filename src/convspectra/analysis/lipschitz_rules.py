r"""Lipschitz constants (l2 to l2) of the elementwise activations and pooling layers of common networks.

Each constant is the exact global Lipschitz constant of the operation, i.e. ``sup |f'|`` for an
elementwise ``f`` (applied to every entry, the map on tensors has the same constant), so it is
the smallest number the network bound can use for it:

=====================================  ==========================  ==================================
operation                              constant                    why
=====================================  ==========================  ==================================
ReLU, ReLU6, Hardtanh, Tanh, Softplus   1                           slopes in [0, 1]
LeakyReLU(slope), PReLU(a)              ``max(1, |slope|)``         the two slopes
ELU(alpha), CELU                        ``max(1, alpha)``, 1        ``alpha e^x`` on x < 0
SELU                                    ``scale * alpha`` = 1.7581  ``scale * alpha * e^x`` on x < 0
Sigmoid                                 1/4                         ``sigma' = sigma (1 - sigma)``
Hardsigmoid                             1/6                         ``relu6(x + 3) / 6``
Hardswish                               3/2                         ``(2x + 3) / 6`` on (-3, 3)
SiLU (swish)                            :data:`SILU` = 1.0998       ``max sigma(x)(1 + x(1 - sigma(x)))``
GELU (erf)                              :data:`GELU` = 1.1289       ``Phi(x) + x phi(x)``, max at sqrt 2
GELU (tanh approximation)               :data:`GELU_TANH` = 1.1290  computed, max near x = 1.4185
Mish                                    :data:`MISH` = 1.0885       computed, max near x = 1.4906
Softsign, Tanhshrink, LogSigmoid,       1                           slopes in [0, 1]
Softshrink
Softmax (along any axis)                1                           Jacobian ``diag(p) - p p^T``: PSD,
                                                                    ``<= diag(p) <= I``
=====================================  ==========================  ==================================

The four non-elementary constants were computed once in 30-digit arithmetic (``mpmath``:
a root of ``f''`` by ``findroot``, then ``f'`` there) and are stored to double precision; the
tests check each against the largest finite-difference slope on a fine grid.

Pooling: average pooling (any kernel, stride, padding, ``ceil_mode``, ``count_include_pad``,
``divisor_override``) is linear and separable, so its exact norm is the product of one small
matrix norm per spatial axis (:func:`avg_pool_norm`), the matrices being PyTorch's own pooling
applied to an identity basis; adaptive average pooling likewise (:func:`adaptive_avg_pool_norm`).
Max pooling has Lipschitz constant exactly ``sqrt(N)`` with ``N`` the largest number of windows
that share one input position (:func:`max_pool_factor`): ``|max_w x - max_w y| <= max_w |x - y|``
per window, and summing the squares over windows counts each input position at most ``N``
times; a single spike at a position shared by ``N`` windows attains it. For non-overlapping
windows (kernel <= stride) ``N = 1``.

Example:
    >>> from convspectra.analysis.lipschitz_rules import SILU, avg_pool_norm, max_pool_factor
    >>> round(SILU, 4)
    1.0998
    >>> max_pool_factor((112, 112), (56, 56), kernel=3, stride=2, padding=1)  # ResNet's stem pool
    2.0
    >>> round(avg_pool_norm((8, 8), kernel=2, stride=2), 12)                 # 1 / sqrt(4)
    0.5
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "GELU",
    "GELU_TANH",
    "MISH",
    "SELU",
    "SILU",
    "adaptive_avg_pool_norm",
    "avg_pool_norm",
    "max_pool_factor",
]

#: ``max_x d/dx [x sigma(x)]`` at x = 2.399357280515..., sup of |SiLU'| (the minimum slope is -0.0998).
SILU = 1.0998393201288669
#: ``max_x d/dx [x Phi(x)] = Phi(sqrt 2) + sqrt 2 phi(sqrt 2)``: exact GELU (``approximate="none"``).
GELU = 1.1289041451851548
#: the same for GELU's tanh approximation (``approximate="tanh"``), max at x = 1.418504008790...
GELU_TANH = 1.1289930686587717
#: ``max_x d/dx [x tanh(softplus(x))]`` at x = 1.490571179485...
MISH = 1.0884981612517279
#: ``scale * alpha`` of SELU (its slope on x < 0 tends to it at 0).
SELU = 1.0507009873554804934193349852946 * 1.6732632423543772848170429916717


def _tuple(value: Any, ndim: int, default: Any = None) -> tuple[int, ...]:
    if value is None or value == () or value == []:
        value = default
    if isinstance(value, int):
        return (value,) * ndim
    values = tuple(int(v) for v in value)
    return values * ndim if len(values) == 1 else values


def adaptive_avg_pool_norm(input_shape: Sequence[int], output_shape: Sequence[int]) -> float:
    """Exact operator norm of ``adaptive_avg_pool`` from ``input_shape`` to ``output_shape`` (spatial sizes).

    The pooling is separable: its matrix is the Kronecker product of one averaging matrix per
    axis (PyTorch's bins ``[floor(i n / m), ceil((i + 1) n / m))``), so its norm is the product of
    theirs.

    Example:
        >>> from convspectra.analysis.lipschitz import adaptive_avg_pool_norm
        >>> round(adaptive_avg_pool_norm((8, 8), (1, 1)), 12)    # global average pooling: 1 / sqrt(64)
        0.125
    """
    norm = 1.0
    for n, m in zip(input_shape, output_shape, strict=True):
        matrix = np.zeros((m, n))
        for i in range(m):
            start, stop = (i * n) // m, -((-(i + 1) * n) // m)
            matrix[i, start:stop] = 1.0 / (stop - start)
        norm *= float(np.linalg.norm(matrix, 2))
    return norm


def _axis_matrix(n: int, axis: int, ndim: int, kernel: int, stride: int, padding: int, **options: Any) -> np.ndarray:
    """PyTorch's pooling along one axis (kernel 1 elsewhere) applied to the n unit vectors: an (out, n) matrix."""

    def along(value: int, other: int) -> tuple[int, ...]:
        return tuple(value if i == axis else other for i in range(ndim))

    basis = torch.eye(n, dtype=torch.float64).reshape(n, 1, *along(n, 1))
    pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[ndim]
    out = pool(basis, along(kernel, 1), along(stride, 1), along(padding, 0), **options)
    return out.reshape(n, -1).T.numpy()


def avg_pool_norm(
    input_shape: Sequence[int],
    *,
    kernel: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> float:
    """Exact operator norm of ``avg_pool{1,2,3}d`` on inputs of spatial size ``input_shape``.

    Average pooling is linear and acts on every channel alike; its divisor is a product of one
    factor per axis (the window's extent along it, clipped to the padded or, with
    ``count_include_pad=False``, the unpadded input), so its matrix is the Kronecker product of one
    matrix per axis and the norm the product of theirs. Each axis matrix is obtained from
    PyTorch's own pooling applied to the unit vectors. With ``divisor_override=d`` the matrix is
    the 0/1 window pattern divided by ``d``.

    Args:
        input_shape: the spatial size of the input (1 to 3 axes).
        kernel, stride, padding, ceil_mode, count_include_pad, divisor_override: as in
            ``torch.nn.AvgPool2d`` (stride None: the kernel).

    Example:
        >>> from convspectra.analysis.lipschitz_rules import avg_pool_norm
        >>> round(avg_pool_norm((6,), kernel=3, stride=1, padding=1), 6)  # overlapping windows, zero padding
        0.933979
        >>> avg_pool_norm((4, 4), kernel=4, divisor_override=1)           # a window sum: sqrt(16)
        4.0
    """
    ndim = len(input_shape)
    kernels = _tuple(kernel, ndim)
    strides = _tuple(stride, ndim, default=kernels)
    paddings = _tuple(padding, ndim, default=0)
    norm = 1.0
    for axis, n in enumerate(input_shape):
        options = {"ceil_mode": bool(ceil_mode), "count_include_pad": bool(count_include_pad)}
        if divisor_override is not None:  # the 0/1 window pattern (divided by the override below)
            options["count_include_pad"] = True
        matrix = _axis_matrix(int(n), axis, ndim, kernels[axis], strides[axis], paddings[axis], **options)
        if divisor_override is not None:
            matrix = (matrix > 0).astype(np.float64)
        norm *= float(np.linalg.norm(matrix, 2)) if matrix.size else 0.0
    if divisor_override is not None:
        norm /= abs(float(divisor_override))
    return norm


def max_pool_factor(
    input_shape: Sequence[int],
    output_shape: Sequence[int],
    *,
    kernel: Any,
    stride: Any = None,
    padding: Any = 0,
    dilation: Any = 1,
) -> float:
    """The Lipschitz constant of ``max_pool`` from ``input_shape`` to ``output_shape``: ``sqrt(N)``.

    ``N`` is the largest number of pooling windows that contain one input position (the
    windows are products of per-axis windows, so ``N`` is the product of the per-axis maxima);
    see the module docstring for why ``sqrt(N)`` is exact. ``output_shape`` is the size PyTorch
    produced (it settles ``ceil_mode``).

    Example:
        >>> from convspectra.analysis.lipschitz_rules import max_pool_factor
        >>> max_pool_factor((8, 8), (4, 4), kernel=2)   # non-overlapping windows
        1.0
    """
    ndim = len(input_shape)
    kernels = _tuple(kernel, ndim)
    strides = _tuple(stride, ndim, default=kernels)
    paddings = _tuple(padding, ndim, default=0)
    dilations = _tuple(dilation, ndim, default=1)
    count = 1
    for n, m, k, s, p, d in zip(input_shape, output_shape, kernels, strides, paddings, dilations, strict=True):
        cover = np.zeros(int(n), dtype=np.int64)
        for j in range(int(m)):
            taps = j * s - p + d * np.arange(k)
            taps = taps[(taps >= 0) & (taps < n)]
            cover[taps] += 1
        count *= int(cover.max()) if cover.size else 0
    return math.sqrt(count)


def activation_constant(module: Any) -> tuple[float, str] | None:
    """``(constant, rule)`` of an activation / identity-like module, or None when it is not one of them.

    Example:
        >>> import torch
        >>> from convspectra.analysis.lipschitz_rules import activation_constant
        >>> activation_constant(torch.nn.Hardswish())
        (1.5, 'Hardswish: max slope (2x + 3) / 6 at x = 3')
    """
    nn = torch.nn
    if isinstance(module, (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)):
        return 1.0, f"{type(module).__name__} (eval): identity"
    if isinstance(module, (nn.Flatten, nn.Unflatten)):
        return 1.0, f"{type(module).__name__}: reshape, an isometry"
    if isinstance(module, (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.Tanh, nn.Softsign, nn.Tanhshrink, nn.LogSigmoid)):
        return 1.0, f"{type(module).__name__}: slopes in [0, 1]"
    if isinstance(module, (nn.Softplus, nn.Softshrink, nn.CELU)):
        return 1.0, f"{type(module).__name__}: slopes in [0, 1]"
    if isinstance(module, (nn.Softmax, nn.Softmax2d, nn.Softmin)):
        return 1.0, f"{type(module).__name__}: Jacobian diag(p) - pp^T, norm <= 1"
    if isinstance(module, nn.LeakyReLU):
        slope = abs(float(module.negative_slope))
        return max(1.0, slope), f"LeakyReLU: max(1, |slope {module.negative_slope}|)"
    if isinstance(module, nn.PReLU):
        slope = float(module.weight.detach().abs().max())
        return max(1.0, slope), "PReLU: max(1, max |a|) over its learned slopes"
    if isinstance(module, nn.ELU):
        return max(1.0, abs(float(module.alpha))), f"ELU: max(1, |alpha {module.alpha}|)"
    if isinstance(module, nn.SELU):
        return SELU, "SELU: scale * alpha"
    if isinstance(module, nn.Sigmoid):
        return 0.25, "Sigmoid: max slope 1/4 at 0"
    if isinstance(module, nn.Hardsigmoid):
        return 1.0 / 6.0, "Hardsigmoid: slope 1/6"
    if isinstance(module, nn.Hardswish):
        return 1.5, "Hardswish: max slope (2x + 3) / 6 at x = 3"
    if isinstance(module, nn.SiLU):
        return SILU, "SiLU: max slope 1.09984 at x = 2.39936"
    if isinstance(module, nn.Mish):
        return MISH, "Mish: max slope 1.08850 at x = 1.49057"
    if isinstance(module, nn.GELU):
        if module.approximate == "tanh":
            return GELU_TANH, "GELU (tanh): max slope 1.12899 at x = 1.41850"
        return GELU, "GELU: max slope Phi(sqrt 2) + sqrt 2 phi(sqrt 2) = 1.12890"
    return None


#: ``function -> (constant, rule)`` for the functional forms (``torch.relu``, ``F.gelu``, ...); see
#: :func:`function_constant` for the ones whose constant depends on arguments.
_FUNCTIONS: dict[Any, tuple[float, str]] = {}
for _name in ("relu", "relu_", "tanh", "clone", "flatten", "reshape", "squeeze", "unsqueeze", "permute", "transpose"):
    if hasattr(torch, _name):
        _FUNCTIONS[getattr(torch, _name)] = (1.0, f"torch.{_name}: slopes in [0, 1] / an isometry")
for _fn in (F.relu, F.relu_, F.relu6, F.hardtanh, F.softplus, F.softsign, F.tanhshrink, F.logsigmoid, F.softshrink):
    _FUNCTIONS[_fn] = (1.0, f"F.{_fn.__name__}: slopes in [0, 1]")
for _fn in (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout):
    _FUNCTIONS[_fn] = (1.0, f"F.{_fn.__name__} (eval): identity")
for _fn in (F.softmax, F.softmin, torch.softmax):
    _FUNCTIONS[_fn] = (1.0, "softmax: Jacobian diag(p) - pp^T, norm <= 1")
_FUNCTIONS.update(
    {
        torch.sigmoid: (0.25, "sigmoid: max slope 1/4"),
        F.sigmoid: (0.25, "sigmoid: max slope 1/4"),
        F.hardsigmoid: (1.0 / 6.0, "hardsigmoid: slope 1/6"),
        F.hardswish: (1.5, "hardswish: max slope (2x + 3) / 6 at x = 3"),
        F.silu: (SILU, "silu: max slope 1.09984"),
        F.mish: (MISH, "mish: max slope 1.08850"),
        F.selu: (SELU, "selu: scale * alpha"),
        torch.selu: (SELU, "selu: scale * alpha"),
        F.celu: (1.0, "celu: slopes in (0, 1]"),
    }
)
if hasattr(F, "tanh"):
    _FUNCTIONS[F.tanh] = (1.0, "tanh: slopes in (0, 1]")

#: ``method name -> (constant, rule)`` for tensor methods as fx records them (``x.relu()``...).
METHODS: dict[str, tuple[float, str]] = {
    **{name: (1.0, f".{name}(): slopes in [0, 1]") for name in ("relu", "relu_", "tanh", "tanh_")},
    **{
        name: (1.0, f".{name}(): a reshape / copy, an isometry")
        for name in (
            "flatten",
            "view",
            "reshape",
            "contiguous",
            "permute",
            "transpose",
            "squeeze",
            "unsqueeze",
            "clone",
            "detach",
            "float",
            "double",
            "to",
            "expand_as",
            "type_as",
        )
    },
    "neg": (1.0, ".neg(): an isometry"),
    "sigmoid": (0.25, ".sigmoid(): max slope 1/4"),
    "sigmoid_": (0.25, ".sigmoid_(): max slope 1/4"),
    "softmax": (1.0, ".softmax(): Jacobian diag(p) - pp^T, norm <= 1"),
}


def _argument(args: Sequence[Any], kwargs: dict[str, Any], index: int, name: str, default: Any) -> Any:
    return kwargs.get(name, args[index] if len(args) > index else default)


def function_constant(target: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> tuple[float, str] | None:
    """``(constant, rule)`` of a functional activation as an fx ``call_function`` node has it, or None.

    Example:
        >>> import torch.nn.functional as F
        >>> from convspectra.analysis.lipschitz_rules import function_constant
        >>> function_constant(F.gelu, (None,), {"approximate": "tanh"})[0]
        1.1289930686587717
    """
    if target is F.gelu:
        if _argument(args, kwargs, 1, "approximate", "none") == "tanh":
            return GELU_TANH, "F.gelu (tanh): max slope 1.12899"
        return GELU, "F.gelu: max slope 1.12890"
    if target is F.leaky_relu:
        slope = float(_argument(args, kwargs, 1, "negative_slope", 0.01))
        return max(1.0, abs(slope)), f"F.leaky_relu: max(1, |slope {slope}|)"
    if target is F.elu:
        alpha = float(_argument(args, kwargs, 1, "alpha", 1.0))
        return max(1.0, abs(alpha)), f"F.elu: max(1, |alpha {alpha}|)"
    try:
        return _FUNCTIONS.get(target)
    except TypeError:  # an unhashable target
        return None
