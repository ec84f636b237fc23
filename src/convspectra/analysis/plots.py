"""Plots of a spectral report (matplotlib, imported lazily; the Agg backend when saving to a file).

- :func:`plot_spectra`: Figure 4 of Sedghi, Gupta & Long (2019): each layer's singular values
  sorted in decreasing order, one curve per layer, coloured by depth. Every conv layer is drawn,
  1x1 ones included; whatever is not drawn (Linear layers by default, layers without a spectrum)
  is named in the title with the reason.
- :func:`plot_sigma_max`: the operator norm of every layer as bars (with the certified bracket
  of the model's own padding as a tick when the report has it).

Colours follow a colormap (:mod:`~convspectra.analysis.colours`): ``"viridis"`` by default
(readable with every common colour-vision deficiency and in grey), ``"paper"`` for the paper's red
(input side) to green (output side), or any matplotlib colormap name. Layers that share a
geometry (kernel, input size, stride) have near-identical spectra; each of them gets its own line
style and marker so that they do not read as one curve. The file format follows the extension
(``.png``, ``.svg``, ``.pdf``, anything matplotlib writes).

Example:
    >>> import torch, os, tempfile
    >>> from convspectra.analysis import spectral_report
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Conv2d(4, 4, 1))
    >>> report = spectral_report(model, (1, 8, 8), full_spectrum=True)
    >>> figure = report.plot_spectra(os.path.join(tempfile.mkdtemp(), "fig4.png"), log=True)
    >>> [line.get_label() for line in figure.axes[0].get_lines()]  # the 1x1 conv is drawn too
    ['0', '1']
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from typing import Any

from .._checks import flag, integer
from ..errors import ParameterError
from .colours import DEFAULT_COLORMAP, depth_colour, layer_colours

__all__ = ["depth_colour", "plot_sigma_max", "plot_spectra"]  # depth_colour: from .colours, kept here for callers

#: Line styles and markers given in turn to the layers of one geometry (input to output).
_LINESTYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "<", ">")
#: Points drawn per curve at most (a sorted spectrum is monotone: more are invisible and slow the drawing).
_MAX_POINTS = 4000


def _pyplot(path: Any) -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'convspectra[plot]'") from None
    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Any, path: str | os.PathLike[str] | None, plt: Any) -> Any:
    if path is not None:
        figure.savefig(os.fspath(path), dpi=150, bbox_inches="tight")
        plt.close(figure)
    return figure


def _is_1x1(layer: Any) -> bool:
    return layer.kind == "conv" and all(k == 1 for k in layer.kernel_shape[2:])


def _plural(count: int, what: str) -> str:
    return f"{count} {what}{'' if count == 1 else 's'}"


def _named(layers: Sequence[Any], shown: int = 3) -> str:
    """``a (why), b (why) and 2 more``: the layers left out for lack of a spectrum, with the reason."""
    parts = [f"{layer.name} ({layer.error or layer.note or 'not computed'})" for layer in layers[:shown]]
    more = len(layers) - shown
    return ", ".join(parts) + (f" and {more} more" if more > 0 else "")


def _select(report: Any, include_1x1: bool, include_linear: bool) -> tuple[list[Any], list[str]]:
    """The layers to draw, and what was left out and why (for the title)."""
    drawn, one_by_one, linear, missing = [], [], [], []
    for layer in report.layers:
        if layer.kind != "conv" and not include_linear:
            linear.append(layer)
        elif _is_1x1(layer) and not include_1x1:
            one_by_one.append(layer)
        elif layer.spectrum is None:
            missing.append(layer)
        else:
            drawn.append(layer)
    left_out = []
    if one_by_one:
        left_out.append(f"{_plural(len(one_by_one), '1x1 conv layer')} (include_1x1=False, as in the paper)")
    if linear:
        left_out.append(f"{_plural(len(linear), 'linear layer')} (not a convolution; include_linear=True draws it)")
    if missing:
        left_out.append(f"{_plural(len(missing), 'layer')} without a spectrum: {_named(missing)}")
    return drawn, left_out


def _styles(layers: Sequence[Any]) -> tuple[list[tuple[str, str | None, int, int]], tuple[int, Any] | None]:
    """Per layer: (line style, marker, member, size of its geometry group); and the largest group."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for position, layer in enumerate(layers):
        key = (
            layer.kind,
            layer.kernel_shape,
            layer.input_shape,
            layer.stride,
            layer.dilation,
            layer.groups,
            layer.transposed,
        )
        groups.setdefault(key, []).append(position)
    styles: list[tuple[str, str | None, int, int]] = [("-", None, 0, 1)] * len(layers)
    for members in groups.values():
        for member, position in enumerate(members):
            marker = _MARKERS[member % len(_MARKERS)] if len(members) > 1 else None
            styles[position] = (_LINESTYLES[member % len(_LINESTYLES)], marker, member, len(members))
    largest = max(groups.values(), key=len)
    return styles, ((len(largest), layers[largest[0]]) if len(largest) > 1 else None)


