"""The pieces of one layer's row in a spectral report: its geometry, its own-padding norm, the row of a failed layer.

Used by :mod:`convspectra.analysis.report`. :func:`model_norms` turns the solver's
:class:`~convspectra.NormBounds` into the value, the certified bracket and the status recorded
per layer (``sigma_max_model_status``: exact, or the bracket only and why).

Example:
    >>> import torch
    >>> from convspectra.analysis._layer import model_norms
    >>> conv = torch.nn.Conv2d(1, 1, 3, padding=1).double()
    >>> value, lower, upper, status, note = model_norms(conv, (6, 6), None, refine=False, time_left=None)
    >>> value, status, lower <= upper
    (None, 'bracket (requested)', True)
"""

from __future__ import annotations

import warnings
from typing import Any

from torch import nn

from .._backend import module_geometry
from ..errors import ConvergenceWarning, MemoryBudgetError
from .records import LayerReport
from .summary import SUMMARY_FIELDS
from .walk import LayerCall

__all__ = ["LINEAR_GEOMETRY", "describe_padding", "error_text", "failed_row", "joined", "model_norms", "output_shape"]

#: The geometry of a Linear layer, in the shape of :func:`convspectra._backend.module_geometry`.
LINEAR_GEOMETRY: dict[str, Any] = {"stride": (1,), "dilation": (1,), "groups": 1, "transposed": False}


def describe_padding(module: Any) -> tuple[str, str]:
    """``(padding, padding_mode)`` as the report writes them (``"none"`` for a Linear layer)."""
    if isinstance(module, nn.Linear):
        return "none", "none"
    padding = module.padding
    text = padding if isinstance(padding, str) else "x".join(map(str, padding))
    return text, str(module.padding_mode)


def output_shape(module: Any, size: tuple[int, ...], geometry: dict[str, Any]) -> tuple[int, ...]:
    """The spatial size of the circular operator's output (``(out_features,)`` for a Linear layer)."""
    if isinstance(module, nn.Linear):
        return (int(module.out_features),)
    if geometry["transposed"]:
        return tuple(n * s for n, s in zip(size, geometry["stride"], strict=True))
    return tuple(n // s for n, s in zip(size, geometry["stride"], strict=True))


#: The shortest time left in a layer's budget worth starting the iterative solver with (seconds).
_MIN_SOLVER_S = 1e-3


def model_norms(
    module: Any, size: tuple[int, ...], max_memory: int | None, *, refine: bool, time_left: float | None
) -> tuple[float | None, float, float, str, str | None]:
    """Own-padding norm: ``(value or None, lower, upper, status, note)`` (see ``LayerReport.sigma_max_model_status``).

    ``time_left`` (seconds, or None for no limit) is what remains of the layer's budget: the
    solver's ``time_limit``; when nothing is left, only the bracket is computed. When the
    refinement is refused by the memory budget, the bracket alone is computed (status
    ``"bracket (memory budget)"``); a refusal of the bracket itself is raised.
    """
    from .. import operator_norm_bounds  # the public function, looked up when called

    out_of_time = time_left is not None and time_left < _MIN_SOLVER_S
    options: dict[str, Any] = {"padding": "module", "max_memory": max_memory}
    if not refine or out_of_time:
        options["refine"] = False
    elif time_left is not None:
        options["time_limit"] = time_left
    refused = None
    with warnings.catch_warnings():  # non-convergence is recorded in the layer's status and note instead
        warnings.simplefilter("ignore", ConvergenceWarning)
        try:
            bounds = operator_norm_bounds(module, size, **options)  # carries the value
        except MemoryBudgetError as err:  # the refinement does not fit: the bracket alone may (else: raised)
            if options.get("refine", True) is False:
                raise
            refused = err
            bounds = operator_norm_bounds(module, size, **{**options, "refine": False, "time_limit": None})
    lower, upper = float(bounds.lower), float(bounds.upper)
    if bounds.converged:
        return float(bounds.value), lower, upper, "exact", None
    if not refine:
        return None, lower, upper, "bracket (requested)", None
    if refused is not None:
        why = f"the refinement is over the memory budget ({error_text(refused)})"
        return None, lower, upper, "bracket (memory budget)", f"own-padding norm: certified bracket only, {why}"
    if out_of_time or "stopped at time_limit" in bounds.method:
        why = "the layer's time budget (layer_timeout) ran out"
        return None, lower, upper, "bracket (time limit)", f"own-padding norm: certified bracket only, {why}"
    why = "the iterative solver reached max_iter"
    return None, lower, upper, "bracket (max_iter)", f"own-padding norm: certified bracket only, {why}"


def joined(*notes: str | None) -> str | None:
    """The notes that are set, joined by ``"; "`` (None when there is none)."""
    return "; ".join(note for note in notes if note) or None


def error_text(error: BaseException) -> str:
    """``Type: first line of the message`` (at most 300 characters)."""
    text = str(error).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(error).__name__}: {first[:300]}" if first else type(error).__name__


def failed_row(index: int, call: LayerCall, error: BaseException, seconds: float) -> LayerReport:
    """The row of a layer whose computation raised ``error``: what the walk knows, no numbers."""
    module: Any = call.module
    linear = isinstance(module, nn.Linear)
    try:
        geometry = LINEAR_GEOMETRY if linear else module_geometry(module)
        out_shape = output_shape(module, call.input_shape, geometry)
        pad_text, pad_mode = describe_padding(module)
    except Exception:
        geometry = {"stride": (), "dilation": (), "groups": 1, "transposed": False}
        out_shape, pad_text, pad_mode = (), "unknown", "unknown"
    weight = getattr(module, "weight", None)
    shape = getattr(weight, "shape", ())
    return LayerReport(
        index=index,
        name=call.name,
        type=type(module).__name__,
        kind="linear" if linear else "conv",
        kernel_shape=tuple(int(s) for s in shape),
        input_shape=tuple(call.input_shape),
        output_shape=out_shape,
        stride=tuple(geometry["stride"]),
        dilation=tuple(geometry["dilation"]),
        groups=int(geometry["groups"]),
        padding=pad_text,
        padding_mode=pad_mode,
        transposed=bool(geometry["transposed"]),
        calls=call.calls,
        folded_batchnorm=None,
        seconds=seconds,
        error=error_text(error),
        **dict.fromkeys(SUMMARY_FIELDS),
    )
