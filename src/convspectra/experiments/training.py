"""Section 4.2 of the paper: train a CIFAR ResNet with periodic operator-norm projection, resumably.

One *run* trains :func:`convspectra.models.cifar_resnet` on one dataset, in one *arm*, from one
seed. Arms (:class:`Arm`, parsed by :func:`parse_arm`):

* ``baseline``: plain SGD;
* ``clip=C``: every ``project_every`` optimizer steps (100 in the paper), every convolution is
  projected onto the operator-norm ball of radius ``C`` by the paper's Section 3 projection: clip
  the singular values of the circular operator at the layer's input size, then zero the
  coefficients outside the ``k x k`` support (one alternating step; computed in float64);
* ``l1=LAMBDA``: the penalty ``LAMBDA * sum |K|`` over all convolution kernels added to the
  loss, the regulariser motivated by Proposition 11 (the paper gives no coefficient).

The schedule defaults to He et al. (2016) for CIFAR: SGD with momentum 0.9, weight decay 1e-4,
batch 128, learning rate 0.1 divided by 10 at 50% and 75% of training (He et al.: 32k and 48k of
64k iterations, about epochs 82 and 123 of 164), random crops of the image padded by 4 pixels and
horizontal flips. The learning rate is a pure function of the epoch, so resuming needs no
scheduler object.

Pairing: the model is initialised from ``torch.manual_seed(seed)`` and the data order and
augmentation come from a separate generator seeded with ``seed``, which draws the same numbers in
every arm, so arms with the same seed start from the same weights and see the same batches.

Exact resume: after every epoch the run writes ``checkpoint.pt`` atomically (model, optimizer,
gradient scaler, global and data RNG states, epoch, step, log) and ``log.json``. Restarting the
same run after a kill continues from the last completed epoch; on the CPU with deterministic
settings the final weights are bitwise those of an uninterrupted run (tested).

Per-epoch log: learning rate, training loss and error, test loss and error, cumulative training
time (steps and projections only) and wall time, and the largest singular value of every
convolution at its input size (:func:`convspectra.singular_values` of the layer's circular
operator, stride included, float64).

Example:
    >>> import tempfile
    >>> from convspectra.experiments.datasets import write_synthetic_idx
    >>> from convspectra.experiments.training import TrainConfig, parse_arm, train_run
    >>> folder = tempfile.mkdtemp()
    >>> write_synthetic_idx(folder, train=16, test=8, size=12)
    >>> config = TrainConfig(dataset="fashion-mnist", data_dir=folder, depth=8, epochs=1, batch_size=8, threads=1,
    ...                      project_every=1, device="cpu")
    >>> log = train_run(config, parse_arm("clip=0.5"), seed=0, run_dir=tempfile.mkdtemp())
    >>> log["finished"], len(log["epochs"]), log["epochs"][0]["steps"]
    (True, 1, 2)
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ParameterError
from .machine import machine_description

__all__ = [
    "DEFAULT_L1",
    "PAPER_ARMS",
    "Arm",
    "TrainConfig",
    "arm_directory",
    "conv_input_sizes",
    "learning_rate",
    "parse_arm",
    "project_convolutions",
    "run_experiment",
    "train_run",
]

LOGGER = logging.getLogger("convspectra.experiments")
DEFAULT_L1 = 1e-5
PAPER_ARMS = ("baseline", "clip=0.1", "clip=0.5", "clip=1.0", "clip=2.5", "clip=3.0", f"l1={DEFAULT_L1:g}")
CHECKPOINT = "checkpoint.pt"
LOG = "log.json"


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
    """Relative folder of a run: ``<arm name>/seed<seed>``."""
    return f"{arm.name}/seed{seed}"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run except its arm and seed (defaults: He et al. for CIFAR-10, ResNet-32).

    Attributes:
        dataset: ``"cifar10"`` or ``"fashion-mnist"``.
        data_dir: the dataset folder (``None``: the dataset's default, see ``datasets.load_dataset``).
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
        deterministic: ``torch.use_deterministic_algorithms(True)`` (and no cuDNN autotuning).
        threads: ``torch.set_num_threads`` for the run (``None``: leave as is).
        eval_batch_size: batch size for the test pass.
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
        positive = ("epochs", "batch_size", "project_every", "eval_batch_size")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ParameterError(f"{name}: expected a positive integer, got {value!r}")
        for name in ("lr", "momentum", "weight_decay", "lr_decay"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ParameterError(f"{name}: expected a finite non-negative number, got {value!r}")
        if self.device not in ("auto", "cpu", "cuda"):
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
        """Inverse of :meth:`to_dict`."""
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


# ----------------------------------------------------------------------------------------- model parts


def conv_input_sizes(model: Any, image_shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
    """Spatial input size of every convolution, by one forward pass of zeros of ``image_shape`` (C, H, W).

    Example:
        >>> from convspectra.models import resnet20
        >>> sizes = conv_input_sizes(resnet20(), (3, 32, 32))
        >>> sizes["conv1"], sizes["layer2.0.conv1"], sizes["layer3.2.conv2"]
        ((32, 32), (32, 32), (8, 8))
    """
    import torch

    sizes: dict[str, tuple[int, ...]] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.modules.conv._ConvNd):

            def hook(mod: Any, inputs: Any, output: Any, name: str = name) -> None:
                sizes[name] = tuple(int(s) for s in inputs[0].shape[2:])

            hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    parameter = next(model.parameters())
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros((1, *image_shape), dtype=parameter.dtype, device=parameter.device))
    finally:
        for handle in hooks:
            handle.remove()
        model.train(was_training)
    return sizes


#: How the ``clip=C`` arms project (recorded in every run's log).
PROJECTION = "convspectra.clip_operator_norm_many(iterations=1, method='alternating')"


def project_convolutions(model: Any, input_sizes: dict[str, tuple[int, ...]], max_norm: float) -> None:
    """Project every convolution of ``model`` onto the operator-norm ball of radius ``max_norm``, in place.

    The projection (one step of the paper's Section 3: clip every frequency's singular values at
    ``max_norm``, keep the kernel's support) is computed in float64 on the weight's device, for the
    stride-1 circular operator at the layer's input size (for a strided layer this also bounds the
    strided operator by ``max_norm``: subsampling the output is a contraction), as in the paper.

    Example:
        >>> import torch, convspectra as cs
        >>> conv = torch.nn.Conv2d(4, 4, 3, padding=1, bias=False)
        >>> _ = torch.nn.init.normal_(conv.weight)
        >>> project_convolutions(torch.nn.Sequential(conv), {"0": (8, 8)}, 1.0)
        >>> float(cs.singular_values(conv.weight.detach().double(), 8)[0]) < 1.5
        True
    """
    import torch

    from ..projection import clip_operator_norm_many

    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    if not convs:
        return
    with torch.no_grad():
        weights = [m.weight.detach().to(torch.float64) for _, m in convs]
        sizes = [tuple(input_sizes[name]) for name, _ in convs]
        projected = clip_operator_norm_many(weights, sizes, float(max_norm), iterations=1, method="alternating")
        for (_, module), new in zip(convs, projected, strict=True):
            module.weight.copy_(new.to(module.weight.dtype))


def _layer_sigma_max(model: Any, input_sizes: dict[str, tuple[int, ...]]) -> dict[str, float]:
    import torch

    from ..spectrum import singular_values

    out = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.modules.conv._ConvNd):
            weight = module.weight.detach().to("cpu", torch.float64)
            values = singular_values(
                weight,
                input_sizes[name],
                stride=module.stride,
                dilation=module.dilation,
                groups=module.groups,
                transposed=module.transposed,
            )
            out[name] = float(values[0])
    return out


# ------------------------------------------------------------------------------------------ data


class _Batches:
    """Normalised, augmented mini-batches from uint8 images, driven by one ``torch.Generator``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean: Any, std: Any) -> None:
        import torch

        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.labels = torch.from_numpy(np.ascontiguousarray(labels))
        self.mean, self.std = mean, std

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def prepare(self, index: Any, generator: Any | None, augment: bool) -> tuple[Any, Any]:
        import torch

        x = self.images[index].to(torch.float32) / 255.0
        if augment:
            b, _, h, w = x.shape
            padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
            offsets = torch.randint(0, 9, (2, b), generator=generator)
            rows = (offsets[0][:, None] + torch.arange(h))[:, None, :, None]
            cols = (offsets[1][:, None] + torch.arange(w))[:, None, None, :]
            x = padded[torch.arange(b)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None], rows, cols]
            flip = torch.rand(b, generator=generator) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return (x - self.mean) / self.std, self.labels[index]


