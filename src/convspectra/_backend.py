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

from .errors import ParameterError, ParameterTypeError

__all__ = [
    "conv_module_types",
    "dense_tensor",
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


def dense_tensor(name: str, tensor: Any) -> Any:
    """``tensor`` as an ordinary dense tensor with values, or a :class:`ParameterTypeError` naming ``name``.

    Conjugate and negative views (``k.conj()``, ``k.conj().imag``) are resolved (a copy with
    the same values, autograd kept); nested, sparse, quantized and meta tensors are refused
    with the kind received and how to convert it.

    Example:
        >>> import torch
        >>> from convspectra._backend import dense_tensor
        >>> dense_tensor("kernel", torch.ones(2, dtype=torch.complex64).conj()).is_conj()
        False
        >>> dense_tensor("kernel", torch.ones(2, 2).to_sparse())  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        convspectra.errors.ParameterTypeError: kernel: expected a dense torch.Tensor, got a sparse tensor (layout ...
    """
    torch = loaded_torch()
    if getattr(tensor, "is_nested", False):
        raise ParameterTypeError(
            f"{name}: expected a dense torch.Tensor, got a nested tensor; pass one regular tensor "
            f"(e.g. {name}.to_padded_tensor(0.0) if its entries share a shape)"
        )
    if tensor.layout != torch.strided:
        raise ParameterTypeError(
            f"{name}: expected a dense torch.Tensor, got a sparse tensor (layout {tensor.layout}); "
            f"pass {name}.to_dense()"
        )
    if tensor.is_quantized:
        raise ParameterTypeError(
            f"{name}: expected a floating-point or complex torch.Tensor, got a quantized tensor "
            f"(dtype {tensor.dtype}); pass {name}.dequantize()"
        )
    if tensor.device.type == "meta":
        raise ParameterTypeError(
            f"{name}: expected a tensor with values, got a meta tensor (shape {tuple(tensor.shape)}, no data); "
            "materialise it first (e.g. torch.nn.Module.to_empty plus its initialisation, or load its weights)"
        )
    if tensor.is_conj():
        tensor = tensor.resolve_conj()
    if tensor.is_neg():
        tensor = tensor.resolve_neg()
    return tensor


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
