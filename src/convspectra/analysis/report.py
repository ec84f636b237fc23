r"""Whole-model spectral report: every conv and linear layer's exact spectrum and norms.

For each ``Conv1d/2d/3d``, ``ConvTranspose*`` and ``Linear`` module that an example forward pass
calls, at the input size it actually sees:

- the full spectrum of the layer with wrap-around (circular) padding, exact
  (:func:`convspectra.singular_values`, in float64), summarised by
  ``sigma_max`` (operator norm), ``sigma_min``, the condition number ``sigma_max / sigma_min``,
  the stable rank ``sum_i sigma_i^2 / sigma_max^2 = ||A||_F^2 / ||A||_2^2`` and the effective
  rank ``#{i : sigma_i > relative_threshold * sigma_max}``
  (:func:`~convspectra.analysis.spectrum_summary`);
- with ``padding="model"``, the operator norm with the layer's own padding (zero padding for
  most networks, which is not circulant), exact value and certified bracket from
  :func:`convspectra.operator_norm_bounds` with ``padding="module"``;
- Linear layers: the SVD of the weight matrix (no padding, both columns agree).

A network-level Lipschitz upper bound is derived from these norms (see
:mod:`convspectra.analysis.lipschitz`). The rows and their exports are in
:mod:`convspectra.analysis.records`.

One layer never aborts the report: when a layer's computation fails (any exception, a
refusal by the memory budget included) its row keeps what the walk knows (name, kind, shapes),
its numbers are None, ``error`` holds the exception's type and message, and the report's
``notes`` name it; the other layers are computed as usual. (A quantity that is undefined for a
layer, such as the circular spectrum when the stride does not divide the input, is a ``note``,
not a failure.)

Example:
    >>> import torch
    >>> from convspectra.analysis import spectral_report
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
    ...                             torch.nn.Conv2d(8, 8, 3, stride=2, padding=1))
    >>> report = spectral_report(model, (3, 16, 16))
    >>> [(layer.name, layer.input_shape, layer.num_singular_values) for layer in report.layers]
    [('0', (16, 16), 768), ('2', (16, 16), 512)]
    >>> report.network_bound.value > 0
    True
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .._backend import module_geometry
from .._checks import choice, flag, real
from .._memory import resolve_budget
from .._threads import single_threaded_blas
from ..errors import MemoryBudgetError, ParameterError, ParameterTypeError
from ..spectrum import singular_values
from ._layer import LINEAR_GEOMETRY, describe_padding, error_text, failed_row, joined, model_norms, output_shape
from .folding import fold_batchnorm
from .lipschitz import network_bound
from .records import LayerReport, NetworkBound, SpectralReport
from .summary import SUMMARY_FIELDS, spectrum_summary
from .walk import LayerCall, collect_layers, detached_copy, make_example_input

__all__ = ["PADDINGS", "layers_report", "spectral_report"]

#: The values of ``spectral_report(padding=...)``.
PADDINGS = ("circular", "model")


def _analyse(
    index: int,
    call: LayerCall,
    *,
    padding: str,
    fold_bn: bool,
    full_spectrum: bool,
    relative_threshold: float,
    max_memory: int | None,
    layer_timeout: float | None,
    refine: bool,
) -> LayerReport:
    start = time.perf_counter()
    layer: Any = detached_copy(call.module)  # float64 on the CPU: analysis precision, the model is not touched
    folded = None
    note = None
    if fold_bn and call.batchnorm is not None:
        try:
            layer = fold_batchnorm(layer, detached_copy(call.batchnorm))
            folded = call.batchnorm_name
        except ParameterError as err:
            note = f"BatchNorm {call.batchnorm_name} not folded: {err}"
    linear = isinstance(layer, nn.Linear)
    geometry = LINEAR_GEOMETRY if linear else module_geometry(layer)
    pad_text, pad_mode = describe_padding(layer)
    weight = layer.weight.detach().numpy()
    spectrum: np.ndarray | None = None
    if linear:
        spectrum = np.linalg.svd(weight, compute_uv=False)
    else:
        try:
            spectrum = singular_values(weight, call.input_shape, layout="OIHW", **geometry, max_memory=max_memory)
        except MemoryBudgetError:  # defined but not computed: the layer failed (see the module docstring)
            raise
        except ParameterError as err:  # e.g. a stride that does not divide the input: no circulant operator
            note = joined(note, f"no circular spectrum: {err}")
    summary = spectrum_summary(spectrum, relative_threshold) if spectrum is not None else dict.fromkeys(SUMMARY_FIELDS)
    model_exact = model_lower = model_upper = status = own_error = None
    if linear:
        model_exact = model_lower = model_upper = summary["sigma_max"]
        status = "exact" if model_exact is not None else None
    elif padding == "model":
        time_left = None if layer_timeout is None else layer_timeout - (time.perf_counter() - start)
        try:
            model_exact, model_lower, model_upper, status, solver_note = model_norms(
                layer, call.input_shape, max_memory, refine=refine, time_left=time_left
            )
            note = joined(note, solver_note)
        except MemoryBudgetError as err:  # even the bracket is over the budget: the circular numbers stay
            own_error = f"own-padding norm: {error_text(err)}"
        except ParameterError as err:  # e.g. reflect/replicate padding: not a fixed linear map
            note = joined(note, f"no own-padding norm: {err}")
        except Exception as err:  # the solver failed: the circular numbers stay, the error is recorded
            own_error = f"own-padding norm: {error_text(err)}"
    return LayerReport(
        index=index,
        name=call.name,
        type=type(call.module).__name__,
        kind="linear" if linear else "conv",
        kernel_shape=tuple(int(s) for s in weight.shape),
        input_shape=tuple(call.input_shape),
        output_shape=output_shape(layer, call.input_shape, geometry),
        stride=geometry["stride"],
        dilation=geometry["dilation"],
        groups=geometry["groups"],
        padding=pad_text,
        padding_mode=pad_mode,
        transposed=geometry["transposed"],
        calls=call.calls,
        folded_batchnorm=folded,
        sigma_max_model=model_exact,
        sigma_max_model_lower=model_lower,
        sigma_max_model_upper=model_upper,
        sigma_max_model_status=status,
        note=note,
        spectrum=spectrum if full_spectrum else None,
        seconds=time.perf_counter() - start,
        error=own_error,
        **summary,
    )


def _check_norm_options(padding: str, layer_timeout: Any, refine: Any) -> tuple[float | None, bool]:
    refine = flag("refine", refine)
    if layer_timeout is not None:
        layer_timeout = real("layer_timeout", layer_timeout, minimum=0.0, open_below=True)
    if padding != "model" and (layer_timeout is not None or not refine):
        what = "layer_timeout" if layer_timeout is not None else "refine"
        raise ParameterError(
            f"{what}: applies to the own-padding norms, expected padding='model' with it, got padding={padding!r}"
        )
    return layer_timeout, refine


def _checked_options(
    padding: Any,
    fold_bn: Any,
    full_spectrum: Any,
    relative_threshold: Any,
    layer_timeout: Any,
    refine: Any,
    max_memory: Any,
) -> tuple[bool, bool, float, float | None, bool, int | None]:
    """The report's options checked before any work (the first bad one named), normalised."""
    choice("padding", padding, PADDINGS)
    fold_bn = flag("fold_bn", fold_bn)
    full_spectrum = flag("full_spectrum", full_spectrum)
    threshold = real("relative_threshold", relative_threshold, minimum=0.0, maximum=1.0, open_above=True)
    layer_timeout, refine = _check_norm_options(padding, layer_timeout, refine)
    if max_memory is not None:
        max_memory = resolve_budget(max_memory)
    return fold_bn, full_spectrum, threshold, layer_timeout, refine, max_memory


