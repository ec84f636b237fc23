"""Find the conv kernels of a Flax (linen or nnx) or Equinox model and the input sizes their layers see.

One apply of the model records each ``Conv`` layer's input (linen: a method interceptor under
``jax.eval_shape``, nothing is computed; nnx and Equinox: the class's ``__call__`` wrapped for the
duration of one call). The result feeds :func:`convspectra.jax.clip_conv_kernels`. The norms are
those of the wrap-around operator at that size, whatever the layer's own padding.

Transposed layers: a Flax ``ConvTranspose`` (linen or nnx) with ``transpose_kernel=True`` computes
the adjoint of the convolution whose ``"HWIO"`` kernel it stores, and is recorded with
``transposed=True``. With ``transpose_kernel=False`` (Flax's default), and for Equinox's
``ConvTranspose``, the stored kernel has its two channel axes in the other order (and is not
flipped), which no ``layout`` describes: those layers are skipped with a ``UserWarning`` that
names them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import jax

from ..errors import ParameterError
from .clip_transform import ConvKernel, path_name

__all__ = ["find_conv_kernels_equinox", "find_conv_kernels_linen", "find_conv_kernels_nnx"]


def _tuple(value: Any, ndim: int) -> tuple[int, ...]:
    if value is None:
        return (1,) * ndim
    if isinstance(value, int):
        return (value,) * ndim
    return tuple(int(v) for v in value)


def _skip_transposed(name: str, library: str) -> None:
    warnings.warn(
        f"{name}: a {library} ConvTranspose whose kernel stores (k..., in, out) is not recorded (no layout "
        "describes it; Flax: pass transpose_kernel=True to have it recorded as a transposed layer)",
        UserWarning,
        stacklevel=3,
    )


def find_conv_kernels_linen(module: Any, variables: Any, *args: Any, **kwargs: Any) -> dict[str, ConvKernel]:
    """``{"params/Conv_0/kernel": ConvKernel(...), ...}`` for every ``flax.linen.Conv`` that ``module.apply`` calls.

    ``flax.linen.ConvTranspose`` layers with ``transpose_kernel=True`` are recorded with
    ``transposed=True`` (the others are skipped with a warning; see the module's docstring).

    Example:
        >>> import jax, jax.numpy as jnp, flax.linen as nn
        >>> import convspectra.jax as csj
        >>> model = nn.Sequential([nn.Conv(4, (3, 3), strides=2), nn.relu, nn.Conv(2, (3, 3))])
        >>> x = jnp.zeros((1, 8, 8, 3))
        >>> variables = model.init(jax.random.key(0), x)
        >>> found = csj.find_conv_kernels_linen(model, variables, x)
        >>> {name: (k.input_shape, k.stride) for name, k in found.items()}
        {'params/layers_0/kernel': ((8, 8), (2, 2)), 'params/layers_2/kernel': ((4, 4), (1, 1))}
    """
    import flax.linen as nn

    found: dict[str, ConvKernel] = {}
    skipped: list[str] = []

    def interceptor(next_fun: Callable[..., Any], call_args: Any, call_kwargs: Any, context: Any) -> Any:
        conv = context.module
        kind = type(conv)
        if kind in (nn.Conv, nn.ConvTranspose) and context.method_name == "__call__":
            name = "/".join(("params", *conv.scope.path, "kernel"))
            transposed = kind is nn.ConvTranspose
            if transposed and not conv.transpose_kernel:
                skipped.append(name)
                return next_fun(*call_args, **call_kwargs)
            x = call_args[0]
            ndim = len(conv.kernel_size)
            found[name] = ConvKernel(
                input_shape=tuple(int(n) for n in x.shape[-ndim - 1 : -1]),
                layout="HWIO",
                stride=_tuple(conv.strides, ndim),
                dilation=_tuple(conv.kernel_dilation, ndim),
                groups=1 if transposed else int(conv.feature_group_count),
                transposed=transposed,
            )
        return next_fun(*call_args, **call_kwargs)

    def run(variables: Any) -> Any:
        with nn.intercept_methods(interceptor):
            return module.apply(variables, *args, **kwargs)

    jax.eval_shape(run, variables)
    for name in dict.fromkeys(skipped):
        _skip_transposed(name, "flax.linen")
    if not found:
        raise ParameterError("module: expected a model that calls flax.linen.Conv layers, found none")
    return found


def _record_calls(
    conv_classes: tuple[Any, ...], model_call: Callable[[], Any], input_of: Callable[[Any, Any], Any]
) -> dict[int, Any]:
    """Call ``model_call()`` with each class's ``__call__`` wrapped: ``{id(layer): (layer, input shape)}``."""
    seen: dict[int, Any] = {}
    originals = {conv_class: conv_class.__call__ for conv_class in conv_classes}

    def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
        def recording(self: Any, x: Any, *rest: Any, **options: Any) -> Any:
            seen[id(self)] = (self, input_of(self, x))
            return original(self, x, *rest, **options)

        return recording

    for conv_class, original in originals.items():
        conv_class.__call__ = wrap(original)
    try:
        model_call()
    finally:
        for conv_class, original in originals.items():
            conv_class.__call__ = original
    return seen


def find_conv_kernels_nnx(model: Any, *args: Any, **kwargs: Any) -> dict[str, ConvKernel]:
    """``{"path/kernel": ConvKernel(...)}`` for every ``flax.nnx.Conv`` that ``model(*args)`` calls.

    The paths are those of ``nnx.state(model, nnx.Param)`` (e.g. ``"conv1/kernel"``). ``nnx.ConvTranspose``
    layers with ``transpose_kernel=True`` are recorded with ``transposed=True`` (the others are skipped
    with a warning).
    """
    from flax import nnx

    def input_of(conv: Any, x: Any) -> Any:
        ndim = len(conv.kernel_size)
        return tuple(int(n) for n in x.shape[-ndim - 1 : -1])

    seen = _record_calls((nnx.Conv, nnx.ConvTranspose), lambda: model(*args, **kwargs), input_of)
    found = {}
    for path, conv in nnx.iter_graph(model):
        if isinstance(conv, (nnx.Conv, nnx.ConvTranspose)) and id(conv) in seen:
            name = "/".join(str(p) for p in (*path, "kernel"))
            transposed = isinstance(conv, nnx.ConvTranspose)
            if transposed and not conv.transpose_kernel:
                _skip_transposed(name, "flax.nnx")
                continue
            ndim = len(conv.kernel_size)
            found[name] = ConvKernel(
                input_shape=seen[id(conv)][1],
                layout="HWIO",
                stride=_tuple(conv.strides, ndim),
                dilation=_tuple(conv.kernel_dilation, ndim),
                groups=1 if transposed else int(conv.feature_group_count),
                transposed=transposed,
            )
    if not found:
        raise ParameterError("model: expected a model that calls flax.nnx.Conv layers, found none")
    return found


def find_conv_kernels_equinox(model: Any, *args: Any, **kwargs: Any) -> dict[str, ConvKernel]:
    """``{"layers/0/weight": ConvKernel(..., layout="OIHW")}`` for every ``equinox.nn.Conv`` that the model calls.

    Equinox layers take unbatched ``(channels, *spatial)`` inputs; the paths are those of the model's pytree.
    ``equinox.nn.ConvTranspose`` layers are skipped with a warning (their weight is not the forward
    convolution's in any layout; see the module's docstring).
    """
    import equinox as eqx

    def input_of(conv: Any, x: Any) -> Any:
        return tuple(int(n) for n in x.shape[-conv.num_spatial_dims :])

    seen = _record_calls((eqx.nn.Conv, eqx.nn.ConvTranspose), lambda: model(*args, **kwargs), input_of)
    found = {}
    is_conv = lambda node: isinstance(node, (eqx.nn.Conv, eqx.nn.ConvTranspose))  # noqa: E731
    for path, conv in jax.tree_util.tree_leaves_with_path(model, is_leaf=is_conv):
        if isinstance(conv, eqx.nn.ConvTranspose) and id(conv) in seen:
            _skip_transposed(path_name((*path, jax.tree_util.GetAttrKey("weight"))), "equinox.nn")
        elif is_conv(conv) and id(conv) in seen:
            found[path_name((*path, jax.tree_util.GetAttrKey("weight")))] = ConvKernel(
                input_shape=seen[id(conv)][1],
                layout="OIHW",
                stride=tuple(conv.stride),
                dilation=tuple(conv.dilation),
                groups=int(conv.groups),
            )
    if not found:
        raise ParameterError("model: expected a model that calls equinox.nn.Conv layers, found none")
    return found
