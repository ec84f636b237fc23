"""Resolve the MODEL argument of ``convspectra report``: built-in name, ONNX or TorchScript file, zoo or import path.

Example:
    >>> from convspectra.commands._models import resolve_model
    >>> model, default_shape = resolve_model("resnet20")
    >>> type(model).__name__, default_shape
    ('CifarResNet', (3, 32, 32))
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

from .._backend import is_torch_module
from ..errors import ParameterError
from ._common import step

__all__ = ["ZOOS", "model_report", "resolve_model"]

#: The model zoos a MODEL argument may name with a prefix, ``torchvision:NAME`` or ``timm:NAME``.
ZOOS = ("torchvision", "timm")

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


def _notice(message: str) -> None:
    print(f"convspectra: {message}", file=sys.stderr)


def _version(module: Any) -> str:
    return str(getattr(module, "__version__", "version unknown"))


def _zoo_names(zoo: str, module: Any) -> list[str]:
    return list(module.models.list_models()) if zoo == "torchvision" else list(module.list_models())


def _zoo_build(zoo: str, module: Any, name: str) -> tuple[Any, tuple[int, ...]]:
    """The zoo's model ``name`` without pretrained weights, and its default input shape."""
    with step(f"building the {zoo} model {name!r}"):
        try:
            if zoo == "torchvision":
                return module.models.get_model(name, weights=None), (3, 224, 224)
            model = module.create_model(name, pretrained=False)
        except Exception as err:  # a constructor that needs arguments, a missing optional dependency...
            raise ParameterError(f"model: building the {zoo} model {name!r} raised {_problem(err)}") from err
    config = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    return model, tuple(int(v) for v in config.get("input_size", (3, 224, 224)))


def _prefixed(zoo: str, name: str) -> tuple[Any, tuple[int, ...]]:
    """``torchvision:NAME`` / ``timm:NAME``."""
    module, status = _installed(zoo)
    if module is None:
        raise ParameterError(f"model: {zoo}:{name} needs {zoo}, but {status}")
    known = module.is_model(name) if zoo == "timm" else name in _zoo_names(zoo, module)  # timm: tags too
    if not known:
        names = _zoo_names(zoo, module)
        close = difflib.get_close_matches(name, names, n=4)
        hint = f"; close names: {', '.join(close)}" if close else ""
        raise ParameterError(f"model: expected a {zoo} model name after '{zoo}:', got {name!r}{hint}")
    return _zoo_build(zoo, module, name)


def resolve_model(spec: str, *, notice: Callable[[str], None] | None = _notice) -> tuple[Any, tuple[int, ...] | None]:
    """The model named by ``spec`` and its default input shape (or None when it has none).

    ``spec`` is, in this order: a built-in name (:data:`convspectra.models.MODELS`); a ``.onnx``
    file (an :class:`~convspectra.models.onnx_graph.OnnxGraph`, reported by :func:`model_report`);
    another existing file, loaded as TorchScript; ``torchvision:NAME`` or ``timm:NAME``;
    ``package.module:callable`` (called without arguments, or a module instance); a bare
    torchvision model name (when torchvision is installed), then a bare timm model name (when timm
    is installed): ``notice`` is told which zoo a bare name came from. Zoo models are built
    without pretrained weights, at 224x224 for torchvision and timm's ``input_size`` for timm. A
    zoo that fails to import, for whatever reason, is named in one line.

    Raises:
        ParameterError: nothing matches (the message lists what was tried).
    """
    from ..models import MODELS, get_model

    say = notice or (lambda message: None)
    if spec in MODELS:
        return get_model(spec), (3, 32, 32)
    if spec.lower().endswith(".onnx"):
        from ..models.onnx_graph import OnnxGraph

        with step(f"reading the ONNX model {spec!r}"):
            graph = OnnxGraph(spec)
        return graph, graph.default_input_shape
    if os.path.exists(spec) or spec.endswith(_FILE_SUFFIXES):
        if not os.path.isfile(spec):
            raise ParameterError(f"model: expected an existing TorchScript file, got {spec!r} (no such file)")
        return _torchscript(spec), None
    zoo, colon, name = spec.partition(":")
    if colon and zoo in ZOOS:
        return _prefixed(zoo, name)
    if ":" in spec:
        model = _from_import_path(spec)
        if not is_torch_module(model):
            raise ParameterError(f"model: expected {spec!r} to give a torch.nn.Module, got {type(model).__name__}")
        return model, None
    torchvision, torchvision_status = _installed("torchvision")
    if torchvision is not None and spec in set(_zoo_names("torchvision", torchvision)):
        say(f"{spec}: the torchvision model (torchvision {_version(torchvision)}; timm:{spec} asks timm)")
        return _zoo_build("torchvision", torchvision, spec)
    timm, timm_status = _installed("timm")
    if timm is not None and timm.is_model(spec):
        skipped = "" if torchvision is not None else f"; {torchvision_status}"
        say(f"{spec}: the timm model (timm {_version(timm)}{skipped})")
        return _zoo_build("timm", timm, spec)
    zoo_text = [f"a torchvision model ({torchvision_status})", f"a timm model ({timm_status})"]
    raise ParameterError(
        f"model: expected a built-in model ({', '.join(sorted(MODELS))}), an ONNX or TorchScript file, "
        f"'torchvision:NAME', 'timm:NAME', 'package.module:callable', {' or '.join(zoo_text)}; got {spec!r}"
    )


def model_report(model: Any, input_shape: Any, **options: Any) -> Any:
    """The report of a model from :func:`resolve_model`: :func:`convspectra.analysis.spectral_report` for a torch
    module, :func:`convspectra.models.onnx_graph.onnx_report` for an ONNX graph (same options)."""
    from ..models.onnx_graph import OnnxGraph

    if isinstance(model, OnnxGraph):
        from ..models.onnx_graph import onnx_report

        return onnx_report(model, input_shape, **options)
    from .. import analysis

    return analysis.spectral_report(model, input_shape, **options)
