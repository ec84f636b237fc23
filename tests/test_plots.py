"""The Figure-4 and norm plots: every conv layer drawn, what is left out named, colours, ticks, styles.

The figures are inspected through matplotlib's objects (lines, colour bar, title) on the Agg
backend; nothing is displayed. The reports are real ones of small models the tests build (plus
hand-made rows where a failed layer or a long spectrum is needed).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from convspectra.analysis import figure4_observations, plot_sigma_max, plot_spectra, spectral_report
from convspectra.analysis.colours import DEFAULT_COLORMAP, PAPER_COLORMAP, check_colormap, layer_colours
from convspectra.errors import ParameterError, ParameterTypeError

matplotlib = pytest.importorskip("matplotlib", reason="matplotlib not installed (plot extra)")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


class _Net(nn.Module):
    """Stem 3x3, three same-geometry 3x3 convs, a 1x1 expansion, a 1x1 reduction, a strided 3x3, a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, padding=1)
        self.body = nn.Sequential(*[nn.Conv2d(4, 4, 3, padding=1) for _ in range(3)])
        self.expand = nn.Conv2d(4, 8, 1)  # 1x1: 4 non-zero singular values per frequency, 4 zeros
        self.reduce = nn.Conv2d(8, 4, 1)
        self.down = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.head = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(self.reduce(self.expand(self.body(self.stem(x)))))
        return self.head(x.flatten(1))


@pytest.fixture(scope="module")
def report():
    torch.manual_seed(0)
    return spectral_report(_Net(), (2, 8, 8), full_spectrum=True)


CONVS = ["stem", "body.0", "body.1", "body.2", "expand", "reduce", "down"]


def _lines(figure):
    return figure.axes[0].get_lines()


def _title(figure) -> str:
    return figure.axes[0].get_title()


def _colour_bar(figure):
    return figure.axes[-1]


# ---------------------------------------------------------------- what is drawn, what is said


def test_every_conv_layer_is_drawn_1x1_included_and_the_linear_layer_is_named(report):
    figure = plot_spectra(report)
    assert [line.get_label() for line in _lines(figure)] == CONVS
    for line, name in zip(_lines(figure), CONVS, strict=True):
        layer = next(layer for layer in report.layers if layer.name == name)
        assert np.array_equal(line.get_ydata(), layer.spectrum)  # short spectra: every value, unchanged
    title = _title(figure)
    assert "7 conv layers" in title and "Not drawn: 1 linear layer (not a convolution; include_linear=True" in title


def test_include_linear_draws_every_layer_and_says_so(report):
    figure = plot_spectra(report, include_linear=True)
    assert [line.get_label() for line in _lines(figure)] == [*CONVS, "head"]
    assert "7 conv layers and 1 linear layer" in _title(figure) and "All layers drawn." in _title(figure)


def test_leaving_out_1x1_layers_as_the_paper_did_is_said_in_the_title(report):
    figure = plot_spectra(report, include_1x1=False, include_linear=True)
    assert [line.get_label() for line in _lines(figure)] == ["stem", "body.0", "body.1", "body.2", "down", "head"]
    assert "Not drawn: 2 1x1 conv layers (include_1x1=False, as in the paper)." in _title(figure)


def test_layers_without_a_spectrum_are_named_with_the_reason(report):
    layers = list(report.layers)
    layers[2] = dataclasses.replace(layers[2], spectrum=None, error="MemoryBudgetError: needs 9 GiB")
    layers[6] = dataclasses.replace(layers[6], spectrum=None, note="stride (2, 2) does not divide the input")
    broken = dataclasses.replace(report, layers=layers)
    figure = plot_spectra(broken, title="custom")
    assert [line.get_label() for line in _lines(figure)] == ["stem", "body.0", "body.2", "expand", "reduce"]
    title = " ".join(_title(figure).split())  # the second line is wrapped
    assert title.startswith("custom\n") or title.startswith("custom ")
    assert "2 layers without a spectrum: body.1 (MemoryBudgetError: needs 9 GiB), down (stride (2, 2)" in title
    assert "1 linear layer" in title


