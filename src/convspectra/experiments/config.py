"""What defines a training run of the paper's Section 4.2: the schedule and data (:class:`TrainConfig`) and the arm.

Arms (:class:`Arm`, parsed by :func:`parse_arm`):

* ``baseline``: plain SGD;
* ``clip=C``: every ``project_every`` optimizer steps (100 in the paper), every convolution is
  projected onto the operator-norm ball of radius ``C`` by the paper's Section 3 projection;
* ``l1=LAMBDA``: the penalty ``LAMBDA * sum |K|`` over all convolution kernels added to the
  loss, the regulariser motivated by Proposition 11 (the paper gives no coefficient).

The schedule defaults to He et al. (2016) for CIFAR: SGD with momentum 0.9, weight decay 1e-4,
batch 128, learning rate 0.1 divided by 10 at 50% and 75% of training (He et al.: 32k and 48k of
64k iterations, about epochs 82 and 123 of 164), random crops of the image padded by 4 pixels and
horizontal flips. The learning rate is a pure function of the epoch (:func:`learning_rate`), so
resuming needs no scheduler object.

Nothing here imports torch.

Example:
    >>> from convspectra.experiments.config import TrainConfig, learning_rate, parse_arm
    >>> config = TrainConfig(epochs=10)
    >>> config.schedule, learning_rate(config, 8), parse_arm("clip=0.5").name
    ((5, 8), 0.0010000000000000002, 'clip=0.5')
"""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from .._checks import flag, integer, real
from ..errors import ParameterError

__all__ = [
    "DEFAULT_L1",
    "PAPER_ARMS",
    "Arm",
    "TrainConfig",
    "arm_directory",
    "learning_rate",
    "parse_arm",
]

#: The L1 coefficient of a bare ``l1`` arm.
DEFAULT_L1 = 1e-5
#: The arms of the paper's Section 4.2 (its radii, and the L1 comparison).
PAPER_ARMS = ("baseline", "clip=0.1", "clip=0.5", "clip=1.0", "clip=2.5", "clip=3.0", f"l1={DEFAULT_L1:g}")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Arm:
    """One arm of the experiment: a projection radius ``clip`` (or ``None``) and an L1 coefficient ``l1``."""

    clip: float | None = None
    l1: float = 0.0

    @property
    def name(self) -> str:
        """Canonical name: ``baseline``, ``clip=C`` or ``l1=LAMBDA``."""
        if self.clip is not None:
            return f"clip={self.clip:g}"
        if self.l1:
            return f"l1={self.l1:g}"
        return "baseline"


def parse_arm(text: str) -> Arm:
    """Parse ``baseline``, ``clip=C`` (C > 0) or ``l1=LAMBDA`` (LAMBDA > 0; bare ``l1`` uses :data:`DEFAULT_L1`).

    Args:
        text: the arm as written on the command line (case and spaces around ``=`` or ``:`` ignored).

    Raises:
        ParameterError: anything else, or a value that is not a positive finite number.

    Example:
        >>> parse_arm("clip=0.5"), parse_arm("l1").name
        (Arm(clip=0.5, l1=0.0), 'l1=1e-05')
        >>> parse_arm("clip=-1")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        convspectra.errors.ParameterError: arm: expected 'baseline', 'clip=C' or 'l1=LAMBDA' ..., got 'clip=-1'
    """
    spec = text.strip().lower()
    if spec == "baseline":
        return Arm()
    if spec == "l1":
        return Arm(l1=DEFAULT_L1)
    match = re.fullmatch(r"(clip|l1)\s*[=:]\s*([0-9.eE+-]+)", spec)
    value = float("nan")
    if match:
        with contextlib.suppress(ValueError):
            value = float(match.group(2))
    if not match or not math.isfinite(value) or value <= 0:
        raise ParameterError(
            f"arm: expected 'baseline', 'clip=C' or 'l1=LAMBDA' with a positive finite number, got {text!r}"
        )
    return Arm(clip=value) if match.group(1) == "clip" else Arm(l1=value)


