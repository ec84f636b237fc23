"""The norm as a torch scalar on the kernel's device, differentiable with respect to the kernel.

The solvers run in NumPy; the differentiable value is recomputed in torch where the maximum was
found, which by the envelope theorem has the norm's gradient when the top singular value is
simple:

* wrap-around: the largest singular value of the transfer matrix at the maximising frequency
  (``torch.linalg.svdvals``, whose backward stays finite for a repeated top value);
* padded (and layers whose windows tile the input): ``||A(W) y||`` for the solver's unit vector
  y, through PyTorch's own padding and convolution.

Example:
    >>> import torch
    >>> from convspectra.norm._gradient import torch_value
    >>> from convspectra.norm._request import resolve_request
    >>> from convspectra.norm._wraparound import solve_wraparound
    >>> kernel = torch.ones(1, 1, 2, 2, dtype=torch.float64, requires_grad=True)
    >>> request = resolve_request(kernel, (8, 8))
    >>> value = torch_value(request, solve_wraparound(request, want_bracket=False))
    >>> value.backward()
    >>> float(value.detach()), kernel.grad.flatten().tolist()
    (4.0, [1.0, 1.0, 1.0, 1.0])
"""

from __future__ import annotations

from typing import Any

from .._backend import loaded_torch
from .._rescale import scale_down, scale_up
from ..errors import ParameterTypeError
from ..transfer import FrequencyPlan, flat_weight
from ._request import NormRequest
from ._solution import Solution

__all__ = ["torch_value"]


def torch_value(request: NormRequest, solution: Solution) -> Any:
    """The norm of ``solution`` as a 0-d tensor on the weight's device, differentiable through the weight.

    Raises:
        ParameterTypeError: a complex kernel on a padded layer (no gradient there).
    """
    torch = loaded_torch()
    e = request.exponent
    weight = scale_down(request.weight, e)  # the solvers' scale (exact); the value is scaled back
    if request.mode == "wrap" and solution.plan is not None:
        assert solution.frequency is not None
        plan = FrequencyPlan.create(request.spec, real=not weight.is_complex())
        matrices = plan.transfer_torch(flat_weight(weight), solution.frequency[None, :])
        if min(matrices.shape[1:]) == 1:
            return scale_up(torch.linalg.vector_norm(matrices, dim=(1, 2)).amax(), e)
        return scale_up(torch.linalg.svdvals(matrices)[:, 0].amax(), e)
    assert solution.vector is not None
    if weight.is_complex():
        raise ParameterTypeError(
            "kernel: gradients of the zero-padded norm are supported for real kernels only, got a complex tensor"
        )
    spec = request.spec
    x = torch.from_numpy(solution.vector.reshape(1, spec.in_channels, *request.input_shape)).to(
        device=weight.device, dtype=weight.dtype
    )
    pads = [p for pair in reversed(request.padding) for p in pair]
    x = torch.nn.functional.pad(x, pads, mode="circular" if request.mode == "circular" else "constant")
    conv = getattr(torch.nn.functional, f"conv{spec.ndim}d")
    y = conv(x, weight, stride=spec.stride, dilation=spec.dilation, groups=spec.groups)
    return scale_up(torch.linalg.vector_norm(y), e)
