r"""Periodic projection of a model's convolutions onto an operator-norm ball during training.

Every ``every`` optimizer steps, each selected convolution's weight K is replaced by
:func:`convspectra.clip_operator_norm` of it: a kernel of the same support whose circular
operator on the layer's input size satisfies :math:`\|A(K)\|_2 \le c` (clip every frequency's
singular values at c, Proposition 12 of Sedghi, Gupta & Long 2019, then restore the k x k
support; repeat ``iterations`` times, or run Dykstra's algorithm). This is the regulariser of the
paper's Section 4.2. Between projection steps the hook costs one counter increment.

Input sizes are recorded on the model's first forward pass (forward pre-hooks, removed once they
have fired); the operator is the layer's *circular* convolution on that input size, as in the
paper, whatever padding the layer uses (for zero padding it is the standard surrogate, an upper
bound on the norm of the operator on a slightly larger grid, see the docs).

Under :mod:`torch.distributed` (DistributedDataParallel) the layers are shared out among the
ranks, each rank projects its share, and every projected weight is broadcast from the rank that
computed it, so every rank ends with bitwise-identical weights whatever its LAPACK does.

Example:
    >>> import torch, convspectra as cs
    >>> from convspectra.nn import OperatorNormProjector
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
    ...                             torch.nn.Conv2d(8, 8, 3, padding=1))
    >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> projector = OperatorNormProjector(model, max_norm=1.0, every=2, rescale=True)
    >>> handle = projector.attach(optimizer)
    >>> for _ in range(2):
    ...     optimizer.zero_grad()
    ...     model(torch.randn(4, 1, 8, 8)).square().mean().backward()
    ...     optimizer.step()
    >>> projector.projections
    1
    >>> float(cs.singular_values(model[2].weight, 8)[0]) <= 1.0 + 1e-3
    True
    >>> handle.remove()
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .. import projection as _projection
from .._checks import choice, flag, integer, norm_bounds
from ..errors import ConvSpectraError, ParameterTypeError
from ..norm import operator_norm
from .layers import ConvLayer, LayerKey, LayerSelection, ShapeLike, conv_layers
from .recording import InputSizeRecorder, assign_input_shapes

__all__ = ["METHODS", "OperatorNormProjector", "check_options", "project_layers", "projected_kernels"]

#: The projection methods of :func:`convspectra.clip_operator_norm`.
METHODS = ("alternating", "dykstra")


def check_options(
    max_norms: Sequence[float], min_norm: float | None, iterations: int, method: str, rescale: bool
) -> tuple[float | None, int, str, bool]:
    """Validate the projection options shared by the projector, the callback and the parametrization.

    Args:
        max_norms: the (already checked) bounds of the selected layers; ``min_norm`` may not exceed the smallest.
        min_norm, iterations, method, rescale: as :class:`OperatorNormProjector`.

    Returns:
        ``(min_norm, iterations, method, rescale)`` normalised (float or None, int, str, bool).

    Raises:
        ParameterTypeError, ParameterError: an option of the wrong type or out of range.

    Example:
        >>> from convspectra.nn.projector import check_options
        >>> check_options([1.0, 2.0], 0.5, 3, "dykstra", False)
        (0.5, 3, 'dykstra', False)
    """
    if min_norm is not None:
        _, min_norm = norm_bounds(min(max_norms), min_norm)
    return min_norm, integer("iterations", iterations), choice("method", method, METHODS), flag("rescale", rescale)


Job = tuple[torch.Tensor, tuple[int, ...], float, dict[str, Any]]


def projected_kernels(
    jobs: Sequence[Job],
    *,
    min_norm: float | None,
    iterations: int,
    method: str,
    rescale: bool,
    device: torch.device | None,
) -> list[torch.Tensor]:
    """Projected kernels, float64 on the work device, for ``(weight, input_shape, max_norm, geometry)`` jobs.

    One call of the core's ``clip_operator_norm_many`` (layers of equal shape batched) when
    there are several jobs (the core limits BLAS to one thread around its small LAPACK
    batches). With ``rescale``, a kernel whose exact operator norm still exceeds its bound
    after the iterations is multiplied by ``bound / norm``.

    Example:
        >>> import torch
        >>> from convspectra.nn.projector import projected_kernels
        >>> geometry = {"stride": (1,), "dilation": (1,), "groups": 1, "transposed": False}
        >>> (kernel,) = projected_kernels([(torch.ones(1, 1, 2), (4,), 1.0, geometry)], min_norm=None,
        ...                               iterations=1, method="alternating", rescale=True, device=None)
        >>> kernel.dtype, [round(tap, 12) for tap in kernel.flatten().tolist()]   # norm 2 -> 1
        (torch.float64, [0.5, 0.5])
    """
    work = [w.detach().to(device=w.device if device is None else device, dtype=torch.float64) for w, _, _, _ in jobs]
    options: dict[str, Any] = {"min_norm": min_norm, "iterations": iterations, "method": method, "layout": "OIHW"}
    if len(jobs) == 1:
        _, shape, bound, geometry = jobs[0]
        results = [_projection.clip_operator_norm(work[0], shape, bound, **options, **geometry)]
    else:
        geometries: dict[str, Any] = {
            key: [job[3][key] for job in jobs] for key in ("stride", "dilation", "groups", "transposed")
        }
        results = _projection.clip_operator_norm_many(
            work,
            [shape for _, shape, _, _ in jobs],
            [bound for _, _, bound, _ in jobs],
            **options,
            **geometries,
        )
    if rescale:
        for index, (_, shape, bound, geometry) in enumerate(jobs):
            sigma = float(operator_norm(results[index], shape, layout="OIHW", **geometry))
            if sigma > bound:
                results[index] = results[index] * (bound / sigma)
    return results


def _jobs(layers: Sequence[ConvLayer]) -> list[Job]:
    return [(layer.module.weight, layer.require_input_shape(), layer.max_norm, layer.geometry()) for layer in layers]


def _cost(layer: ConvLayer) -> int:
    """Rough cost of projecting a layer: frequencies x SVD work of one transfer matrix."""
    geometry, shape = layer.geometry(), layer.require_input_shape()  # _backend.module_geometry of the module
    weight_shape = layer.module.weight.shape
    groups = geometry["groups"]
    stride = math.prod(geometry["stride"])
    rows, cols = int(weight_shape[0]) // groups, int(weight_shape[1]) * stride
    frequencies = math.prod(shape) // (1 if geometry["transposed"] else stride) or 1
    return frequencies * groups * min(rows, cols) ** 2 * max(rows, cols)


def _owners(layers: Sequence[ConvLayer], world: int) -> list[int]:
    """Deterministic balanced assignment of layers to ranks (largest first, to the least loaded rank)."""
    load = [0] * world
    owner = [0] * len(layers)
    for index in sorted(range(len(layers)), key=lambda i: (-_cost(layers[i]), i)):
        rank = min(range(world), key=lambda r: (load[r], r))
        owner[index] = rank
        load[rank] += _cost(layers[index])
    return owner


def project_layers(
    layers: Sequence[ConvLayer],
    *,
    min_norm: float | None = None,
    iterations: int = 1,
    method: str = "alternating",
    rescale: bool = False,
    device: torch.device | str | None = None,
    distributed: bool | None = None,
    process_group: Any = None,
) -> None:
    """Project the weights of ``layers`` in place (the work behind :meth:`OperatorNormProjector.project_now`).

    Args:
        layers: :class:`~convspectra.nn.layers.ConvLayer` records with known input sizes.
        min_norm, iterations, method: as :func:`convspectra.clip_operator_norm`.
        rescale: after the iterations, multiply a kernel whose exact operator norm still exceeds
            its bound by ``bound / norm`` (one more spectrum per layer; guarantees the bound up to
            rounding to the weight's dtype).
        device: where to compute (default: each weight's device).
        distributed: ``None`` uses :mod:`torch.distributed` when it is initialised with more than
            one rank, ``True`` requires it, ``False`` computes everything on every rank.
        process_group: the group to share the work in (default the world).

    Raises:
        ConvSpectraError: an unknown input size, or ``distributed=True`` without an initialised
            process group.

    Example:
        >>> import torch, convspectra as cs
        >>> from convspectra.nn import conv_layers, project_layers
        >>> conv = torch.nn.Conv1d(2, 2, 3)
        >>> layers = conv_layers(conv, 0.5)
        >>> layers[0].input_shape = (16,)
        >>> project_layers(layers, iterations=3, rescale=True)
        >>> float(cs.singular_values(conv.weight, 16)[0]) <= 0.5 * (1 + 1e-6)
        True
    """
    for layer in layers:
        layer.require_input_shape()
    target = None if device is None else torch.device(device)
    options: dict[str, Any] = {
        "min_norm": min_norm,
        "iterations": iterations,
        "method": method,
        "rescale": rescale,
        "device": target,
    }
    group = _process_group(distributed, process_group)
    with torch.no_grad():
        if group is None:
            for layer, new in zip(layers, projected_kernels(_jobs(layers), **options), strict=True):
                layer.module.weight.copy_(new)
            return
        dist = torch.distributed
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        owner = _owners(layers, world)
        mine = [layer for layer, r in zip(layers, owner, strict=True) if r == rank]
        for layer, new in zip(mine, projected_kernels(_jobs(mine), **options), strict=True):
            layer.module.weight.copy_(new)
        for source in range(world):
            owned = [layer.module.weight for layer, r in zip(layers, owner, strict=True) if r == source]
            _broadcast(owned, source, rank, group)


def _process_group(distributed: bool | None, process_group: Any) -> Any:
    """The group to share the work in, or None to compute everything locally."""
    if distributed is False:
        return None
    dist = torch.distributed
    ready = dist.is_available() and dist.is_initialized()
    if not ready:
        if distributed:
            raise ConvSpectraError(
                "distributed: expected an initialised torch.distributed process group with distributed=True, "
                "got none (call torch.distributed.init_process_group first, or pass distributed=None/False)"
            )
        return None
    group = process_group if process_group is not None else dist.group.WORLD
    if dist.get_world_size(group) == 1:
        return None
    return group


def _broadcast(weights: list[torch.Tensor], source: int, rank: int, group: Any) -> None:
    """Broadcast the owner's weights to the other ranks, one flat buffer per (dtype, device)."""
    dist = torch.distributed
    buckets: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for weight in weights:
        buckets.setdefault((weight.dtype, weight.device), []).append(weight)
    source_global = dist.get_global_rank(group, source) if group is not dist.group.WORLD else source
    for tensors in buckets.values():
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.broadcast(flat, src=source_global, group=group)
        if rank != source:
            offset = 0
            for tensor in tensors:
                tensor.copy_(flat[offset : offset + tensor.numel()].view_as(tensor))
                offset += tensor.numel()


class OperatorNormProjector:
    r"""Project selected convolutions onto :math:`\{K : \|A(K)\|_2 \le c\}` every ``every`` optimizer steps.

    :math:`A(K)` is the layer's circular convolution on the spatial size of its input, recorded
    from the first forward pass (or given in ``input_shapes``). Each projection replaces the
    weight, in place and under ``torch.no_grad``, by
    :func:`convspectra.clip_operator_norm` of it, computed in float64/complex128 whatever the
    weight's precision (float16/bfloat16 weights and AMP training are fine) and cast back to the
    weight's dtype and device. Optimizer state (momentum) is left as it is. Layers of equal
    shape are batched (:func:`convspectra.clip_operator_norm_many`).

    ``iterations=1`` is the paper's single clip-and-restrict step: it lowers the norm a lot but
    usually not all the way to c (alternating projections converge over many rounds; with the
    projection repeated every ``every`` steps the weights approach the ball over training).
    Pass more ``iterations``, ``method="dykstra"`` or ``rescale=True`` when every projection
    must end inside the ball.

    Args:
        model: the model (a ``DistributedDataParallel`` wrapper or its ``.module``).
        max_norm: the bound c, or a mapping from layer name or module to its own bound
            (see :func:`~convspectra.nn.conv_layers`).
        every: project after every ``every``-th optimizer step (counted by :meth:`attach`'s hook
            or by calls to :meth:`step`).
        layers: ``None`` (every Conv1d/2d/3d and ConvTranspose1d/2d/3d), names or modules, or a
            predicate ``(name, module) -> bool``.
        input_shapes: sizes to use instead of recording them: one int/tuple for all layers or a
            mapping by name or module (the rest are recorded).
        min_norm: optional lower bound: singular values clipped into ``[min_norm, max_norm]``.
        iterations, method: as :func:`convspectra.clip_operator_norm` (``"alternating"`` or ``"dykstra"``).
        rescale: after the iterations, scale a kernel whose exact operator norm still exceeds its
            bound down onto it (costs one more spectrum per layer; the bound then holds up to
            rounding to the weight's dtype).
        device: where to compute (default each weight's own device; ``"cpu"`` moves the work off a GPU).
        distributed: ``None`` (default) shares the layers out among the ranks of an initialised
            :mod:`torch.distributed` group and broadcasts each projected weight from the rank
            that computed it (every rank ends bitwise identical); ``True`` requires such a
            group; ``False`` computes everything on every rank.
        process_group: the group for that (default the world).

    Attributes:
        layers: the :class:`~convspectra.nn.layers.ConvLayer` records (name, module, bound, input size).
        steps: optimizer steps counted so far.
        projections: projections done so far (by the schedule or :meth:`project_now`).
        last_seconds: wall time of the last projection.

    Raises:
        ParameterError, ParameterTypeError: invalid arguments (see :func:`~convspectra.nn.conv_layers`).
    """

    def __init__(
        self,
        model: nn.Module,
        max_norm: float | Mapping[LayerKey, float],
        *,
        every: int = 100,
        layers: LayerSelection = None,
        input_shapes: ShapeLike | Mapping[LayerKey, ShapeLike] | None = None,
        min_norm: float | None = None,
        iterations: int = 1,
        method: str = "alternating",
        rescale: bool = False,
        device: torch.device | str | None = None,
        distributed: bool | None = None,
        process_group: Any = None,
    ) -> None:
        self.layers: list[ConvLayer] = conv_layers(model, max_norm, layers)
        self.every = integer("every", every)
        self.min_norm, self.iterations, self.method, self.rescale = check_options(
            [layer.max_norm for layer in self.layers], min_norm, iterations, method, rescale
        )
        self.device = None if device is None else torch.device(device)
        if distributed not in (None, True, False):
            raise ParameterTypeError(f"distributed: expected None, True or False, got {distributed!r}")
        self.distributed = distributed
        self.process_group = process_group
        if input_shapes is not None:
            assign_input_shapes(self.layers, input_shapes)
        self._recorder = InputSizeRecorder()
        for layer in self.layers:
            if layer.input_shape is None:
                self._recorder.record_first(layer, layer.module, label=layer.name)
        self.steps = 0
        self.projections = 0
        self.last_seconds = 0.0

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...] | None]:
        """``{layer name: input size}`` (``None`` for a layer that has not run yet)."""
        return {layer.name: layer.input_shape for layer in self.layers}

    def attach(self, optimizer: torch.optim.Optimizer) -> Any:
        """Count ``optimizer``'s steps and project after every ``every``-th one.

        Uses ``optimizer.register_step_post_hook``; steps skipped by a ``GradScaler`` (inf/NaN
        gradients) do not call the optimizer and are not counted.

        Returns:
            A handle whose ``.remove()`` detaches the projector.

        Raises:
            ParameterTypeError: ``optimizer`` is not a ``torch.optim.Optimizer``.
        """
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ParameterTypeError(f"optimizer: expected a torch.optim.Optimizer, got {type(optimizer).__qualname__}")
        return optimizer.register_step_post_hook(self._hook)

    def _hook(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.step()

    def step(self) -> bool:
        """Count one optimizer step; project if it is the ``every``-th. Returns whether it projected."""
        self.steps += 1
        if self.steps % self.every:
            return False
        self.project_now()
        return True

    def project_now(self) -> None:
        """Project every selected layer now (off the schedule; the step count is unchanged).

        Raises:
            ConvSpectraError: a layer whose input size is unknown (it has not run yet).
        """
        start = time.perf_counter()
        project_layers(
            self.layers,
            min_norm=self.min_norm,
            iterations=self.iterations,
            method=self.method,
            rescale=self.rescale,
            device=self.device,
            distributed=self.distributed,
            process_group=self.process_group,
        )
        self.projections += 1
        self.last_seconds = time.perf_counter() - start

    def close(self) -> None:
        """Remove the input-size hooks that have not fired (attach handles are removed by their owner)."""
        self._recorder.remove()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({len(self.layers)} layers, every={self.every}, method={self.method!r}, "
            f"iterations={self.iterations}, steps={self.steps}, projections={self.projections})"
        )
