r"""A hard operator-norm constraint on a convolution at every forward pass (``torch.nn.utils.parametrize``).

:func:`register_operator_norm_constraint` makes ``module.weight`` the projection
:math:`P_c(K) = ` :func:`convspectra.clip_operator_norm` of the trained tensor
``module.parametrizations.weight.original`` = K, so the layer *as it computes* always has a
circular operator norm at most c on its input size (up to ``iterations``' convergence and the
weight dtype's rounding). :func:`remove_operator_norm_constraint` bakes the constrained weight in
and restores a plain parameter (the same ``Parameter`` object, so optimizers keep working).

Gradient: straight-through. The projection runs under ``torch.no_grad`` and the backward pass
hands the gradient with respect to :math:`P_c(K)` to K unchanged, i.e. the Jacobian of
:math:`P_c` is taken as the identity. Inside the ball this is exact (:math:`P_c(K) = K`). Outside
it, the true Jacobian goes through one SVD per frequency whose derivative involves
:math:`1/(\sigma_i^2 - \sigma_j^2)`: after the first clip many singular values are tied at
exactly c, so with ``iterations > 1`` (and at any tie) that derivative is undefined, and its
finite parts would cost an autograd graph of every frequency's SVD at every forward. The
straight-through choice makes training "gradient step on K, evaluate at P_c(K)", the projected
(lazy) gradient scheme, and costs nothing extra in the backward pass.

The projection is cached: while K is unchanged (compared elementwise with a stored copy, so
in-place optimizer updates and ``.data`` writes are both seen) a forward pass reuses it.

Example:
    >>> import torch, convspectra as cs
    >>> from convspectra.nn import register_operator_norm_constraint, remove_operator_norm_constraint
    >>> conv = torch.nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular")
    >>> _ = register_operator_norm_constraint(conv, 0.5, input_shape=8, rescale=True)
    >>> float(cs.singular_values(conv.weight, 8)[0]) <= 0.5 * (1 + 1e-3)
    True
    >>> conv(torch.randn(2, 4, 8, 8)).sum().backward()          # gradients reach the original
    >>> conv.parametrizations.weight.original.grad.shape
    torch.Size([4, 4, 3, 3])
    >>> _ = remove_operator_norm_constraint(conv)
    >>> type(conv.weight).__name__, float(cs.singular_values(conv.weight, 8)[0]) <= 0.5 * (1 + 1e-3)
    ('Parameter', True)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from .._backend import is_conv_module
from ..errors import ConvSpectraError, ParameterError, ParameterTypeError
from .layers import ConvLayer, ShapeLike, conv_layers
from .projector import check_options, projected_kernels
from .recording import InputSizeRecorder, check_input_shape

__all__ = ["OperatorNormConstraint", "register_operator_norm_constraint", "remove_operator_norm_constraint"]


class _StraightThrough(torch.autograd.Function):
    """Forward: the projected weight (exactly). Backward: the gradient passed to the original unchanged."""

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, projected: torch.Tensor) -> torch.Tensor:
        return projected.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class OperatorNormConstraint(nn.Module):
    """The parametrization ``K -> clip_operator_norm(K, input_shape, max_norm, ...)`` with a straight-through gradient.

    Built by :func:`register_operator_norm_constraint`; not meant to be registered by hand.

    Attributes:
        max_norm: the bound c.
        input_shape: the layer's input size (``None`` until the first forward pass records it).
        min_norm, iterations, method, rescale: the projection options.
    """

    def __init__(
        self,
        layer: ConvLayer,
        *,
        min_norm: float | None,
        iterations: int,
        method: str,
        rescale: bool,
    ) -> None:
        super().__init__()
        self.max_norm = layer.max_norm
        self.input_shape = layer.input_shape
        self._layer_type = type(layer.module).__name__
        self._geometry = layer.geometry()
        self.min_norm, self.iterations, self.method, self.rescale = min_norm, iterations, method, rescale
        self._source: torch.Tensor | None = None
        self._result: torch.Tensor | None = None
        self._recorder = InputSizeRecorder()  # records input_shape on the first forward pass when not given

    def _project(self, weight: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        source = self._source
        if (
            source is not None
            and source.shape == weight.shape
            and source.dtype == weight.dtype
            and source.device == weight.device
            and torch.equal(source, weight)
        ):
            return self._result  # type: ignore[return-value]
        (projected,) = projected_kernels(
            [(weight, shape, self.max_norm, self._geometry)],
            min_norm=self.min_norm,
            iterations=self.iterations,
            method=self.method,
            rescale=self.rescale,
            device=None,
        )
        self._source, self._result = weight.detach().clone(), projected.to(weight.dtype)
        return self._result

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """The constrained weight (straight-through gradient to ``weight``)."""
        if self.input_shape is None:
            raise ConvSpectraError(
                f"input_shape: the input size of this {self._layer_type} is not known yet, so its constrained weight "
                "is not defined; run one forward pass first or pass input_shape to register_operator_norm_constraint"
            )
        with torch.no_grad():
            projected = self._project(weight.detach(), self.input_shape)
        return _StraightThrough.apply(weight, projected)

    def extra_repr(self) -> str:
        return (
            f"max_norm={self.max_norm}, input_shape={self.input_shape}, min_norm={self.min_norm}, "
            f"iterations={self.iterations}, method={self.method!r}"
        )


def _check_conv(module: Any) -> None:
    if not is_conv_module(module):
        raise ParameterTypeError(
            f"module: expected a Conv1d/2d/3d or ConvTranspose1d/2d/3d module, got {type(module).__qualname__}"
        )


def _constraint_of(module: Any) -> OperatorNormConstraint:
    _check_conv(module)
    if parametrize.is_parametrized(module, "weight"):
        holder: Any = module.parametrizations
        for item in holder.weight:
            if isinstance(item, OperatorNormConstraint):
                return item
    raise ParameterError(
        f"module: expected a {type(module).__name__} with an operator-norm constraint on its weight, got one without"
    )


def register_operator_norm_constraint(
    module: nn.Module,
    max_norm: float,
    input_shape: ShapeLike | None = None,
    *,
    min_norm: float | None = None,
    iterations: int = 1,
    method: str = "alternating",
    rescale: bool = False,
) -> nn.Module:
    r"""Constrain a convolution's operator norm at every forward pass.

    After the call ``module.weight`` is :math:`P_c(K)`, the projection
    (:func:`convspectra.clip_operator_norm`) of the trained tensor K =
    ``module.parametrizations.weight.original`` onto
    :math:`\{\|A(K)\|_2 \le c\}`, where :math:`A(K)` is the layer's circular convolution on its
    input size. Gradients reach K straight through (see the module docstring for why).

    Args:
        module: a ``Conv1d/2d/3d`` or ``ConvTranspose1d/2d/3d`` (stride, dilation and groups are read from it).
        max_norm: the bound c > 0.
        input_shape: the spatial size of the layer's input; ``None`` records it on the first
            forward pass at a valid size (:class:`~convspectra.nn.recording.InputSizeRecorder`;
            a ``copy.deepcopy`` of the module made before then records into the copy); reading
            ``module.weight`` before that raises :class:`~convspectra.errors.ConvSpectraError`.
        min_norm, iterations, method: as :func:`convspectra.clip_operator_norm`.
        rescale: after the iterations, scale the kernel down onto the bound if its exact operator
            norm still exceeds it (one more spectrum; makes the constraint hold up to rounding to
            the weight's dtype). The projection runs in float64; the weight keeps its dtype.

    Returns:
        ``module`` (parametrized in place).

    Raises:
        ParameterTypeError: not a conv module, or a bound that is not a number.
        ParameterError: invalid bound or options, a size the stride does not divide, or a
            weight that is already parametrized.

    Example:
        >>> import torch, convspectra as cs
        >>> from convspectra.nn import register_operator_norm_constraint
        >>> conv = register_operator_norm_constraint(torch.nn.Conv1d(3, 3, 5), 1.0, iterations=5, rescale=True)
        >>> _ = conv(torch.randn(1, 3, 32))              # records the input size 32
        >>> float(cs.singular_values(conv.weight, 32)[0]) <= 1.0 + 1e-3
        True
    """
    _check_conv(module)
    (layer,) = conv_layers(module, max_norm)  # rejects an already parametrized weight
    options = check_options([layer.max_norm], min_norm, iterations, method, rescale)
    if input_shape is not None:
        layer.input_shape = check_input_shape("module", module, input_shape)
    constraint = OperatorNormConstraint(
        layer, min_norm=options[0], iterations=options[1], method=options[2], rescale=options[3]
    )
    if input_shape is None:
        constraint._recorder.record_first(constraint, module, label="module")
    parametrize.register_parametrization(module, "weight", constraint, unsafe=input_shape is None)
    return module


def remove_operator_norm_constraint(module: Any) -> Any:
    """Remove the constraint added by :func:`register_operator_norm_constraint`, keeping the constrained weight.

    ``module.weight`` becomes a plain parameter again (the same ``Parameter`` object as the
    original, so an optimizer holding it keeps working) whose value is the projected kernel.

    Args:
        module: the constrained conv module.

    Returns:
        ``module``.

    Raises:
        ParameterTypeError: not a conv module.
        ParameterError: no operator-norm constraint on its weight, or other parametrizations
            stacked with it (remove those first with ``torch.nn.utils.parametrize``).
        ConvSpectraError: the input size was never recorded (no forward pass ran), so the
            constrained weight is not defined.

    Example:
        >>> import torch
        >>> from convspectra.nn import register_operator_norm_constraint, remove_operator_norm_constraint
        >>> conv = register_operator_norm_constraint(torch.nn.Conv2d(2, 2, 3), 1.0, input_shape=6)
        >>> parameter = conv.parametrizations.weight.original
        >>> conv = remove_operator_norm_constraint(conv)
        >>> conv.weight is parameter
        True
    """
    constraint = _constraint_of(module)
    stacked = len(module.parametrizations.weight)
    if stacked > 1:
        raise ParameterError(
            f"module: expected the operator-norm constraint to be the only parametrization of the weight, got "
            f"{stacked} stacked ones; remove the others first"
        )
    if constraint.input_shape is None:
        raise ConvSpectraError(
            "input_shape: the constrained weight is not defined yet (no forward pass has recorded the input size); "
            "run one forward pass before removing the constraint"
        )
    constraint._recorder.remove()
    parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return module
