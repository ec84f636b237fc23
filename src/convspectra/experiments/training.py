"""Section 4.2 of the paper: train a CIFAR ResNet with periodic operator-norm projection, resumably.

One *run* trains :func:`convspectra.models.cifar_resnet` on one dataset, in one *arm* (baseline,
``clip=C`` or ``l1=LAMBDA``; see :mod:`convspectra.experiments.config`), from one seed. The
``clip=C`` arms project every convolution onto the operator-norm ball of radius ``C`` every
``project_every`` optimizer steps, with :mod:`convspectra.nn` (every conv kind, with its dilation,
groups and transposition, on its stride-1 operator as the paper's method does; see
:mod:`convspectra.experiments.convolutions`).

Pairing: the model is initialised from ``torch.manual_seed(seed)`` and the data order and
augmentation come from a separate generator seeded with ``seed``, which draws the same numbers in
every arm, so arms with the same seed start from the same weights and see the same batches.

Exact resume: after every epoch the run writes ``checkpoint.pt`` atomically (model, optimizer,
gradient scaler, global and data RNG states, epoch, step, log) and ``log.json``
(:mod:`convspectra.experiments.checkpoint`). Restarting the same run after a kill continues from
the last completed epoch; on the CPU with deterministic settings the final weights are bitwise
those of an uninterrupted run (tested). The run's thread limit, determinism and cuDNN settings
hold during the run only and are restored afterwards.

Per-epoch log: learning rate, training loss and error, test loss and error, cumulative training
time (steps and projections only) and wall time, and the largest singular value of every
convolution's circular operator at its input size (:func:`convspectra.operator_norm`, stride
included, float64).

Progress: ``progress(done, total, label)`` is called after every batch with the run's optimizer
steps so far, its total, and a label such as ``"clip=0.5 seed 0 epoch 3/6, loss 0.412"`` (the
shape of :func:`convspectra.analysis.spectral_report`'s callback).

Example:
    >>> import tempfile
    >>> from convspectra.experiments.datasets import write_synthetic_idx
    >>> from convspectra.experiments.training import TrainConfig, parse_arm, train_run
    >>> folder = tempfile.mkdtemp()
    >>> write_synthetic_idx(folder, train=16, test=8, size=12)
    >>> config = TrainConfig(dataset="fashion-mnist", data_dir=folder, depth=8, epochs=1, batch_size=8, threads=1,
    ...                      project_every=1, device="cpu")
    >>> seen = []
    >>> log = train_run(config, parse_arm("clip=0.5"), seed=0, run_dir=tempfile.mkdtemp(),
    ...                 progress=lambda done, total, label: seen.append((done, total)))
    >>> log["finished"], len(log["epochs"]), log["epochs"][0]["steps"], seen
    (True, 1, 2, [(1, 2), (2, 2)])
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from .._backend import resolve_device
from .._checks import describe
from .._threads import limit_threads
from ..errors import ParameterError, ParameterTypeError
from ..models import cifar_resnet
from ..nn import l1_penalty
from .batches import Batches, normalisation
from .checkpoint import capture_state, read_checkpoint, restore_state, write_checkpoint
from .config import DEFAULT_L1, PAPER_ARMS, Arm, TrainConfig, arm_directory, learning_rate, parse_arm
from .convolutions import PROJECTION, conv_records, project_convolutions, sigma_max
from .datasets import ImageDataset, load_dataset
from .machine import machine_description

# The run's definition lives in .config (importable without torch); its names are re-exported here
# for code that imports them with the runner.
__all__ = [
    "DEFAULT_L1",
    "PAPER_ARMS",
    "Arm",
    "Progress",
    "TrainConfig",
    "arm_directory",
    "learning_rate",
    "parse_arm",
    "run_experiment",
    "train_run",
]

LOGGER = logging.getLogger("convspectra.experiments")

#: ``progress(done, total, label)``: optimizer steps of the run so far, their total, and what is running.
Progress = Callable[[int, int, str], None]


def _check_progress(progress: Any) -> Progress | None:
    if progress is not None and not callable(progress):
        raise ParameterTypeError(
            f"progress: expected None or a callable progress(done, total, label), got {progress!r} "
            f"({describe(progress)})"
        )
    return progress


def _dataset(config: TrainConfig) -> ImageDataset:
    dataset = load_dataset(config.dataset, config.data_dir, download=config.download)
    if config.train_subset is not None or config.test_subset is not None:
        dataset = dataset.subset(config.train_subset, config.test_subset, seed=config.subset_seed)
    return dataset


@contextlib.contextmanager
def _torch_settings(deterministic: bool, cuda: bool) -> Iterator[None]:
    """Deterministic algorithms (or cuDNN autotuning on CUDA) for the block; torch's own settings restored after."""
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
    )
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=cuda)
        torch.backends.cudnn.benchmark = False
    elif cuda:
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.benchmark = previous[2]