def _thin(size: int) -> Any:
    """Indices of at most :data:`_MAX_POINTS` points of a sorted curve of ``size`` (both ends dense)."""
    import numpy as np

    if size <= _MAX_POINTS:
        return np.arange(size)
    third = _MAX_POINTS // 3
    ends = np.geomspace(1, size, third)
    picked = np.concatenate([np.linspace(0, size - 1, third), ends - 1, size - ends])
    return np.unique(np.clip(np.rint(picked).astype(np.int64), 0, size - 1))


def _colorbar(figure: Any, axes: Any, colours: Sequence[Any], label: str) -> Any:
    """A discrete colour bar, one band per layer, with integer ticks (layer 1 nearest the input)."""
    import numpy as np
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.ticker import MaxNLocator

    count = len(colours)
    norm = BoundaryNorm(np.arange(0.5, count + 1.5), count)
    bar = figure.colorbar(ScalarMappable(norm=norm, cmap=ListedColormap(list(colours))), ax=axes)
    round_ticks = [int(t) for t in MaxNLocator(nbins=8, steps=[1, 2, 5, 10], integer=True).tick_values(1, count)]
    step = round_ticks[1] - round_ticks[0] if len(round_ticks) > 1 else 1
    # 1 and the last layer always have a tick; a round tick too close to either is dropped (labels would touch)
    ticks = sorted({1, count, *(t for t in round_ticks if t - 1 >= 0.6 * step and count - t >= 0.6 * step)})
    bar.set_ticks(ticks)
    bar.set_ticklabels([str(t) for t in ticks])
    bar.minorticks_off()
    bar.set_label(label)
    return bar


def plot_spectra(
    report: Any,
    path: str | os.PathLike[str] | None = None,
    *,
    log: bool = False,
    normalise_index: bool = False,
    include_1x1: bool = True,
    include_linear: bool = False,
    colormap: Any = DEFAULT_COLORMAP,
    label_top: int = 3,
    title: str | None = None,
) -> Any:
    """Figure-4 plot: every layer's sorted singular values, one curve per layer, coloured by depth.

    Every conv layer with a spectrum is drawn, 1x1 kernels included. What is not drawn is named
    in the title's second line with the reason ("1 linear layer (not a convolution ...)",
    "2 layers without a spectrum: name (error) ..."). Layers of the same geometry get distinct
    line styles and markers (a note under the axes says so); the ``label_top`` layers with the
    largest operator norms are named in a legend. The colour bar numbers the drawn layers from 1
    (nearest the input) with integer ticks.

    Args:
        report: a :class:`~convspectra.analysis.SpectralReport` made with ``full_spectrum=True``.
        path: file to write (format from the extension); None: return the open figure.
        log: logarithmic y axis (zero singular values are not drawn on it).
        normalise_index: x axis is the rank divided by the layer's number of singular values
            (curves of layers of different sizes span the same width) instead of the rank.
        include_1x1: draw layers whose kernel is 1x1 (default); False leaves them out as the
            paper did, and the title says how many.
        include_linear: also draw Linear layers (default: left out, and the title says so).
        colormap: ``"viridis"`` (default, colour-blind safe), ``"paper"`` (the paper's red to
            green) or any matplotlib colormap name or ``Colormap``.
        label_top: how many of the largest-norm layers the legend names (0: no legend).
        title: first line of the title (default: the model name, the count and the input shape);
            the line saying what was left out is always added.

    Returns:
        The matplotlib ``Figure`` (closed when written to ``path``). Each curve is a ``Line2D``
        labelled with its layer's name, in the report's order.

    Raises:
        ParameterError: the report has no spectra (made without ``full_spectrum=True``), no layer
            to plot, or an unknown ``colormap`` (the message lists the names).
        ImportError: matplotlib is not installed.
    """
    log, normalise_index = flag("log", log), flag("normalise_index", normalise_index)
    include_1x1, include_linear = flag("include_1x1", include_1x1), flag("include_linear", include_linear)
    label_top = integer("label_top", label_top, minimum=0)
    if not any(layer.spectrum is not None for layer in report.layers):
        raise ParameterError("report: expected a report made with full_spectrum=True, got one without spectra")
    layers, left_out = _select(report, include_1x1, include_linear)
    if not layers:
        raise ParameterError(f"report: no layer to plot; left out: {'; '.join(left_out)}")
    plt = _pyplot(path)
    colours = layer_colours(len(layers), colormap)
    import numpy as np

    styles, largest_group = _styles(layers)
    figure, axes = plt.subplots(figsize=(9, 5.5))
    lines = []
    for position, layer in enumerate(layers):
        values = np.asarray(layer.spectrum, dtype=float)
        x = np.arange(values.size) / (values.size if normalise_index else 1)
        if log:
            keep = values > 0
            x, values = x[keep], values[keep]
        if values.size == 0:
            lines.append(axes.plot([], [], label=layer.name)[0])
            continue
        picked = _thin(values.size)
        linestyle, marker, member, size = styles[position]
        every = None
        if marker is not None:  # five markers per curve, staggered between the members of a group
            every = sorted({int(((k + (member + 0.5) / size) / 5) * (picked.size - 1)) for k in range(5)})
        (line,) = axes.plot(
            x[picked],
            values[picked],
            color=colours[position],
            linestyle=linestyle,
            marker=marker,
            markevery=every,
            markersize=4,
            markeredgecolor="black",
            markeredgewidth=0.4,
            linewidth=1.1,
            alpha=0.9,
            label=layer.name,
        )
        lines.append(line)
    if log:
        axes.set_yscale("log")
    axes.set_xlabel("rank / number of singular values" if normalise_index else "rank (singular values sorted)")
    axes.set_ylabel("singular value")
    kinds = _plural(sum(layer.kind == "conv" for layer in layers), "conv layer")
    if include_linear and any(layer.kind != "conv" for layer in layers):
        kinds += " and " + _plural(sum(layer.kind != "conv" for layer in layers), "linear layer")
    shape = "x".join(map(str, report.input_shape[1:]))
    heading = title or f"{report.model}: sorted singular values of {kinds} (circular padding, input {shape})"
    below = "All layers drawn." if not left_out else "Not drawn: " + "; ".join(left_out) + "."
    axes.set_title(heading + "\n" + textwrap.fill(below, 110), fontsize=10)
    axes.grid(True, which="both", alpha=0.3)
    if label_top:
        norms = [(layer.sigma_max, i) for i, layer in enumerate(layers) if layer.sigma_max is not None]
        top = [i for _, i in sorted(norms, key=lambda item: -item[0])[:label_top]]
        if top:
            axes.legend(
                [lines[i] for i in top],
                [f"{layers[i].name} (layer {i + 1}): {layers[i].sigma_max:.3g}" for i in top],
                title="largest operator norms",
                fontsize=8,
                title_fontsize=8,
                loc="lower left" if log else "upper right",  # where sorted spectra leave room
            )
    if largest_group is not None:
        count, example = largest_group
        kernel = "x".join(map(str, example.kernel_shape))
        size = "x".join(map(str, example.input_shape))
        figure.text(
            0.01,
            -0.01,
            f"Layers of the same geometry (up to {count} here, e.g. {kernel} kernels on {size} inputs) have "
            "near-identical spectra: each is drawn with its own line style and marker.",
            fontsize=7,
            ha="left",
            va="top",
        )
    _colorbar(figure, axes, colours, f"layer drawn (1 = nearest the input, {len(layers)} = nearest the output)")
    return _save(figure, path, plt)


