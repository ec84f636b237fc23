"""Mini-batches for the training runs: normalised, augmented (the He et al. CIFAR recipe), reproducible.

The images stay uint8 ``(N, C, H, W)`` until a batch is drawn; :meth:`Batches.prepare` converts
it to float32 in [0, 1], optionally augments it (a random crop of the image padded by 4 zero
pixels on every side, then a horizontal flip with probability 1/2) and normalises it with the
training set's per-channel mean and standard deviation. Every random number comes from the
``torch.Generator`` passed in, so a run's data order and augmentation are a pure function of its
seed, the same in every arm, and a checkpointed generator state resumes them exactly.

Example:
    >>> import numpy as np, torch
    >>> from convspectra.experiments.batches import Batches, normalisation
    >>> images = np.random.default_rng(0).integers(0, 256, (6, 3, 8, 8), dtype=np.uint8)
    >>> mean, std = normalisation(images)
    >>> batches = Batches(images, np.arange(6), mean, std)
    >>> x, y = batches.prepare(torch.arange(4), torch.Generator().manual_seed(0), augment=True)
    >>> tuple(x.shape), x.dtype, y.tolist()
    ((4, 3, 8, 8), torch.float32, [0, 1, 2, 3])
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["PAD", "Batches", "normalisation"]

#: Zero padding on every side before the random crop (He et al. 2016: 4 pixels).
PAD = 4


def normalisation(images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation (plus 1e-8) of uint8 images scaled to [0, 1].

    Args:
        images: uint8 array ``(N, C, H, W)`` (the training set).

    Returns:
        ``(mean, std)``, float32 tensors of shape ``(1, C, 1, 1)``.
    """
    scaled = images.astype(np.float64) / 255.0
    mean = torch.tensor(scaled.mean(axis=(0, 2, 3)), dtype=torch.float32)[None, :, None, None]
    std = torch.tensor(scaled.std(axis=(0, 2, 3)) + 1e-8, dtype=torch.float32)[None, :, None, None]
    return mean, std


class Batches:
    """Normalised, optionally augmented mini-batches from uint8 images and their labels.

    Args:
        images: uint8 array ``(N, C, H, W)``.
        labels: integer array ``(N,)``.
        mean, std: the normalisation, broadcastable to a batch (see :func:`normalisation`).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.labels = torch.from_numpy(np.ascontiguousarray(labels))
        self.mean, self.std = mean, std

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def prepare(self, index: Any, generator: torch.Generator | None, augment: bool) -> tuple[torch.Tensor, Any]:
        """The batch of images ``index`` (float32, normalised; augmented with ``augment``) and its labels.

        Args:
            index: the images to draw (an index tensor or anything ``tensor[index]`` accepts).
            generator: the source of the crop offsets and flips (only used with ``augment``).
            augment: random crop after padding by :data:`PAD` pixels, and random horizontal flip.
        """
        x = self.images[index].to(torch.float32) / 255.0
        if augment:
            x = _crop_and_flip(x, generator)
        return (x - self.mean) / self.std, self.labels[index]


def _crop_and_flip(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """A random ``H x W`` crop of each image padded by :data:`PAD` zeros, then a horizontal flip with chance 1/2."""
    b, channels, h, w = x.shape
    padded = torch.nn.functional.pad(x, (PAD, PAD, PAD, PAD))
    offsets = torch.randint(0, 2 * PAD + 1, (2, b), generator=generator)
    rows = (offsets[0][:, None] + torch.arange(h))[:, None, :, None]
    cols = (offsets[1][:, None] + torch.arange(w))[:, None, None, :]
    x = padded[torch.arange(b)[:, None, None, None], torch.arange(channels)[None, :, None, None], rows, cols]
    flip = torch.rand(b, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)
