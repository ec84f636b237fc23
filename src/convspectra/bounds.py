r"""The paper's cheap bounds on the operator norm, and the reshaped-kernel norm.

For a convolution with kernel :math:`K_{c,d,t}` (output channel c, input channel d, tap t),
let :math:`S_{cd} = \sum_t |K_{c,d,t}|`. Sedghi, Gupta & Long (2019) bound the operator norm
:math:`\|A\|_2` by

* Proposition 6 / the right-hand side of Proposition 11: :math:`\sum_{c,d,t} |K_{c,d,t}|`
  (:func:`l1_bound`);
* Proposition 11, corrected: :math:`\sigma_{\max}(S)` (:func:`channel_l1_bound`; the paper's
  :math:`\sqrt{\sum_c \max_d S_{cd}^2}` is not a bound);
* Proposition 7: for a kernel with non-negative entries the norm is exact,
  :math:`\|A\|_2 = \sigma_{\max}(\sum_t K_{:,:,t})` — the single-channel statement is
  :math:`\sum_t K_t`; with channels it is the norm of the frequency-0 transfer matrix, which
  dominates every other frequency entrywise (:func:`nonnegative_norm`).

Every function works on the kernel divided by the power of two that brings its largest entry
into ``[0.5, 1)`` and scales the result back (:mod:`convspectra._rescale`): the squares inside do
not underflow at 1e-300 nor overflow at 1e300, and results are bit-identical otherwise.

These bounds hold for every input size, for circular and for zero padding (a zero-padded layer
is a restriction of a circular one), for stride (rows of the stride-1 operator) and dilation.

:func:`reshaped_norm` is what ``torch.nn.utils.spectral_norm`` and Miyato et al. (2018)
normalise: the largest singular value of the kernel reshaped to ``out x (in * k_1 ... k_d)``.
It is *not* a bound in either direction. Footnote 2 of the paper: the all-ones 1x1x2x2 kernel
has operator norm 4 but reshaped norm 2.

Example:
    >>> import numpy as np, convspectra as cs
    >>> kernel = np.ones((1, 1, 2, 2))
    >>> float(cs.operator_norm(kernel, 8)), float(cs.bounds.reshaped_norm(kernel))
    (4.0, 2.0)
    >>> float(cs.bounds.l1_bound(kernel)), float(cs.bounds.nonnegative_norm(kernel))
    (4.0, 4.0)

References:
    H. Sedghi, V. Gupta, P. M. Long. The Singular Values of Convolutional Layers. ICLR 2019.
    T. Miyato, T. Kataoka, M. Koyama, Y. Yoshida. Spectral Normalization for Generative
    Adversarial Networks. ICLR 2018.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._backend import is_tensor
from ._rescale import exponent_of, scale_down, scale_up
from .errors import ParameterError
from .spec import parse_kernel

__all__ = ["channel_l1_bound", "l1_bound", "nonnegative_norm", "reshaped_norm"]


def _weight(kernel: Any, layout: str | None, groups: int | None, transposed: bool | None) -> tuple[Any, int]:
    """``(weight / 2**e, e)``: the forward weight at unit scale, and the exponent to scale results back."""
    _, weight = parse_kernel(kernel, layout=layout, groups=groups, transposed=transposed)
    e = exponent_of(weight)
    return scale_down(weight, e), e


def _group_sums(weight: Any, groups: int) -> Any:
    """``S`` per group: ``(groups, out/groups, in/groups)`` sums of |K| over the taps."""
    out_channels, in_per_group = weight.shape[0], weight.shape[1]
    flat = weight.reshape(out_channels, in_per_group, -1)
    sums = flat.abs().sum(-1) if is_tensor(flat) else np.abs(flat).sum(-1)
    return sums.reshape(groups, out_channels // groups, in_per_group)


def l1_bound(
    kernel: Any, *, layout: str | None = None, groups: int | None = None, transposed: bool | None = None
) -> Any:
    r"""Proposition 6 / 11 (right-hand side): :math:`\|A\|_2 \le \sum_{c,d,t} |K_{c,d,t}|`.

    The loosest of the bounds, and the paper's L1 regulariser (Section 4.2).

    Args:
        kernel: array, tensor or conv module (as in :func:`convspectra.singular_values`).
        layout, groups, transposed: as in :func:`convspectra.singular_values`.

    Returns:
        A 0-d NumPy float (or torch tensor, differentiable) upper bound on the operator norm.

    Example:
        >>> import numpy as np
        >>> from convspectra.bounds import l1_bound
        >>> float(l1_bound(np.array([[[[1.0, -2.0]]]])))
        3.0
    """
    weight, e = _weight(kernel, layout, groups, transposed)
    return scale_up(weight.abs().sum() if is_tensor(weight) else np.abs(weight).sum(), e)


def channel_l1_bound(
    kernel: Any, *, layout: str | None = None, groups: int | None = None, transposed: bool | None = None
) -> Any:
    r"""Proposition 11, corrected: :math:`\|A\|_2 \le \sigma_{\max}(S)`, :math:`S_{cd} = \sum_t |K_{c,d,t}|`.

    The paper states :math:`\sqrt{\sum_c \max_d S_{cd}^2}`, which is false: its proof drops the
    cross terms of :math:`\|\sum_d B_{cd} x_d\|^2` (the all-ones ``(2, 3, 1, 1)`` kernel has norm
    :math:`\sqrt 6` and that expression :math:`\sqrt 2`). The same proof with the triangle
    inequality, :math:`\|\sum_d B_{cd} x_d\| \le \sum_d S_{cd} \|x_d\|` (Proposition 6 bounds
    each block by its :math:`S_{cd}`), gives :math:`\|A x\| \le \|S\, (\|x_d\|)_d\|`, hence this
    bound, which is at most :math:`\|S\|_F \le \sum |K|` (the paper's right-hand side, still true).
    With groups, :math:`S` is block diagonal: the largest of the groups' values.

    Returns:
        A 0-d NumPy float (or torch tensor) upper bound on the operator norm.

    Example:
        >>> import numpy as np
        >>> from convspectra.bounds import channel_l1_bound
        >>> round(float(channel_l1_bound(np.ones((2, 3, 1, 1)))) ** 2, 12)  # sqrt(6): exact for this layer
        6.0
    """
    spec, weight = parse_kernel(kernel, layout=layout, groups=groups, transposed=transposed)
    e = exponent_of(weight)
    sums = _group_sums(scale_down(weight, e), spec.groups)
    if is_tensor(sums):
        import torch

        return scale_up(torch.linalg.matrix_norm(sums, ord=2).amax(), e)
    return scale_up(np.linalg.norm(sums, ord=2, axis=(1, 2)).max(), e)


def nonnegative_norm(
    kernel: Any,
    *,
    layout: str | None = None,
    stride: int | Sequence[int] | None = None,
    groups: int | None = None,
    transposed: bool | None = None,
) -> Any:
    r"""Proposition 7: the exact operator norm of a circular, stride-1 convolution whose kernel
    has no negative entries: :math:`\sigma_{\max}(\sum_t K_{:,:,t})`, for every input size.

    Raises:
        ParameterError: if the kernel has a negative (or complex) entry, or a stride other than 1
            (the statement is then false: use :func:`convspectra.operator_norm`).

    Example:
        >>> import numpy as np
        >>> from convspectra.bounds import nonnegative_norm
        >>> float(nonnegative_norm(np.full((1, 1, 3, 3), 0.5)))
        4.5
    """
    spec, weight = parse_kernel(kernel, layout=layout, groups=groups, transposed=transposed, stride=stride)
    if any(s != 1 for s in spec.stride):
        raise ParameterError(
            f"stride: expected 1 (Proposition 7 is exact only without stride), got {spec.stride}; "
            "use convspectra.operator_norm"
        )
    torch_mode = is_tensor(weight)
    array = weight.detach().cpu().numpy() if torch_mode else weight
    if np.iscomplexobj(array) or (array < 0).any():
        bad = "complex" if np.iscomplexobj(array) else f"{int((array < 0).sum())} negative"
        raise ParameterError(f"kernel: expected non-negative real entries (Proposition 7), got {bad} entries")
    a = spec.out_channels // spec.groups
    e = exponent_of(array)
    summed = scale_down(weight, e).reshape(spec.groups, a, weight.shape[1], -1).sum(-1)
    if torch_mode:
        return scale_up(sys.modules["torch"].linalg.matrix_norm(summed, ord=2).amax(), e)
    return scale_up(np.linalg.norm(summed, ord=2, axis=(1, 2)).max(), e)


def reshaped_norm(
    kernel: Any, *, layout: str | None = None, groups: int | None = None, transposed: bool | None = None
) -> Any:
    r"""Largest singular value of the kernel reshaped to ``out x (in/groups * k_1 ... k_d)``.

    What ``torch.nn.utils.spectral_norm`` (``dim=0`` for convolutions) and Miyato et al.
    normalise. It neither bounds the operator norm from above nor from below: the operator norm
    can exceed it by a factor up to ``sqrt(k_1 ... k_d)`` (footnote 2 of the paper), and be
    smaller than it too.

    Returns:
        A 0-d NumPy float (or torch tensor).

    Example:
        >>> import numpy as np
        >>> from convspectra.bounds import reshaped_norm
        >>> float(reshaped_norm(np.ones((1, 1, 2, 2))))
        2.0
    """
    weight, e = _weight(kernel, layout, groups, transposed)
    matrix = weight.reshape(weight.shape[0], -1)
    if is_tensor(matrix):
        return scale_up(sys.modules["torch"].linalg.matrix_norm(matrix, ord=2), e)
    return scale_up(np.linalg.norm(matrix, ord=2), e)
