"""``convspectra spectrum KERNEL``: all singular values of one kernel stored in a file (.npy, a checkpoint, ONNX).

A ``.npy`` kernel is read with NumPy and analysed without importing torch. Checkpoints
(``.pt``/``.pth``/``.th``/``.ckpt``/``.safetensors``) are read by
:func:`convspectra.models.weights.load_tensor_file`, the reader of ``report --weights``: wrappers
(``state_dict``, ``model``, ...) and ``module.``/``_orig_mod.`` prefixes are removed, so
``--key conv1.weight`` names the tensor as the model does (a file of one tensor needs no key).
An ``.onnx`` model gives the layer ``--layer NAME`` (a node's name, or its weight's), with the
node's stride, dilation, groups and padding and the input size ONNX shape inference gives it
(:class:`convspectra.models.onnx_graph.OnnxGraph`); ``--padding model`` is its own padding.
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from typing import Any

from ..errors import LayoutWarning
from ._common import add_output, positive_int, step, threshold, write_text

__all__ = ["CHECKPOINT_SUFFIXES", "load_kernel", "register", "run"]

#: The checkpoint files ``spectrum`` reads besides ``.npy``.
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".th", ".ckpt", ".safetensors")


def _padding(text: str) -> str | int:
    if text in ("circular", "same", "valid", "model"):
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected circular, same, valid, model or an int, got {text!r}") from None


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    """Add the ``spectrum`` subcommand."""
    from ..spec import LAYOUTS  # NumPy only

    spectrum = commands.add_parser(
        "spectrum",
        help="all singular values of one conv kernel (.npy file, a tensor of a checkpoint, a layer of an ONNX model)",
        description="Load a kernel from a .npy file, from a checkpoint (.pt/.pth/.th/.ckpt/.safetensors: a "
        "tensor, or a state dict with --key, read like report --weights) or from an ONNX model (--layer NAME: the "
        "node's kernel, attributes and input size) and print the exact singular values of the "
        "convolution with wrap-around padding on an input of the given spatial size; --padding also gives the norm "
        "with zero padding (exact and certified bracket).",
    )
    spectrum.add_argument("kernel", metavar="KERNEL", help="a .npy file, a checkpoint holding a tensor, or model.onnx")
    spectrum.add_argument(
        "--input-shape",
        metavar="N",
        type=positive_int,
        nargs="+",
        help="spatial input size, e.g. 32 32 (required, except for ONNX: there the model's input shape without the "
        "batch axis, e.g. 3 224 224, needed only when the graph's input has dynamic dims)",
    )
    spectrum.add_argument("--key", help="name of the tensor when the file holds a state dict, e.g. conv1.weight")
    spectrum.add_argument("--layer", help="ONNX: the layer (node name or weight name); omitted: lists the layers")
    spectrum.add_argument(
        "--layout",
        choices=sorted(LAYOUTS),
        default=None,
        help="kernel layout (default OIHW, with a warning when the shape looks channels-last: pass it to confirm)",
    )
    spectrum.add_argument("--stride", metavar="S", type=positive_int, nargs="+", help="stride (one or per axis)")
    spectrum.add_argument("--dilation", metavar="D", type=positive_int, nargs="+", help="dilation")
    spectrum.add_argument("--groups", type=positive_int, default=None, help="channel groups")
    spectrum.add_argument("--transposed", action="store_true", help="the kernel of a transposed convolution")
    spectrum.add_argument(
        "--padding",
        type=_padding,
        default="circular",
        help="circular (default), or zero padding: an int, 'same' or 'valid', or for an ONNX layer 'model', its own "
        "(norm and bracket only)",
    )
    spectrum.add_argument(
        "--threshold", type=threshold, default=1e-3, help="relative threshold of the effective rank (default 1e-3)"
    )
    spectrum.add_argument("--top", type=positive_int, default=8, help="how many of the largest values to print")
    add_output(spectrum, "--json", help="write the summary and full spectrum as JSON")
    spectrum.set_defaults(handler=run)


def load_kernel(path: str, key: str | None = None) -> Any:
    """The kernel in ``path`` as a NumPy array in float64 (complex128 for complex kernels).

    ``.npy``: read with NumPy (torch is not imported); a checkpoint: the file's only tensor, or
    ``key`` of its state dict (:func:`convspectra.models.weights.load_tensor_file`).

    Raises:
        ParameterError: missing file, unknown extension, no such tensor (the message lists the names).
    """
    import numpy as np

    from ..errors import ParameterError

    if not os.path.isfile(path):
        raise ParameterError(f"kernel: expected an existing .npy or checkpoint file, got {path!r} (no such file)")
    if path.endswith(".npy"):
        if key is not None:
            raise ParameterError(f"--key: expected none for a .npy file (it holds one array), got {key!r}")
        if os.path.getsize(path) == 0:
            raise ParameterError(f"kernel: expected a .npy array in {path!r}, got an empty file (0 bytes)")
        try:
            kernel = np.load(path, allow_pickle=False)
        except (ValueError, EOFError, OSError) as err:  # a truncated or foreign file, an object array
            problem = f"{type(err).__name__}: {err}" if isinstance(err, EOFError) else str(err)
            raise ParameterError(f"kernel: could not read {path!r} as a .npy array: {problem}") from err
        if not isinstance(kernel, np.ndarray):
            raise ParameterError(f"kernel: expected one array in {path!r}, got {type(kernel).__name__}")
    elif path.endswith(".onnx"):
        raise ParameterError(f"kernel: an ONNX model's layer is chosen with --layer NAME, got {path!r} without it")
    elif path.endswith(CHECKPOINT_SUFFIXES):
        import torch

        from .._backend import to_numpy
        from ..models.weights import load_tensor_file

        tensor = load_tensor_file(path, key=key)
        if tensor.is_complex():
            tensor = tensor.to(torch.complex128)
        elif tensor.is_floating_point():
            tensor = tensor.double()
        kernel = to_numpy(tensor)
    else:
        raise ParameterError(f"kernel: expected a .npy, {', '.join(CHECKPOINT_SUFFIXES)} or .onnx file, got {path!r}")
    if kernel.dtype.kind == "c":  # analyse in float64 / complex128
        return kernel.astype(np.complex128)
    return kernel.astype(np.float64) if kernel.dtype.kind == "f" else kernel


def _per_axis(values: list[int] | None) -> int | tuple[int, ...] | None:
    return values[0] if values and len(values) == 1 else (tuple(values) if values else None)


def _print(result: dict[str, Any], values: Any, args: argparse.Namespace) -> None:
    shape, layout = tuple(result["kernel_shape"]), result["layout"]
    layer = f" layer {result['layer']!r}" if "layer" in result else ""
    print(f"kernel {args.kernel}{layer}: shape {shape} ({layout}), input {result['input_shape']}")
    print(f"{result['num_singular_values']} singular values (circular padding)")
    print(f"sigma_max        {result['sigma_max']:.10g}")
    print(f"sigma_min        {result['sigma_min']:.10g}")
    cond = result["condition_number"]
    print(f"condition number {cond:.6g}" if cond is not None else "condition number inf (sigma_min = 0)")
    print(f"stable rank      {result['stable_rank'] or 0:.6g}")
    print(f"effective rank   {result['effective_rank']} (> {args.threshold:g} x sigma_max)")
    if "padding" in result:
        print(
            f"padding {result['padding']!r}: sigma_max {result['sigma_max_padded']:.10g} in certified "
            f"[{result['sigma_max_padded_lower']:.10g}, {result['sigma_max_padded_upper']:.10g}]"
        )
    print("largest: " + " ".join(f"{v:.6g}" for v in values[: args.top]))


def _onnx_layer(args: argparse.Namespace) -> tuple[Any, dict[str, Any], Any, Any]:
    """``(kernel, geometry, input size, module)`` of the ONNX layer ``--layer``."""
    import torch

    from .._backend import module_geometry, to_numpy
    from ..errors import ParameterError
    from ..models.onnx_graph import OnnxGraph

    given = [
        flag
        for flag, value in (
            ("--key", args.key),
            ("--layout", args.layout),
            ("--stride", args.stride),
            ("--dilation", args.dilation),
            ("--groups", args.groups),
            ("--transposed", args.transposed),
        )
        if value
    ]
    if given:
        raise ParameterError(
            f"{', '.join(given)}: expected none for an ONNX model (the node's weight and attributes are used; "
            "choose the layer with --layer)"
        )
    with step(f"reading the ONNX model {args.kernel!r}"):
        found = OnnxGraph(args.kernel).layers(args.input_shape)
    by_name = {call.name: call for call in found.calls}
    by_weight = {found.weights[call.name]: call for call in found.calls if call.name in found.weights}
    call = (by_name.get(args.layer) or by_weight.get(args.layer)) if args.layer else None
    if call is None:
        listed = ", ".join(
            f"{c.name!r} ({found.ops[c.name]} {'x'.join(map(str, c.module.weight.shape))} "
            f"on {'x'.join(map(str, c.input_shape))})"
            for c in found.calls[:12]
        )
        more = f" and {len(found.calls) - 12} more (convspectra report lists them)" if len(found.calls) > 12 else ""
        raise ParameterError(
            f"--layer: expected one of the {len(found.calls)} layers of {args.kernel!r}: {listed}{more}; got "
            + (repr(args.layer) if args.layer else "none")
        )
    module = call.module
    note = found.layer_notes.get(call.name, "")
    if args.padding == "model" and "not a torch padding" in note:
        raise ParameterError(f"--padding: 'model' for the layer {call.name!r}: {note}")
    weight = to_numpy(module.weight.detach().double())
    if isinstance(module, torch.nn.Linear):  # a matrix: a 1x1 convolution on one point
        return weight[:, :, None], {"stride": 1, "dilation": 1, "groups": 1, "transposed": None}, 1, module
    geometry = module_geometry(module)
    geometry["transposed"] = geometry["transposed"] or None
    return weight, geometry, _per_axis(list(call.input_shape)), module


def run(args: argparse.Namespace) -> int:
    """Compute and print (or write) the spectrum."""
    from ..analysis import spectrum_summary  # torch-free, like the rest of this path for a .npy kernel
    from ..errors import ParameterError
    from ..spectrum import singular_values

    module = None
    if args.kernel.endswith(".onnx"):
        kernel, options, shape, module = _onnx_layer(args)
        options["layout"] = None
    else:
        if args.layer is not None:
            raise ParameterError(f"--layer: expected none for {args.kernel!r} (it names a layer of an ONNX model)")
        if not args.input_shape:
            raise ParameterError("--input-shape: expected the spatial input size, e.g. --input-shape 32 32; got none")
        with step(f"reading the kernel {args.kernel!r}"):
            kernel = load_kernel(args.kernel, args.key)
        options = {
            "layout": args.layout,  # None: OIHW, with a warning if the shape looks channels-last
            "stride": _per_axis(args.stride),
            "dilation": _per_axis(args.dilation),
            "groups": args.groups,
            "transposed": args.transposed or None,
        }
        shape = _per_axis(args.input_shape)
    if args.padding == "model" and module is None:
        raise ParameterError(
            "--padding: 'model' is the padding of an ONNX layer; for a kernel file give it: an int, same or valid"
        )
    with step("computing the singular values"):
        values = singular_values(kernel, shape, **options)
    result: dict[str, Any] = {
        "kernel": args.kernel,
        **({"layer": args.layer} if module is not None or args.layer else {}),
        "kernel_shape": list(kernel.shape),
        "input_shape": list(shape) if isinstance(shape, tuple) else [shape],
        **{k: v for k, v in options.items() if k not in ("transposed", "layout")},
        "layout": args.layout or "OIHW",
        "transposed": bool(options["transposed"]),
        "relative_threshold": args.threshold,
        **spectrum_summary(values, args.threshold),
    }
    if args.padding != "circular":
        from .. import operator_norm_bounds

        with step(f"computing the norm with padding {args.padding!r}"), warnings.catch_warnings():
            warnings.simplefilter("ignore", LayoutWarning)  # said once already, by singular_values
            if args.padding == "model" and not hasattr(module, "kernel_size"):  # a Linear layer: no padding
                bounds = operator_norm_bounds(kernel, shape, padding=0, **options)
            elif args.padding == "model":  # the ONNX node's padding, as its module carries it
                bounds = operator_norm_bounds(module, shape, padding="module")
            else:
                bounds = operator_norm_bounds(kernel, shape, padding=args.padding, **options)  # carries the value
        result["padding"] = args.padding if args.padding != "model" else f"model ({getattr(module, 'padding', 0)})"
        result["sigma_max_padded"] = float(bounds.value)
        result["sigma_max_padded_lower"] = float(bounds.lower)
        result["sigma_max_padded_upper"] = float(bounds.upper)
    document = json.dumps({**result, "spectrum": values.tolist()}, indent=2) + "\n"
    if args.json == "-":
        write_text("-", document)
        return 0
    _print(result, values, args)
    if args.json:
        with step(f"writing {args.json!r}"):
            write_text(args.json, document)
    return 0
