"""The library's thread limit around the projection's backend ops (the torch backend; elsewhere nothing).

With the torch backend, the constraint's batched SVDs and the callback's tensor transfers are torch
ops in the training thread. They run under :func:`convspectra._threads.limit_threads` (one intra-op
thread, BLAS/OpenMP at most one), restored when the block ends, so torch's OpenMP default does not
oversubscribe the cores against the library's own workers and other processes. Inside a graph that
``torch.compile`` is tracing the block does nothing (setting threads is a side effect, not an op),
and on the JAX and TensorFlow backends, whose thread pools belong to their runtimes, it does nothing.

Example:
    >>> from convspectra.keras._threads import owned_threads
    >>> with owned_threads():
    ...     pass
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from .._threads import limit_threads

__all__ = ["owned_threads"]


def _torch_eager() -> bool:
    import keras

    if keras.backend.backend() != "torch":
        return False
    import torch

    return not torch.compiler.is_compiling()


@contextmanager
def owned_threads() -> Iterator[None]:
    """One torch/BLAS thread inside the block on the torch backend (eager), restored after; else nothing."""
    if not _torch_eager():
        yield
        return
    with limit_threads(1):
        yield
