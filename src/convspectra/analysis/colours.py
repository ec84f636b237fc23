"""Colours by depth for the plots: a colormap name checked once, sampled once per layer.

``"viridis"`` is the default (perceptually uniform, readable with every common colour-vision
deficiency and in grey); ``"paper"`` gives the red (nearest the input) to green (nearest the
output) of Sedghi, Gupta & Long (2019), Figure 4; any matplotlib colormap name or ``Colormap``
is accepted. matplotlib is imported only for names other than ``"paper"``.

Example:
    >>> from convspectra.analysis.colours import layer_colours
    >>> layer_colours(3, "paper")
    [(1.0, 0.0, 0.0), (0.5, 0.5, 0.0), (0.0, 1.0, 0.0)]
"""

from __future__ import annotations

import difflib
from typing import Any

from .._checks import describe, integer
from ..errors import ParameterError, ParameterTypeError

__all__ = ["DEFAULT_COLORMAP", "PAPER_COLORMAP", "check_colormap", "depth_colour", "layer_colours"]

#: The default colormap: perceptually uniform, colour-blind safe, readable in grey.
DEFAULT_COLORMAP = "viridis"
#: The name of the paper's red (nearest the input) to green (nearest the output) colours.
PAPER_COLORMAP = "paper"


def depth_colour(position: int, count: int) -> tuple[float, float, float]:
    """The paper's colour of layer ``position`` of ``count``: pure red for the first, pure green for the last.

    Example:
        >>> from convspectra.analysis.colours import depth_colour
        >>> depth_colour(0, 3), depth_colour(1, 3), depth_colour(2, 3)
        ((1.0, 0.0, 0.0), (0.5, 0.5, 0.0), (0.0, 1.0, 0.0))
    """
    t = position / (count - 1) if count > 1 else 0.0
    return (1.0 - t, t, 0.0)


def _colormap_names() -> list[str]:
    import matplotlib

    return sorted(matplotlib.colormaps)


def _is_colormap(value: Any) -> bool:
    try:
        from matplotlib.colors import Colormap
    except ImportError:
        return False
    return isinstance(value, Colormap)


def check_colormap(colormap: Any) -> Any:
    """``colormap`` if it names a colormap (``"paper"`` or a matplotlib name) or is a matplotlib ``Colormap``.

    Raises:
        ParameterError: an unknown name; the message lists every accepted name.
        ParameterTypeError: neither a string nor a ``Colormap``.

    Example:
        >>> from convspectra.analysis.colours import check_colormap
        >>> check_colormap("paper"), check_colormap("cividis")
        ('paper', 'cividis')
        >>> from convspectra.errors import ParameterError
        >>> try:
        ...     check_colormap("viridian")
        ... except ParameterError as error:
        ...     print(str(error)[:56], "...", str(error)[-40:])
        colormap: expected 'paper' (the paper's red to green) or ... got 'viridian' (did you mean 'viridis'?)
    """
    if isinstance(colormap, str):
        if colormap == PAPER_COLORMAP:
            return colormap
        try:
            names = _colormap_names()
        except ImportError:
            raise ImportError("plots need matplotlib: pip install 'convspectra[plot]'") from None
        if colormap in names:
            return colormap
        close = difflib.get_close_matches(colormap, names, n=1) or [
            name for name in names if name.lower() == colormap.lower()
        ]
        listed = ", ".join(name for name in names if not name.endswith("_r"))
        raise ParameterError(
            f"colormap: expected {PAPER_COLORMAP!r} (the paper's red to green) or a matplotlib colormap name "
            f"(default {DEFAULT_COLORMAP!r}; each also reversed with '_r'): {listed}, got {colormap!r}"
            + (f" (did you mean {close[0]!r}?)" if close else "")
        )
    if _is_colormap(colormap):
        return colormap
    raise ParameterTypeError(
        f"colormap: expected a colormap name (str) or a matplotlib Colormap, got {colormap!r} ({describe(colormap)})"
    )


def layer_colours(count: int, colormap: Any = DEFAULT_COLORMAP) -> list[tuple[float, float, float]]:
    """``count`` RGB colours, input side first, sampled evenly from ``colormap`` (see :func:`check_colormap`).

    ``"paper"`` gives :func:`depth_colour`'s red to green; the other colormaps are sampled from 0
    (first layer) to 1 (last layer).

    Example:
        >>> from convspectra.analysis.colours import layer_colours
        >>> layer_colours(2, "paper")
        [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0)]
        >>> [tuple(round(c, 2) for c in rgb) for rgb in layer_colours(2)]  # viridis: dark purple to yellow
        [(0.27, 0.0, 0.33), (0.99, 0.91, 0.14)]
    """
    count = integer("count", count, minimum=0)
    colormap = check_colormap(colormap)
    if isinstance(colormap, str) and colormap == PAPER_COLORMAP:
        return [depth_colour(i, count) for i in range(count)]
    import matplotlib

    cmap = matplotlib.colormaps[colormap] if isinstance(colormap, str) else colormap
    return [tuple(float(c) for c in cmap(i / (count - 1) if count > 1 else 0.0)[:3]) for i in range(count)]
