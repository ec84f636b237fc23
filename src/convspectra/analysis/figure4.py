"""Figure 4 of Sedghi, Gupta & Long (2019): the paper's observations, checked on a report.

Section 4.3 of the paper plots the singular values of every conv layer of a pretrained ResNet
and observes that (1) "the transformations with the largest operator norms are closest to the
inputs" and (2) "the number of non-negligible singular values increases for a while, but at the
end, it tapers off". :func:`figure4_observations` measures both on any
:class:`~convspectra.analysis.SpectralReport` (conv layers with kernels larger than 1x1, as in
the paper) and states, with the numbers, whether each holds; nothing is hard-coded. The layers
left out of the comparison (1x1 convs, Linear layers, layers without a circular norm) are
named in :attr:`Figure4Observations.left_out` and counted in the last statement.

"Non-negligible" is ``sigma > relative_threshold * sigma_max`` of the layer (the report's
``effective_rank``). Because strided layers have fewer singular values (a 64-channel layer on
8x8 has 4096, a 16-channel layer on 32x32 has 16384), the trend is given both for the count and
for the fraction of the layer's singular values.

Example:
    >>> import torch
    >>> from convspectra.analysis import figure4_observations, spectral_report
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = torch.nn.Sequential(*[torch.nn.Conv2d(4, 4, 3, padding=1) for _ in range(3)])
    >>> obs = figure4_observations(spectral_report(model, (4, 8, 8)))
    >>> obs.layers
    ['0', '1', '2']
    >>> len(obs.statements)
    4
    >>> obs.statements[-1]
    "Layers compared: 3 conv layers with kernels larger than 1x1 (the paper's selection), 3 of the
    report's 3; none left out."
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..errors import ParameterError

__all__ = ["Figure4Observations", "figure4_observations"]


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    for value in np.unique(values):  # average ranks of ties
        tie = values == value
        ranks[tie] = ranks[tie].mean()
    return ranks


def _spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    rx, ry = _ranks(x), _ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def _compared(count: int, total: int, left_out: dict[str, str]) -> str:
    """The statement on which layers were compared and which were left out (counted by reason)."""
    reasons: dict[str, int] = {}
    for reason in left_out.values():
        key = reason if not reason.startswith("no circular norm") else "no circular norm"
        reasons[key] = reasons.get(key, 0) + 1
    words = {"linear layer": "linear layer", "1x1 kernel": "1x1 conv layer", "no circular norm": "conv layer"}
    parts = []
    for key, number in reasons.items():
        parts.append(
            f"{number} {words[key]}{'' if number == 1 else 's'}"
            + (" without a circular norm" if key == "no circular norm" else "")
        )
    return (
        f"Layers compared: {count} conv layers with kernels larger than 1x1 (the paper's selection), {count} of the "
        f"report's {total}; " + (f"left out: {', '.join(parts)}." if parts else "none left out.")
    )


def _trend(values: Sequence[float]) -> tuple[int, bool, bool]:
    """(position of the maximum, rises before it, tapers after it)."""
    array = np.asarray(values, dtype=float)
    peak = int(np.argmax(array))
    return peak, bool(peak > 0 and array[peak] > array[0]), bool(peak < len(array) - 1 and array[-1] < array[peak])


@dataclass
class Figure4Observations:
    """The two observations of the paper's Section 4.3, measured.

    Attributes:
        layers: names of the conv layers considered (kernel larger than 1x1), input to output.
        sigma_max: their circular operator norms.
        effective_rank: their counts of non-negligible singular values.
        num_singular_values: their numbers of singular values.
        relative_threshold: the threshold that defines "non-negligible".
        largest: the ``top`` layers with the largest norms as ``(name, position from 1, sigma_max)``.
        spearman_depth_norm: Spearman rank correlation of depth and operator norm (negative: larger
            norms nearer the input); None if undefined.
        largest_near_input: the largest norm is in the first third of the layers.
        top_near_input: most of the ``top`` largest norms are in the first third of the layers
            (observation (1) holds when both are true).
        count_peak, fraction_peak: position (from 1) of the largest count / fraction.
        count_rises_then_tapers, fraction_rises_then_tapers: observation (2) holds for the count /
            the fraction: the maximum is after the first layer, above it, and the last layer is below it.
        stable_rank_fraction: each layer's stable rank divided by its number of singular values.
        statements: the findings in words, with the numbers (the last says which layers were compared).
        left_out: the report's other layers, name to reason ("1x1 kernel", "linear layer", "no circular
            norm: ...").
    """

    layers: list[str]
    sigma_max: list[float]
    effective_rank: list[int]
    num_singular_values: list[int]
    relative_threshold: float
    largest: list[tuple[str, int, float]]
    spearman_depth_norm: float | None
    largest_near_input: bool
    top_near_input: bool
    count_peak: int
    fraction_peak: int
    count_rises_then_tapers: bool
    fraction_rises_then_tapers: bool
    stable_rank_fraction: list[float] = field(default_factory=list)
    statements: list[str] = field(default_factory=list)
    left_out: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        out = asdict(self)
        out["largest"] = [list(item) for item in self.largest]
        return out

    def __str__(self) -> str:
        return "\n".join(f"- {line}" for line in self.statements)


def figure4_observations(report: Any, *, top: int = 3) -> Figure4Observations:
    """Check the paper's Figure-4 observations on ``report`` (see the module docstring).

    Args:
        report: a :class:`~convspectra.analysis.SpectralReport` (any padding; spectra not needed).
        top: how many of the largest-norm layers to name.

    Returns:
        A :class:`Figure4Observations`.

    Raises:
        ParameterError: fewer than two conv layers with kernels larger than 1x1 and a circular spectrum.
    """
    convs, left_out = [], {}
    for layer in report.layers:
        if layer.kind != "conv":
            left_out[layer.name] = "linear layer"
        elif all(k == 1 for k in layer.kernel_shape[2:]):
            left_out[layer.name] = "1x1 kernel"
        elif layer.sigma_max is None:
            left_out[layer.name] = f"no circular norm: {layer.error or layer.note or 'not computed'}"
        else:
            convs.append(layer)
    if len(convs) < 2:
        raise ParameterError(
            f"report: expected at least two conv layers with kernels larger than 1x1, got {len(convs)}"
        )
    names = [layer.name for layer in convs]
    norms = np.array([layer.sigma_max for layer in convs])
    counts = [int(layer.effective_rank) for layer in convs]
    sizes = [int(layer.num_singular_values) for layer in convs]
    fractions = [c / n for c, n in zip(counts, sizes, strict=True)]
    n = len(convs)
    order = np.argsort(-norms, kind="stable")[: max(1, min(top, n))]
    largest = [(names[i], int(i) + 1, float(norms[i])) for i in order]
    rho = _spearman(np.arange(n, dtype=float), norms)
    third = max(1, n // 3)
    near_input = bool(order[0] < third)
    top_near_input = bool(sum(int(i) < third for i in order) * 2 > len(order))
    count_peak, count_rises, count_tapers = _trend(counts)
    fraction_peak, fraction_rises, fraction_tapers = _trend(fractions)
    threshold = report.relative_threshold
    listed = ", ".join(f"{name} (layer {pos}/{n}, {value:.3g})" for name, pos, value in largest)
    statements = [
        f"Largest operator norms (circular): {listed}; Spearman correlation of depth and norm "
        + (f"{rho:+.2f}" if rho is not None else "undefined")
        + ". The paper's observation that the largest norms are closest to the input: the largest "
        + ("is" if near_input else "is NOT")
        + f" in the first third of the {n} layers, and the top {len(order)} "
        + ("are mostly" if top_near_input else "are NOT mostly")
        + " there; the observation "
        + ("HOLDS here" if near_input and top_near_input else "does NOT fully hold here")
        + ".",
        f"Non-negligible singular values (> {threshold:g} x sigma_max): count from {counts[0]} (layer 1) to a "
        f"maximum of {counts[count_peak]} (layer {count_peak + 1}) and {counts[-1]} at the last layer; as a "
        f"fraction of each layer's values, from {fractions[0]:.2f} to a maximum of {fractions[fraction_peak]:.2f} "
        f"(layer {fraction_peak + 1}) and {fractions[-1]:.2f} at the last layer. The paper's 'increases for a "
        "while, then tapers off' "
        + ("HOLDS" if count_rises and count_tapers else "does NOT hold")
        + " for the count and "
        + ("HOLDS" if fraction_rises and fraction_tapers else "does NOT hold")
        + " for the fraction.",
    ]
    stable = [(layer.stable_rank or 0.0) / size if size else 0.0 for layer, size in zip(convs, sizes, strict=True)]
    lowest = int(np.argmin(stable))
    statements.append(
        f"Stable rank (sum sigma^2 / sigma_max^2, no threshold) as a fraction of each layer's values: "
        f"{stable[0]:.3f} at layer 1, median {float(np.median(stable)):.3f}, {stable[-1]:.3f} at the last layer; "
        f"lowest at layer {lowest + 1} ({names[lowest]})."
    )
    statements.append(_compared(n, len(report.layers), left_out))
    return Figure4Observations(
        layers=names,
        sigma_max=[float(v) for v in norms],
        effective_rank=counts,
        num_singular_values=sizes,
        relative_threshold=float(threshold),
        largest=largest,
        spearman_depth_norm=rho,
        largest_near_input=near_input,
        top_near_input=top_near_input,
        count_peak=count_peak + 1,
        fraction_peak=fraction_peak + 1,
        count_rises_then_tapers=count_rises and count_tapers,
        fraction_rises_then_tapers=fraction_rises and fraction_tapers,
        stable_rank_fraction=stable,
        statements=statements,
        left_out=left_out,
    )
