"""A training run's checkpoint and log on disk: what they hold, written atomically, read back checked.

After every epoch a run writes ``checkpoint.pt`` (model, optimizer, gradient scaler, the global
torch RNG, the CUDA RNG, the data generator's state, and the log) and ``log.json`` (the log
alone), each to a temporary file renamed over the old one, so a kill at any moment leaves the
previous complete epoch on disk. :func:`read_checkpoint` refuses a checkpoint written by another
config, arm or seed; :func:`restore_state` puts every saved state back, which is what makes a
resumed run bitwise identical to an uninterrupted one (on the CPU, with deterministic settings).

Example:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from convspectra.experiments.checkpoint import read_checkpoint, write_checkpoint
    >>> folder = Path(tempfile.mkdtemp())
    >>> log = {"config": {"epochs": 1}, "arm": "baseline", "seed": 0, "epochs": [], "finished": False}
    >>> write_checkpoint(folder, {"model": {"w": torch.ones(2)}, "log": log})
    >>> sorted(p.name for p in folder.iterdir())
    ['checkpoint.pt', 'log.json']
    >>> read_checkpoint(folder, {"config": {"epochs": 1}, "arm": "baseline", "seed": 0})["model"]["w"]
    tensor([1., 1.])
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import ParameterError

__all__ = [
    "CHECKPOINT",
    "LOG",
    "capture_state",
    "read_checkpoint",
    "restore_state",
    "save_atomically",
    "write_checkpoint",
]

#: The checkpoint's file name in a run's folder.
CHECKPOINT = "checkpoint.pt"
#: The log's file name in a run's folder.
LOG = "log.json"


def save_atomically(obj: Any, path: Path, *, as_json: bool = False) -> None:
    """Write ``obj`` (``torch.save``, or JSON with ``as_json``) to a temporary file, then rename it over ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    if as_json:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(obj, handle, indent=1)
    else:
        torch.save(obj, tmp)
    os.replace(tmp, path)


def write_checkpoint(folder: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (with its ``"log"``) as ``folder/checkpoint.pt``, then the log as ``folder/log.json``."""
    save_atomically(state, folder / CHECKPOINT)
    save_atomically(state["log"], folder / LOG, as_json=True)


def read_checkpoint(folder: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint in ``folder`` (loaded on the CPU, weights only), or None when there is none.

    Args:
        folder: the run's folder.
        identity: ``{"config": ..., "arm": ..., "seed": ...}`` of the run that wants to resume.

    Raises:
        ParameterError: the checkpoint belongs to a different config, arm or seed.
    """
    path = folder / CHECKPOINT
    if not path.is_file():
        return None
    with torch.serialization.safe_globals([torch.torch_version.TorchVersion]):
        checkpoint: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    saved = {key: checkpoint["log"][key] for key in identity}
    if saved != json.loads(json.dumps(identity)):
        raise ParameterError(
            f"run_dir: expected a checkpoint of arm {identity['arm']}, seed {identity['seed']} and this config in "
            f"{str(folder)!r}, got one of arm {saved['arm']}, seed {saved['seed']} (delete it or use another folder)"
        )
    return checkpoint


def capture_state(
    model: Any, optimizer: Any, scaler: Any, generator: torch.Generator, cuda: bool, log: dict[str, Any]
) -> dict[str, Any]:
    """Everything a resumed run needs: the states of the model, optimizer, scaler and every RNG, and the log."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "data_rng": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state() if cuda else None,
        "log": log,
    }


def restore_state(
    checkpoint: dict[str, Any], model: Any, optimizer: Any, scaler: Any, generator: torch.Generator, cuda: bool
) -> None:
    """Put back what :func:`capture_state` saved (the log is the caller's)."""
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scaler.load_state_dict(checkpoint["scaler"])
    generator.set_state(checkpoint["data_rng"])
    torch.set_rng_state(checkpoint["torch_rng"])
    if cuda and checkpoint.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(checkpoint["cuda_rng"])