def arm_directory(arm: Arm, seed: int) -> str:
    """Relative folder of a run: ``<arm name>/seed<seed>``.

    Example:
        >>> arm_directory(parse_arm("clip=1.0"), 2)
        'clip=1/seed2'
    """
    return f"{arm.name}/seed{seed}"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run except its arm and seed (defaults: He et al. for CIFAR-10, ResNet-32).

    Attributes:
        dataset: ``"cifar10"`` or ``"fashion-mnist"``.
        data_dir: the dataset folder (``None``: the dataset's default, see
            :func:`~convspectra.experiments.datasets.load_dataset`).
        download: CIFAR-10 only: download with torchvision if missing.
        train_subset, test_subset: use a fixed random subset of this many images (``None``: all).
        subset_seed: seed of the subset selection (the same for all arms and seeds).
        depth: ResNet depth ``6n + 2`` (32 in the paper).
        epochs: training epochs (He et al.: 64k iterations of batch 128, about 164 epochs).
        milestones: epochs after which the learning rate is multiplied by ``lr_decay``
            (``None``: 50% and 75% of ``epochs``).
        batch_size, lr, momentum, weight_decay, lr_decay, augment: the SGD schedule.
        project_every: optimizer steps between projections (100 in the paper).
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
        amp: mixed precision on CUDA (bfloat16 when supported, else float16 with loss scaling);
            the projection and the logged spectra are always float64.
        channels_last: channels-last memory format on CUDA.
        deterministic: ``torch.use_deterministic_algorithms(True)`` (and no cuDNN autotuning)
            during the run.
        threads: at most this many torch and BLAS threads during the run, restored afterwards
            (``None``: leave as is).
        eval_batch_size: batch size for the test pass.

    Raises:
        ParameterError, ParameterTypeError: a field of the wrong type or out of range.
    """

    dataset: str = "cifar10"
    data_dir: str | None = None
    download: bool = False
    train_subset: int | None = None
    test_subset: int | None = None
    subset_seed: int = 0
    depth: int = 32
    epochs: int = 164
    milestones: tuple[int, ...] | None = None
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_decay: float = 0.1
    augment: bool = True
    project_every: int = 100
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    deterministic: bool = True
    threads: int | None = None
    eval_batch_size: int = 1000

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "project_every", "eval_batch_size"):
            integer(name, getattr(self, name))
        integer("subset_seed", self.subset_seed, minimum=0)
        for name in ("train_subset", "test_subset", "threads"):
            if getattr(self, name) is not None:
                integer(name, getattr(self, name))
        for name in ("lr", "momentum", "weight_decay", "lr_decay"):
            real(name, getattr(self, name), minimum=0.0)
        for name in ("download", "augment", "amp", "channels_last", "deterministic"):
            flag(name, getattr(self, name))
        if self.device not in DEVICES:
            raise ParameterError(f"device: expected 'auto', 'cpu' or 'cuda', got {self.device!r}")
        if self.milestones is not None and (
            not all(isinstance(m, int) and 0 < m < self.epochs for m in self.milestones)
            or list(self.milestones) != sorted(set(self.milestones))
        ):
            raise ParameterError(
                f"milestones: expected increasing epochs in [1, {self.epochs - 1}], got {self.milestones!r}"
            )

    @property
    def schedule(self) -> tuple[int, ...]:
        """The learning-rate milestones actually used."""
        if self.milestones is not None:
            return tuple(self.milestones)
        return tuple(sorted({m for m in (round(0.5 * self.epochs), round(0.75 * self.epochs)) if 0 < m < self.epochs}))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable fields (plus the resolved milestones)."""
        out = asdict(self)
        out["milestones"] = list(self.schedule)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`.

        Example:
            >>> config = TrainConfig(epochs=8, batch_size=64)
            >>> TrainConfig.from_dict(config.to_dict()) == TrainConfig(epochs=8, batch_size=64, milestones=(4, 6))
            True
        """
        known = {f.name for f in fields(cls)}
        kwargs = {key: value for key, value in values.items() if key in known}
        if kwargs.get("milestones") is not None:
            kwargs["milestones"] = tuple(kwargs["milestones"])
        return cls(**kwargs)


def learning_rate(config: TrainConfig, epoch: int) -> float:
    """Learning rate during ``epoch`` (0-based): ``lr * lr_decay ** (number of milestones <= epoch)``.

    Example:
        >>> config = TrainConfig(epochs=164, milestones=(82, 123))
        >>> [learning_rate(config, e) for e in (0, 81, 82, 123)]
        [0.1, 0.1, 0.010000000000000002, 0.0010000000000000002]
    """
    return config.lr * config.lr_decay ** sum(epoch >= m for m in config.schedule)