def _progress(total: int, description: str, enabled: bool) -> Any:
    """A tqdm or rich progress bar when installed and ``enabled``, else a no-op object."""

    class _Null:
        def update(self, n: int = 1) -> None:
            pass

        def set_postfix_str(self, text: str) -> None:
            pass

        def close(self) -> None:
            pass

    if not enabled:
        return _Null()
    try:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=description, leave=False)
    except ImportError:
        pass
    try:
        from rich.progress import Progress
    except ImportError:
        return _Null()

    class _Rich:
        def __init__(self) -> None:
            self.progress = Progress(transient=True)
            self.progress.start()
            self.task = self.progress.add_task(description, total=total)

        def update(self, n: int = 1) -> None:
            self.progress.update(self.task, advance=n)

        def set_postfix_str(self, text: str) -> None:
            self.progress.update(self.task, description=f"{description} {text}")

        def close(self) -> None:
            self.progress.stop()

    return _Rich()


# ------------------------------------------------------------------------------------------ the run


def _resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ParameterError("device: expected an available device, got 'cuda' but torch sees no CUDA GPU")
    return name


def _save_atomically(obj: Any, path: Path, *, as_json: bool = False) -> None:
    import torch

    tmp = path.with_name(path.name + ".tmp")
    if as_json:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(obj, handle, indent=1)
    else:
        torch.save(obj, tmp)
    os.replace(tmp, path)


