"""The network bound against the plain product of layer norms and an observed LOWER bound (issue 12).

For the pretrained CIFAR ResNet-20/32 (``$CONVSPECTRA_DATA``, BatchNorm folded, zero padding as
the models run: ``padding="model"``) it prints, side by side:

- the network bound of :func:`convspectra.analysis.spectral_report` (per-node rules, sum at the
  residual joins);
- the plain product of every layer's certified norm (what one gets ignoring the skips' structure
  -- it is NOT an upper bound for a residual network, which is why it is only a reference);
- the largest ratio ``||f(x) - f(y)|| / ||x - y||`` found by gradient ascent on pairs ``(x, y)``
  from random starts (a few restarts), and the largest local Jacobian norm found by power
  iteration (jvp/vjp) at the points visited: both are LOWER bounds on the true constant.

The true Lipschitz constant lies between the observed ratio and the bound.

Run: ``CONVSPECTRA_DATA=/path/to/data python benchmarks/network_bound_gap.py [--models resnet20 resnet32]
[--restarts 4] [--steps 200]``. No timings are compared, so the figures do not depend on the machine.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time

import torch

from convspectra.analysis import spectral_report
from convspectra.models import find_pretrained, load_weights, resnet20, resnet32

MODELS = {"resnet20": resnet20, "resnet32": resnet32}


def observed_ratio(model: torch.nn.Module, *, restarts: int, steps: int, seed: int = 0) -> tuple[float, float]:
    """(largest pair ratio, largest local Jacobian norm) found from ``restarts`` random starts."""
    generator = torch.Generator().manual_seed(seed)
    best_pair = best_local = 0.0
    for restart in range(restarts):
        x = torch.randn(8, 3, 32, 32, dtype=torch.float64, generator=generator)
        scale = 10.0 ** (-restart)  # near pairs (local) and far pairs (global) alike
        y = x + scale * torch.randn(x.shape, dtype=torch.float64, generator=generator)
        x.requires_grad_(True)
        y.requires_grad_(True)
        optimiser = torch.optim.Adam([x, y], lr=0.01)
        for _ in range(steps):
            ratio = (model(x) - model(y)).flatten(1).norm(dim=1) / (x - y).flatten(1).norm(dim=1)
            best_pair = max(best_pair, float(ratio.detach().max()))
            optimiser.zero_grad()
            (-ratio.sum()).backward()
            optimiser.step()
        best_local = max(best_local, _jacobian_norm(model, x.detach()[:1], generator))
    return best_pair, best_local


def _jacobian_norm(model: torch.nn.Module, x: torch.Tensor, generator: torch.Generator, iterations: int = 100) -> float:
    """Largest singular value of the Jacobian of ``model`` at ``x`` by power iteration on J^T J."""
    v = torch.randn(x.shape, dtype=x.dtype, generator=generator)
    v /= v.norm()
    sigma = 0.0
    for _ in range(iterations):
        _, jv = torch.func.jvp(model, (x,), (v,))
        _, pullback = torch.func.vjp(model, x)
        (w,) = pullback(jv)
        sigma = math.sqrt(float(w.norm()))
        v = w / w.norm()
    return sigma


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--restarts", type=int, default=4)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument(
        "--padding",
        choices=("model", "circular"),
        default="model",
        help="model: the models as they run (zero padding); circular: every conv made circular, circular norms",
    )
    args = parser.parse_args(argv)
    print(f"# machine: {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, "
          f"python {sys.version.split()[0]}")  # fmt: skip
    print(f"# padding: {args.padding}, {args.restarts} restarts of {args.steps} steps")
    print("| model | network bound | plain product of layer norms | observed pair ratio | "
          "observed local Jacobian norm | bound / observed |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name in args.models:
        path = find_pretrained(name)
        if path is None:
            print(f"| {name} | pretrained weights not found under $CONVSPECTRA_DATA | | | | |")
            continue
        model = load_weights(MODELS[name](), path).double().eval()
        if args.padding == "circular":  # the network the circular bound is about
            for module in model.modules():
                if isinstance(module, torch.nn.Conv2d):
                    module.padding_mode = "circular"
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        start = time.perf_counter()
        report = spectral_report(
            model, torch.zeros(1, 3, 32, 32, dtype=torch.float64), padding=args.padding, fold_bn=True
        )
        product = math.prod(layer.norm(args.padding) for layer in report.layers)
        seconds = time.perf_counter() - start
        pair, local = observed_ratio(model, restarts=args.restarts, steps=args.steps)
        bound = report.network_bound.value
        print(
            f"| {name} | {bound:.4g} | {product:.4g} | {pair:.4g} | {local:.4g} | {bound / max(pair, local):.3g} |"
            f"  <!-- report {seconds:.0f} s -->"
        )


if __name__ == "__main__":
    main()
