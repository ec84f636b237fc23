"""Plots of a spectral report (matplotlib, imported lazily; the Agg backend when saving to a file).

- :func:`plot_spectra`: Figure 4 of Sedghi, Gupta & Long (2019): each layer's singular values
  sorted in decreasing order, one curve per layer, coloured from red (near the input) to green
  (near the output); layers with 1x1 kernels are left out by default, as in the paper.
- :func:`plot_sigma_max`: the operator norm of every layer as bars (with the certified bracket
  of the model's own padding as a tick when the report has it).

The file format follows the extension (``.png``, ``.svg``, ``.pdf``, anything matplotlib writes).

Example:
    >>> import torch, os, tempfile
    >>> from convspectra.analysis import spectral_report
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Conv2d(4, 4, 3, padding=1))
    >>> report = spectral_report(model, (1, 8, 8), full_spectrum=True)
    >>> path = os.path.join(tempfile.mkdtemp(), "fig4.png")
    >>> _ = report.plot_spectra(path, log=True)   # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import ParameterError

__all__ = ["depth_colour", "plot_sigma_max", "plot_spectra"]


def _pyplot(path: Any) -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'convspectra[plot]'") from None
    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def depth_colour(position: int, count: int) -> tuple[float, float, float]:
    """RGB colour of layer ``position`` of ``count``: pure red for the first, pure green for the last.

    Example:
        >>> from convspectra.analysis.plots import depth_colour
        >>> depth_colour(0, 3), depth_colour(1, 3), depth_colour(2, 3)
        ((1.0, 0.0, 0.0), (0.5, 0.5, 0.0), (0.0, 1.0, 0.0))
    """
    t = position / (count - 1) if count > 1 else 0.0
    return (1.0 - t, t, 0.0)


def _save(figure: Any, path: str | os.PathLike[str] | None, plt: Any) -> Any:
    if path is not None:
        figure.savefig(os.fspath(path), dpi=150, bbox_inches="tight")
        plt.close(figure)
    return figure


def plot_spectra(
    report: Any,
    path: str | os.PathLike[str] | None = None,
    *,
    log: bool = False,
    normalise_index: bool = False,
    include_1x1: bool = False,
    include_linear: bool = False,
    title: str | None = None,
) -> Any:
    """Figure-4 plot: every layer's sorted singular values, red (input side) to green (output side).

    Args:
        report: a :class:`~convspectra.analysis.SpectralReport` made with ``full_spectrum=True``.
        path: file to write (format from the extension); None: return the open figure.
        log: logarithmic y axis (zero singular values are not drawn on it).
        normalise_index: x axis is the rank divided by the layer's number of singular values
            (curves of layers of different sizes span the same width) instead of the rank.
        include_1x1: also plot layers whose kernel is 1x1 (the paper leaves them out).
        include_linear: also plot Linear layers.
        title: figure title (default: the model name and input shape).

    Returns:
        The matplotlib ``Figure`` (closed when written to ``path``).

    Raises:
        ParameterError: the report has no spectra (made without ``full_spectrum=True``) or no layer to plot.
        ImportError: matplotlib is not installed.
    """
    layers = [
        layer
        for layer in report.layers
        if layer.spectrum is not None
        and (include_linear or layer.kind == "conv")
        and (include_1x1 or layer.kind != "conv" or any(k > 1 for k in layer.kernel_shape[2:]))
    ]
    if not any(layer.spectrum is not None for layer in report.layers):
        raise ParameterError("report: expected a report made with full_spectrum=True, got one without spectra")
    if not layers:
        raise ParameterError("report: no layer to plot (only 1x1 or linear layers; see include_1x1/include_linear)")
    plt = _pyplot(path)
    import numpy as np
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LinearSegmentedColormap, Normalize

    figure, axes = plt.subplots(figsize=(8, 5))
    for position, layer in enumerate(layers):
        values = np.asarray(layer.spectrum)
        x = np.arange(values.size) / (values.size if normalise_index else 1)
        if log:
            keep = values > 0
            x, values = x[keep], values[keep]
        axes.plot(x, values, color=depth_colour(position, len(layers)), linewidth=1.0, alpha=0.9)
    if log:
        axes.set_yscale("log")
    axes.set_xlabel("rank / number of singular values" if normalise_index else "rank (singular values sorted)")
    axes.set_ylabel("singular value")
    padding = "circular padding"
    axes.set_title(
        title
        or f"{report.model}: singular values of {len(layers)} conv layers ({padding}, input {report.input_shape[1:]})"
    )
    axes.grid(True, which="both", alpha=0.3)
    cmap = LinearSegmentedColormap.from_list("red_green", [(1, 0, 0), (0, 1, 0)])
    mappable = ScalarMappable(norm=Normalize(1, len(layers)), cmap=cmap)
    bar = figure.colorbar(mappable, ax=axes)
    bar.set_label("layer (1 = nearest the input)")
    return _save(figure, path, plt)


def plot_sigma_max(
    report: Any, path: str | os.PathLike[str] | None = None, *, log: bool = False, title: str | None = None
) -> Any:
    """Bar chart of every layer's operator norm (circular), red to green by depth.

    When the report was made with ``padding="model"``, the exact norm with the model's padding
    is drawn as a black tick with its certified bracket as an error bar.

    Args:
        report: a :class:`~convspectra.analysis.SpectralReport`.
        path: file to write (format from the extension); None: return the open figure.
        log: logarithmic y axis.
        title: figure title.

    Returns:
        The matplotlib ``Figure`` (closed when written to ``path``).
    """
    plt = _pyplot(path)
    layers = [layer for layer in report.layers if layer.sigma_max is not None]
    if not layers:
        raise ParameterError("report: no layer with a circular operator norm to plot")
    figure, axes = plt.subplots(figsize=(max(6, 0.28 * len(layers) + 2), 4.5))
    positions = list(range(len(layers)))
    axes.bar(
        positions,
        [layer.sigma_max for layer in layers],
        color=[depth_colour(i, len(layers)) for i in positions],
        label="exact (convs: circular padding)",
    )
    model = [(i, layer) for i, layer in zip(positions, layers, strict=True) if layer.sigma_max_model is not None]
    if report.padding == "model" and model:
        axes.errorbar(
            [i for i, _ in model],
            [layer.sigma_max_model for _, layer in model],
            yerr=[
                [layer.sigma_max_model - layer.sigma_max_model_lower for _, layer in model],
                [layer.sigma_max_model_upper - layer.sigma_max_model for _, layer in model],
            ],
            fmt="_",
            color="black",
            markersize=8,
            capsize=2,
            label="model's own padding (exact, certified bracket)",
        )
    axes.set_xticks(positions)
    axes.set_xticklabels([layer.name for layer in layers], rotation=90, fontsize=7)
    axes.set_ylabel("operator norm (largest singular value)")
    if log:
        axes.set_yscale("log")
    axes.set_title(title or f"{report.model}: operator norm per layer")
    axes.legend(fontsize=8)
    axes.grid(True, axis="y", alpha=0.3)
    return _save(figure, path, plt)
