"""Threads: the library's own workers, and the limits on BLAS and torch threads around them.

NumPy releases the GIL inside LAPACK, so a thread pool spreads a batch of small
decompositions over the cores. Each LAPACK call must then run single-threaded: OpenBLAS's own
threads on top of the pool oversubscribe the cores (measured here: 2.4x slower than one
thread per worker), and so do torch's intra-op threads. Limiting BLAS needs ``threadpoolctl``;
without it the chunks run one after another and OpenBLAS keeps its own threading.

The limits are shared by the whole process (OpenBLAS has one thread count), so they are
counted, not stacked: while any block holds a limit the smallest one held applies, and the
count from before the first block comes back when the last block ends, in whatever order
concurrent blocks end. torch's count is per calling thread (under OpenMP); each thread gets
its own back.

:func:`run_chunks` is interruptible: the calling thread waits in short slices, so Ctrl-C (or
any exception, in a worker or in the caller) cancels every chunk not yet started and returns
at once; only the chunks already running finish, in the background. Callers keep each chunk
small (well under a second of work).

Example:
    >>> from convspectra._threads import limit_threads, run_chunks
    >>> with limit_threads(1):
    ...     run_chunks(lambda x: x * x, [1, 2, 3], workers=2)
    [1, 4, 9]
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, TypeVar

from ._backend import loaded_torch
from ._checks import integer

__all__ = ["available_cores", "limit_threads", "resolve_workers", "run_chunks", "single_threaded_blas"]

T = TypeVar("T")
R = TypeVar("R")

#: How long the caller of :func:`run_chunks` waits before it looks at signals again (seconds).
_POLL_S = 0.05


def available_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def _has_threadpoolctl() -> bool:
    try:
        import threadpoolctl  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_workers(workers: int | None) -> int:
    """The number of worker threads: ``workers`` if given, else every available core
    (one when ``threadpoolctl`` is not installed, see the module docstring)."""
    if workers is None:
        return available_cores() if _has_threadpoolctl() else 1
    return integer("workers", workers)


@lru_cache(maxsize=1)
def _controller() -> Any:
    """threadpoolctl's view of the loaded BLAS libraries (NumPy's is loaded before us), or None."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController()


@contextmanager
def _any_thread_may_set() -> Iterator[None]:
    """Let the calling thread change OpenBLAS's shared pool for the block.

    threadpoolctl (3.6 and later) lets only one "controlling" thread change a process-wide
    OpenBLAS pool and silently ignores the others, so a limit set or restored from a second
    thread did nothing (and a restore could be lost for good). The changes made here are
    serialised by a lock, so the control is cleared before and after each one.
    """
    try:
        from threadpoolctl import OpenBLASController
    except ImportError:  # threadpoolctl absent, or too old to have the notion
        yield
        return
    clear = getattr(OpenBLASController, "clear_controlling_thread", None)
    if clear is None:  # pragma: no cover - threadpoolctl < 3.6
        yield
        return
    clear(force=True)
    try:
        yield
    finally:
        clear(force=True)


_modules_seen = -1  # len(sys.modules) at the last look


def _fresh_controller() -> Any:
    """threadpoolctl's view of every library loaded now (torch's OpenMP may have come after the cached one).

    Looking costs milliseconds (threadpoolctl walks every loaded shared object), which a layer of
    768 groups paid 1600 times (8 of 40 s); a BLAS or OpenMP library arrives with the import of
    an extension module (torch, SciPy, jaxlib), so the look is taken again only when the number
    of imported modules has changed since the last one.
    """
    global _modules_seen
    count = len(sys.modules)
    if count != _modules_seen:
        _controller.cache_clear()
        _modules_seen = count
    return _controller()