def test_nothing_to_draw_says_what_was_left_out(report):
    only_linear = dataclasses.replace(report, layers=[layer for layer in report.layers if layer.kind == "linear"])
    with pytest.raises(ParameterError, match=r"no layer to plot; left out: 1 linear layer"):
        plot_spectra(only_linear)
    with pytest.raises(ParameterError, match="full_spectrum"):
        plot_spectra(spectral_report(nn.Conv2d(1, 2, 3), (1, 6, 6)))


def test_log_axis_leaves_out_zero_singular_values_only(report):
    values = np.concatenate([np.linspace(3.0, 0.5, 40), np.zeros(24)])  # a rank-deficient layer's spectrum
    layer = dataclasses.replace(report.layers[0], spectrum=values, num_singular_values=values.size)
    single = dataclasses.replace(report, layers=[layer])
    (line,) = _lines(plot_spectra(single, log=True))
    assert np.array_equal(line.get_ydata(), values[:40]) and np.array_equal(line.get_xdata(), np.arange(40))
    assert plot_spectra(single, log=True).axes[0].get_yscale() == "log"
    (linear,) = _lines(plot_spectra(single))
    assert np.array_equal(linear.get_ydata(), values)
    (normalised,) = _lines(plot_spectra(single, normalise_index=True))
    assert np.array_equal(normalised.get_xdata(), np.arange(64) / 64)


def test_long_spectra_are_drawn_from_a_subset_of_their_exact_values_with_both_ends(report):
    values = np.sort(np.random.default_rng(0).lognormal(size=300_000))[::-1]
    layer = dataclasses.replace(report.layers[0], spectrum=values, num_singular_values=values.size)
    line = _lines(plot_spectra(dataclasses.replace(report, layers=[layer])))[0]
    x, y = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
    assert 1000 < x.size <= 4000
    assert x[0] == 0 and x[-1] == values.size - 1 and np.all(np.diff(x) > 0)
    assert np.array_equal(y, values[x.astype(int)])
    assert np.sum(x >= values.size - 100) >= 20  # the steep tail is drawn densely


# ---------------------------------------------------------------- colours and colour bar


def test_default_colormap_is_viridis_and_paper_is_red_to_green(report):
    assert DEFAULT_COLORMAP == "viridis"
    viridis = matplotlib.colormaps["viridis"]
    lines = _lines(plot_spectra(report))
    for position, line in enumerate(lines):
        assert to_rgb(line.get_color()) == pytest.approx(viridis(position / (len(lines) - 1))[:3])
    paper = _lines(plot_spectra(report, colormap=PAPER_COLORMAP))
    assert to_rgb(paper[0].get_color()) == (1.0, 0.0, 0.0) and to_rgb(paper[-1].get_color()) == (0.0, 1.0, 0.0)
    assert all(to_rgb(line.get_color())[2] == 0.0 for line in paper)  # red + green only, as in the paper
    other = _lines(plot_spectra(report, colormap="cividis"))
    assert to_rgb(other[0].get_color()) == pytest.approx(matplotlib.colormaps["cividis"](0.0)[:3])


def test_colour_bar_has_one_band_per_drawn_layer_and_integer_ticks(report):
    figure = plot_spectra(report)
    bar = _colour_bar(figure)
    ticks = bar.get_yticks()
    assert list(ticks) == [int(t) for t in ticks] and ticks[0] == 1 and ticks[-1] == len(CONVS)
    assert [label.get_text() for label in bar.get_yticklabels()] == [str(int(t)) for t in ticks]
    assert bar.get_ylim() == (0.5, len(CONVS) + 0.5)
    assert "1 = nearest the input" in bar.get_ylabel()