def train_run(
    config: TrainConfig,
    arm: Arm,
    seed: int,
    run_dir: str | os.PathLike[str],
    *,
    dataset: Any | None = None,
    progress: bool = False,
    on_step: Callable[[int], None] | None = None,
    max_epochs: int | None = None,
) -> dict[str, Any]:
    """Train (or resume, or return the finished log of) one run; see the module docstring.

    Args:
        config: the schedule and data (:class:`TrainConfig`).
        arm: the regulariser (:class:`Arm`).
        seed: model initialisation and data-order seed (paired across arms).
        run_dir: the run's folder; ``checkpoint.pt`` and ``log.json`` live there. A finished run is
            not retrained; an unfinished one resumes from its last completed epoch.
        dataset: an already loaded :class:`~convspectra.experiments.datasets.ImageDataset` (with the
            config's subset applied); ``None`` loads it from the config.
        progress: show a progress bar (tqdm or rich, when installed).
        on_step: called with the global step after every optimizer step (and projection).
        max_epochs: stop (as if killed) after this many epochs of this call, checkpoint written.

    Returns:
        The run's log (also in ``run_dir/log.json``).

    Raises:
        ParameterError: if ``run_dir`` holds a checkpoint of a different config, arm or seed.
    """
    with _thread_limits(config.threads):
        return _train(config, arm, seed, run_dir, dataset, progress, on_step, max_epochs)


@contextlib.contextmanager
def _thread_limits(threads: int | None) -> Any:
    """``torch.set_num_threads(threads)`` and, with threadpoolctl, the same limit for BLAS/OpenMP pools.

    Limiting only torch leaves OpenBLAS spinning its own threads against torch's on a busy machine,
    which slows the small SVDs of the spectra and projections by an order of magnitude.
    """
    if threads is None:
        yield
        return
    import torch

    torch.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=threads):
        yield


