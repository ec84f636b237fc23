"""The one progress display of the command line: ``progress(done, total, label)`` drawn as a bar with an ETA.

The library reports progress through a callback ``progress(done: int, total: int, label: str)``
(:func:`convspectra.analysis.spectral_report`, the training runner); :func:`progress_bar` turns it
into a bar on stderr, never on stdout (which may carry ``--json -``): ``tqdm`` (``tqdm.auto``) when
installed, else ``rich``, else nothing. It shows the label (the layer or step just finished), the
count and the estimated time left. By default it draws only on an interactive stderr.

Example:
    >>> from convspectra.commands._progress import progress_bar
    >>> with progress_bar("layers", enabled=False) as progress:
    ...     progress is None
    True
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["ProgressCallback", "progress_bar"]

#: ``progress(done, total, label)``: ``done`` of ``total`` finished, the last one named ``label``.
ProgressCallback = Callable[[int, int, str], None]


class _Tqdm:
    """A ``tqdm`` bar, drawn from the first report on."""

    def __init__(self, tqdm: Any, description: str) -> None:
        self.tqdm = tqdm
        self.description = description
        self.bar: Any = None

    def __call__(self, done: int, total: int, label: str) -> None:
        if self.bar is None:
            self.bar = self.tqdm(
                total=total, desc=self.description, file=sys.stderr, leave=False, dynamic_ncols=True, miniters=1
            )  # miniters=1: every report may redraw (at most every 0.1 s)
        elif total != self.bar.total or done < self.bar.n:  # a new phase (e.g. the next epoch): start again
            self.bar.reset(total=total)
        self.bar.set_postfix_str(label, refresh=False)
        self.bar.update(done - self.bar.n)  # through update(), so that the rate and the ETA are estimated

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _Rich:
    """A ``rich`` progress bar, drawn from the first report on."""

    def __init__(self, rich_progress: Any, console: Any, description: str) -> None:
        columns = (
            rich_progress.TextColumn("{task.description}"),
            rich_progress.BarColumn(),
            rich_progress.MofNCompleteColumn(),
            rich_progress.TimeElapsedColumn(),
            rich_progress.TextColumn("ETA"),
            rich_progress.TimeRemainingColumn(),
            rich_progress.TextColumn("{task.fields[label]}"),
        )
        self.bar = rich_progress.Progress(*columns, console=console.Console(stderr=True), transient=True)
        self.description = description
        self.task: Any = None
        self.done = 0

    def __call__(self, done: int, total: int, label: str) -> None:
        if self.task is None:
            self.bar.start()
            self.task = self.bar.add_task(self.description, total=total, label="")
        elif done < self.done:  # a new phase: start again
            self.bar.reset(self.task, total=total)
        self.done = done
        self.bar.update(self.task, completed=done, total=total, label=label)

    def close(self) -> None:
        if self.task is not None:
            self.bar.stop()


def _bar(description: str) -> _Tqdm | _Rich | None:
    try:
        from tqdm.auto import tqdm
    except ImportError:
        pass
    else:
        return _Tqdm(tqdm, description)
    try:
        import rich.console
        import rich.progress
    except ImportError:
        return None
    return _Rich(rich.progress, rich.console, description)


@contextlib.contextmanager
def progress_bar(description: str, *, enabled: bool | None = None) -> Iterator[ProgressCallback | None]:
    """Yield a progress callback that draws a bar on stderr, or None when there is no bar to draw.

    Pass what it yields as the library's ``progress=`` argument (None: no reporting at all).

    Args:
        description: the bar's title, e.g. ``"layers"``.
        enabled: True: draw it even when stderr is not a terminal; False: never; None (default):
            only on an interactive stderr.

    Yields:
        ``progress(done, total, label)``, or None when disabled or neither tqdm nor rich is installed.
    """
    if enabled is None:
        enabled = sys.stderr.isatty()
    bar = _bar(description) if enabled else None
    try:
        yield bar
    finally:
        if bar is not None:
            bar.close()
