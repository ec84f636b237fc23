"""Command line: ``convspectra demo``.

A thin layer over the library: it parses arguments, calls it, and formats what comes back.
Bad input exits with status 2 and a one-line message naming the problem.

Example:
    >>> from convspectra.cli import main
    >>> main(["--version"])  # doctest: +ELLIPSIS
    convspectra ...
    0
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from . import __version__
from .errors import ConvSpectraError

__all__ = ["main"]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="convspectra", description="Exact singular values of convolutional layers.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="train a small CNN on scikit-learn's digits (offline) and show its exact layer spectra",
        description="Train a small CNN on scikit-learn's digits (offline, a few seconds on a CPU), then "
        "compute every convolution's singular values exactly, check them against the dense SVD, and compare "
        "the operator norm with the reshaped-kernel norm that torch.nn.utils.spectral_norm normalises.",
    )
    demo.add_argument("--epochs", type=_positive_int, default=5, help="training epochs (default 5)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE ('-' for stdout)")
    return parser


def _print_demo(result: object) -> None:
    from .demo import DemoResult

    assert isinstance(result, DemoResult)
    print("convspectra demo: exact spectra of a CNN trained on scikit-learn's digits (offline, CPU)")
    print(
        f"trained {result.epochs} epochs on {result.train_images} images in {result.train_seconds:.1f} s; "
        f"test accuracy {100 * result.test_accuracy:.1f}% on {result.test_images} images\n"
    )
    header = (
        f"{'layer':<6} {'kernel':<10} {'input':<6} {'stride':<6} {'values':>6} {'sigma_max':>9} {'reshaped':>9} "
        f"{'ratio':>6} {'fourier':>9} {'dense SVD':>10} {'speed-up':>8} {'max |err|':>9}"
    )
    print(header)
    print("-" * len(header))
    for layer in result.layers:
        print(
            f"{layer.name:<6} {'x'.join(map(str, layer.kernel_shape)):<10} {'x'.join(map(str, layer.input_shape)):<6} "
            f"{'x'.join(map(str, layer.stride)):<6} {layer.num_singular_values:>6} {layer.sigma_max:>9.4f} "
            f"{layer.reshaped_norm:>9.4f} {layer.sigma_max / layer.reshaped_norm:>6.2f} "
            f"{1e3 * layer.fourier_seconds:>7.1f}ms {1e3 * layer.dense_seconds:>8.1f}ms "
            f"{layer.dense_seconds / layer.fourier_seconds:>7.0f}x {layer.max_abs_error:>9.1e}"
        )
    worst = max(layer.sigma_max / layer.reshaped_norm for layer in result.layers)
    print(
        f"\nsigma_max: exact operator norm (Lipschitz constant) of each layer as the network computes it "
        f"(circular padding).\nreshaped: norm of the kernel reshaped to out x (in*k*k), what spectral_norm "
        f"normalises; it is off by up to {worst:.2f}x here.\nUpper bound on the network's Lipschitz constant "
        f"(product of exact layer norms and the final linear layer): {result.lipschitz_upper_bound:.3f}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.version:
        print(f"convspectra {__version__}")
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    if getattr(args, "json", None) not in (None, "-"):
        folder = os.path.dirname(os.path.abspath(args.json))
        if not os.path.isdir(folder):
            print(f"convspectra: error: --json: the folder {folder} does not exist", file=sys.stderr)
            return 2
    try:
        if args.command == "demo":
            from .demo import run_demo

            result = run_demo(epochs=args.epochs, seed=args.seed)
            if args.json == "-":
                print(json.dumps(result.to_dict(), indent=2))
                return 0
            _print_demo(result)
            if args.json:
                with open(args.json, "w", encoding="utf-8") as handle:
                    json.dump(result.to_dict(), handle, indent=2)
    except (ConvSpectraError, OSError, ImportError) as err:
        print(f"convspectra: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