def _train(
    config: TrainConfig,
    arm: Arm,
    seed: int,
    run_dir: str | os.PathLike[str],
    dataset: Any,
    progress: bool,
    on_step: Callable[[int], None] | None,
    max_epochs: int | None,
) -> dict[str, Any]:
    import torch

    from ..models import cifar_resnet
    from ..nn import l1_penalty
    from .datasets import load_dataset

    folder = Path(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    identity = {"config": config.to_dict(), "arm": arm.name, "seed": int(seed)}
    checkpoint_path = folder / CHECKPOINT
    checkpoint = None
    if checkpoint_path.is_file():
        with torch.serialization.safe_globals([torch.torch_version.TorchVersion]):
            checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        saved = {key: checkpoint["log"][key] for key in identity}
        if saved != json.loads(json.dumps(identity)):
            raise ParameterError(
                f"run_dir: expected a checkpoint of arm {arm.name}, seed {seed} and this config in {str(folder)!r}, "
                f"got one of arm {saved['arm']}, seed {saved['seed']} (delete it or use another folder)"
            )
        if checkpoint["log"]["finished"]:
            return dict(checkpoint["log"])

    device = _resolve_device(config.device)
    cuda = device == "cuda"
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=cuda)
        torch.backends.cudnn.benchmark = False
    elif cuda:
        torch.backends.cudnn.benchmark = True

    if dataset is None:
        dataset = load_dataset(config.dataset, config.data_dir, download=config.download)
        if config.train_subset is not None or config.test_subset is not None:
            dataset = dataset.subset(config.train_subset, config.test_subset, seed=config.subset_seed)
    stats = dataset.train_images.astype(np.float64) / 255.0
    mean = torch.tensor(stats.mean(axis=(0, 2, 3)), dtype=torch.float32)[None, :, None, None]
    std = torch.tensor(stats.std(axis=(0, 2, 3)) + 1e-8, dtype=torch.float32)[None, :, None, None]
    train_data = _Batches(dataset.train_images, dataset.train_labels, mean, std)
    test_data = _Batches(dataset.test_images, dataset.test_labels, mean, std)

    torch.manual_seed(seed)
    model = cifar_resnet(config.depth, num_classes=dataset.num_classes, in_channels=dataset.channels)
    input_sizes = conv_input_sizes(model, (dataset.channels, *dataset.image_size))
    memory_format = torch.channels_last if (cuda and config.channels_last) else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)  # type: ignore[call-overload]
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    amp_dtype = None
    if cuda and config.amp:
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    generator = torch.Generator().manual_seed(seed)

    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scaler.load_state_dict(checkpoint["scaler"])
        generator.set_state(checkpoint["data_rng"])
        torch.set_rng_state(checkpoint["torch_rng"])
        if cuda and checkpoint.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(checkpoint["cuda_rng"])
        log = dict(checkpoint["log"])
        log.setdefault("resumed_at_epochs", []).append(len(log["epochs"]))
    else:
        log = {
            **identity,
            "dataset": {
                "name": dataset.name,
                "source": dataset.source,
                "train_images": len(train_data),
                "test_images": len(test_data),
                "image_shape": [dataset.channels, *dataset.image_size],
            },
            "device": device,
            "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else None,
            "projection": PROJECTION if arm.clip is not None else None,
            "machine": machine_description(),
            "layers": {name: list(size) for name, size in input_sizes.items()},
            "initial_sigma_max": _layer_sigma_max(model, input_sizes),
            "epochs": [],
            "finished": False,
        }
    start_epoch = len(log["epochs"])
    step = log["epochs"][-1]["steps"] if log["epochs"] else 0
    train_seconds = log["epochs"][-1]["train_seconds"] if log["epochs"] else 0.0
    wall_seconds = log["epochs"][-1]["wall_seconds"] if log["epochs"] else 0.0
    batches_per_epoch = math.ceil(len(train_data) / config.batch_size)
    loss_function = torch.nn.CrossEntropyLoss()

    def forward_loss(x: Any, y: Any) -> tuple[Any, Any]:
        with torch.autocast("cuda", dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x)
        loss = loss_function(logits.float(), y)
        return loss, logits

    epochs_this_call = 0
    for epoch in range(start_epoch, config.epochs):
        if max_epochs is not None and epochs_this_call >= max_epochs:
            break
        epoch_start = time.perf_counter()
        lr = learning_rate(config, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        order = torch.randperm(len(train_data), generator=generator)
        total_loss, total_wrong, seen, train_time = 0.0, 0, 0, 0.0
        bar = _progress(batches_per_epoch, f"{arm.name} seed {seed} epoch {epoch + 1}/{config.epochs}", progress)
        for first in range(0, len(train_data), config.batch_size):
            x, y = train_data.prepare(order[first : first + config.batch_size], generator, config.augment)
            tick = time.perf_counter()
            x = x.to(device, memory_format=memory_format, non_blocking=True)
            y = y.to(device, non_blocking=True)
            loss, logits = forward_loss(x, y)
            objective = loss + arm.l1 * l1_penalty(model) if arm.l1 else loss
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(objective).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
            if arm.clip is not None and step % config.project_every == 0:
                project_convolutions(model, input_sizes, arm.clip)
            if cuda:
                torch.cuda.synchronize()
            train_time += time.perf_counter() - tick
            total_loss += float(loss.detach()) * len(y)
            total_wrong += int((logits.detach().argmax(1) != y).sum())
            seen += len(y)
            bar.update()
            bar.set_postfix_str(f"loss {total_loss / seen:.3f}")
            if on_step is not None:
                on_step(step)
        bar.close()
        test_loss, test_error = _evaluate(model, test_data, config.eval_batch_size, device, memory_format, amp_dtype)
        train_seconds += train_time
        sigma = _layer_sigma_max(model, input_sizes)
        wall_seconds += time.perf_counter() - epoch_start
        entry = {
            "epoch": epoch + 1,
            "steps": step,
            "lr": lr,
            "train_loss": total_loss / seen,
            "train_error": total_wrong / seen,
            "test_loss": test_loss,
            "test_error": test_error,
            "train_seconds": train_seconds,
            "wall_seconds": wall_seconds,
            "sigma_max": sigma,
        }
        log["epochs"].append(entry)
        log["finished"] = epoch + 1 == config.epochs
        LOGGER.info(
            "%s seed %d epoch %d/%d: train loss %.4f, test error %.4f, max sigma %.3f, %.1f s",
            arm.name, seed, epoch + 1, config.epochs, entry["train_loss"], test_error, max(sigma.values()),
            wall_seconds,
        )  # fmt: skip
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "data_rng": generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state() if cuda else None,
            "log": log,
        }
        _save_atomically(state, checkpoint_path)
        _save_atomically(log, folder / LOG, as_json=True)
        epochs_this_call += 1
    return log


