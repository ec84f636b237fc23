"""``convspectra report MODEL``: the exact spectrum of every conv and linear layer of a model."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from . import positive_int, writable_file

__all__ = ["add_report_options", "register"]


def _threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {value}")
    return value


def add_report_options(parser: argparse.ArgumentParser, *, threshold: float = 1e-3, plot: str | None = None) -> None:
    """Options shared by ``report`` and ``reproduce figure4`` (with their defaults for --threshold and --plot)."""
    parser.add_argument("--weights", metavar="FILE", help="weights (.pt/.pth/.th state dict, or .safetensors)")
    parser.add_argument(
        "--input-shape",
        metavar="N",
        type=positive_int,
        nargs="+",
        help="shape of one input without the batch axis, e.g. 3 32 32 (default: the built-in model's)",
    )
    parser.add_argument("--fold-bn", action="store_true", help="fold each BatchNorm into the conv that feeds it")
    parser.add_argument(
        "--threshold",
        type=_threshold,
        default=threshold,
        help=f"effective rank counts singular values above THRESHOLD x sigma_max (default {threshold:g})",
    )
    parser.add_argument("--json", metavar="FILE", type=writable_file, help="write the report as JSON ('-': stdout)")
    parser.add_argument("--csv", metavar="FILE", type=writable_file, help="write one CSV row per layer ('-': stdout)")
    parser.add_argument(
        "--plot",
        metavar="FILE",
        type=writable_file,
        default=plot,
        help="Figure-4 plot of the sorted spectra (.png/.svg/.pdf)" + (f" (default {plot})" if plot else ""),
    )
    parser.add_argument("--plot-norms", metavar="FILE", type=writable_file, help="bar chart of per-layer sigma_max")
    parser.add_argument("--log", action="store_true", help="logarithmic y axis in the Figure-4 plot")


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    """Add the ``report`` subcommand."""
    report = commands.add_parser(
        "report",
        help="exact spectrum of every conv/linear layer of a model: table, JSON, CSV, plots",
        description="Run one example input through MODEL, record each conv's real input size, and report every "
        "conv and linear layer's exact singular values (circular padding; with --padding model also the exact norm "
        "and certified bracket with the layer's own padding) and an UPPER bound on the network's Lipschitz constant. "
        "MODEL: a built-in name (resnet20/32/44/56), a TorchScript file, 'package.module:callable', or a torchvision "
        "/ timm model name when those are installed.",
    )
    report.add_argument("model", metavar="MODEL", help="built-in name, TorchScript file, or package.module:callable")
    report.add_argument(
        "--padding",
        choices=("circular", "model"),
        default="circular",
        help="circular: the paper's wrap-around spectra (fast); model: also each layer's own padding (default "
        "circular)",
    )
    report.add_argument(
        "--full-spectrum", action="store_true", help="include every singular value of every layer in the JSON"
    )
    report.add_argument("--quiet", action="store_true", help="do not print the table")
    add_report_options(report)
    report.set_defaults(handler=run)


def build_model(args: argparse.Namespace) -> tuple[Any, tuple[int, ...]]:
    """The model (weights loaded) and the input shape the arguments describe."""
    from ..errors import ParameterError
    from ..models import load_weights
    from ._models import resolve_model

    model, default_shape = resolve_model(args.model)
    if args.weights is not None:
        load_weights(model, args.weights)
    shape = tuple(args.input_shape) if args.input_shape else default_shape
    if shape is None:
        raise ParameterError(
            f"--input-shape: expected the shape of one input (e.g. --input-shape 3 224 224) for model {args.model!r}, "
            "which has no default; got none"
        )
    return model, shape


def write_outputs(report: Any, args: argparse.Namespace, *, include_spectra: bool) -> None:
    """Write the files asked for by --json/--csv/--plot/--plot-norms."""
    if args.json == "-":
        sys.stdout.write(report.to_json(include_spectra=include_spectra) + "\n")
    elif args.json:
        report.to_json(args.json, include_spectra=include_spectra)
    if args.csv == "-":
        sys.stdout.write(report.to_csv())
    elif args.csv:
        report.to_csv(args.csv)
    if args.plot:
        report.plot_spectra(args.plot, log=args.log)
    if args.plot_norms:
        report.plot_sigma_max(args.plot_norms)  # bars on a log axis mislead: always linear


def run(args: argparse.Namespace) -> int:
    """Build the model, compute the report, print and write it."""
    from ..analysis import spectral_report
    from ._progress import layer_progress

    model, shape = build_model(args)
    with layer_progress("layers") as progress:
        report = spectral_report(
            model,
            shape,
            padding=args.padding,
            fold_bn=args.fold_bn,
            full_spectrum=bool(args.full_spectrum or args.plot),
            relative_threshold=args.threshold,
            progress=progress,
        )
    to_stdout = "-" in (args.json, args.csv)
    if not args.quiet and not to_stdout:
        print(f"convspectra report: {report.model} on input {report.input_shape}, {len(report.layers)} layers")
        print(report.to_table())
        print(f"\n{report.seconds:.2f} s")
    write_outputs(report, args, include_spectra=bool(args.full_spectrum))
    return 0
