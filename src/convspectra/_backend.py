"""What kind of object a caller passed, decided in one place: NumPy or torch, which conv module.

torch is never imported here: a torch object can only exist once the caller has imported
torch, so ``sys.modules`` tells. Everything that asks "is this a tensor?", "is this a conv
module, a transposed one?", "what are its stride, dilation and groups?" or "which device did the
user mean?" asks this module.

Example:
    >>> import numpy as np, torch
    >>> from convspectra._backend import is_conv_module, is_tensor, module_geometry
    >>> is_tensor(np.zeros(2)), is_tensor(torch.zeros(2))
    (False, True)
    >>> conv = torch.nn.ConvTranspose2d(4, 2, 3, stride=2, groups=2)
    >>> is_conv_module(conv), module_geometry(conv)
    (True, {'stride': (2, 2), 'dilation': (1, 1), 'groups': 2, 'transposed': True})
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from .errors import ParameterError

__all__ = [
    "conv_module_types",
    "is_conv_module",
    "is_tensor",
    "is_torch_module",
    "is_transposed_module",
    "loaded_torch",
    "module_geometry",
    "resolve_device",
    "to_numpy",
]


def loaded_torch() -> Any:
    """The ``torch`` module if the process has imported it, else None (never imports it)."""
    return sys.modules.get("torch")


def is_tensor(obj: Any) -> bool:
    """Whether ``obj`` is a ``torch.Tensor``."""
    torch = loaded_torch()
    return torch is not None and isinstance(obj, torch.Tensor)


def is_torch_module(obj: Any) -> bool:
    """Whether ``obj`` is a ``torch.nn.Module``."""
    torch = loaded_torch()
    return torch is not None and isinstance(obj, torch.nn.Module)


def conv_module_types() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """``((Conv1d, Conv2d, Conv3d), (ConvTranspose1d, ConvTranspose2d, ConvTranspose3d))``; empty without torch."""
    torch = loaded_torch()
    if torch is None:
        return (), ()
    nn = torch.nn
    return (nn.Conv1d, nn.Conv2d, nn.Conv3d), (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def is_conv_module(obj: Any) -> bool:
    """Whether ``obj`` is a ``Conv1d/2d/3d`` or ``ConvTranspose1d/2d/3d`` module."""
    forward, transposed = conv_module_types()
    return bool(forward) and isinstance(obj, forward + transposed)


def is_transposed_module(obj: Any) -> bool:
    """Whether ``obj`` is a ``ConvTranspose1d/2d/3d`` module."""
    _, transposed = conv_module_types()
    return bool(transposed) and isinstance(obj, transposed)


def module_geometry(module: Any) -> dict[str, Any]:
    """``stride``, ``dilation`` (tuples of ints), ``groups`` (int) and ``transposed`` (bool) of a conv module,
    as keyword arguments for the core functions."""
    return {
        "stride": tuple(int(s) for s in module.stride),
        "dilation": tuple(int(d) for d in module.dilation),
        "groups": int(module.groups),
        "transposed": is_transposed_module(module),
    }


def to_numpy(array: Any) -> np.ndarray:
    """A NumPy view or copy of ``array`` (a torch tensor is detached and moved to the CPU)."""
    if is_tensor(array):
        return array.detach().cpu().resolve_conj().resolve_neg().numpy()
    return np.asarray(array)


def resolve_device(name: str) -> str:
    """``"auto"`` (CUDA when torch sees a GPU, else the CPU), ``"cpu"`` or ``"cuda"`` (refused without a GPU)."""
    if name not in ("auto", "cpu", "cuda"):
        raise ParameterError(f"device: expected 'auto', 'cpu' or 'cuda', got {name!r}")
    if name == "cpu":
        return "cpu"
    try:
        import torch
    except ImportError:
        available = False
    else:
        available = torch.cuda.is_available()
    if name == "cuda" and not available:
        raise ParameterError("device: expected an available device, got 'cuda' but torch sees no CUDA GPU")
    return "cuda" if available else "cpu"
