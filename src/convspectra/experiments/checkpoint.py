"""A training run's checkpoint and log on disk: what they hold, written atomically, read back checked.

After every epoch a run writes ``checkpoint.pt`` (model, optimizer, gradient scaler, the global
torch RNG, the CUDA RNG, the data generator's state, and the log) and ``log.json`` (the log
alone), each to a temporary file renamed over the old one, so a kill at any moment leaves the
previous complete epoch on disk. :func:`restore_state` puts every saved state back, which is what
makes a resumed run bitwise identical to an uninterrupted one (on the CPU, with deterministic settings).

The checkpoint carries a SHA-256 checksum of its content (:func:`state_digest`: every tensor's
dtype, shape and bytes, every other value, in order), under ``"sha256"``. :func:`read_checkpoint`
verifies it and raises :class:`~convspectra.errors.CheckpointError`, naming the file and the
problem, for an empty, truncated or foreign file, a checksum that does not match (a flipped
byte in a weight), or a checkpoint of another arm, seed or config (the differing config fields,
with both values). A checkpoint without a checksum (written before it existed) is resumed with
a :class:`~convspectra.errors.CheckpointWarning`: it cannot be verified, but refusing it would throw the run away.

Example:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from convspectra.experiments.checkpoint import read_checkpoint, write_checkpoint
    >>> folder = Path(tempfile.mkdtemp())
    >>> log = {"config": {"epochs": 1}, "arm": "baseline", "seed": 0, "epochs": [], "finished": False}
    >>> state = {"model": {"w": torch.ones(2)}, "optimizer": {}, "scaler": {}, "data_rng": None, "torch_rng": None}
    >>> write_checkpoint(folder, {**state, "log": log})
    >>> sorted(p.name for p in folder.iterdir())
    ['checkpoint.pt', 'log.json']
    >>> read_checkpoint(folder, {"config": {"epochs": 1}, "arm": "baseline", "seed": 0})["model"]["w"]
    tensor([1., 1.])
    >>> read_checkpoint(folder, {"config": {"epochs": 2}, "arm": "baseline", "seed": 0})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    convspectra.errors.CheckpointError: run_dir: the checkpoint '...' was written with another config (config.epochs...
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, CheckpointWarning

__all__ = [
    "CHECKPOINT",
    "CHECKSUM",
    "LOG",
    "capture_state",
    "read_checkpoint",
    "restore_state",
    "save_atomically",
    "state_digest",
    "write_checkpoint",
]

#: The checkpoint's file name in a run's folder.
CHECKPOINT = "checkpoint.pt"
#: The log's file name in a run's folder.
LOG = "log.json"
#: The key of the checkpoint's SHA-256 checksum (hex) of everything else it holds.
CHECKSUM = "sha256"
#: What a checkpoint holds besides its checksum (see :func:`capture_state`).
_KEYS = ("model", "optimizer", "scaler", "data_rng", "torch_rng", "log")
#: What tells a run which run wrote a checkpoint.
_IDENTITY = ("config", "arm", "seed")


def _feed(digest: Any, obj: Any) -> None:
    """Add ``obj`` to ``digest``: a type tag, then its content (tensors as dtype, shape and raw bytes)."""
    if isinstance(obj, torch.Tensor):
        tensor = obj.detach().cpu().contiguous()
        digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, Mapping):
        digest.update(f"D{len(obj)}".encode())
        for key, value in obj.items():
            _feed(digest, key)
            _feed(digest, value)
    elif isinstance(obj, (list, tuple)):
        digest.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}".encode())
        for value in obj:
            _feed(digest, value)
    else:  # None, bool, int, float (repr round-trips), str, and the odd version object
        text = repr(obj)
        digest.update(f"S{type(obj).__qualname__}:{len(text)}:{text}".encode())


def state_digest(state: Mapping[str, Any]) -> str:
    """The SHA-256 (hex) of a checkpoint's content, its ``"sha256"`` entry left out.

    Example:
        >>> import torch
        >>> from convspectra.experiments.checkpoint import state_digest
        >>> a = state_digest({"model": {"w": torch.ones(2)}})
        >>> a == state_digest({"model": {"w": torch.ones(2)}}), a == state_digest({"model": {"w": torch.zeros(2)}})
        (True, False)
    """
    digest = hashlib.sha256()
    _feed(digest, {key: value for key, value in state.items() if key != CHECKSUM})
    return digest.hexdigest()


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
    """Write ``state`` (with its ``"log"``) and its checksum as ``folder/checkpoint.pt``, then the log as
    ``folder/log.json``."""
    save_atomically({**state, CHECKSUM: state_digest(state)}, folder / CHECKPOINT)
    save_atomically(state["log"], folder / LOG, as_json=True)


def _load(path: Path) -> dict[str, Any]:
    """The dict in ``path``, or a :class:`CheckpointError` naming the file and why it cannot be one."""
    start_over = "delete it to start the run over, or restore it from a copy"
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"run_dir: the checkpoint {str(path)!r} is empty (0 bytes); {start_over}")
    try:
        with torch.serialization.safe_globals([torch.torch_version.TorchVersion]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several unrelated types for truncated and foreign files
        first = " ".join(str(err).split())[:200]
        raise CheckpointError(
            f"run_dir: could not read the checkpoint {str(path)!r} ({size} bytes): it is truncated, corrupted or "
            f"not a torch checkpoint ({type(err).__name__}: {first}); {start_over}"
        ) from err
    log = checkpoint.get("log") if isinstance(checkpoint, dict) else None
    missing = [key for key in _KEYS if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing or not isinstance(log, dict) or any(key not in log for key in _IDENTITY):
        got = (
            f"a dict with keys {sorted(map(str, checkpoint))[:8]}"
            if isinstance(checkpoint, dict)
            else (type(checkpoint).__name__)
        )
        raise CheckpointError(
            f"run_dir: {str(path)!r} is not a checkpoint of a convspectra training run: expected a dict with "
            f"{', '.join(_KEYS)} and a log naming its config, arm and seed, got {got}; delete it or use another folder"
        )
    return checkpoint


def _verify(checkpoint: dict[str, Any], path: Path) -> None:
    stored = checkpoint.get(CHECKSUM)
    if stored is None:
        warnings.warn(
            f"run_dir: the checkpoint {str(path)!r} has no checksum (written before checkpoints carried one), so it "
            "cannot be verified; resuming from it anyway (the next epoch's checkpoint will carry one)",
            CheckpointWarning,
            stacklevel=4,
        )
        return
    computed = state_digest(checkpoint)
    if stored != computed:
        raise CheckpointError(
            f"run_dir: the checkpoint {str(path)!r} is corrupted: its content does not match its SHA-256 checksum "
            f"(stored {str(stored)[:16]}..., computed {computed[:16]}...); delete it to start the run over, or "
            "restore it from a copy"
        )


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """``"field: checkpoint X, now Y"`` for each (dotted) field where two JSON-like values differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in list(old) + [key for key in new if key not in old]:
            name = f"{prefix}{key}"
            if key not in new:
                out.append(f"{name}: checkpoint {old[key]!r}, now absent")
            elif key not in old:
                out.append(f"{name}: checkpoint absent, now {new[key]!r}")
            else:
                out.extend(_differences(old[key], new[key], name + "."))
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: checkpoint {old!r}, now {new!r}"]