class _SharedLimit:
    """One process-wide thread limit (threadpoolctl's ``user_api``: ``"blas"`` or ``"openmp"``), counted.

    While any request is held the smallest applies; when the last is released the counts from
    before the first come back (threadpoolctl's limiter records them).
    """

    def __init__(self, user_api: str) -> None:
        self.user_api = user_api
        self._lock = threading.Lock()
        self._held: list[int] = []
        self._original: Any = None  # the threadpoolctl limiter made by the first request

    def acquire(self, threads: int, *, refresh: bool = False) -> None:
        """Hold a limit of ``threads``; ``refresh``: look again for libraries loaded since the last look."""
        with self._lock:
            controller = _fresh_controller() if refresh and not self._held else _controller()
            if controller is not None and (not self._held or threads < min(self._held)):
                with _any_thread_may_set():
                    limiter = controller.limit(limits=threads, user_api=self.user_api)
                if not self._held:
                    self._original = limiter
            self._held.append(threads)

    def release(self, threads: int) -> None:
        with self._lock:
            self._held.remove(threads)
            if not self._held:
                if self._original is not None:
                    with _any_thread_may_set():
                        self._original.restore_original_limits()
                self._original = None
            elif threads < min(self._held):
                controller = _controller()
                if controller is not None:
                    with _any_thread_may_set():
                        controller.limit(limits=min(self._held), user_api=self.user_api)


