"""Read checkpoint files, tolerant of the usual wrappers: one reader for ``--weights`` and ``spectrum --key``.

Supported: ``.pt``/``.pth``/``.th``/``.ckpt`` files read with ``torch.load(weights_only=True,
map_location="cpu")`` holding a state dict, or a dict wrapping one under ``"state_dict"``,
``"model_state_dict"``, ``"model"`` or ``"net"`` (Lightning checkpoints included); keys prefixed by
``module.`` (DataParallel / DistributedDataParallel) or ``_orig_mod.`` (``torch.compile``); and
``.safetensors`` files when the ``safetensors`` package is installed.

- :func:`load_state_dict_file`: the state dict in a file, unwrapped, prefixes removed;
- :func:`load_tensor_file`: one tensor of a file (a file holding a single tensor, or ``key`` of a state dict);
- :func:`load_weights`: fill a model from a file (names and shapes checked).

Example:
    >>> import os, tempfile, torch
    >>> from convspectra.models import resnet20, load_state_dict_file, load_weights
    >>> source, target = resnet20(), resnet20()
    >>> path = os.path.join(tempfile.mkdtemp(), "ckpt.th")
    >>> torch.save({"state_dict": {"module." + k: v for k, v in source.state_dict().items()}}, path)
    >>> _ = load_weights(target, path)
    >>> bool(torch.equal(source.conv1.weight, target.conv1.weight))
    True
    >>> next(iter(load_state_dict_file(path)))
    'conv1.weight'
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping

import torch
from torch import nn

from ..errors import ParameterError, ParameterTypeError

__all__ = ["load_state_dict_file", "load_tensor_file", "load_weights"]

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net")
#: Prefixes removed from every key when all keys carry them (DataParallel, torch.compile).
_PREFIXES = ("module.", "_orig_mod.")
#: Also removed by :func:`load_weights` when the model's names need it (Lightning's ``self.model``).
_MODEL_PREFIXES = (*_PREFIXES, "model.")


def _read(path: str | os.PathLike[str], name: str = "weights") -> object:
    """The object stored in ``path``: a dict of tensors for ``.safetensors``, what ``torch.load`` gives otherwise.

    ``name`` is the parameter the error messages name.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ParameterTypeError(f"{name}: expected the path of a file (str or os.PathLike), got {path!r}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ParameterError(f"{name}: expected an existing file, got {path!r} (no such file)")
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ParameterError(
                f"{name}: reading {path!r} needs the safetensors package (pip install safetensors)"
            ) from None
        try:
            return dict(load_file(path, device="cpu"))
        except Exception as err:  # safetensors' own error type for a damaged or foreign file
            raise ParameterError(f"{name}: could not read {path!r} as a safetensors file: {err}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several unrelated types for unreadable files
        raise ParameterError(f"{name}: could not read {path!r} with torch.load(weights_only=True): {err}") from None


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


def _strip_prefixes(
    state: dict[str, torch.Tensor], prefixes: tuple[str, ...], expected: set[str] | None = None
) -> dict[str, torch.Tensor]:
    """Remove each of ``prefixes`` that every key carries, until the keys meet ``expected`` (if given)."""
    changed = True
    while changed and not (expected is not None and set(state) & expected):
        changed = False
        for prefix in prefixes:
            if state and all(key.startswith(prefix) for key in state):
                state = {key[len(prefix) :]: value for key, value in state.items()}
                changed = True
    return state


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read the state dict in ``path`` (on the CPU, ``weights_only=True``), unwrapped and without key prefixes.

    Wrappers (``state_dict``, ``model``, ...) are opened and ``module.``/``_orig_mod.`` prefixes
    removed when every key carries them, so the names are the model's (``conv1.weight``).

    Args:
        path: a checkpoint file (see the module docstring for the formats).

    Returns:
        The tensors by name, as the unwrapped model names them.

    Raises:
        ParameterError: if the file does not exist, cannot be read safely, or holds no state dict.

    Example:
        >>> import os, tempfile, torch
        >>> from convspectra.models import load_state_dict_file
        >>> path = os.path.join(tempfile.mkdtemp(), "compiled.pt")
        >>> torch.save({"model": {"_orig_mod.conv.weight": torch.ones(2, 1, 3, 3)}}, path)
        >>> list(load_state_dict_file(path))
        ['conv.weight']
    """
    return _strip_prefixes(_unwrap(_read(path), os.fspath(path)), _PREFIXES)


def load_tensor_file(path: str | os.PathLike[str], *, key: str | None = None) -> torch.Tensor:
    """One tensor from ``path``: the file's only content, or the entry ``key`` of its state dict.

    The state dict is read as by :func:`load_state_dict_file` (wrappers and prefixes removed), so
    ``key`` is the name the model uses, e.g. ``conv1.weight``.

    Args:
        path: a file holding one tensor, or a checkpoint (see the module docstring).
        key: the tensor's name in the state dict (required for a state dict, refused for a single
            tensor; a ``.safetensors`` file of one tensor, its way of holding a single tensor, needs none).

    Returns:
        The tensor, detached, on the CPU.

    Raises:
        ParameterError: unreadable file, a missing or unknown ``key`` (the message lists the names).

    Example:
        >>> import os, tempfile, torch
        >>> from convspectra.models.weights import load_tensor_file
        >>> path = os.path.join(tempfile.mkdtemp(), "ckpt.pth")
        >>> torch.save({"state_dict": {"module.conv1.weight": torch.ones(4, 3, 3, 3)}}, path)
        >>> tuple(load_tensor_file(path, key="conv1.weight").shape)
        (4, 3, 3, 3)
    """
    name = os.fspath(path)
    obj = _read(name, "path")
    if isinstance(obj, torch.Tensor):
        if key is not None:
            raise ParameterError(f"key: expected none, {name!r} holds a single tensor (not a state dict); got {key!r}")
        return obj.detach()
    state = _strip_prefixes(_unwrap(obj, name), _PREFIXES)
    names = sorted(state)
    listed = f"{names[:8]}" + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    if key is None and len(state) == 1 and name.endswith(".safetensors"):  # its way of holding a bare tensor
        return next(iter(state.values())).detach()
    if key is None:
        raise ParameterError(
            f"key: expected the name of one tensor of the state dict in {name!r}, one of {listed}; got none"
        )
    if key not in state:
        close = difflib.get_close_matches(key, names, n=3)
        hint = f" (close: {', '.join(close)})" if close else ""
        raise ParameterError(f"key: expected one of the names in {name!r}, {listed}; got {key!r}{hint}")
    return state[key].detach()


def load_weights(model: nn.Module, path: str | os.PathLike[str], *, strict: bool = True) -> nn.Module:
    """Load the weights in ``path`` into ``model`` (in place) and return the model.

    Args:
        model: the module to fill.
        path: a checkpoint file (see the module docstring for the formats).
        strict: require the checkpoint's names and shapes to match the model's exactly
            (BatchNorm's ``num_batches_tracked`` may be missing).

    Returns:
        ``model``, its parameters and buffers replaced by the file's.

    Raises:
        ParameterTypeError: ``model`` is not a ``torch.nn.Module``.
        ParameterError: unreadable file, or names/shapes that do not match (the message lists them).

    Example:
        >>> import os, tempfile, torch
        >>> from convspectra.models import load_weights
        >>> path = os.path.join(tempfile.mkdtemp(), "linear.pt")
        >>> torch.save({"module.weight": torch.ones(1, 2), "module.bias": torch.zeros(1)}, path)
        >>> load_weights(torch.nn.Linear(2, 1), path).weight.tolist()
        [[1.0, 1.0]]
    """
    if not isinstance(model, nn.Module):
        raise ParameterTypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    expected = model.state_dict()
    state = _strip_prefixes(_unwrap(_read(path), os.fspath(path)), _MODEL_PREFIXES, set(expected))
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
