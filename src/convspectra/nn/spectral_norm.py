r"""Spectral normalisation by the operator norm of the layer as the network computes it.

A drop-in for ``torch.nn.utils.parametrizations.spectral_norm``: the same call shape, the same
mechanics (a ``torch.nn.utils.parametrize`` parametrization, persistent unit vectors ``_u`` and
``_v`` as buffers, ``n_power_iterations`` power-iteration steps per forward pass in training
mode only, :math:`\sigma = \langle u, A v\rangle` computed with gradients so that they flow
through :math:`\sigma`), but :math:`A` is the convolution itself, not the kernel reshaped into
a matrix: power iteration runs with PyTorch's own ``conv`` and ``conv_transpose`` at the layer's
input size, with its padding (zeros or circular ``padding_mode``), stride, dilation, groups and
transposed kind (:mod:`convspectra.nn._power`). ``_v`` has the layer's input shape with batch 1,
``_u`` its output shape.

* ``mode="normalize"``: :math:`W \cdot c/\sigma` (SN-GAN; ``max_norm`` = c, default 1);
  ``mode="clip"``: :math:`W / \max(1, \sigma/c)` (a Lipschitz bound that leaves small layers alone).
* The input size is recorded by a forward pre-hook on the first forward pass (until then the
  buffers are empty and reading ``module.weight`` raises), or given as ``input_shape``. Loading
  a ``state_dict`` saved after the first pass into a fresh model sizes the buffers from it.
* The first computation of the weight runs 15 iterations (as PyTorch's does at registration).
  The starting vectors come from a fixed-seed generator, so every process of a distributed run
  starts from the same ones; DDP's buffer broadcast keeps them identical afterwards.
* :func:`converge_spectral_norm` runs iterations to a fixed point (before evaluation or
  :func:`certify`); :func:`certify` proves a bracket on every normalised layer's true norm.

Example:
    >>> import torch, convspectra as cs
    >>> from convspectra.nn import spectral_norm, converge_spectral_norm
    >>> _ = torch.manual_seed(0)
    >>> conv = spectral_norm(torch.nn.Conv2d(3, 8, 3, padding=1))
    >>> _ = conv(torch.randn(2, 3, 16, 16))               # records the input size (16, 16)
    >>> tuple(conv.parametrizations.weight[0]._v.shape)
    (1, 3, 16, 16)
    >>> _ = converge_spectral_norm(conv)
    >>> round(float(cs.operator_norm(conv, (16, 16), padding="module").detach()), 4)
    1.0
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from .._checks import choice, integer, real
from ..convergence import Convergence
from ..errors import ConvergenceWarning, ConvSpectraError, ParameterError
from ..norm import NormBounds, operator_norm_bounds
from ._power import PADDINGS, LayerGeometry, LayerOperator, power_iteration, sigma
from .recording import InputSizeRecorder, eval_mode

__all__ = ["Convergence", "SpectralNorm", "certify", "converge_spectral_norm", "spectral_norm", "spectral_norms"]

MODES = ("normalize", "clip")
_SEED = 20190101  # the starting vectors' generator: the same on every process
_FIRST_ITERATIONS = 15


class SpectralNorm(nn.Module):
    """The parametrization ``W -> W / sigma`` (or the clip) with sigma the layer's operator norm estimate.

    Built by :func:`spectral_norm`; not meant to be registered by hand.

    Attributes:
        geometry: the layer's kind, channels and geometry (:class:`~convspectra.nn._power.LayerGeometry`).
        padding: ``"module"`` (the layer's own padding) or ``"circular"`` (the wrap-around operator).
        n_power_iterations, eps, max_norm, mode: as :func:`spectral_norm`.
        operator: the :class:`~convspectra.nn._power.LayerOperator` once the input size is known, else ``None``.
    """

    def __init__(
        self,
        geometry: LayerGeometry,
        weight: torch.Tensor,
        *,
        n_power_iterations: int,
        eps: float,
        padding: str,
        max_norm: float,
        mode: str,
    ) -> None:
        super().__init__()
        self.geometry, self.padding = geometry, padding
        self.n_power_iterations, self.eps, self.max_norm, self.mode = n_power_iterations, eps, max_norm, mode
        self.operator: LayerOperator | None = None
        self._fresh = True  # the vectors have not been iterated on yet
        self._recorder = InputSizeRecorder()
        empty = weight.detach().new_empty(0)
        self.register_buffer("_u", empty.clone())
        self.register_buffer("_v", empty.clone())

    # -- the input size and the vectors ---------------------------------------------------------

    def check_size(self, label: str, module: Any, size: Any) -> tuple[int, ...]:
        """Validate an input size for this layer (the recorder's check); returns it as a tuple."""
        return LayerOperator.of(self.geometry, size, padding=self.padding).spatial_input

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        """The layer's input size (spatial axes), ``None`` until recorded; setting it starts new vectors."""
        return None if self.operator is None else self.operator.spatial_input

    @input_shape.setter
    def input_shape(self, size: Any) -> None:
        op = LayerOperator.of(self.geometry, size, padding=self.padding)
        generator = torch.Generator().manual_seed(_SEED)
        for buffer, shape in ((self._v, op.input_shape), (self._u, op.output_shape)):
            start = torch.randn(shape, generator=generator, dtype=torch.float64)
            buffer.resize_(shape).copy_(start / torch.linalg.vector_norm(start))
        self.operator, self._fresh = op, True

    def _load_from_state_dict(
        self, state_dict: Any, prefix: str, local_metadata: Any, strict: bool, *args: Any
    ) -> None:
        u, v = state_dict.get(prefix + "_u"), state_dict.get(prefix + "_v")
        if isinstance(u, torch.Tensor) and isinstance(v, torch.Tensor) and v.shape != self._v.shape:
            error_msgs = args[-1]
            if v.numel() == 0:
                error_msgs.append(
                    f"{prefix}_v: the checkpoint's spectral-norm vectors are empty (saved before the first forward "
                    "pass recorded the input size) but this layer's are not; run a forward pass before saving"
                )
                return
            op = LayerOperator.of(self.geometry, tuple(v.shape[2:]), padding=self.padding)
            if tuple(u.shape) != op.output_shape or tuple(v.shape) != op.input_shape:
                error_msgs.append(
                    f"{prefix}_u, {prefix}_v: expected shapes {op.output_shape} and {op.input_shape} for this layer, "
                    f"got {tuple(u.shape)} and {tuple(v.shape)}"
                )
                return
            self._u.resize_(op.output_shape)
            self._v.resize_(op.input_shape)
            self.operator = op
            self._recorder.remove()
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, *args)
        if self.operator is not None:
            self._fresh = False

    # -- the parametrization --------------------------------------------------------------------

    def _require_operator(self) -> LayerOperator:
        if self.operator is None:
            raise ConvSpectraError(
                "input_shape: the input size of this layer is not known yet, so its normalised weight is not "
                "defined; run one forward pass first, or pass input_shape to convspectra.nn.spectral_norm"
            )
        return self.operator

    def sigma(self, weight: torch.Tensor, value: torch.Tensor | None = None) -> torch.Tensor:
        """``<u, A(weight) v>`` with the current vectors, differentiable in ``weight`` (autocast off)."""
        return sigma(self._require_operator(), weight, self._u, self._v, value)

    def iterate(self, weight: torch.Tensor, iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Run ``iterations`` power-iteration steps on the vectors in place; ``(sigma, residual)`` (no grad)."""
        self._fresh = False
        return power_iteration(self._require_operator(), weight, self._u, self._v, iterations, self.eps)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """The normalised (or clipped) weight."""
        self._require_operator()
        value = None  # the value of sigma for the new vectors, when the iteration gives it
        if self._fresh:
            value, _ = self.iterate(weight, _FIRST_ITERATIONS)
        elif self.training:
            value, _ = self.iterate(weight, self.n_power_iterations)
        sigma = self.sigma(weight, value).clamp_min(self.eps)
        if self.mode == "normalize":
            return weight * (self.max_norm / sigma)
        return weight / torch.clamp(sigma / self.max_norm, min=1.0)

    def right_inverse(self, value: torch.Tensor) -> torch.Tensor:
        """Assigning to ``module.weight`` sets the original (as PyTorch's spectral norm)."""
        return value

    def extra_repr(self) -> str:
        return (
            f"mode={self.mode!r}, max_norm={self.max_norm}, padding={self.padding!r}, "
            f"input_shape={self.input_shape}, n_power_iterations={self.n_power_iterations}"
        )


def spectral_norm(
    module: nn.Module,
    name: str = "weight",
    n_power_iterations: int = 1,
    eps: float = 1e-12,
    *,
    padding: str = "module",
    input_shape: int | tuple[int, ...] | None = None,
    max_norm: float = 1.0,
    mode: str = "normalize",
) -> nn.Module:
    r"""Normalise a layer by its true operator norm; the call shape of PyTorch's ``spectral_norm``.

    Args:
        module: a ``Conv1d/2d/3d``, ``ConvTranspose1d/2d/3d`` or ``Linear`` (for a Linear the
            operator is the matrix itself and this is PyTorch's normalisation).
        name: the parameter to normalise; only ``"weight"`` (what the layer convolves with).
        n_power_iterations: power-iteration steps per training forward pass (>= 1).
        eps: floor for the norms divided by.
        padding: ``"module"``: the layer as it computes (its padding and ``padding_mode``, zeros
            or circular); ``"circular"``: the wrap-around operator of the paper (every side a
            multiple of the stride).
        input_shape: the spatial size of the layer's input; ``None`` records it on the first
            forward pass (the vectors stay at that size; calls at other sizes are normalised
            with the recorded one).
        max_norm: the target c > 0.
        mode: ``"normalize"`` (:math:`cW/\sigma`) or ``"clip"`` (:math:`W/\max(1, \sigma/c)`).

    Returns:
        ``module``, parametrized in place (remove with ``parametrize.remove_parametrizations(module, "weight")``,
        which keeps the normalised weight).

    Raises:
        ParameterTypeError: a module of another kind, options of the wrong type.
        ParameterError: bad options, a padding mode other than zeros and circular, or an invalid size.

    Example:
        >>> import torch
        >>> from convspectra.nn import spectral_norm
        >>> conv = spectral_norm(torch.nn.ConvTranspose1d(2, 3, 4, stride=2, padding=1), input_shape=8)
        >>> tuple(conv.parametrizations.weight[0]._u.shape), conv.weight.shape
        ((1, 3, 16), torch.Size([2, 3, 4]))
    """
    geometry = LayerGeometry.of(module)
    if name != "weight":
        raise ParameterError(f"name: expected 'weight' (the parameter the layer computes with), got {name!r}")
    options = {
        "n_power_iterations": integer("n_power_iterations", n_power_iterations),
        "eps": real("eps", eps, minimum=0.0, open_below=True),
        "padding": choice("padding", padding, PADDINGS),
        "max_norm": real("max_norm", max_norm, minimum=0.0, open_below=True),
        "mode": choice("mode", mode, MODES),
    }
    if parametrize.is_parametrized(module, name) and any(
        isinstance(p, SpectralNorm) for p in module.parametrizations[name]
    ):
        raise ParameterError("module: expected a layer without a spectral norm, got one that already has it")
    parametrization = SpectralNorm(geometry, getattr(module, name), **options)
    if geometry.kind == "linear" or input_shape is not None:
        parametrization.input_shape = input_shape
    else:
        parametrization._recorder.record_first(
            parametrization, module, label="module", check=parametrization.check_size
        )
    parametrize.register_parametrization(module, name, parametrization, unsafe=parametrization.operator is None)
    return module


def spectral_norms(model: nn.Module) -> Iterator[tuple[str, nn.Module, SpectralNorm]]:
    """``(name, module, parametrization)`` for every layer of ``model`` with :func:`spectral_norm` on its weight.

    Example:
        >>> import torch
        >>> from convspectra.nn import spectral_norm, spectral_norms
        >>> model = torch.nn.Sequential(spectral_norm(torch.nn.Conv1d(1, 2, 3)), torch.nn.ReLU())
        >>> [name for name, _, _ in spectral_norms(model)]
        ['0']
    """
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            for item in module.parametrizations["weight"]:
                if isinstance(item, SpectralNorm):
                    yield name, module, item


def _input_of(module: nn.Module, parametrization: SpectralNorm) -> torch.Tensor:
    """The tensor the parametrization receives: the original after any parametrizations stacked before it."""
    stack = module.parametrizations["weight"]
    weight = stack.original
    for item in stack:
        if item is parametrization:
            return weight
        weight = item(weight)
    raise AssertionError("the parametrization is not on this module")  # pragma: no cover


def converge_spectral_norm(
    model: nn.Module, *, tol: float | None = None, max_iter: int = 10000
) -> dict[str, Convergence]:
    r"""Run power iterations on every :func:`spectral_norm` layer of ``model`` until its vectors stop moving.

    A layer stops when :math:`\|A^T u - \sigma v\| / \sigma \le` ``tol`` (sigma is then correct
    to about tol²·sigma when the top singular value is separated) or after ``max_iter`` steps.
    ``tol=None``: the weight dtype's machine epsilon to the power 2/3 (2.4e-5 in float32, 3.7e-11
    in float64). Convolutions often have a cluster of nearly equal top singular values (nearby
    frequencies); power iteration then needs many steps, hence the large default ``max_iter``.
    Runs whatever the training flag; afterwards ``eval()`` forwards use the converged vectors.

    Returns:
        ``{layer name: Convergence}``.

    Raises:
        ConvSpectraError: a layer whose input size is not known yet (no forward pass).

    Warns:
        ConvergenceWarning: layers that did not reach ``tol`` in ``max_iter`` steps.

    Example:
        >>> import torch
        >>> from convspectra.nn import spectral_norm, converge_spectral_norm
        >>> _ = torch.manual_seed(0)
        >>> conv = spectral_norm(torch.nn.Conv1d(2, 2, 3, padding=1), input_shape=16)
        >>> converge_spectral_norm(conv, tol=1e-4)[""].converged
        True
    """
    given = None if tol is None else real("tol", tol, minimum=0.0, open_below=True)
    max_iter = integer("max_iter", max_iter)
    results, stuck = {}, []
    with torch.no_grad():
        for name, module, parametrization in spectral_norms(model):
            weight, done = _input_of(module, parametrization), 0
            tol = given if given is not None else float(torch.finfo(weight.dtype).eps) ** (2 / 3)
            sigma = residual = torch.zeros(())
            while done < max_iter:
                step = min(10, max_iter - done)
                sigma, residual = parametrization.iterate(weight, step)
                done += step
                if float(residual) <= tol:
                    break
            results[name] = Convergence(float(sigma), done, float(residual), float(residual) <= tol)
            if not results[name].converged:
                stuck.append(name)
    if stuck:
        warnings.warn(
            f"converge_spectral_norm: layers {stuck} did not reach the tolerance in {max_iter} iterations "
            "(a nearly repeated top singular value converges slowly; the estimate is still a lower bound)",
            ConvergenceWarning,
            stacklevel=2,
        )
    return results


def certify(
    model: nn.Module, *, refine: bool = True, time_limit: float | None = None, max_memory: int | None = None
) -> dict[str, NormBounds]:
    """A certified bracket on the true operator norm of every :func:`spectral_norm` layer's normalised weight.

    Runs :func:`convspectra.operator_norm_bounds` on each layer at its recorded input size with
    the operator it is normalised for (its own padding, or the wrap-around one), in eval mode
    (no power-iteration step; every module's training flag is restored). The product of the
    ``upper`` ends bounds the Lipschitz constant of a chain of these layers and 1-Lipschitz activations.

    Args:
        model: a model (or one layer) with :func:`spectral_norm` layers.
        refine, time_limit, max_memory: as :func:`convspectra.operator_norm_bounds`.

    Returns:
        ``{layer name: NormBounds}`` (a Linear layer's is its exact largest singular value).

    Raises:
        ConvSpectraError: a layer whose input size is not known yet.

    Example:
        >>> import torch
        >>> from convspectra.nn import spectral_norm, converge_spectral_norm, certify
        >>> _ = torch.manual_seed(0)
        >>> conv = spectral_norm(torch.nn.Conv2d(2, 4, 3, padding=1), input_shape=8)
        >>> _ = converge_spectral_norm(conv, tol=1e-4)
        >>> bounds = certify(conv)[""]
        >>> bool(abs(bounds.lower - 1) < 1e-4 and abs(bounds.upper - 1) < 1e-4)
        True
    """
    layers = list(spectral_norms(model))
    results = {}
    with eval_mode(model), torch.no_grad():
        for name, module, parametrization in layers:
            shape = parametrization._require_operator().spatial_input
            if parametrization.geometry.kind == "linear":
                value = float(torch.linalg.matrix_norm(module.weight.detach().double(), ord=2))
                results[name] = NormBounds(value, value, value, True, "dense SVD (Linear)")
                continue
            results[name] = operator_norm_bounds(
                module,
                shape,
                padding=parametrization.padding,
                refine=refine,
                time_limit=time_limit,
                max_memory=max_memory,
            )
    return results