def _evaluate(
    model: Any, data: _Batches, batch_size: int, device: str, memory_format: Any, amp: Any
) -> tuple[float, float]:
    import torch

    model.eval()
    total_loss, wrong = 0.0, 0
    with torch.no_grad():
        for first in range(0, len(data), batch_size):
            x, y = data.prepare(torch.arange(first, min(first + batch_size, len(data))), None, False)
            x, y = x.to(device, memory_format=memory_format), y.to(device)
            with torch.autocast("cuda", dtype=amp, enabled=amp is not None):
                logits = model(x).float()
            total_loss += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
            wrong += int((logits.argmax(1) != y).sum())
    model.train()
    return total_loss / len(data), wrong / len(data)


def run_experiment(
    config: TrainConfig,
    arms: Sequence[Arm],
    seeds: Sequence[int],
    out_dir: str | os.PathLike[str],
    *,
    progress: bool = False,
    max_epochs: int | None = None,
) -> list[dict[str, Any]]:
    """Train every (seed, arm) run under ``out_dir/<arm>/seed<seed>``, seed-major so pairs complete early.

    Finished runs are skipped, unfinished ones resumed: re-running the same command after a kill
    continues where it stopped. The dataset is loaded once.

    Returns:
        The runs' logs, in the order trained.

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
    from .datasets import load_dataset

    if not arms:
        raise ParameterError("arms: expected at least one arm, got none")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ParameterError(f"seeds: expected distinct seeds, got {list(seeds)!r}")
    dataset = load_dataset(config.dataset, config.data_dir, download=config.download)
    if config.train_subset is not None or config.test_subset is not None:
        dataset = dataset.subset(config.train_subset, config.test_subset, seed=config.subset_seed)
    root = Path(out_dir)
    logs = []
    for seed in seeds:
        for arm in arms:
            logs.append(
                train_run(
                    config,
                    arm,
                    seed,
                    root / arm_directory(arm, seed),
                    dataset=dataset,
                    progress=progress,
                    max_epochs=max_epochs,
                )
            )
    return logs
