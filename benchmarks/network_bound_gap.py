"""The network bound against the plain product of layer norms and an observed LOWER bound (issue 12).

For the pretrained CIFAR ResNet-20/32 (``$CONVSPECTRA_DATA``, BatchNorm folded) and for each
padding asked (``model``: zero padding as the models run, the bound from each layer's certified
upper norm; ``circular``: every conv made circular, exact circular norms) it prints, side by side:

- the network bound of :func:`convspectra.analysis.spectral_report` (per-node rules, sum at the
  residual joins);
- the plain product of every layer's norm (what one gets ignoring the skips' structure -- it is
  NOT an upper bound for a residual network, which is why it is only a reference);
- two LOWER bounds on the true constant: the largest ratio ``||f(x) - f(y)|| / ||x - y||`` found
  by gradient ascent on pairs ``(x, y)``, and the largest local Jacobian norm ``||J(x) v||`` (unit
  ``v``) found by power iteration (jvp/vjp) at the best pair's ``x``.

The search runs in float32 (about 5x faster than float64 on a CPU); every figure printed is then
RE-EVALUATED in float64 at the points the search found (the pair's ratio by two float64 forward
passes, the Jacobian norm by one float64 jvp), so the lower bounds do not rest on float32
rounding. Budget: ``--restarts`` starts (pair distance ``10**-r`` for restart ``r``: near and far
pairs), each ``--steps`` Adam steps (lr 0.01) on ``--batch`` pairs at once, then ``--power``
power iterations. The true Lipschitz constant lies between the larger observation and the bound.

Run: ``CONVSPECTRA_DATA=/path/to/data python benchmarks/network_bound_gap.py [--models resnet20 resnet32]
[--paddings circular model] [--restarts 2] [--steps 40] [--batch 8] [--power 10] [--seed 0]``.
No timings are compared, so the figures do not depend on the machine (seconds are for information).
"""

from __future__ import annotations

import argparse
import copy
import math
import platform
import sys
import time

import torch

from convspectra.analysis import spectral_report
from convspectra.models import find_pretrained, load_weights, resnet20, resnet32

MODELS = {"resnet20": resnet20, "resnet32": resnet32}


def _ratios(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``||f(x_i) - f(y_i)|| / ||x_i - y_i||`` for every pair of the batch (one forward pass of both)."""
    out = model(torch.cat([x, y]))
    fx, fy = out[: len(x)], out[len(x) :]
    return (fx - fy).flatten(1).norm(dim=1) / (x - y).flatten(1).norm(dim=1)


def search_pairs(
    model: torch.nn.Module, *, restarts: int, steps: int, batch: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The best pair ``(x, y)`` (shape 1x3x32x32 each, float32) found by gradient ascent from ``restarts`` starts."""
    generator = torch.Generator().manual_seed(seed)
    best, best_x, best_y = -1.0, None, None
    for restart in range(restarts):
        x = torch.randn(batch, 3, 32, 32, generator=generator)
        y = x + 10.0 ** (-restart) * torch.randn(x.shape, generator=generator)  # near and far pairs alike
        x.requires_grad_(True)
        y.requires_grad_(True)
        optimiser = torch.optim.Adam([x, y], lr=0.01)
        for _ in range(steps):
            ratio = _ratios(model, x, y)
            top = int(ratio.detach().argmax())
            if float(ratio.detach()[top]) > best:
                best, best_x, best_y = (
                    float(ratio.detach()[top]),
                    x.detach()[top : top + 1].clone(),
                    y.detach()[top : top + 1].clone(),
                )
            optimiser.zero_grad()
            (-ratio.sum()).backward()
            optimiser.step()
    assert best_x is not None and best_y is not None
    return best_x, best_y


def jacobian_direction(model: torch.nn.Module, x: torch.Tensor, *, iterations: int, seed: int) -> torch.Tensor:
    """A unit direction ``v`` near the top right singular vector of the Jacobian at ``x`` (power iteration)."""
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)
    v /= v.norm()
    for _ in range(iterations):
        _, jv = torch.func.jvp(model, (x,), (v,))
        _, pullback = torch.func.vjp(model, x)
        (w,) = pullback(jv)
        v = w / w.norm()
    return v


def observed(
    model: torch.nn.Module, *, restarts: int, steps: int, batch: int, power: int, seed: int
) -> tuple[float, float]:
    """(pair ratio, local Jacobian norm), searched in float32 and both re-evaluated in float64."""
    x, y = search_pairs(model, restarts=restarts, steps=steps, batch=batch, seed=seed)
    v = jacobian_direction(model, x, iterations=power, seed=seed)
    model64 = copy.deepcopy(model).double()
    with torch.no_grad():
        pair = float(_ratios(model64, x.double(), y.double())[0])
    v64 = v.double() / v.double().norm()
    _, jv = torch.func.jvp(model64, (x.double(),), (v64,))
    return pair, float(jv.norm())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument(
        "--paddings",
        nargs="+",
        choices=("model", "circular"),
        default=["circular", "model"],
        help="model: the models as they run (zero padding); circular: every conv made circular, circular norms",
    )
    parser.add_argument("--restarts", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--power", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(f"# machine: {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, "
          f"python {sys.version.split()[0]}")  # fmt: skip
    print(f"# search: {args.restarts} restarts x {args.steps} Adam steps x {args.batch} pairs (float32), "
          f"{args.power} power iterations; figures re-evaluated in float64; seed {args.seed}")  # fmt: skip
    print("| model | padding | network bound | plain product of layer norms | observed pair ratio | "
          "observed local Jacobian norm | bound / observed |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in args.models:
        path = find_pretrained(name)
        if path is None:
            print(f"| {name} | | pretrained weights not found under $CONVSPECTRA_DATA | | | | |")
            continue
        for padding in args.paddings:
            model = load_weights(MODELS[name](), path).eval()
            if padding == "circular":  # the network the circular bound is about
                for module in model.modules():
                    if isinstance(module, torch.nn.Conv2d):
                        module.padding_mode = "circular"
            for parameter in model.parameters():
                parameter.requires_grad_(False)
            start = time.perf_counter()
            report = spectral_report(model, (3, 32, 32), padding=padding, fold_bn=True)
            product = math.prod(layer.norm(padding) for layer in report.layers)
            report_s = time.perf_counter() - start
            start = time.perf_counter()
            pair, local = observed(
                model, restarts=args.restarts, steps=args.steps, batch=args.batch, power=args.power, seed=args.seed
            )
            search_s = time.perf_counter() - start
            bound = report.network_bound.value
            print(
                f"| {name} | {padding} | {bound:.3g} | {product:.3g} | {pair:.3g} | {local:.3g} | "
                f"{bound / max(pair, local):.2g} |  <!-- report {report_s:.0f} s, search {search_s:.0f} s -->",
                flush=True,
            )


if __name__ == "__main__":
    main()