def read_checkpoint(folder: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint in ``folder`` (loaded on the CPU, weights only, checksum verified), or None when there is none.

    Args:
        folder: the run's folder.
        identity: ``{"config": ..., "arm": ..., "seed": ...}`` of the run that wants to resume.

    Returns:
        The checkpoint's states (as :func:`capture_state` gave them) and its ``"sha256"``.

    Raises:
        CheckpointError: (a :class:`~convspectra.errors.ParameterError`) the file is empty, truncated,
            foreign or corrupted (its checksum does not match), or belongs to a different arm, seed or
            config (the message names the file and the fields that differ).

    Warns:
        CheckpointWarning: (:mod:`convspectra.errors`) the checkpoint has no checksum (an older version wrote it).
    """
    path = folder / CHECKPOINT
    if not path.is_file():
        return None
    checkpoint = _load(path)
    _verify(checkpoint, path)
    saved = {key: checkpoint["log"][key] for key in identity}
    wanted = json.loads(json.dumps(identity))
    if saved["arm"] != wanted["arm"] or saved["seed"] != wanted["seed"]:
        raise CheckpointError(
            f"run_dir: expected a checkpoint of arm {identity['arm']}, seed {identity['seed']} and this config in "
            f"{str(folder)!r}, got one of arm {saved['arm']}, seed {saved['seed']} in {str(path)!r} (delete it or "
            "use another folder)"
        )
    if saved != wanted:
        changed = _differences(saved.get("config"), wanted.get("config"), "config.")
        raise CheckpointError(
            f"run_dir: the checkpoint {str(path)!r} was written with another config ({'; '.join(changed)}); resume "
            "with the config it was written with, or delete it or use another folder to start over"
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
