"""Load weights from checkpoint files into a model, tolerant of the usual wrappers.

Supported: ``.pt``/``.pth``/``.th``/``.ckpt`` files read with ``torch.load(weights_only=True,
map_location="cpu")`` holding a state dict, or a dict wrapping one under ``"state_dict"``,
``"model_state_dict"``, ``"model"`` or ``"net"`` (Lightning checkpoints included); keys prefixed by
``module.`` (DataParallel / DistributedDataParallel) or ``_orig_mod.`` (``torch.compile``); and
``.safetensors`` files when the ``safetensors`` package is installed.

Example:
    >>> import os, tempfile, torch
    >>> from convspectra.models import resnet20, load_weights
    >>> source, target = resnet20(), resnet20()
    >>> path = os.path.join(tempfile.mkdtemp(), "ckpt.th")
    >>> torch.save({"state_dict": {"module." + k: v for k, v in source.state_dict().items()}}, path)
    >>> _ = load_weights(target, path)
    >>> bool(torch.equal(source.conv1.weight, target.conv1.weight))
    True
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn

from ..errors import ParameterError, ParameterTypeError

__all__ = ["load_state_dict_file", "load_weights"]

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net")
_PREFIXES = ("module.", "_orig_mod.", "model.")


def _unwrap(obj: object, path: str) -> dict[str, torch.Tensor]:
    for _ in range(3):
        if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        if isinstance(obj, Mapping):
            inner = next((obj[key] for key in _WRAPPER_KEYS if key in obj and isinstance(obj[key], Mapping)), None)
            if inner is not None:
                obj = inner
                continue
        break
    raise ParameterError(
        f"weights: expected {path} to hold a state dict (name -> tensor), possibly under one of "
        f"{', '.join(repr(k) for k in _WRAPPER_KEYS)}; got {type(obj).__name__}"
        + (f" with keys {sorted(map(str, obj))[:6]}" if isinstance(obj, Mapping) else "")
    )


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from ``path`` (``weights_only=True``, on the CPU), unwrapped but with keys as stored.

    Raises:
        ParameterError: if the file does not exist, cannot be read safely, or holds no state dict.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ParameterError(f"weights: expected an existing file, got {path!r} (no such file)")
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ParameterError(
                f"weights: reading {path!r} needs the safetensors package (pip install safetensors)"
            ) from None
        return dict(load_file(path, device="cpu"))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several unrelated types for unreadable files
        raise ParameterError(f"weights: could not read {path!r} with torch.load(weights_only=True): {err}") from None
    return _unwrap(obj, path)


def _strip_prefixes(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    changed = True
    while changed and not set(state) & expected:
        changed = False
        for prefix in _PREFIXES:
            if state and all(key.startswith(prefix) for key in state):
                state = {key[len(prefix) :]: value for key, value in state.items()}
                changed = True
    return state


def load_weights(model: nn.Module, path: str | os.PathLike[str], *, strict: bool = True) -> nn.Module:
    """Load the weights in ``path`` into ``model`` (in place) and return the model.

    Args:
        model: the module to fill.
        path: a checkpoint file (see the module docstring for the formats).
        strict: require the checkpoint's names and shapes to match the model's exactly
            (BatchNorm's ``num_batches_tracked`` may be missing).

    Raises:
        ParameterError: unreadable file, or names/shapes that do not match (the message lists them).
    """
    if not isinstance(model, nn.Module):
        raise ParameterTypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    expected = model.state_dict()
    state = _strip_prefixes(load_state_dict_file(path), set(expected))
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: model {tuple(expected[k].shape)}, file {tuple(state[k].shape)}"
        for k in state
        if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if mismatched or (strict and (missing or unexpected)):
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} (e.g. {unexpected[:3]})")
        if mismatched:
            parts.append(f"shape mismatch {len(mismatched)} (e.g. {mismatched[:2]})")
        raise ParameterError(
            f"weights: the file {os.fspath(path)!r} does not match the model {type(model).__name__}: "
            + "; ".join(parts)
        )
    model.load_state_dict(state, strict=False)
    return model