def plot_sigma_max(
    report: Any,
    path: str | os.PathLike[str] | None = None,
    *,
    log: bool = False,
    colormap: Any = DEFAULT_COLORMAP,
    title: str | None = None,
) -> Any:
    """Bar chart of every layer's operator norm (circular), coloured by depth.

    When the report was made with ``padding="model"``, the exact norm with the model's padding
    is drawn as a black tick with its certified bracket as an error bar. Layers without a
    circular norm are named in the title.

    Args:
        report: a :class:`~convspectra.analysis.SpectralReport`.
        path: file to write (format from the extension); None: return the open figure.
        log: logarithmic y axis.
        colormap: as for :func:`plot_spectra` (default ``"viridis"``; ``"paper"``: red to green).
        title: figure title.

    Returns:
        The matplotlib ``Figure`` (closed when written to ``path``).
    """
    layers = [layer for layer in report.layers if layer.sigma_max is not None]
    if not layers:
        raise ParameterError("report: no layer with a circular operator norm to plot")
    plt = _pyplot(path)
    colours = layer_colours(len(layers), colormap)
    figure, axes = plt.subplots(figsize=(max(6, 0.28 * len(layers) + 2), 4.5))
    positions = list(range(len(layers)))
    axes.bar(
        positions,
        [layer.sigma_max for layer in layers],
        color=colours,
        edgecolor="black",
        linewidth=0.3,
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
    missing = [layer for layer in report.layers if layer.sigma_max is None]
    heading = title or f"{report.model}: operator norm per layer"
    if missing:
        heading += "\n" + textwrap.fill(f"Not drawn: {_plural(len(missing), 'layer')}: {_named(missing)}.", 110)
    axes.set_title(heading, fontsize=10)
    axes.legend(fontsize=8)
    axes.grid(True, axis="y", alpha=0.3)
    return _save(figure, path, plt)
