"""``convspectra demo``: train a small CNN offline and show its exact layer spectra."""

from __future__ import annotations

import argparse
import json

from ._common import add_output, positive_int, write_text

__all__ = ["register"]


def register(commands: argparse._SubParsersAction) -> None:
    """Add the ``demo`` subcommand."""
    demo = commands.add_parser(
        "demo",
        help="train a small CNN on scikit-learn's digits (offline) and show its exact layer spectra",
        description="Train a small CNN on scikit-learn's digits (offline, a few seconds on a CPU), then "
        "compute every convolution's singular values exactly, check them against the dense SVD, and compare "
        "the operator norm with the reshaped-kernel norm that torch.nn.utils.spectral_norm normalises.",
    )
    demo.add_argument("--epochs", type=positive_int, default=5, help="training epochs (default 5)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    add_output(demo, "--json", help="also write the results as JSON")
    demo.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo and print (or write) its results."""
    from ..demo import run_demo

    result = run_demo(epochs=args.epochs, seed=args.seed)
    if args.json != "-":
        _print_demo(result)
    if args.json:
        write_text(args.json, json.dumps(result.to_dict(), indent=2) + "\n")
    return 0


def _print_demo(result: object) -> None:
    from ..demo import DemoResult

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