class _TorchLimit:
    """torch's intra-op thread count, set per calling thread (OpenMP keeps one per thread).

    A thread's innermost block restores what its enclosing block set; its outermost block
    restores the count the process had before the first block anywhere, so neither the
    thread nor threads started later keep the limit (torch also remembers the last count set
    for threads it has not seen yet).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0
        self._original = 0
        self._local = threading.local()

    def acquire(self, threads: int) -> bool:
        torch = loaded_torch()
        if torch is None:
            return False
        stack: list[int] = self._local.__dict__.setdefault("stack", [])
        with self._lock:
            if self._count == 0:
                self._original = torch.get_num_threads()
            self._count += 1
            original = self._original
        stack.append(torch.get_num_threads() if stack else original)
        torch.set_num_threads(threads)
        return True

    def release(self) -> None:
        torch = loaded_torch()
        stack: list[int] = self._local.stack
        previous = stack.pop()
        with self._lock:
            self._count -= 1
        torch.set_num_threads(previous)


_BLAS = _SharedLimit("blas")
_OPENMP = _SharedLimit("openmp")
_TORCH = _TorchLimit()


@contextmanager
def _holding(limit: _SharedLimit, threads: int, *, refresh: bool = False) -> Iterator[None]:
    limit.acquire(threads, refresh=refresh)
    try:
        yield
    finally:
        limit.release(threads)


@contextmanager
def _torch_holding(threads: int) -> Iterator[None]:
    held = _TORCH.acquire(threads)
    try:
        yield
    finally:
        if held:
            _TORCH.release()


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """BLAS (OpenBLAS, MKL) at one thread inside the block, restored after (needs threadpoolctl).

    Safe under concurrency: overlapping blocks in several threads end with the original count.
    """
    with _holding(_BLAS, 1):
        yield


@contextmanager
def limit_threads(threads: int | None) -> Iterator[None]:
    """``threads`` torch intra-op threads, at most ``threads`` BLAS/OpenMP ones, in the block; ``None``: no change.

    torch's setting and the BLAS/OpenMP limits are restored when the block ends, also on an
    exception and when blocks in several threads overlap. (Limiting only torch leaves OpenBLAS
    spinning its own threads against torch's on a busy machine, which slows small
    decompositions by an order of magnitude.)
    """
    if threads is None:
        yield
        return
    threads = integer("threads", threads)
    # a fresh look at the loaded libraries (torch's OpenMP, SciPy's BLAS may have come since)
    with _torch_holding(threads), _holding(_BLAS, threads, refresh=True), _holding(_OPENMP, threads, refresh=True):
        yield


def _single_threaded_worker() -> None:
    """Worker set-up: torch, and a BLAS whose limit is per thread (OpenMP-built OpenBLAS), at one thread in this worker.

    A process-wide BLAS pool is limited by the caller; these settings go with the worker thread.
    """
    controller = _controller()
    if controller is not None:
        per_thread = controller.select(threading_layer="openmp")
        if per_thread.lib_controllers:
            per_thread.limit(limits=1, user_api="blas")
    torch = loaded_torch()
    if torch is not None and torch.get_num_threads() != 1:
        torch.set_num_threads(1)


class _Workers:
    """The worker threads of one :func:`run_chunks` call.

    Built from a task queue and a result queue rather than ``concurrent.futures``: a
    KeyboardInterrupt can land anywhere in the calling thread, and inside
    ``concurrent.futures.wait`` it can leave a future's lock held, after which the worker that
    finishes that future blocks for ever and the interpreter never exits (seen here). Nothing a
    worker waits on is ever held by the caller.
    """

    def __init__(self, function: Callable[[Any], Any], items: list[Any], workers: int) -> None:
        self.function = function
        self.tasks: queue.SimpleQueue[tuple[int, Any]] = queue.SimpleQueue()
        for task in enumerate(items):
            self.tasks.put(task)
        self.results: queue.SimpleQueue[tuple[int, bool, Any]] = queue.SimpleQueue()
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._alive = 0
        self._handed_over = False  # the caller has gone: the last worker to leave releases BLAS
        self.count = min(workers, len(items))

    def start(self) -> None:
        for number in range(self.count):
            thread = threading.Thread(target=self._work, name=f"convspectra_{number}")
            with self._lock:
                self._alive += 1
            try:
                thread.start()
            except BaseException:
                with self._lock:
                    self._alive -= 1
                raise

    def _work(self) -> None:
        try:
            _single_threaded_worker()
            while not self.stop.is_set():
                try:
                    index, item = self.tasks.get_nowait()
                except queue.Empty:
                    break
                try:
                    self.results.put((index, True, self.function(item)))
                except BaseException as error:
                    self.results.put((index, False, error))
                    self.stop.set()
        finally:
            with self._lock:
                self._alive -= 1
                last = self._alive == 0 and self._handed_over
            if last:
                _BLAS.release(1)

    def collect(self, count: int) -> list[Any]:
        """The ``count`` results in order; raises the first error a worker reports."""
        results: list[Any] = [None] * count
        left = count
        while left:
            try:
                index, ok, value = self.results.get(timeout=_POLL_S)  # short waits: signals get through
            except queue.Empty:
                continue
            if not ok:
                raise value
            results[index] = value
            left -= 1
        return results

    def abandon(self) -> None:
        """Stop handing out chunks; BLAS is released now, or by the last running worker when it ends."""
        with self._lock:
            self.stop.set()
            self._handed_over = self._alive > 0
            now = not self._handed_over
        if now:
            _BLAS.release(1)


def run_chunks(function: Callable[[T], R], items: Iterable[T], workers: int) -> list[R]:
    """``[function(item) for item in items]``, spread over ``workers`` threads, in order.

    BLAS runs single-threaded throughout, and with more than one worker torch does too; both
    are restored on return. An exception in a worker, or a KeyboardInterrupt in the caller,
    stops handing out chunks and is raised at once; the chunks already running finish in the
    background, still single-threaded (BLAS is restored when the last one ends: a restored
    OpenBLAS pool shared by two running decompositions slows them 40-fold).
    """
    items = list(items)
    if workers <= 1 or len(items) <= 1:  # small per-matrix LAPACK calls: BLAS threads only cost
        with single_threaded_blas():
            return [function(item) for item in items]
    with _torch_holding(1):
        _BLAS.acquire(1)
        pool = _Workers(function, items, workers)
        try:
            pool.start()
            results = pool.collect(len(items))
        except BaseException:
            pool.abandon()
            raise
        _BLAS.release(1)
    return results
