"""``convspectra spectrum KERNEL``: all singular values of one kernel stored in a .npy or .pt file."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from . import positive_int, writable_file
from .report import _threshold

__all__ = ["load_kernel", "register"]


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    """Add the ``spectrum`` subcommand."""
    from ..spec import LAYOUTS

    spectrum = commands.add_parser(
        "spectrum",
        help="all singular values of one conv kernel (.npy or .pt file)",
        description="Load a kernel from a .npy file or a .pt/.pth file (a tensor, or a state dict with --key) and "
        "print the exact singular values of the convolution with wrap-around padding on an input of the given "
        "spatial size; --padding also gives the norm with zero padding (exact and certified bracket).",
    )
    spectrum.add_argument("kernel", metavar="KERNEL", help="a .npy file, or a .pt/.pth/.th file holding a tensor")
    spectrum.add_argument(
        "--input-shape", metavar="N", type=positive_int, nargs="+", required=True, help="spatial input size, e.g. 32 32"
    )
    spectrum.add_argument("--key", help="name of the tensor when the .pt file holds a state dict")
    spectrum.add_argument("--layout", choices=sorted(LAYOUTS), default="OIHW", help="kernel layout (default OIHW)")
    spectrum.add_argument("--stride", metavar="S", type=positive_int, nargs="+", help="stride (one or per axis)")
    spectrum.add_argument("--dilation", metavar="D", type=positive_int, nargs="+", help="dilation")
    spectrum.add_argument("--groups", type=positive_int, default=None, help="channel groups")
    spectrum.add_argument("--transposed", action="store_true", help="the kernel of a transposed convolution")
    spectrum.add_argument(
        "--padding",
        default="circular",
        help="circular (default), or zero padding: an int, 'same' or 'valid' (norm and bracket only)",
    )
    spectrum.add_argument(
        "--threshold", type=_threshold, default=1e-3, help="relative threshold of the effective rank (default 1e-3)"
    )
    spectrum.add_argument("--top", type=positive_int, default=8, help="how many of the largest values to print")
    spectrum.add_argument(
        "--json", metavar="FILE", type=writable_file, help="write the summary and full spectrum as JSON ('-': stdout)"
    )
    spectrum.set_defaults(handler=run)


def load_kernel(path: str, key: str | None = None) -> Any:
    """The kernel array stored in ``path`` (.npy: NumPy; .pt/.pth/.th: a tensor, or ``state[key]``).

    Raises:
        ParameterError: missing file, unknown extension, or no tensor (the message lists the keys).
    """
    import numpy as np

    from ..errors import ParameterError

    if not os.path.isfile(path):
        raise ParameterError(f"kernel: expected an existing .npy or .pt file, got {path!r} (no such file)")
    if path.endswith(".npy"):
        try:
            return np.load(path, allow_pickle=False)
        except ValueError as err:
            raise ParameterError(f"kernel: could not read {path!r} as a .npy array: {err}") from None
    if not path.endswith((".pt", ".pth", ".th")):
        raise ParameterError(f"kernel: expected a .npy, .pt, .pth or .th file, got {path!r}")
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several unrelated types for unreadable files
        raise ParameterError(f"kernel: could not read {path!r} with torch.load(weights_only=True): {err}") from None
    if isinstance(obj, torch.Tensor):
        if key is not None:
            raise ParameterError(f"--key: {path!r} holds a single tensor, not a state dict; got --key {key!r}")
        return obj.detach()
    if isinstance(obj, dict):
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if key is None:
            raise ParameterError(
                f"--key: {path!r} holds a dict; expected --key with one of {sorted(tensors)[:8]}"
                + (" ..." if len(tensors) > 8 else "")
            )
        if key not in tensors:
            raise ParameterError(f"--key: expected one of {sorted(tensors)[:8]}, got {key!r}")
        return tensors[key].detach()
    raise ParameterError(f"kernel: expected {path!r} to hold a tensor or a state dict, got {type(obj).__name__}")


def _padding(text: str) -> Any:
    if text in ("circular", "same", "valid"):
        return text
    try:
        return int(text)
    except ValueError:
        from ..errors import ParameterError

        raise ParameterError(f"--padding: expected circular, same, valid or an int, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    """Compute and print (or write) the spectrum."""
    import numpy as np

    from ..analysis import spectrum_summary
    from ..spectrum import singular_values

    kernel = load_kernel(args.kernel, args.key)
    if hasattr(kernel, "detach"):  # analyse in float64 (complex128 for complex kernels)
        kernel = (kernel.double() if kernel.is_floating_point() else kernel).numpy()
    elif kernel.dtype.kind == "f":
        kernel = kernel.astype(np.float64)
    padding = _padding(args.padding)

    def per_axis(values: list[int] | None) -> int | tuple[int, ...] | None:
        return values[0] if values and len(values) == 1 else (tuple(values) if values else None)

    options = {
        "layout": args.layout,
        "stride": per_axis(args.stride),
        "dilation": per_axis(args.dilation),
        "groups": args.groups,
        "transposed": args.transposed or None,
    }
    shape: Any = per_axis(args.input_shape)
    values = singular_values(kernel, shape, **options)
    summary = spectrum_summary(values, args.threshold)
    result: dict[str, Any] = {
        "kernel": args.kernel,
        "kernel_shape": list(kernel.shape),
        "input_shape": list(shape) if isinstance(shape, tuple) else [shape],
        **{k: v for k, v in options.items() if k != "transposed"},
        "transposed": bool(args.transposed),
        "relative_threshold": args.threshold,
        **summary,
    }
    if padding != "circular":
        from .. import operator_norm, operator_norm_bounds

        bounds = operator_norm_bounds(kernel, shape, padding=padding, **options)
        result["padding"] = padding
        result["sigma_max_padded"] = float(operator_norm(kernel, shape, padding=padding, **options))
        result["sigma_max_padded_lower"] = float(bounds.lower)
        result["sigma_max_padded_upper"] = float(bounds.upper)
    if args.json == "-":
        print(json.dumps({**result, "spectrum": values.tolist()}, indent=2))
        return 0
    print(f"kernel {args.kernel}: shape {tuple(kernel.shape)} ({args.layout}), input {shape}")
    print(f"{summary['num_singular_values']} singular values (circular padding)")
    print(f"sigma_max        {summary['sigma_max']:.10g}")
    print(f"sigma_min        {summary['sigma_min']:.10g}")
    cond = summary["condition_number"]
    print(f"condition number {cond:.6g}" if cond is not None else "condition number inf (sigma_min = 0)")
    print(f"stable rank      {summary['stable_rank'] or 0:.6g}")
    print(f"effective rank   {summary['effective_rank']} (> {args.threshold:g} x sigma_max)")
    if padding != "circular":
        print(
            f"padding {padding!r}: sigma_max {result['sigma_max_padded']:.10g} in certified "
            f"[{result['sigma_max_padded_lower']:.10g}, {result['sigma_max_padded_upper']:.10g}]"
        )
    print("largest: " + " ".join(f"{v:.6g}" for v in values[: args.top]))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({**result, "spectrum": values.tolist()}, handle, indent=2)
    return 0
