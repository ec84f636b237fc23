"""PyTorch Lightning callback: project the model's convolutions onto an operator-norm ball every N optimizer steps.

Needs ``lightning`` (``pip install "convspectra[lightning]"``); without it the module imports but
creating the callback raises an ``ImportError`` that says so. It wraps :class:`~convspectra.nn.OperatorNormProjector`:
input sizes are recorded on the first forward pass of the fit (the sanity-check validation
batches included), and after every optimizer step whose ``trainer.global_step`` is a multiple of
``every`` the selected layers are projected. Under a distributed strategy (DDP) the work is
shared out among the ranks and broadcast, so every rank keeps identical weights.

Example:
    >>> from convspectra.nn.lightning import OperatorNormCallback
    >>> trainer = lightning.Trainer(callbacks=[OperatorNormCallback(max_norm=1.0, every=100)])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

try:
    from lightning.pytorch.callbacks import Callback

    _LIGHTNING_ERROR: ImportError | None = None
except ImportError as err:  # pragma: no cover - depends on the environment
    # the module stays importable; the class refuses to be created
    Callback = object  # type: ignore[assignment,misc]
    _LIGHTNING_ERROR = err

from .._checks import integer
from .layers import LayerKey, LayerSelection, ShapeLike
from .projector import OperatorNormProjector

__all__ = ["OperatorNormCallback"]


class OperatorNormCallback(Callback):
    """Project the LightningModule's convolutions every ``every`` optimizer steps (``trainer.global_step``).

    Args:
        max_norm: the bound c, or a mapping from layer name (relative to the LightningModule) or
            module to its bound.
        every: project after each optimizer step whose ``global_step`` is a multiple of ``every``.
        layers, input_shapes, min_norm, iterations, method, rescale, device: as
            :class:`~convspectra.nn.OperatorNormProjector`.
        on_train_end: also project once when training ends, so the saved model satisfies the bound.

    Attributes:
        projector: the :class:`~convspectra.nn.OperatorNormProjector` (set when fitting starts).

    Raises:
        ParameterError, ParameterTypeError: invalid arguments (when fitting starts, for those
            that depend on the model).
    """

    def __init__(
        self,
        max_norm: float | Mapping[LayerKey, float],
        *,
        every: int = 100,
        layers: LayerSelection = None,
        input_shapes: ShapeLike | Mapping[LayerKey, ShapeLike] | None = None,
        min_norm: float | None = None,
        iterations: int = 1,
        method: str = "alternating",
        rescale: bool = False,
        device: torch.device | str | None = None,
        on_train_end: bool = False,
    ) -> None:
        if _LIGHTNING_ERROR is not None:  # pragma: no cover - depends on the environment
            raise ImportError(
                'OperatorNormCallback needs PyTorch Lightning: pip install "convspectra[lightning]" (lightning>=2.1)'
            ) from _LIGHTNING_ERROR
        super().__init__()
        self.every = integer("every", every)
        self._options: dict[str, Any] = {
            "max_norm": max_norm,
            "layers": layers,
            "input_shapes": input_shapes,
            "min_norm": min_norm,
            "iterations": iterations,
            "method": method,
            "rescale": rescale,
            "device": device,
        }
        self.project_on_train_end = bool(on_train_end)
        self.projector: OperatorNormProjector | None = None
        self._last_step = -1

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Select the layers and hook the input-size recording (fit only)."""
        if stage == "fit" and self.projector is None:
            self.projector = OperatorNormProjector(pl_module, every=self.every, **self._options)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Project when an optimizer step has just brought ``global_step`` to a multiple of ``every``."""
        step = int(trainer.global_step)
        if step == self._last_step or step == 0 or step % self.every:
            return
        self._last_step = step
        if self.projector is not None:  # set in setup
            self.projector.project_now()

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        """Optionally project once more at the end of training."""
        if self.project_on_train_end and self.projector is not None:
            self.projector.project_now()

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Remove the input-size hooks that have not fired."""
        if stage == "fit" and self.projector is not None:
            self.projector.close()
