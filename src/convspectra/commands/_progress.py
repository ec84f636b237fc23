"""A progress callback for long commands: a Rich bar on an interactive stderr, else nothing.

Example:
    >>> from convspectra.commands._progress import layer_progress
    >>> with layer_progress("layers", enabled=False) as progress:
    ...     progress(1, 2, "conv1")
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

__all__ = ["layer_progress"]


@contextlib.contextmanager
def layer_progress(description: str, *, enabled: bool | None = None) -> Iterator[Callable[[int, int, str], None]]:
    """Yield ``progress(done, total, name)``; draws a Rich bar when ``rich`` is installed and stderr is a TTY.

    Args:
        description: the bar's label.
        enabled: force the bar on or off (default: on when stderr is a terminal and rich is installed).
    """
    if enabled is None:
        enabled = sys.stderr.isatty()
    bar = None
    if enabled:
        try:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        except ImportError:
            bar = None
        else:
            bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[layer]}"),
                console=Console(stderr=True),
                transient=True,
            )
    if bar is None:
        yield lambda done, total, name: None
        return
    with bar:
        task = bar.add_task(description, total=None, layer="")

        def update(done: int, total: int, name: str) -> None:
            bar.update(task, completed=done, total=total, layer=name)

        yield update
