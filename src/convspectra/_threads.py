"""Threads: the library's own workers, and the limits on BLAS and torch threads around them.

NumPy releases the GIL inside LAPACK, so a thread pool spreads a batch of small
decompositions over the cores. Each LAPACK call must then run single-threaded: OpenBLAS's own
threads on top of the pool oversubscribe the cores (measured here: 2.4x slower than one
thread per worker). Limiting them needs ``threadpoolctl``; without it the chunks run one
after another and OpenBLAS keeps its own threading. Every limit set here is restored when its
block ends.

Example:
    >>> from convspectra._threads import limit_threads, run_chunks
    >>> with limit_threads(1):
    ...     run_chunks(lambda x: x * x, [1, 2, 3], workers=2)
    [1, 4, 9]
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, TypeVar

from ._backend import loaded_torch
from ._checks import integer

__all__ = ["available_cores", "limit_threads", "resolve_workers", "run_chunks", "single_threaded_blas"]

T = TypeVar("T")
R = TypeVar("R")


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
def single_threaded_blas() -> Iterator[None]:
    """BLAS (OpenBLAS, MKL) at one thread inside the block, restored after (needs threadpoolctl)."""
    controller = _controller()
    if controller is None:
        yield
        return
    with controller.limit(limits=1, user_api="blas"):
        yield


@contextmanager
def limit_threads(threads: int | None) -> Iterator[None]:
    """At most ``threads`` torch intra-op threads and BLAS/OpenMP threads inside the block; ``None`` changes nothing.

    torch's setting and threadpoolctl's limits are both restored when the block ends, also on an
    exception. (Limiting only torch leaves OpenBLAS spinning its own threads against torch's on a
    busy machine, which slows small decompositions by an order of magnitude.)
    """
    if threads is None:
        yield
        return
    threads = integer("threads", threads)
    torch = loaded_torch()
    previous = torch.get_num_threads() if torch is not None else None
    controller = _controller()
    try:
        if torch is not None:
            torch.set_num_threads(threads)
        if controller is None:
            yield
        else:
            with controller.limit(limits=threads):
                yield
    finally:
        if torch is not None and previous is not None:
            torch.set_num_threads(previous)


def run_chunks(function: Callable[[T], R], items: Iterable[T], workers: int) -> list[R]:
    """``[function(item) for item in items]``, spread over ``workers`` threads, in order."""
    items = list(items)
    if workers <= 1 or len(items) <= 1:  # small per-matrix LAPACK calls: BLAS threads only cost
        with single_threaded_blas():
            return [function(item) for item in items]
    with single_threaded_blas(), ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        results: list[Any] = list(pool.map(function, items))
    return results