def spectral_report(
    model: nn.Module,
    example_input: torch.Tensor | Sequence[int],
    *,
    padding: str = "circular",
    fold_bn: bool = False,
    full_spectrum: bool = False,
    relative_threshold: float = 1e-3,
    progress: Callable[[int, int, str], None] | None = None,
    max_memory: int | None = None,
    layer_timeout: float | None = None,
    refine: bool = True,
    checkpoint: Callable[[SpectralReport], None] | None = None,
) -> SpectralReport:
    """The spectral report of every conv and linear layer of ``model`` (see the module docstring).

    Args:
        model: an eager ``torch.nn.Module`` or a TorchScript module. It is run once in eval mode
            without gradients and left unchanged (training flag restored).
        example_input: a tensor with batch axis, or the shape of one example without batch axis,
            e.g. ``(3, 32, 32)`` (a zero tensor of batch 1 is used).
        padding: ``"circular"``: circular spectra only (the paper's setting, fast); ``"model"``:
            also each conv's operator norm with its own padding, exact and certified bracket,
            and a network bound that holds for the model as it runs.
        fold_bn: analyse ``bn(conv(x))`` instead of ``conv(x)`` where a BatchNorm (with running
            statistics) directly consumes a layer's output.
        full_spectrum: keep each layer's full descending spectrum in the report (``spectrum``).
        relative_threshold: singular values above ``relative_threshold * sigma_max`` count in the
            effective rank.
        progress: called as ``progress(done, total, layer_name)`` after each layer (failed ones too).
        max_memory: memory budget in bytes of each layer's computation (default
            :data:`convspectra.DEFAULT_MEMORY_BUDGET`); a layer over it is recorded as failed.
        layer_timeout: seconds each layer may take (``padding="model"``): the own-padding
            solver gets what is left of it after the layer's circular spectrum as its
            ``time_limit``, and a layer that runs out reports its certified bracket instead of
            the refined value (``sigma_max_model_status`` ``"bracket (time limit)"``). The bracket
            itself (a circular norm on an enlarged grid) is always computed, so a layer can take
            somewhat longer. None: no limit.
        refine: False (``padding="model"``): the certified bracket of every own-padding norm
            only, no iterative refinement (``"bracket (requested)"``; fast).
        checkpoint: called as ``checkpoint(partial)`` with a partial report (``complete`` False,
            ``missing_layers`` the layers not reported yet, no network bound) once the layers are
            known and again after each layer: e.g. to write it to a file, so that an interrupted
            run leaves its results (what ``convspectra report --json`` does). An exception it
            raises (``KeyboardInterrupt`` included) stops the report.

    Returns:
        A :class:`~convspectra.analysis.SpectralReport`. A layer whose computation fails does
        not abort it: see the module docstring.

    Raises:
        ParameterTypeError: ``model`` is not a module, bad ``example_input`` or ``max_memory``.
        ParameterError: bad ``padding``/``relative_threshold``/``max_memory``/``layer_timeout``,
            ``layer_timeout`` or ``refine=False`` without ``padding="model"``, or the model fails
            on the example.

    Example:
        >>> import torch
        >>> from convspectra.analysis import spectral_report
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular"))
        >>> torch.nn.init.ones_(model[0].weight); report = spectral_report(model, (1, 8, 8))  # doctest: +ELLIPSIS
        Parameter...
        >>> layer = report.layers[0]                 # sigma_max = sqrt(2) x 9, at frequency 0
        >>> layer.sigma_max, layer.num_singular_values, layer.effective_rank
        (12.727922061357855, 64, 64)
    """
    fold_bn, full_spectrum, threshold, layer_timeout, refine, max_memory = _checked_options(
        padding, fold_bn, full_spectrum, relative_threshold, layer_timeout, refine, max_memory
    )
    if not isinstance(model, nn.Module):
        raise ParameterTypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")

    start = time.perf_counter()
    example = make_example_input(model, example_input)
    calls = collect_layers(model, example)
    report = layers_report(
        calls,
        model_name=str(model.original_name) if isinstance(model, torch.jit.ScriptModule) else type(model).__name__,
        input_shape=tuple(int(s) for s in example.shape),
        padding=padding,
        fold_bn=fold_bn,
        full_spectrum=full_spectrum,
        relative_threshold=threshold,
        progress=progress,
        max_memory=max_memory,
        layer_timeout=layer_timeout,
        refine=refine,
        checkpoint=checkpoint,
    )
    bound = network_bound(model, example, report.layers, padding=padding)
    return dataclasses.replace(report, network_bound=bound, seconds=time.perf_counter() - start)


