"""The progress displays of the command line: ``progress(done, total, label)`` as a bar or as plain lines, with an ETA.

The library reports progress through a callback ``progress(done: int, total: int, label: str)``
(:func:`convspectra.analysis.spectral_report`, the training runner); :func:`progress_bar` turns it
into a bar on stderr, never on stdout (which may carry ``--json -``): ``tqdm`` (``tqdm.auto``) when
installed, else ``rich``, else nothing. It shows the label (the layer or step just finished), the
count and the estimated time left. By default it draws only on an interactive stderr.
:class:`ProgressLines` prints one plain line per report instead (for a log file or a pipe, where a
bar's redraws would be noise): the count, the label, the time elapsed and the ETA.

Example:
    >>> import io
    >>> from convspectra.commands._progress import ProgressLines, progress_bar
    >>> with progress_bar("layers", enabled=False) as progress:
    ...     progress is None
    True
    >>> ticks = iter([0.0, 30.0])
    >>> lines = ProgressLines("layers", stream=io.StringIO(), clock=lambda: next(ticks))
    >>> lines(0, 3, "next: conv1"); lines(1, 3, "conv1 exact in 30.0 s")
    >>> print(lines.stream.getvalue(), end="")
    layers 0/3 | next: conv1
    layers 1/3 | elapsed 0:30, ETA 1:00 | conv1 exact in 30.0 s
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO

__all__ = ["ProgressCallback", "ProgressLines", "format_duration", "progress_bar"]

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


def format_duration(seconds: float) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour on.

    Example:
        >>> from convspectra.commands._progress import format_duration
        >>> format_duration(75.4), format_duration(3725)
        ('1:15', '1:02:05')
    """
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ProgressLines:
    """``progress(done, total, label)`` as one line per call on ``stream`` (default stderr), flushed at once.

    Each line holds the count, the time since the first call, the estimated time left (the mean
    time per item so far, times the items left) and the label. A call with ``done == 0`` (the
    work is about to start) prints the count and the label only.
    """

    def __init__(
        self, description: str, *, stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.description = description
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.start: float | None = None

    def __call__(self, done: int, total: int, label: str) -> None:
        now = self.clock()
        if self.start is None:
            self.start = now
        parts = [f"{self.description} {done}/{total}"]
        if done > 0:
            elapsed = now - self.start
            parts.append(f"elapsed {format_duration(elapsed)}, ETA {format_duration(elapsed / done * (total - done))}")
        parts.append(label)
        print(" | ".join(part for part in parts if part), file=self.stream, flush=True)


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
