"""The offline demo: exact spectra of a small CNN trained on scikit-learn's digits.

A three-layer CNN with wrap-around padding is trained for a few seconds on the 8x8 digit
images that ship with scikit-learn. For each convolution we compute all singular values with
:func:`convspectra.singular_values`, check them against the SVD of the layer's dense matrix
built by PyTorch's convolution, and compare the operator norm with the norm of the reshaped
kernel matrix (what ``torch.nn.utils.spectral_norm`` normalises). Because the layers pad
circularly, these are the spectra of the layers exactly as the network computes them.

The demo runs torch (and BLAS) on one thread by default: the network is so small that more
threads only add synchronisation, and on a busy machine they oversubscribe the cores (measured
on a loaded 2-core machine: 17-29 s of training with torch's default threads, under a second
with one). The previous thread counts are restored when :func:`run_demo` returns.

Needs ``torch`` and ``scikit-learn`` (``pip install "convspectra[demo]"``).

Example:
    >>> from convspectra.demo import run_demo
    >>> result = run_demo(epochs=1, seed=0)       # doctest: +SKIP
    >>> [round(layer.sigma_max, 3) for layer in result.layers]  # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ._checks import integer
from ._threads import limit_threads
from .operator import dense_matrix
from .spectrum import singular_values

__all__ = ["DemoLayer", "DemoResult", "digits_cnn", "digits_split", "load_digits", "run_demo"]


@dataclass(frozen=True)
class DemoLayer:
    """What the demo measured for one convolution."""

    name: str
    kernel_shape: tuple[int, ...]
    input_shape: tuple[int, ...]
    stride: tuple[int, ...]
    num_singular_values: int
    sigma_max: float
    sigma_min: float
    reshaped_norm: float
    fourier_seconds: float
    dense_seconds: float
    max_abs_error: float


@dataclass(frozen=True)
class DemoResult:
    """The demo's training summary and per-layer spectra."""

    train_images: int
    test_images: int
    epochs: int
    train_seconds: float
    test_accuracy: float
    layers: list[DemoLayer] = field(default_factory=list)
    lipschitz_upper_bound: float = 0.0
    threads: int | None = 1

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dictionary."""
        return asdict(self)


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 digit images, offline: ``(1797, 1, 8, 8)`` float32 in [0, 1], and int64 labels.

    Raises:
        ImportError: scikit-learn is not installed.

    Example:
        >>> from convspectra.demo import load_digits
        >>> images, labels = load_digits()
        >>> images.shape, images.dtype, labels[:5].tolist()
        ((1797, 1, 8, 8), dtype('float32'), [0, 1, 2, 3, 4])
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError('the demo needs scikit-learn: pip install "convspectra[demo]"') from err
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]  # (1797, 1, 8, 8), offline data
    return images, digits.target.astype(np.int64)


def digits_split(seed: int = 0) -> tuple[Any, Any, Any, Any]:
    """The demo's split of :func:`load_digits`: a random 80% to train on, 20% to test, as torch tensors.

    Args:
        seed: seed of the permutation.

    Returns:
        ``(x_train, y_train, x_test, y_test)``: 1438 and 359 images ``(N, 1, 8, 8)`` and their labels.

    Example:
        >>> from convspectra.demo import digits_split
        >>> [tuple(part.shape) for part in digits_split(seed=0)]
        [(1438, 1, 8, 8), (1438,), (359, 1, 8, 8), (359,)]
    """
    import torch

    images, labels = load_digits()
    order = np.random.default_rng(integer("seed", seed, minimum=0)).permutation(len(images))
    test_size = len(images) // 5
    test, train = order[:test_size], order[test_size:]
    return (
        torch.from_numpy(images[train]),
        torch.from_numpy(labels[train]),
        torch.from_numpy(images[test]),
        torch.from_numpy(labels[test]),
    )


def digits_cnn() -> Any:
    """The demo's small CNN: three 3x3 convolutions with circular padding (the second with stride 2), ReLUs, a Linear.

    Every convolution pads circularly with "same" padding, so each layer *is* the circular
    operator whose spectrum convspectra computes. Input ``(N, 1, 8, 8)``, output 10 logits.

    Example:
        >>> import torch
        >>> from convspectra.demo import digits_cnn
        >>> digits_cnn()(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, padding_mode="circular"),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1, padding_mode="circular"),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, padding_mode="circular"),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 10),
    )


def _timed(function: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    value = function(*args, **kwargs)
    return value, time.perf_counter() - start


def _dense_singular_values(weight: np.ndarray, size: tuple[int, ...], stride: tuple[int, ...]) -> np.ndarray:
    return np.linalg.svd(dense_matrix(weight, size, stride=stride), compute_uv=False)


def run_demo(epochs: int = 5, *, seed: int = 0, threads: int | None = 1) -> DemoResult:
    """Train the digits CNN and measure the exact spectrum of each of its convolutions.

    Args:
        epochs: training epochs (well under a second each on one laptop core).
        seed: seed of the split, the initialisation and the batch order.
        threads: torch intra-op and BLAS threads while the demo runs (default one, see the
            module docstring); ``None`` leaves the process's settings alone. Restored on return.

    Returns:
        A :class:`DemoResult`.

    Raises:
        ParameterError, ParameterTypeError: ``epochs`` or ``threads`` not a positive int, or
            ``seed`` a negative one.
        ImportError: scikit-learn is not installed.
    """
    epochs = integer("epochs", epochs)
    if threads is not None:
        threads = integer("threads", threads)
    with limit_threads(threads):
        return _run_demo(epochs, seed, threads)


def _run_demo(epochs: int, seed: int, threads: int | None) -> DemoResult:
    import torch

    from .nn import capture_input_shapes

    x_train, y_train, x_test, y_test = digits_split(seed)

    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = digits_cnn()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    start = time.perf_counter()
    for _ in range(epochs):
        for batch in torch.randperm(len(x_train), generator=generator).split(32):
            optimiser.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x_train[batch]), y_train[batch])
            loss.backward()
            optimiser.step()
    train_seconds = time.perf_counter() - start

    with torch.no_grad():
        accuracy = float((model(x_test).argmax(dim=1) == y_test).float().mean())
    sizes = capture_input_shapes(model, x_test[:1])  # the spatial size each convolution really sees

    layers = []
    bound = 1.0
    for name, size in sizes.items():
        module = model.get_submodule(name)
        weight = module.weight.detach().double().numpy()
        stride = tuple(module.stride)
        exact, fourier_seconds = _timed(singular_values, weight, size, stride=stride)
        dense, dense_seconds = _timed(_dense_singular_values, weight, size, stride)
        reshaped = float(np.linalg.norm(weight.reshape(weight.shape[0], -1), 2))
        layers.append(
            DemoLayer(
                name=name,
                kernel_shape=tuple(weight.shape),
                input_shape=size,
                stride=stride,
                num_singular_values=int(exact.size),
                sigma_max=float(exact[0]),
                sigma_min=float(exact[-1]),
                reshaped_norm=reshaped,
                fourier_seconds=fourier_seconds,
                dense_seconds=dense_seconds,
                max_abs_error=float(np.abs(exact - dense).max()),
            )
        )
        bound *= float(exact[0])
    linear = model[-1].weight.detach().double().numpy()
    bound *= float(np.linalg.norm(linear, 2))  # ReLU is 1-Lipschitz, flattening an isometry
    return DemoResult(
        train_images=len(x_train),
        test_images=len(x_test),
        epochs=epochs,
        train_seconds=train_seconds,
        test_accuracy=accuracy,
        layers=layers,
        lipschitz_upper_bound=bound,
        threads=threads,
    )
