"""Built-in models (PyTorch): the CIFAR ResNets of He et al. 2016 and a checkpoint loader.

Example:
    >>> from convspectra.models import get_model
    >>> type(get_model("resnet32")).__name__
    'CifarResNet'
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..errors import ParameterError
from .cifar_resnet import BasicBlock, CifarResNet, ShortcutA, cifar_resnet, resnet20, resnet32, resnet44, resnet56
from .pretrained import DATA_ENV, data_directory, find_pretrained
from .weights import load_state_dict_file, load_tensor_file, load_weights

__all__ = [
    "DATA_ENV",
    "MODELS",
    "BasicBlock",
    "CifarResNet",
    "ShortcutA",
    "cifar_resnet",
    "data_directory",
    "find_pretrained",
    "get_model",
    "load_state_dict_file",
    "load_tensor_file",
    "load_weights",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
]

MODELS: dict[str, Callable[[], nn.Module]] = {
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet44": resnet44,
    "resnet56": resnet56,
}


def get_model(name: str) -> nn.Module:
    """A freshly initialised built-in model by name (see ``MODELS``).

    Raises:
        ParameterError: for an unknown name (the message lists the known ones).
    """
    try:
        return MODELS[name]()
    except KeyError:
        raise ParameterError(f"model: expected one of {', '.join(sorted(MODELS))}, got {name!r}") from None
