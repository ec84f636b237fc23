"""Image datasets for the training experiments, read from their standard files (no torchvision needed).

* CIFAR-10 from a directory of the standard *python* batches (``data_batch_1`` ... ``data_batch_5``
  and ``test_batch``, pickled dictionaries with ``b"data"`` of shape ``(10000, 3072)`` uint8 and
  ``b"labels"``), or downloaded by torchvision's ``CIFAR10(download=True)`` when torchvision is
  installed.
* Fashion-MNIST (or MNIST) from a directory of its four IDX files, gzip-compressed or raw
  (``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``, ``t10k-images-idx3-ubyte[.gz]``,
  ``t10k-labels-idx1-ubyte[.gz]``); Debian's ``dataset-fashion-mnist`` package installs them in
  ``/usr/share/datasets/fashion-mnist`` (the format: :mod:`convspectra.experiments.idx`).
* Tiny synthetic datasets written in exactly those formats, for tests (:func:`write_synthetic_cifar`,
  :func:`write_synthetic_idx`).

Images are kept as uint8 ``(N, C, H, W)`` arrays; normalisation happens in the training loop.

Example:
    >>> import tempfile
    >>> from convspectra.experiments.datasets import load_dataset, write_synthetic_idx
    >>> folder = tempfile.mkdtemp()
    >>> write_synthetic_idx(folder, train=20, test=10, gzip_files=True)
    >>> data = load_dataset("fashion-mnist", folder)
    >>> data.train_images.shape, data.test_images.shape, data.num_classes
    ((20, 1, 28, 28), (10, 1, 28, 28), 10)
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._checks import integer
from ..errors import ParameterError
from .idx import read_idx, write_idx

__all__ = [
    "DATASETS",
    "DEFAULT_DIRECTORIES",
    "ImageDataset",
    "load_cifar10",
    "load_dataset",
    "load_idx_dataset",
    "read_idx",
    "write_idx",
    "write_synthetic_cifar",
    "write_synthetic_idx",
]

DATASETS = ("cifar10", "fashion-mnist")
DEFAULT_DIRECTORIES = {"fashion-mnist": "/usr/share/datasets/fashion-mnist"}
CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_BATCH = "test_batch"
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class ImageDataset:
    """A train/test split of uint8 images ``(N, C, H, W)`` with int64 labels in ``[0, num_classes)``."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    source: str

    @property
    def channels(self) -> int:
        """Number of image channels."""
        return int(self.train_images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        """``(height, width)`` of the images."""
        return int(self.train_images.shape[2]), int(self.train_images.shape[3])

    def subset(self, train: int | None = None, test: int | None = None, seed: int = 0) -> ImageDataset:
        """A fixed random subset (the same for every run with the same ``seed``), class-balanced by chance.

        Args:
            train: number of training images to keep (``None``: all).
            test: number of test images to keep (``None``: all).
            seed: seed of the selection (independent of the training seeds, so every arm sees the same data).

        Raises:
            ParameterError, ParameterTypeError: a requested size that is not an integer in ``[1, available]``.
        """
        rng = np.random.default_rng(seed)

        def pick(images: np.ndarray, labels: np.ndarray, count: int | None, name: str) -> tuple[np.ndarray, ...]:
            if count is None:
                return images, labels
            integer(name, count, maximum=len(labels))
            index = np.sort(rng.permutation(len(labels))[:count])
            return images[index], labels[index]

        train_images, train_labels = pick(self.train_images, self.train_labels, train, "train")
        test_images, test_labels = pick(self.test_images, self.test_labels, test, "test")
        return ImageDataset(
            self.name, train_images, train_labels, test_images, test_labels, self.num_classes, self.source
        )


# ----------------------------------------------------------------------------------------- IDX files


def _find_idx(directory: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(
        f"directory: expected the IDX file {stem}[.gz] in {str(directory)!r}, found none "
        f"(contents: {sorted(p.name for p in directory.iterdir())[:8]})"
    )


def load_idx_dataset(directory: str | os.PathLike[str], name: str = "fashion-mnist") -> ImageDataset:
    """Load an MNIST-format dataset (Fashion-MNIST, MNIST) from its four IDX files.

    Args:
        directory: folder with ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
            ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (each optionally ``.gz``).
        name: the dataset's name in logs.

    Returns:
        An :class:`ImageDataset` with images ``(N, 1, 28, 28)`` uint8.

    Raises:
        FileNotFoundError: if the directory or a file is missing.
        ParameterError: if a file is malformed or images and labels disagree.

    Example:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> write_synthetic_idx(folder, train=8, test=4)
        >>> load_idx_dataset(folder).train_labels.dtype
        dtype('int64')
    """
    folder = Path(directory)
    if not folder.is_dir():
        raise FileNotFoundError(f"directory: expected a folder with the {name} IDX files, got {str(folder)!r}")
    arrays = {key: read_idx(_find_idx(folder, stem)) for key, stem in IDX_FILES.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or images.dtype != np.uint8:
            raise ParameterError(
                f"{split} images: expected uint8 of shape (N, H, W), got {images.dtype} {images.shape}"
            )
        if labels.ndim != 1 or len(labels) != len(images):
            raise ParameterError(
                f"{split} labels: expected {len(images)} labels (one per image), got shape {labels.shape}"
            )
    labels_all = np.concatenate([arrays["train_labels"], arrays["test_labels"]]).astype(np.int64)
    num_classes = int(labels_all.max()) + 1
    if labels_all.min() < 0:
        raise ParameterError(f"labels: expected non-negative class indices, got {int(labels_all.min())}")
    return ImageDataset(
        name,
        arrays["train_images"][:, None],
        arrays["train_labels"].astype(np.int64),
        arrays["test_images"][:, None],
        arrays["test_labels"].astype(np.int64),
        num_classes,
        str(folder),
    )


# ------------------------------------------------------------------------------------ CIFAR batches


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as handle:
            batch = pickle.load(handle, encoding="bytes")  # the dataset's own format
    except (pickle.UnpicklingError, EOFError, ValueError) as err:
        raise ParameterError(f"path: expected a CIFAR-10 python batch (pickle), got {str(path)!r} ({err})") from err
    if not isinstance(batch, dict):
        raise ParameterError(f"path: expected a pickled dict in {str(path)!r}, got {type(batch).__name__}")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise ParameterError(f"path: expected keys b'data' and b'labels' in {str(path)!r}, got {sorted(batch)[:6]}")
    data = np.asarray(data)
    labels = np.asarray(labels, dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise ParameterError(
            f"path: expected uint8 data of shape (N, 3072) and N labels in {str(path)!r}, "
            f"got {data.dtype} {data.shape} and {labels.shape}"
        )
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(directory: str | os.PathLike[str], *, download: bool = False) -> ImageDataset:
    """Load CIFAR-10 from its python batches, optionally downloading them with torchvision first.

    Args:
        directory: folder holding ``data_batch_1`` ... ``data_batch_5`` and ``test_batch``, or a
            folder containing ``cifar-10-batches-py/`` (where torchvision puts them).
        download: fetch the archive with ``torchvision.datasets.CIFAR10(directory, download=True)``.

    Returns:
        An :class:`ImageDataset` with images ``(N, 3, 32, 32)`` uint8.

    Raises:
        ImportError: if ``download`` is set and torchvision is not installed.
        FileNotFoundError: if the batches are not there.
        ParameterError: if a batch is malformed.

    Example:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> write_synthetic_cifar(folder, train_per_batch=4, test=6)
        >>> load_cifar10(folder).train_images.shape
        (20, 3, 32, 32)
    """
    folder = Path(directory)
    if download:
        try:
            from torchvision.datasets import CIFAR10
        except ImportError as err:
            raise ImportError(
                "download: torchvision is not installed, so CIFAR-10 cannot be downloaded; install it "
                "(pip install torchvision) or pass a directory with the python batches (data_batch_1..5, "
                "test_batch) from https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
            ) from err
        folder.mkdir(parents=True, exist_ok=True)
        CIFAR10(str(folder), train=True, download=True)
    if (folder / "cifar-10-batches-py").is_dir():
        folder = folder / "cifar-10-batches-py"
    if not folder.is_dir():
        raise FileNotFoundError(f"directory: expected a folder with the CIFAR-10 python batches, got {str(folder)!r}")
    missing = [name for name in (*CIFAR_TRAIN_BATCHES, CIFAR_TEST_BATCH) if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"directory: expected the CIFAR-10 python batches in {str(folder)!r}, missing {missing} "
            "(use --download with torchvision installed, or unpack cifar-10-python.tar.gz there)"
        )
    train = [_read_cifar_batch(folder / name) for name in CIFAR_TRAIN_BATCHES]
    test_images, test_labels = _read_cifar_batch(folder / CIFAR_TEST_BATCH)
    train_labels = np.concatenate([labels for _, labels in train])
    if min(train_labels.min(), test_labels.min()) < 0 or max(train_labels.max(), test_labels.max()) > 9:
        raise ParameterError("labels: expected CIFAR-10 class indices in [0, 9]")
    return ImageDataset(
        "cifar10",
        np.concatenate([images for images, _ in train]),
        train_labels,
        test_images,
        test_labels,
        10,
        str(folder),
    )


def _default_cifar_folder() -> Path:
    """``$CONVSPECTRA_DATA/cifar10``; an error naming both ways to give the folder when the variable is unset."""
    from ..models.pretrained import DATA_ENV, data_directory

    root = data_directory()
    if root is None:
        raise ParameterError(
            f"data_dir: expected the CIFAR-10 folder (pass it with --data-dir / data_dir, or set {DATA_ENV} to a "
            f"folder whose cifar10/ subfolder holds it), got none and {DATA_ENV} is not set"
        )
    return root / "cifar10"


def load_dataset(name: str, directory: str | os.PathLike[str] | None = None, *, download: bool = False) -> ImageDataset:
    """Load ``"cifar10"`` or ``"fashion-mnist"`` from ``directory`` (see the module docstring).

    Args:
        name: one of :data:`DATASETS`.
        directory: the data folder; ``None`` uses, for CIFAR-10, ``$CONVSPECTRA_DATA/cifar10``
            (the data folder of :func:`convspectra.models.data_directory`; an error when the
            variable is not set) and, for Fashion-MNIST, :data:`DEFAULT_DIRECTORIES` (Debian's location).
        download: CIFAR-10 only: download with torchvision when the batches are missing.

    Raises:
        ParameterError: for an unknown name, ``download`` with Fashion-MNIST, or CIFAR-10 without
            ``directory`` and without ``CONVSPECTRA_DATA``.

    Example:
        >>> load_dataset("imagenet")
        Traceback (most recent call last):
        ...
        convspectra.errors.ParameterError: dataset: expected one of ('cifar10', 'fashion-mnist'), got 'imagenet'
    """
    if name not in DATASETS:
        raise ParameterError(f"dataset: expected one of {DATASETS}, got {name!r}")
    if name == "cifar10":
        folder = Path(directory) if directory is not None else _default_cifar_folder()
        batches = folder / "cifar-10-batches-py"
        have = (folder / CIFAR_TEST_BATCH).is_file() or (batches / CIFAR_TEST_BATCH).is_file()
        return load_cifar10(folder, download=download and not have)
    if download:
        raise ParameterError(
            "download: expected no download for fashion-mnist (read offline from its IDX files; "
            "apt-get install dataset-fashion-mnist), got download=True"
        )
    folder = Path(directory) if directory is not None else Path(DEFAULT_DIRECTORIES[name])
    return load_idx_dataset(folder, name)


# ------------------------------------------------------------------------------------ synthetic data


def _synthetic_images(
    rng: np.random.Generator, count: int, channels: int, size: int, classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Noise plus a class-dependent bright square, so that a network can learn the labels."""
    labels = rng.integers(0, classes, size=count)
    images = rng.integers(0, 96, size=(count, channels, size, size)).astype(np.uint8)
    block = max(2, size // 4)
    for i, label in enumerate(labels):
        row, col = divmod(int(label) % 16, 4)
        top, left = (row * size) // 4, (col * size) // 4
        images[i, :, top : top + block, left : left + block] = 255
    return images, labels


def write_synthetic_idx(
    directory: str | os.PathLike[str],
    *,
    train: int = 64,
    test: int = 32,
    gzip_files: bool = False,
    seed: int = 0,
    size: int = 28,
) -> None:
    """Write a tiny 10-class ``size x size`` (default 28x28) dataset as the four Fashion-MNIST IDX files.

    Files are raw or, with ``gzip_files``, ``.gz``; a smaller ``size`` makes tests faster.

    Example:
        >>> import tempfile, os
        >>> folder = tempfile.mkdtemp()
        >>> write_synthetic_idx(folder, train=4, test=2)
        >>> sorted(os.listdir(folder))[0]
        't10k-images-idx3-ubyte'
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    suffix = ".gz" if gzip_files else ""
    for split, count in (("train", train), ("t10k", test)):
        images, labels = _synthetic_images(rng, count, 1, size, 10)
        write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", images[:, 0], gzip_file=gzip_files)
        write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", labels.astype(np.uint8), gzip_file=gzip_files)


def write_synthetic_cifar(
    directory: str | os.PathLike[str], *, train_per_batch: int = 16, test: int = 32, seed: int = 0, size: int = 32
) -> None:
    """Write a tiny 10-class RGB dataset as the six CIFAR-10 python batches (``size`` 32 as CIFAR-10).

    Rows hold ``3 * size * size`` bytes (red plane, green, blue); the reader accepts only 32x32.

    Example:
        >>> import tempfile, os
        >>> folder = tempfile.mkdtemp()
        >>> write_synthetic_cifar(folder, train_per_batch=2, test=2)
        >>> sorted(os.listdir(folder))
        ['data_batch_1', 'data_batch_2', 'data_batch_3', 'data_batch_4', 'data_batch_5', 'test_batch']
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, count in [(n, train_per_batch) for n in CIFAR_TRAIN_BATCHES] + [(CIFAR_TEST_BATCH, test)]:
        images, labels = _synthetic_images(rng, count, 3, size, 10)
        batch = {b"batch_label": name.encode(), b"labels": labels.tolist(), b"data": images.reshape(count, -1)}
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle)
