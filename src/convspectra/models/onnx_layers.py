"""ONNX ``Conv`` / ``ConvTranspose`` nodes as torch conv modules with the same operator.

ONNX pads each spatial axis by its own ``(begin, end)`` pair (``pads``, or ``auto_pad``
``SAME_UPPER``/``SAME_LOWER``/``VALID``); a torch conv module pads both ends alike. Every ONNX
padding is turned into a module whose operator has exactly the node's singular values, never a
symmetrised one:

- the pair is symmetric, or becomes so once the rows the stride never reaches are ignored: a
  plain ``Conv*d`` / ``ConvTranspose*d`` (the transposed layer's crop goes to ``output_padding``);
- the mirror image is (reverse the axis: an orthogonal map of input and output, so no singular
  value changes): a :func:`mirrored` module, whose kernel is reversed along those axes and whose
  ``forward`` reverses them around the convolution, so it computes the node's output exactly;
  TensorFlow's ``SAME`` padding at stride 2, ``(0, 1)``, is of this kind;
- stride 1 and ``(d(k-1)//2, d(k-1) - d(k-1)//2)`` on every axis (either way round): torch's
  ``padding="same"``;
- otherwise an :func:`explicit_padding` module: ``forward`` pads exactly, its ``padding`` is a
  description such as ``"(0,2)x(1,1)"``, and the norm with the module's own padding is refused
  with a :class:`~convspectra.errors.ParameterError` (the circular spectrum does not depend on it).

Example:
    >>> import numpy as np
    >>> from convspectra.models.onnx_layers import conv_module
    >>> weight = np.ones((4, 3, 3, 3), dtype=np.float32)
    >>> module, note = conv_module(weight, None, {"strides": [2, 2], "pads": [0, 0, 1, 1]}, (8, 8), transposed=False)
    >>> type(module).__name__, module.padding, module.mirror_axes
    ('MirroredConv2d', (1, 1), (2, 3))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ParameterError

__all__ = ["conv_module", "explicit_padding", "mirrored", "onnx_pairs"]

_FORWARD = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_TRANSPOSED = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}


class _Mirrored:
    """Reverses ``mirror_axes`` of the input and of the output around the convolution."""

    mirror_axes: tuple[int, ...] = ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.flip(self.mirror_axes)).flip(self.mirror_axes)  # type: ignore[misc]


class _ExplicitPadding:
    """Pads ``pairs`` ((begin, end) per axis of the ONNX node) exactly; ``padding`` only describes them."""

    pairs: tuple[tuple[int, int], ...] = ()
    output_padding_onnx: tuple[int, ...] = ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        module: Any = self
        nd = len(module.kernel_size)
        common = {"stride": module.stride, "dilation": module.dilation, "groups": module.groups}
        if module.transposed:  # the full scatter, ONNX's output_padding appended, then the crop
            full = getattr(F, f"conv_transpose{nd}d")(x, module.weight, None, **common)
            cut = [
                v
                for (b, e), o in zip(reversed(self.pairs), reversed(self.output_padding_onnx), strict=True)
                for v in (-b, o - e)
            ]
            y = F.pad(full, cut)
        else:
            widths = [v for pair in reversed(self.pairs) for v in pair]
            y = getattr(F, f"conv{nd}d")(F.pad(x, widths), module.weight, None, **common)
        if module.bias is not None:
            y = y + module.bias.reshape(1, -1, *([1] * nd))
        return y


_CLASSES: dict[tuple[type, type], type] = {}


def _subclass(mixin: type, base: type) -> type:
    key = (mixin, base)
    if key not in _CLASSES:
        name = mixin.__name__.strip("_") + base.__name__
        _CLASSES[key] = type(name, (mixin, base), {"__module__": __name__, "__qualname__": name})
    return _CLASSES[key]


def mirrored(base: type) -> type:
    """The subclass of the torch conv class ``base`` that reverses its ``mirror_axes`` (e.g. ``MirroredConv2d``)."""
    return _subclass(_Mirrored, base)


def explicit_padding(base: type) -> type:
    """The subclass of ``base`` that pads its ``pairs`` exactly (e.g. ``ExplicitPaddingConv2d``)."""
    return _subclass(_ExplicitPadding, base)


def _ints(attrs: dict[str, Any], key: str, default: Sequence[int]) -> tuple[int, ...]:
    value = attrs.get(key)
    return tuple(int(v) for v in value) if value is not None and len(value) else tuple(default)


def onnx_pairs(
    attrs: dict[str, Any], n: Sequence[int], kernel: Sequence[int], *, transposed: bool
) -> tuple[tuple[tuple[int, int], ...], tuple[int, ...]]:
    """The node's ``(begin, end)`` pads per axis and its output size, for the spatial input size ``n``.

    ``auto_pad`` (``NOTSET``/``SAME_UPPER``/``SAME_LOWER``/``VALID``), ``pads``, ``strides``,
    ``dilations`` and, for ``ConvTranspose``, ``output_padding`` and ``output_shape`` are read as
    the ONNX operator specification defines them.

    Example:
        >>> from convspectra.models.onnx_layers import onnx_pairs
        >>> onnx_pairs({"auto_pad": "SAME_UPPER", "strides": [2]}, (224,), (3,), transposed=False)
        (((0, 1),), (112,))
    """
    nd = len(n)
    s = _ints(attrs, "strides", [1] * nd)
    d = _ints(attrs, "dilations", [1] * nd)
    extent = [di * (ki - 1) + 1 for di, ki in zip(d, kernel, strict=True)]
    auto = attrs.get("auto_pad", "NOTSET") or "NOTSET"
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    if auto not in ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"):
        raise ParameterError(f"auto_pad: expected NOTSET, SAME_UPPER, SAME_LOWER or VALID, got {auto!r}")
    pads = _ints(attrs, "pads", [0] * (2 * nd))
    if len(pads) != 2 * nd:
        raise ParameterError(f"pads: expected {2 * nd} values (begins, then ends), got {list(pads)}")
    pairs = list(zip(pads[:nd], pads[nd:], strict=True))
    if auto == "VALID":
        pairs = [(0, 0)] * nd
    if not transposed:
        if auto.startswith("SAME"):
            totals = [max(0, (-(-ni // si) - 1) * si + ei - ni) for ni, si, ei in zip(n, s, extent, strict=True)]
            small = [t // 2 for t in totals]
            pairs = [(t - h, h) if auto == "SAME_LOWER" else (h, t - h) for t, h in zip(totals, small, strict=True)]
        out = tuple((ni + b + e - ei) // si + 1 for ni, (b, e), si, ei in zip(n, pairs, s, extent, strict=True))
        return tuple(pairs), out
    op = _ints(attrs, "output_padding", [0] * nd)
    shape = _ints(attrs, "output_shape", [])
    if shape or auto.startswith("SAME"):
        target = shape[-nd:] if shape else tuple(ni * si for ni, si in zip(n, s, strict=True))
        totals = [si * (ni - 1) + oi + ei - ti for si, ni, oi, ei, ti in zip(s, n, op, extent, target, strict=True)]
        pairs = [
            (t // 2, t - t // 2) if auto == "SAME_UPPER" else (t - t // 2, t // 2) for t in totals
        ]  # as the specification states it
    out = tuple(si * (ni - 1) + oi + ei - b - e for si, ni, oi, ei, (b, e) in zip(s, n, op, extent, pairs, strict=True))
    return tuple(pairs), out


def conv_module(
    weight: np.ndarray,
    bias: np.ndarray | None,
    attrs: dict[str, Any],
    input_size: Sequence[int],
    *,
    transposed: bool,
) -> tuple[nn.Module, str | None]:
    """A torch module with the operator of an ONNX ``Conv``/``ConvTranspose`` node, and a note on its padding.

    Args:
        weight: the node's ``W`` (``(M, C/group, k...)``, or ``(C, M/group, k...)`` transposed).
        bias: its ``B`` or None.
        attrs: the node's attributes by name (ints, lists of ints, strings).
        input_size: the spatial size of the node's input ``X``.
        transposed: a ``ConvTranspose`` node.

    Returns:
        ``(module, note)``: the note says how an asymmetric padding is represented (None when
        the node's padding is a torch padding as it stands).

    Raises:
        ParameterError: a weight that is not 3-5 dimensional, a ``kernel_shape`` that disagrees
            with it, bad pads, or an output size below 1.
    """
    w = np.asarray(weight)
    nd = w.ndim - 2
    if nd not in _FORWARD:
        raise ParameterError(f"weight: expected a 3-5 dimensional conv weight, got shape {tuple(w.shape)}")
    kernel = tuple(int(k) for k in w.shape[2:])
    if _ints(attrs, "kernel_shape", kernel) != kernel:
        raise ParameterError(f"kernel_shape: expected {kernel} (the weight's), got {list(attrs['kernel_shape'])}")
    n = tuple(int(v) for v in input_size)
    if len(n) != nd:
        raise ParameterError(f"input_size: expected {nd} spatial sizes, got {n}")
    s, d = _ints(attrs, "strides", [1] * nd), _ints(attrs, "dilations", [1] * nd)
    groups = int(attrs.get("group", 1) or 1)
    pairs, out = onnx_pairs(attrs, n, kernel, transposed=transposed)
    if min(out) < 1:
        raise ParameterError(f"input_size: the node's output would be {out} for input {n}; expected positive sizes")
    extent = [di * (ki - 1) for di, ki in zip(d, kernel, strict=True)]
    # The forward convolution: input size big, left pad b, output size small; r = right pad it uses.
    big, small = (out, n) if transposed else (n, out)
    left = [b for b, _ in pairs]
    right = [(mi - 1) * si + ei - bi - (ni - 1) for mi, si, ei, bi, ni in zip(small, s, extent, left, big, strict=True)]
    symmetric, flips = [], []
    for axis, (b, r, si) in enumerate(zip(left, right, s, strict=True)):
        if 0 <= b - r < si:
            symmetric.append(b)
        elif r >= 0 and 0 <= r - b < si:
            symmetric.append(r)
            flips.append(axis)
        else:
            symmetric.append(-1)
    channels = (w.shape[0], w.shape[1] * groups) if transposed else (w.shape[1] * groups, w.shape[0])
    kwargs: dict[str, Any] = {"stride": s, "dilation": d, "groups": groups, "bias": bias is not None}
    base = (_TRANSPOSED if transposed else _FORWARD)[nd]
    shown = "x".join(f"({b},{e})" for b, e in pairs)
    note: str | None = None
    if min(symmetric) >= 0:
        kwargs["padding"] = tuple(symmetric)
        if transposed:
            kwargs["output_padding"] = tuple(
                o - ((ni - 1) * si - 2 * p + ei + 1)
                for o, ni, si, p, ei in zip(out, n, s, symmetric, extent, strict=True)
            )
    elif (
        not transposed
        and set(s) == {1}
        and all((e // 2, e - e // 2) in ((b, r), (r, b)) for b, r, e in zip(left, right, extent, strict=True))
    ):  # torch's "same": (e // 2, e - e // 2), the larger half at the end
        kwargs["padding"] = "same"
        flips = [axis for axis, (b, e) in enumerate(zip(left, extent, strict=True)) if b != e // 2]
    else:
        module: Any = explicit_padding(base)(*channels, kernel, **kwargs)
        module.pairs, module.padding = tuple(pairs), shown
        module.output_padding_onnx = _ints(attrs, "output_padding", [0] * nd)
        note = f"ONNX pads {shown} are not a torch padding: the norm with the layer's own padding is not computed"
        return _filled(module, w, bias), note
    cls = mirrored(base) if flips else base
    module = cls(*channels, kernel, **kwargs)
    if flips:
        module.mirror_axes = tuple(2 + axis for axis in flips)
        w = np.flip(w, axis=module.mirror_axes).copy()
        note = (
            f"ONNX pads {shown}: analysed as its mirror image (kernel reversed along spatial axes "
            f"{', '.join(map(str, flips))}), which has the same singular values"
        )
    elif any(b != e for b, e in pairs):
        note = (
            f"ONNX pads {shown}: the end rows the stride never reaches are dropped (torch padding {kwargs['padding']})"
        )
    return _filled(module, w, bias), note


def _filled(module: nn.Module, weight: np.ndarray, bias: np.ndarray | None) -> nn.Module:
    dtype = torch.float64 if weight.dtype == np.float64 else torch.float32
    module = module.to(dtype)
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(np.array(weight)).to(dtype))
        if bias is not None:
            module.bias.copy_(torch.from_numpy(np.array(bias)).to(dtype))
    return module.eval().requires_grad_(False)
