"""Training check on real offline data: scikit-learn's digits, with and without operator-norm projection.

The small CNN of ``convspectra.demo`` (three 3x3 convolutions with circular padding, so each
layer *is* the circular operator whose norm is controlled; the second has stride 2) is trained
with Adam on 80% of the 1797 8x8 digit images (the data ships with scikit-learn, no download) in
four arms with the same seed, data order and initialisation:

* ``baseline``: no projection;
* ``clip``: :class:`convspectra.nn.OperatorNormProjector` every ``--every`` steps, one
  clip-and-restrict iteration (the paper's step);
* ``clip+rescale``: the same plus ``rescale=True``, which guarantees the bound after every
  projection (a kernel still above c after the iteration is multiplied by c / sigma_max);
* ``clip10+rescale``: ten iterations, then the rescale (closer to the nearest kernel in the ball).

After every projection the exact operator norm of every conv (``convspectra.singular_values`` of
its circular operator on the input size recorded by ``convspectra.nn.capture_input_shapes``) is
measured; the script reports the largest ``sigma_max / c`` seen after a projection, the
final norms and the test accuracy of each arm. ``--quick`` trains on a subset for one epoch.

Run ``python benchmarks/check_digits_training.py`` (JSON to
``benchmarks/results/digits_training.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import convspectra as cs
from convspectra._threads import limit_threads
from convspectra.demo import digits_cnn, digits_split
from convspectra.nn import ConvLayer, OperatorNormProjector, capture_input_shapes, conv_layers

RESULTS = Path(__file__).resolve().parent / "results" / "digits_training.json"
ARMS: dict[str, dict[str, Any] | None] = {
    "baseline": None,
    "clip": {"iterations": 1},
    "clip+rescale": {"iterations": 1, "rescale": True},
    "clip10+rescale": {"iterations": 10, "rescale": True},
}


def exact_norms(layers: list[ConvLayer]) -> dict[str, float]:
    """Largest singular value of every conv's circular operator on its input size."""
    return {
        layer.name: float(
            cs.singular_values(layer.module.weight.detach().double(), layer.input_shape, **layer.geometry())[0]
        )
        for layer in layers
    }


def train_arm(
    options: dict[str, Any] | None,
    data: tuple[torch.Tensor, ...],
    *,
    epochs: int,
    seed: int,
    max_norm: float,
    every: int,
    batch: int,
) -> dict[str, Any]:
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(seed)
    model = digits_cnn()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    layers = conv_layers(model, max_norm)
    sizes = capture_input_shapes(model, x_train[:1])
    for layer in layers:
        layer.input_shape = sizes[layer.name]
    projector = None
    if options is not None:
        projector = OperatorNormProjector(model, max_norm, every=every, **options)
        projector.attach(optimizer)
    generator = torch.Generator().manual_seed(seed)
    worst, checks, projection_seconds = 0.0, 0, 0.0
    start = time.perf_counter()
    for _ in range(epochs):
        for index in torch.randperm(len(x_train), generator=generator).split(batch):
            optimizer.zero_grad()
            F.cross_entropy(model(x_train[index]), y_train[index]).backward()
            optimizer.step()
            if projector is not None and projector.steps % every == 0:  # a projection just ran
                assert projector.input_shapes == sizes  # recorded on the first pass: the same sizes
                projection_seconds += projector.last_seconds
                worst = max(worst, max(exact_norms(layers).values()) / max_norm)
                checks += 1
    seconds = time.perf_counter() - start
    with torch.no_grad():
        accuracy = float((model(x_test).argmax(dim=1) == y_test).float().mean())
    return {
        "options": options,
        "test_accuracy": accuracy,
        "steps": projector.steps if projector is not None else None,
        "projections": checks,
        "max_sigma_over_bound_after_projection": worst if checks else None,
        "final_norms": exact_norms(layers),
        "train_seconds": seconds,
        "projection_seconds": projection_seconds,
    }


def run(
    *,
    epochs: int = 10,
    seed: int = 0,
    max_norm: float = 1.0,
    every: int = 10,
    batch: int = 32,
    train_subset: int | None = None,
) -> dict[str, Any]:
    """Train the four arms; returns the per-arm results (see the module docstring)."""
    x_train, y_train, x_test, y_test = digits_split(seed)
    if train_subset is not None:
        x_train, y_train = x_train[:train_subset], y_train[:train_subset]
    data = (x_train, y_train, x_test, y_test)
    arms = {
        name: train_arm(options, data, epochs=epochs, seed=seed, max_norm=max_norm, every=every, batch=batch)
        for name, options in ARMS.items()
    }
    return {
        "train_images": len(x_train),
        "test_images": len(x_test),
        "epochs": epochs,
        "seed": seed,
        "max_norm": max_norm,
        "every": every,
        "batch": batch,
        "arms": arms,
    }


def report(results: dict[str, Any]) -> None:
    print(
        f"digits: {results['train_images']} train / {results['test_images']} test images, {results['epochs']} epochs, "
        f"batch {results['batch']}, c = {results['max_norm']}, projection every {results['every']} steps"
    )
    for name, arm in results["arms"].items():
        worst = arm["max_sigma_over_bound_after_projection"]
        norms = ", ".join(f"{value:.3f}" for value in arm["final_norms"].values())
        print(
            f"  {name:<14s} accuracy {100 * arm['test_accuracy']:5.1f}%  projections {arm['projections']:3d}  "
            f"max sigma/c after a projection {'-' if worst is None else f'{worst:.6f}'}  "
            f"final norms [{norms}]  train {arm['train_seconds']:.1f} s (projection {arm['projection_seconds']:.2f} s)"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one epoch on 256 images: a smoke run")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-norm", type=float, default=1.0)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a small CNN gains nothing from more)")
    parser.add_argument("--json", metavar="FILE", default=str(RESULTS), help=f"JSON output (default {RESULTS})")
    args = parser.parse_args(argv)
    with limit_threads(args.threads):
        results = run(
            epochs=1 if args.quick else args.epochs,
            seed=args.seed,
            max_norm=args.max_norm,
            every=2 if args.quick else args.every,
            train_subset=256 if args.quick else None,
        )
    report(results)
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