def layers_report(
    calls: Sequence[LayerCall],
    *,
    model_name: str,
    input_shape: tuple[int, ...],
    padding: str = "circular",
    fold_bn: bool = False,
    full_spectrum: bool = False,
    relative_threshold: float = 1e-3,
    progress: Callable[[int, int, str], None] | None = None,
    max_memory: int | None = None,
    network_bound: NetworkBound | None = None,
    layer_timeout: float | None = None,
    refine: bool = True,
    checkpoint: Callable[[SpectralReport], None] | None = None,
) -> SpectralReport:
    """The report of given layers, without a forward pass: what :func:`spectral_report` runs on
    the layers it collected (and what a model from another framework, e.g. ONNX, is reported by).

    Args:
        calls: the layers with the input sizes they see (:class:`~convspectra.analysis.walk.LayerCall`).
        model_name, input_shape: what the report says it describes (``input_shape`` with batch axis).
        padding, fold_bn, full_spectrum, relative_threshold, progress, max_memory: as :func:`spectral_report`.
        layer_timeout, refine, checkpoint: as :func:`spectral_report`.
        network_bound: the network bound to record (default: "not available", since the graph
            between the layers is not known here).

    Returns:
        A :class:`~convspectra.analysis.SpectralReport` (a failing layer is recorded, never raised).

    Example:
        >>> import torch
        >>> from convspectra.analysis import layers_report
        >>> from convspectra.analysis.walk import LayerCall
        >>> call = LayerCall("conv", torch.nn.Conv2d(2, 4, 3, padding=1), (8, 8), 1, None, None)
        >>> partial = []
        >>> report = layers_report([call], model_name="one conv", input_shape=(1, 2, 8, 8), padding="model",
        ...                        refine=False, checkpoint=partial.append)
        >>> [(len(p.layers), p.missing_layers, p.complete) for p in partial], report.complete
        ([(0, ['conv'], False), (1, [], False)], True)
        >>> report.layers[0].sigma_max_model_status, report.layers[0].sigma_max_model
        ('bracket (requested)', None)
    """
    fold_bn, full_spectrum, threshold, layer_timeout, refine, max_memory = _checked_options(
        padding, fold_bn, full_spectrum, relative_threshold, layer_timeout, refine, max_memory
    )
    from .. import __version__

    start = time.perf_counter()
    layers: list[LayerReport] = []
    notes: list[str] = []
    names = [call.name for call in calls]

    def report(**changes: Any) -> SpectralReport:
        return SpectralReport(
            model=model_name,
            input_shape=tuple(int(s) for s in input_shape),
            padding=padding,
            fold_bn=fold_bn,
            relative_threshold=threshold,
            layers=list(layers),
            network_bound=NetworkBound(None, padding, "not computed: the report is partial"),
            seconds=time.perf_counter() - start,
            version=__version__,
            notes=list(notes),
            layer_timeout=layer_timeout,
            refine=refine,
            **changes,
        )

    if checkpoint is not None:
        checkpoint(report(complete=False, missing_layers=names))
    # Per-layer LAPACK calls on small matrices lose to OpenBLAS's own threads (3-5x on a loaded
    # 2-core machine); the engine's worker pool, used for large layers, limits them itself.
    with single_threaded_blas():
        for index, call in enumerate(calls):
            layer_start = time.perf_counter()
            try:
                row = _analyse(
                    index,
                    call,
                    padding=padding,
                    fold_bn=fold_bn,
                    full_spectrum=full_spectrum,
                    relative_threshold=threshold,
                    max_memory=max_memory,
                    layer_timeout=layer_timeout,
                    refine=refine,
                )
            except Exception as err:
                row = failed_row(index, call, err, time.perf_counter() - layer_start)
                notes.append(f"layer {call.name!r} ({row.type}) failed, its numbers are missing: {row.error}")
            else:
                if row.error is not None:
                    notes.append(
                        f"layer {call.name!r} ({row.type}): its own-padding norm failed, its circular numbers are "
                        f"there: {row.error}"
                    )
            layers.append(row)
            if checkpoint is not None:  # first: an interruption in progress() finds the layer saved
                checkpoint(report(complete=False, missing_layers=names[index + 1 :]))
            if progress is not None:
                progress(index + 1, len(calls), call.name)
    if network_bound is None:
        network_bound = NetworkBound(None, padding, "not available: the graph between the layers is not known")
    return dataclasses.replace(report(), network_bound=network_bound)
