"""A layer as the network computes it, with its adjoint, for power iteration (PyTorch's own conv and conv_transpose).

:class:`LayerOperator` describes the linear map of a ``Conv1d/2d/3d``, ``ConvTranspose1d/2d/3d``
or ``Linear`` module (bias left out) at one input size, as a forward convolution F and whether
the layer is F itself or its adjoint F^T (a transposed layer):

* F(x) = ``conv(extend(x), W)`` with no padding of its own, where ``extend`` pads the input
  explicitly: with zeros (``padding_mode="zeros"``), periodically (``padding_mode="circular"``),
  or periodically on the right only, far enough for a wrap-around convolution (the paper's
  operator, ``padding="circular"``; the dilation is then reduced modulo the grid);
* F^T(y) = ``restrict(conv_transpose(y, W, output_padding=r))``, ``restrict`` being the adjoint
  of ``extend`` (a crop, or a fold of the periodic copies back onto the grid).

Both run with PyTorch's functional convolutions in the weight's device and dtype, with autocast
switched off (the estimate of a norm wants the weight's own precision).
:func:`power_iteration` updates unit vectors ``u`` (output) and ``v`` (input) in place.

Example:
    >>> import torch
    >>> from convspectra.nn._power import LayerOperator
    >>> conv = torch.nn.Conv1d(1, 1, 3, padding=1, bias=False)
    >>> op = LayerOperator.of(conv, (6,), padding="module")
    >>> x, y = torch.randn(1, 1, 6), torch.randn(1, 1, 6)
    >>> bool(torch.allclose(op.apply(x, conv.weight), conv(x)))
    True
    >>> bool(torch.allclose((op.apply(x, conv.weight) * y).sum(), (x * op.adjoint(y, conv.weight)).sum()))
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._backend import is_conv_module, is_transposed_module
from .._checks import as_tuple, choice
from ..errors import ParameterError, ParameterTypeError

__all__ = ["LayerGeometry", "LayerOperator", "normalize_", "power_iteration", "sigma"]

PADDINGS = ("module", "circular")


def _pairs(module: Any, kernel: Sequence[int], dilation: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """The module's padding as (left, right) pairs, as PyTorch applies it (``"same"``: the extra one on the right)."""
    padding = module.padding
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * len(kernel)
        totals = [d * (k - 1) for d, k in zip(dilation, kernel, strict=True)]
        return tuple((t // 2, t - t // 2) for t in totals)
    return tuple((int(p), int(p)) for p in padding)


@dataclass(frozen=True)
class LayerGeometry:
    """What a module's linear map depends on, read once (so that a parametrization need not hold the module).

    Attributes:
        kind: ``"conv"`` or ``"linear"``; transposed: a ``ConvTranspose``.
        in_channels, out_channels: the layer's own (in_features/out_features for a Linear).
        kernel_size, stride, dilation, padding, padding_mode, output_padding, groups: as the module's.
    """

    kind: str
    transposed: bool
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    padding: Any = ()
    padding_mode: str = "zeros"
    output_padding: tuple[int, ...] = ()
    groups: int = 1

    @classmethod
    def of(cls, module: Any) -> LayerGeometry:
        """Read from a ``Conv*d``, ``ConvTranspose*d`` or ``Linear`` module.

        Raises:
            ParameterTypeError: any other kind of module.
        """
        if isinstance(module, nn.Linear):
            return cls("linear", False, int(module.in_features), int(module.out_features))
        if not is_conv_module(module):
            raise ParameterTypeError(
                "module: expected a Conv1d/2d/3d, ConvTranspose1d/2d/3d or Linear module, got "
                f"{type(module).__qualname__}"
            )
        transposed = is_transposed_module(module)
        padding = module.padding if isinstance(module.padding, str) else tuple(int(p) for p in module.padding)
        return cls(
            "conv",
            transposed,
            int(module.in_channels),
            int(module.out_channels),
            tuple(int(v) for v in module.kernel_size),
            tuple(int(v) for v in module.stride),
            tuple(int(v) for v in module.dilation),
            padding,
            str(module.padding_mode),
            tuple(int(v) for v in module.output_padding) if transposed else (),
            int(module.groups),
        )

    @property
    def ndim(self) -> int:
        """Spatial axes (0 for a Linear)."""
        return len(self.kernel_size)


@dataclass(frozen=True)
class LayerOperator:
    """The layer's linear map at one input size, as the forward convolution F (or ``Linear``) and its adjoint.

    Attributes:
        kind: ``"conv"`` or ``"linear"``.
        transposed: the layer is F^T (a ``ConvTranspose``).
        grid: F's input size (the forward layer's input, the transposed layer's output).
        pairs: F's explicit (left, right) input padding per axis (right may be negative: a crop).
        periodic: the padding repeats the input (circular) rather than adding zeros.
        stride, dilation, groups: F's geometry (the dilation reduced modulo the grid when wrap-around).
        output_padding: what ``conv_transpose`` needs to return F's padded input size.
        input_shape, output_shape: the layer's own vector shapes, batch 1 (``(1, C, *spatial)``).
    """

    kind: str
    transposed: bool
    grid: tuple[int, ...]
    pairs: tuple[tuple[int, int], ...]
    periodic: bool
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int
    output_padding: tuple[int, ...]
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]

    @classmethod
    def of(cls, layer: Any, input_size: Sequence[int] | None, *, padding: str = "module") -> LayerOperator:
        """The operator of ``layer`` (a module or its :class:`LayerGeometry`) for an input of spatial size
        ``input_size`` (ignored for a ``Linear``).

        Raises:
            ParameterTypeError: not a conv or Linear module.
            ParameterError: a padding mode other than zeros and circular, a size the
                wrap-around operator is not defined on (stride not dividing it), or an input
                too small for the kernel.
        """
        choice("padding", padding, PADDINGS)
        module = layer if isinstance(layer, LayerGeometry) else LayerGeometry.of(layer)
        if module.kind == "linear":
            shapes = (1, module.in_channels), (1, module.out_channels)
            return cls("linear", False, (), (), False, (), (), 1, (), *shapes)
        size = as_tuple("input_shape", input_size, module.ndim)
        transposed, k, s, d = module.transposed, module.kernel_size, module.stride, module.dilation
        c_in, c_out = (
            (module.out_channels, module.in_channels) if transposed else (module.in_channels, module.out_channels)
        )
        if padding == "circular":  # the wrap-around operator on the grid n (n = m * s for a transposed layer)
            grid = tuple(m * si for m, si in zip(size, s, strict=True)) if transposed else size
            bad = [(n, si) for n, si in zip(grid, s, strict=True) if n % si]
            if bad:
                raise ParameterError(
                    f"input_shape: the wrap-around operator needs every side a multiple of the stride {s}, got {size}"
                )
            d = tuple((di - 1) % n + 1 for di, n in zip(d, grid, strict=True))
            outs = tuple(n // si for n, si in zip(grid, s, strict=True))
            pairs = tuple(
                (0, si * (m - 1) + di * (ki - 1) + 1 - n) for si, m, di, ki, n in zip(s, outs, d, k, grid, strict=True)
            )
            periodic = True
        else:
            mode = module.padding_mode
            if mode not in ("zeros", "circular"):
                raise ParameterError(
                    f"padding: the module's padding_mode is {mode!r}; expected 'zeros' or 'circular' (reflect and "
                    "replicate padding are not linear in the input alone); pass padding='circular' for the "
                    "wrap-around operator"
                )
            pairs = _pairs(module, k, d)
            periodic = mode == "circular"
            if transposed:
                op = module.output_padding
                grid = tuple(
                    (m - 1) * si - 2 * pl + di * (ki - 1) + o + 1
                    for m, si, (pl, _), di, ki, o in zip(size, s, pairs, d, k, op, strict=True)
                )
            else:
                grid = size
            if periodic and any(max(p) > n for p, n in zip(pairs, grid, strict=True)):
                raise ParameterError(f"padding: circular padding {pairs} larger than the input {grid}")
        lengths = [n + pl + pr for n, (pl, pr) in zip(grid, pairs, strict=True)]
        outs = tuple((ln - di * (ki - 1) - 1) // si + 1 for ln, di, ki, si in zip(lengths, d, k, s, strict=True))
        if min(grid) < 1 or min(outs) < 1:
            raise ParameterError(
                f"input_shape: the layer's input {size} is too small for its kernel {k} (dilation {d}, padding {pairs})"
            )
        extra = tuple(
            ln - ((m - 1) * si + di * (ki - 1) + 1) for ln, m, si, di, ki in zip(lengths, outs, s, d, k, strict=True)
        )
        big, small = (1, c_in, *grid), (1, c_out, *outs)
        shapes = (small, big) if transposed else (big, small)
        return cls("conv", transposed, grid, pairs, periodic, s, d, module.groups, extra, *shapes)

    # -- F and F^T ----------------------------------------------------------------------------

    def _extend(self, x: torch.Tensor) -> torch.Tensor:
        if not self.periodic:
            return F.pad(x, [p for pair in reversed(self.pairs) for p in pair])
        for axis, (n, (left, right)) in enumerate(zip(self.grid, self.pairs, strict=True), start=2):
            index = torch.arange(-left, n + right, device=x.device) % n
            x = x.index_select(axis, index)
        return x

    def _restrict(self, z: torch.Tensor) -> torch.Tensor:
        if not self.periodic:
            crop = tuple(slice(left, left + n) for n, (left, _) in zip(self.grid, self.pairs, strict=True))
            return z[(slice(None), slice(None), *crop)]
        for axis, (n, (left, right)) in enumerate(zip(self.grid, self.pairs, strict=True), start=2):
            index = torch.arange(-left, n + right, device=z.device) % n
            shape = list(z.shape)
            shape[axis] = n
            z = z.new_zeros(shape).index_add(axis, index, z)
        return z

    @property
    def _direct(self) -> bool:
        """Symmetric zero padding: PyTorch's conv pads (and conv_transpose crops) by itself, no copy."""
        return not self.periodic and all(left == right >= 0 for left, right in self.pairs)

    def _conv(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        conv = (F.conv1d, F.conv2d, F.conv3d)[len(self.grid) - 1]
        if self._direct:
            return conv(x, weight, None, self.stride, [p for p, _ in self.pairs], self.dilation, self.groups)
        return conv(self._extend(x), weight, None, self.stride, 0, self.dilation, self.groups)

    def _conv_t(self, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        conv_t = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[len(self.grid) - 1]
        padding = [p for p, _ in self.pairs] if self._direct else 0
        z = conv_t(y, weight, None, self.stride, padding, self.output_padding, self.groups, self.dilation)
        return z if self._direct else self._restrict(z)

    def _weight_gradient(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The gradient of ``<y, F(W) x>`` with respect to W (a correlation of x and y; independent of W)."""
        gradient = (torch.nn.grad.conv1d_weight, torch.nn.grad.conv2d_weight, torch.nn.grad.conv3d_weight)
        function = gradient[len(self.grid) - 1]
        if self._direct:
            padding = [p for p, _ in self.pairs]
            return function(x, weight.shape, y, self.stride, padding, self.dilation, self.groups)
        return function(self._extend(x), weight.shape, y, self.stride, 0, self.dilation, self.groups)

    def apply(self, v: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The layer applied to ``v`` (shape :attr:`input_shape`), bias left out."""
        if self.kind == "linear":
            return F.linear(v, weight)
        return self._conv_t(v, weight) if self.transposed else self._conv(v, weight)

    def adjoint(self, u: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The layer's adjoint applied to ``u`` (shape :attr:`output_shape`)."""
        if self.kind == "linear":
            return u @ weight.conj()
        return self._conv(u, weight) if self.transposed else self._conv_t(u, weight)

    def gradient(self, u: torch.Tensor, v: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The gradient of ``<u, A(W) v>`` with respect to the weight W (``u``, ``v`` fixed)."""
        if self.kind == "linear":
            return u.reshape(-1, 1) * v.reshape(1, -1).conj()
        return self._weight_gradient(u, v, weight) if self.transposed else self._weight_gradient(v, u, weight)

    @property
    def spatial_input(self) -> tuple[int, ...]:
        """The layer's input size (spatial axes only; ``()`` for a Linear)."""
        return tuple(self.input_shape[2:])


def normalize_(target: torch.Tensor, value: torch.Tensor, eps: float) -> torch.Tensor:
    """``target := value / max(||value||, eps)`` in place; returns ``||value||`` (0-d)."""
    norm = torch.linalg.vector_norm(value)
    target.copy_(value / norm.clamp_min(eps))
    return norm


@torch.no_grad()
def power_iteration(
    op: LayerOperator, weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor, iterations: int, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``iterations`` steps ``u := A v / ||A v||``, ``v := A^T u / ||A^T u||`` in place, autocast off.

    Returns:
        ``(sigma, residual)``: ``||A^T u||`` (the Rayleigh quotient ``<u, A v>`` of the new
        pair) and the last step's relative change ``||A^T u - sigma v_old|| / sigma``, both 0-d.
    """
    weight = weight.detach()
    with torch.autocast(weight.device.type, enabled=False):
        sigma = residual = weight.new_zeros(())
        for _ in range(iterations):
            normalize_(u, op.apply(v, weight), eps)
            back = op.adjoint(u, weight)
            sigma = torch.linalg.vector_norm(back)
            residual = torch.linalg.vector_norm(back - sigma * v) / sigma.clamp_min(eps)
            v.copy_(back / sigma.clamp_min(eps))
    return sigma, residual


class _Sigma(torch.autograd.Function):
    """``<u, A(W) v>`` given its value: the backward pass is one weight-gradient correlation of u and v."""

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, value: torch.Tensor, u: torch.Tensor, v: torch.Tensor, op: Any) -> Any:
        ctx.op = op
        ctx.save_for_backward(weight, u, v)
        return value.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        weight, u, v = ctx.saved_tensors
        with torch.autocast(weight.device.type, enabled=False):
            return grad * ctx.op.gradient(u, v, weight).to(weight.dtype), None, None, None, None


def sigma(
    op: LayerOperator, weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor, value: torch.Tensor | None = None
) -> torch.Tensor:
    """``<u, A(weight) v>``, differentiable in ``weight`` (``u``, ``v`` held fixed), autocast off.

    ``value``: the number itself when the caller has it (``power_iteration``'s sigma for the pair
    it just produced), which saves the forward convolution; the gradient is computed either way.
    """
    u, v = u.detach().clone(), v.detach().clone()  # later in-place updates of the buffers leave these alone
    if value is None:
        with torch.no_grad(), torch.autocast(weight.device.type, enabled=False):
            value = torch.sum(u * op.apply(v, weight.detach()))
    return _Sigma.apply(weight, value.detach().to(weight.dtype), u, v, op)