class _Run:
    """One run's model, optimizer, data, convolution records and log, new or restored from a checkpoint."""

    def __init__(
        self,
        config: TrainConfig,
        arm: Arm,
        seed: int,
        device: str,
        dataset: ImageDataset,
        checkpoint: dict[str, Any] | None,
        identity: dict[str, Any],
    ) -> None:
        self.config, self.arm, self.seed, self.device = config, arm, seed, device
        self.cuda = device == "cuda"
        mean, std = normalisation(dataset.train_images)
        self.train_data = Batches(dataset.train_images, dataset.train_labels, mean, std)
        self.test_data = Batches(dataset.test_images, dataset.test_labels, mean, std)

        torch.manual_seed(seed)
        model = cifar_resnet(config.depth, num_classes=dataset.num_classes, in_channels=dataset.channels)
        bound = arm.clip if arm.clip is not None else 1.0  # only the clip arms project; every arm logs the spectra
        self.layers = conv_records(model, (dataset.channels, *dataset.image_size), bound)
        channels_last = self.cuda and config.channels_last
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(device, memory_format=self.memory_format)  # type: ignore[call-overload]
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
        self.amp_dtype = None
        if self.cuda and config.amp:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.generator = torch.Generator().manual_seed(seed)
        if checkpoint is not None:
            restore_state(checkpoint, self.model, self.optimizer, self.scaler, self.generator, self.cuda)
            self.log: dict[str, Any] = dict(checkpoint["log"])
            self.log.setdefault("resumed_at_epochs", []).append(len(self.log["epochs"]))
        else:
            self.log = self._new_log(identity, dataset)
        last = self.log["epochs"][-1] if self.log["epochs"] else None
        self.step: int = last["steps"] if last else 0
        self.train_seconds: float = last["train_seconds"] if last else 0.0
        self.wall_seconds: float = last["wall_seconds"] if last else 0.0
        self.batches_per_epoch = math.ceil(len(self.train_data) / config.batch_size)

    def _new_log(self, identity: dict[str, Any], dataset: ImageDataset) -> dict[str, Any]:
        return {
            **identity,
            "dataset": {
                "name": dataset.name,
                "source": dataset.source,
                "train_images": len(self.train_data),
                "test_images": len(self.test_data),
                "image_shape": [dataset.channels, *dataset.image_size],
            },
            "device": self.device,
            "amp": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else None,
            "projection": PROJECTION if self.arm.clip is not None else None,
            "machine": machine_description(),
            "layers": {layer.name: list(layer.require_input_shape()) for layer in self.layers},
            "initial_sigma_max": self._sigma_max(),
            "epochs": [],
            "finished": False,
        }

    @property
    def first_epoch(self) -> int:
        """The next epoch to train (0-based)."""
        return len(self.log["epochs"])

    def state(self) -> dict[str, Any]:
        """What the checkpoint holds after an epoch."""
        return capture_state(self.model, self.optimizer, self.scaler, self.generator, self.cuda, self.log)

    def _sigma_max(self) -> dict[str, float]:
        return sigma_max(self.layers, workers=self.config.threads)

    def _train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on a batch on the device (and the projection when it is due); the loss and the logits."""
        with torch.autocast("cuda", dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            logits = self.model(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        objective = loss + self.arm.l1 * l1_penalty(self.model) if self.arm.l1 else loss
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(objective).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        if self.arm.clip is not None and self.step % self.config.project_every == 0:
            project_convolutions(self.layers)
        if self.cuda:
            torch.cuda.synchronize()
        return loss.detach(), logits.detach()

    def train_epoch(self, epoch: int, progress: Progress | None, on_step: Callable[[int], None] | None) -> None:
        """Train one epoch, test, and append the epoch's entry to the log."""
        config = self.config
        start = time.perf_counter()
        lr = learning_rate(config, epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        order = torch.randperm(len(self.train_data), generator=self.generator)
        total_loss, wrong, seen, train_time = 0.0, 0, 0, 0.0
        total_steps = config.epochs * self.batches_per_epoch
        for first in range(0, len(self.train_data), config.batch_size):
            x, y = self.train_data.prepare(order[first : first + config.batch_size], self.generator, config.augment)
            tick = time.perf_counter()
            x = x.to(self.device, memory_format=self.memory_format, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            loss, logits = self._train_step(x, y)
            train_time += time.perf_counter() - tick
            total_loss += float(loss) * len(y)
            wrong += int((logits.argmax(1) != y).sum())
            seen += len(y)
            if progress is not None:
                where = f"{self.arm.name} seed {self.seed} epoch {epoch + 1}/{config.epochs}"
                progress(self.step, total_steps, f"{where}, loss {total_loss / seen:.3f}")
            if on_step is not None:
                on_step(self.step)
        test_loss, test_error = self._evaluate()
        self.train_seconds += train_time
        sigma = self._sigma_max()
        self.wall_seconds += time.perf_counter() - start
        entry = {
            "epoch": epoch + 1,
            "steps": self.step,
            "lr": lr,
            "train_loss": total_loss / seen,
            "train_error": wrong / seen,
            "test_loss": test_loss,
            "test_error": test_error,
            "train_seconds": self.train_seconds,
            "wall_seconds": self.wall_seconds,
            "sigma_max": sigma,
        }
        self.log["epochs"].append(entry)
        self.log["finished"] = epoch + 1 == config.epochs
        LOGGER.info(
            "%s seed %d epoch %d/%d: train loss %.4f, test error %.4f, max sigma %.3f, %.1f s",
            self.arm.name, self.seed, epoch + 1, config.epochs, entry["train_loss"], test_error,
            max(sigma.values()), self.wall_seconds,
        )  # fmt: skip

    def _evaluate(self) -> tuple[float, float]:
        """Test loss and error over the whole test set (eval mode, no gradients)."""
        data, batch = self.test_data, self.config.eval_batch_size
        self.model.eval()
        total_loss, wrong = 0.0, 0
        with torch.no_grad():
            for first in range(0, len(data), batch):
                x, y = data.prepare(torch.arange(first, min(first + batch, len(data))), None, False)
                x, y = x.to(self.device, memory_format=self.memory_format), y.to(self.device)
                with torch.autocast("cuda", dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                    logits = self.model(x).float()
                total_loss += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
                wrong += int((logits.argmax(1) != y).sum())
        self.model.train()
        return total_loss / len(data), wrong / len(data)


def train_run(
    config: TrainConfig,
    arm: Arm,
    seed: int,
    run_dir: str | os.PathLike[str],
    *,
    dataset: ImageDataset | None = None,
    progress: Progress | None = None,
    on_step: Callable[[int], None] | None = None,
    max_epochs: int | None = None,
) -> dict[str, Any]:
    """Train (or resume, or return the finished log of) one run; see the module docstring.

    Args:
        config: the schedule and data (:class:`~convspectra.experiments.config.TrainConfig`).
        arm: the regulariser (:class:`~convspectra.experiments.config.Arm`).
        seed: model initialisation and data-order seed (paired across arms).
        run_dir: the run's folder; ``checkpoint.pt`` and ``log.json`` live there. A finished run is
            not retrained; an unfinished one resumes from its last completed epoch.
        dataset: an already loaded :class:`~convspectra.experiments.datasets.ImageDataset` (with the
            config's subset applied); ``None`` loads it from the config.
        progress: called as ``progress(done, total, label)`` after every batch (see the module docstring).
        on_step: called with the global step after every optimizer step (and projection).
        max_epochs: stop (as if killed) after this many epochs of this call, checkpoint written.

    Returns:
        The run's log (also in ``run_dir/log.json``).

    Raises:
        ParameterError: ``run_dir`` holds a checkpoint of a different config, arm or seed, or a
            bad device (see :func:`~convspectra.experiments.datasets.load_dataset` for the data).
        ParameterTypeError: ``progress`` is neither None nor callable.
    """
    progress = _check_progress(progress)
    folder = Path(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    identity = {"config": config.to_dict(), "arm": arm.name, "seed": int(seed)}
    checkpoint = read_checkpoint(folder, identity)
    if checkpoint is not None and checkpoint["log"]["finished"]:
        return dict(checkpoint["log"])
    device = resolve_device(config.device)
    with limit_threads(config.threads), _torch_settings(config.deterministic, device == "cuda"):
        data = dataset if dataset is not None else _dataset(config)
        run = _Run(config, arm, seed, device, data, checkpoint, identity)
        first = run.first_epoch
        last = config.epochs if max_epochs is None else min(config.epochs, first + max_epochs)
        for epoch in range(first, last):
            run.train_epoch(epoch, progress, on_step)
            write_checkpoint(folder, run.state())
    return run.log


def run_experiment(
    config: TrainConfig,
    arms: Sequence[Arm],
    seeds: Sequence[int],
    out_dir: str | os.PathLike[str],
    *,
    progress: Progress | None = None,
    max_epochs: int | None = None,
) -> list[dict[str, Any]]:
    """Train every (seed, arm) run under ``out_dir/<arm>/seed<seed>``, seed-major so pairs complete early.

    Finished runs are skipped, unfinished ones resumed: re-running the same command after a kill
    continues where it stopped. The dataset is loaded once.

    Args:
        config: the schedule and data shared by every run.
        arms, seeds: the runs (every arm for every seed).
        out_dir: the experiment's folder.
        progress: passed to every :func:`train_run` (each run counts its own steps).
        max_epochs: as :func:`train_run`.

    Returns:
        The runs' logs, in the order trained.

    Raises:
        ParameterError: no arm, or seeds that are missing or repeated.

    Example:
        >>> import tempfile
        >>> from convspectra.experiments.datasets import write_synthetic_idx
        >>> folder = tempfile.mkdtemp()
        >>> write_synthetic_idx(folder, train=10, test=4, size=12)
        >>> config = TrainConfig(dataset="fashion-mnist", data_dir=folder, depth=8, epochs=1, batch_size=5,
        ...                      device="cpu", threads=1)
        >>> logs = run_experiment(config, [parse_arm("baseline"), parse_arm("l1")], [0], tempfile.mkdtemp())
        >>> [log["arm"] for log in logs]
        ['baseline', 'l1=1e-05']
    """
    progress = _check_progress(progress)
    if not arms:
        raise ParameterError("arms: expected at least one arm, got none")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ParameterError(f"seeds: expected distinct seeds, got {list(seeds)!r}")
    dataset = _dataset(config)
    root = Path(out_dir)
    return [
        train_run(
            config,
            arm,
            seed,
            root / arm_directory(arm, seed),
            dataset=dataset,
            progress=progress,
            max_epochs=max_epochs,
        )
        for seed in seeds
        for arm in arms
    ]