@pytest.mark.parametrize("count", [2, 9, 31, 53, 120])
def test_colour_bar_ticks_stay_integers_and_readable_at_every_depth(report, count):
    layers = [dataclasses.replace(report.layers[0], name=f"l{i}") for i in range(count)]
    bar = _colour_bar(plot_spectra(dataclasses.replace(report, layers=layers), label_top=0))
    ticks = [float(t) for t in bar.get_yticks()]
    assert all(t == int(t) for t in ticks) and ticks[0] == 1 and ticks[-1] == count
    assert 2 <= len(ticks) <= 12
    if len(ticks) > 3:  # no two ticks closer than half the round step (1 and the last are always there)
        assert min(np.diff(ticks)) >= (ticks[2] - ticks[1]) / 2


def test_bad_colormaps_are_refused_with_the_parameter_and_the_choices(report):
    with pytest.raises(ParameterError) as caught:
        plot_spectra(report, colormap="viridian")
    message = str(caught.value)
    assert message.startswith("colormap: expected 'paper'") and "got 'viridian' (did you mean 'viridis'?)" in message
    assert all(name in message for name in ("viridis", "cividis", "plasma", "magma", "RdYlGn"))
    with pytest.raises(ParameterTypeError, match=r"colormap: expected a colormap name .* got 3 \(int\)"):
        plot_sigma_max(report, colormap=3)
    assert check_colormap(matplotlib.colormaps["magma"]).name == "magma"  # a Colormap object is accepted
    assert layer_colours(0) == [] and len(layer_colours(5, "magma_r")) == 5


# ---------------------------------------------------------------- same-geometry layers, legend


def test_same_geometry_layers_get_distinct_line_styles_and_markers(report):
    lines = {line.get_label(): line for line in _lines(plot_spectra(report))}
    body = [lines[name] for name in ("body.0", "body.1", "body.2")]  # one geometry: 4x4x3x3 on 8x8
    styles = {(line.get_linestyle(), line.get_marker()) for line in body}
    assert len(styles) == 3 and all(line.get_marker() not in ("None", "", None) for line in body)
    marks = [tuple(line.get_markevery()) for line in body]
    assert len(set(marks)) == 3  # markers staggered: coincident curves still show three sets
    for name in ("stem", "expand", "reduce", "down"):  # alone in their geometry: plain solid lines
        assert lines[name].get_linestyle() == "-" and lines[name].get_marker() in ("None", "", None)


def test_the_legend_names_the_largest_norm_layers_and_the_note_explains_styles(report):
    figure = plot_spectra(report, label_top=2)
    legend = figure.axes[0].get_legend()
    texts = [text.get_text() for text in legend.get_texts()]
    convs = [layer for layer in report.layers if layer.kind == "conv"]
    top = sorted(convs, key=lambda layer: -layer.sigma_max)[:2]
    assert [text.split(" ")[0] for text in texts] == [layer.name for layer in top]
    assert f"{top[0].sigma_max:.3g}" in texts[0] and legend.get_title().get_text() == "largest operator norms"
    notes = [text.get_text() for text in figure.texts]
    assert any("up to 3 here, e.g. 4x4x3x3 kernels on 8x8 inputs" in note for note in notes)
    assert plot_spectra(report, label_top=0).axes[0].get_legend() is None


# ---------------------------------------------------------------- the bar chart, files


def test_norm_bars_follow_the_colormap_and_name_the_layers_without_a_norm(report):
    layers = list(report.layers)
    layers[1] = dataclasses.replace(layers[1], sigma_max=None, error="RuntimeError: boom")
    figure = plot_sigma_max(dataclasses.replace(report, layers=layers), colormap="paper")
    bars = figure.axes[0].patches
    assert len(bars) == len(report.layers) - 1
    assert to_rgb(bars[0].get_facecolor()) == (1.0, 0.0, 0.0) and to_rgb(bars[-1].get_facecolor()) == (0.0, 1.0, 0.0)
    assert "Not drawn: 1 layer: body.0 (RuntimeError: boom)." in _title(figure)
    default = plot_sigma_max(report).axes[0].patches
    assert to_rgb(default[0].get_facecolor()) == pytest.approx(matplotlib.colormaps["viridis"](0.0)[:3])


def test_plots_written_to_files_are_closed_images(report, tmp_path):
    path = tmp_path / "fig4.png"
    figure = plot_spectra(report, path, log=True, colormap="paper")
    assert path.read_bytes().startswith(b"\x89PNG") and not plt.fignum_exists(figure.number)


