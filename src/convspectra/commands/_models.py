"""Resolve the MODEL argument of ``convspectra report``: built-in name, import path, zoo name or TorchScript file.

Example:
    >>> from convspectra.commands._models import resolve_model
    >>> model, default_shape = resolve_model("resnet20")
    >>> type(model).__name__, default_shape
    ('CifarResNet', (3, 32, 32))
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from .._backend import is_torch_module
from ..errors import ParameterError
from ._common import step

__all__ = ["resolve_model"]

_FILE_SUFFIXES = (".pt", ".pth", ".ts", ".jit", ".torchscript", ".zip")


def _installed(name: str) -> tuple[Any, str]:
    """``(module, status)``: the optional package ``name`` (None when absent or broken) and a phrase saying which.

    Any exception on import counts as broken, not only ``ImportError``: a torchvision whose compiled
    operators do not match the installed torch raises ``RuntimeError`` while being imported.
    """
    try:
        return importlib.import_module(name), "installed"
    except ImportError:
        return None, f"{name} not installed"
    except Exception as err:  # a broken install may raise anything while importing
        first = " ".join(str(err).split())[:160]
        return None, f"{name} is installed but failed to import ({type(err).__name__}: {first})"


def _problem(err: BaseException) -> str:
    """``"Type: message"`` of an exception on one line, cut to a reasonable length."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:240]}" if text else type(err).__name__


def _from_import_path(spec: str) -> Any:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute or any(not part.isidentifier() for part in attribute.split(".")):
        raise ParameterError(
            f"model: expected 'package.module:callable' (a module to import, then after ':' the name of a callable "
            f"or a module instance in it), got {spec!r}"
        )
    with step(f"importing {module_name!r}"):
        try:
            module = importlib.import_module(module_name)
        except Exception as err:  # ImportError, SyntaxError, or whatever the module raises when it runs
            raise ParameterError(f"model: could not import {module_name!r} (from {spec!r}): {_problem(err)}") from err
    try:
        target = module
        for part in attribute.split("."):
            target = getattr(target, part)
    except AttributeError:
        raise ParameterError(f"model: {module_name!r} has no attribute {attribute!r} (from {spec!r})") from None
    if not callable(target) or is_torch_module(target):
        return target
    with step(f"calling {spec!r}"):
        try:
            return target()
        except Exception as err:
            raise ParameterError(f"model: calling {spec!r} (without arguments) raised {_problem(err)}") from err


def _torchscript(path: str) -> Any:
    import torch

    try:
        return torch.jit.load(path, map_location="cpu")
    except Exception as err:  # torch raises several types for files that are not TorchScript archives
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ParameterError(
            f"model: expected {path!r} to be a TorchScript file (torch.jit.save); it could not be loaded: {first[:160]}"
            " (a file of weights goes to --weights, with a model name)"
        ) from None


def resolve_model(spec: str) -> tuple[Any, tuple[int, ...] | None]:
    """The model named by ``spec`` and its default input shape (or None when it has none).

    ``spec`` is, in this order: a built-in name (:data:`convspectra.models.MODELS`); an existing
    file, loaded as TorchScript; ``package.module:callable`` (called without arguments, or a
    module instance); a torchvision model name (when torchvision is installed); a timm model
    name (when timm is installed). Zoo models are built without pretrained weights.

    Raises:
        ParameterError: nothing matches (the message lists what was tried).
    """
    from ..models import MODELS, get_model

    if spec in MODELS:
        return get_model(spec), (3, 32, 32)
    if os.path.exists(spec) or spec.endswith(_FILE_SUFFIXES):
        if not os.path.isfile(spec):
            raise ParameterError(f"model: expected an existing TorchScript file, got {spec!r} (no such file)")
        return _torchscript(spec), None
    if ":" in spec:
        model = _from_import_path(spec)
        if not is_torch_module(model):
            raise ParameterError(f"model: expected {spec!r} to give a torch.nn.Module, got {type(model).__name__}")
        return model, None
    torchvision, torchvision_status = _installed("torchvision")
    if torchvision is not None and spec in set(torchvision.models.list_models()):
        with step(f"building the torchvision model {spec!r}"):
            return torchvision.models.get_model(spec, weights=None), (3, 224, 224)
    timm, timm_status = _installed("timm")
    if timm is not None and timm.is_model(spec):
        with step(f"building the timm model {spec!r}"):
            model = timm.create_model(spec, pretrained=False)
        shape = tuple(model.default_cfg.get("input_size", (3, 224, 224)))
        return model, shape
    zoo = [f"a torchvision model ({torchvision_status})", f"a timm model ({timm_status})"]
    raise ParameterError(
        f"model: expected a built-in model ({', '.join(sorted(MODELS))}), a TorchScript file, "
        f"'package.module:callable', {' or '.join(zoo)}; got {spec!r}"
    )