# ---------------------------------------------------------------- Figure 4 observations


def test_figure4_observations_name_the_layers_they_leave_out(report):
    observations = figure4_observations(report)
    assert observations.layers == ["stem", "body.0", "body.1", "body.2", "down"]
    assert observations.left_out == {"expand": "1x1 kernel", "reduce": "1x1 kernel", "head": "linear layer"}
    assert observations.statements[-1] == (
        "Layers compared: 5 conv layers with kernels larger than 1x1 (the paper's selection), 5 of the report's 8; "
        "left out: 2 1x1 conv layers, 1 linear layer."
    )
    assert observations.to_dict()["left_out"] == observations.left_out
    layers = list(report.layers)
    layers[1] = dataclasses.replace(layers[1], sigma_max=None, error="RuntimeError: boom")
    broken = figure4_observations(dataclasses.replace(report, layers=layers))
    assert broken.left_out["body.0"] == "no circular norm: RuntimeError: boom"
    assert "1 conv layer without a circular norm" in broken.statements[-1]


# ---------------------------------------------------------------- the command line


@pytest.fixture
def plot_calls(monkeypatch):
    """Record the keyword arguments of the report's plot calls (the files are not written)."""
    from convspectra.analysis.records import SpectralReport

    calls = []
    for method in ("plot_spectra", "plot_sigma_max"):
        monkeypatch.setattr(SpectralReport, method, lambda self, path, _m=method, **kwargs: calls.append((_m, kwargs)))
    return calls


def test_cli_colormap_reaches_both_plots(plot_calls, tmp_path, capsys):
    from convspectra.cli import main

    files = ["--plot", str(tmp_path / "f4.png"), "--plot-norms", str(tmp_path / "norms.png")]
    assert main(["report", "resnet20", "--input-shape", "3", "8", "8", "--quiet", *files, "--colormap", "paper"]) == 0
    assert plot_calls == [
        ("plot_spectra", {"log": False, "colormap": "paper"}),
        ("plot_sigma_max", {"colormap": "paper"}),
    ]
    plot_calls.clear()
    assert main(["report", "resnet20", "--input-shape", "3", "8", "8", "--quiet", *files[:2], "--log"]) == 0
    assert plot_calls == [("plot_spectra", {"log": True, "colormap": "viridis"})]


def test_reproduce_figure4_plots_with_the_colour_blind_safe_default(plot_calls, tmp_path, capsys):
    from convspectra.cli import main
    from convspectra.models import resnet20

    torch.manual_seed(0)
    weights = tmp_path / "resnet20-random.th"
    torch.save(resnet20().state_dict(), weights)
    argv = ["reproduce", "figure4", "--model", "resnet20", "--weights", str(weights), "--input-shape", "3", "8", "8"]
    assert main([*argv, "--plot", str(tmp_path / "f4.png")]) == 0
    assert plot_calls == [("plot_spectra", {"log": False, "colormap": "viridis"})]
    printed = capsys.readouterr().out
    assert "19 conv layers with kernels larger than 1x1 compared" in printed
    assert "Layers compared: 19 conv layers" in printed and "left out: 1 linear layer." in printed


def test_cli_bad_colormap_is_refused_before_any_work(monkeypatch, capsys):
    import convspectra.analysis
    import convspectra.commands._models
    from convspectra.cli import main

    def boom(*args, **kwargs):
        raise AssertionError("the command started working before checking --colormap")

    monkeypatch.setattr(convspectra.commands._models, "resolve_model", boom)
    monkeypatch.setattr(convspectra.analysis, "spectral_report", boom)
    for command in (["report", "resnet20"], ["reproduce", "figure4"]):
        assert main([*command, "--colormap", "Viridis"]) == 2
        error = capsys.readouterr().err
        assert error.startswith("convspectra: error: argument --colormap: expected 'paper'") and error.count("\n") == 1
        assert "got 'Viridis' (did you mean 'viridis'?)" in error and "cividis" in error
