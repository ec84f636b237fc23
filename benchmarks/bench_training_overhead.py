"""Benchmark: training overhead of projecting every conv of a CIFAR ResNet-32 onto an operator-norm ball.

The paper's regulariser (Sedghi, Gupta & Long 2019, Section 4.2) projects the 31 convolutions of
a ResNet-32 every 100 SGD steps. This script measures, in one run on the same machine:

* ``step``: one SGD step (forward, backward, update) of ResNet-32 at batch 128 on random 32x32
  images, median of ``--steps`` steps after two warm-up steps;
* ``projection``: one round of :class:`convspectra.nn.OperatorNormProjector` over the 31 layers
  (``iterations=1``, the paper's clip-and-restrict step), median of ``--rounds`` rounds, each
  started from the same weights (the He-initialised ones, where every layer violates the bound:
  the pessimistic case; later in training most frequencies pass the cheap Frobenius test);
* ``overhead = projection / (every * step)``, the fraction added to training time;
* ``penalty``: one forward and backward pass of :func:`convspectra.nn.operator_norm_penalty` over
  the 31 layers (the soft alternative to the projection), median of ``--rounds``;
* an end-to-end cross-check: ``--e2e-steps`` steps without projection, then as many with a
  projection every ``--e2e-every`` steps, and the measured extra time against the predicted one;
* on a GPU (when CUDA is available; times taken with ``torch.cuda.synchronize``) the same,
  with the alternatives for the projection: the core on the GPU and on the CPU (weights copied
  over and back), each with the clip by Gram matrix + Hermitian eigensolver (the default) and by
  the SVD (``min_norm=0``, the two-sided path, same result).

The machine (CPU model, cores, BLAS, torch/numpy versions, GPU) is printed and stored in the JSON
(default ``benchmarks/results/training_overhead.json``). ``--quick`` is a smoke run (batch 8, a few
steps) whose timings mean nothing; it checks that the projector's result equals the direct core call.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import convspectra as cs
from convspectra._threads import limit_threads
from convspectra.experiments.machine import machine_description
from convspectra.models import resnet32
from convspectra.nn import OperatorNormProjector, operator_norm_penalty

RESULTS = Path(__file__).resolve().parent / "results" / "training_overhead.json"
# Typical layers for the cost-per-projection table: (channels in = out, input size, stride).
LAYER_SHAPES = [(16, 32, 1), (32, 16, 1), (64, 8, 1), (32, 32, 2), (64, 56, 1), (128, 28, 1), (256, 14, 1), (512, 7, 1)]
QUICK_LAYER_SHAPES = [(8, 8, 1), (8, 8, 2)]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function: Callable[[], Any], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - start


def make_training(
    device: torch.device, batch: int, size: int, seed: int = 0
) -> tuple[nn.Module, torch.optim.Optimizer, Callable[[], None]]:
    torch.manual_seed(seed)
    model = resnet32().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=generator).to(device)
    labels = torch.randint(0, 10, (batch,), generator=generator).to(device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()

    return model, optimizer, step


def conv_weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight.detach().clone() for m in model.modules() if isinstance(m, nn.Conv2d)]


def restore(model: nn.Module, weights: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for module, weight in zip([m for m in model.modules() if isinstance(m, nn.Conv2d)], weights, strict=True):
            module.weight.copy_(weight)


def direct_round(projector: OperatorNormProjector, weights: list[torch.Tensor], max_norm: float) -> list[torch.Tensor]:
    """The core called by hand on the same weights (the reference for the projector's result)."""
    out = cs.clip_operator_norm_many(
        [w.double() for w in weights],
        [layer.input_shape for layer in projector.layers],
        max_norm,
        stride=[tuple(layer.module.stride) for layer in projector.layers],
    )
    return [o.to(w.dtype) for o, w in zip(out, weights, strict=True)]


def sigma_ratio(projector: OperatorNormProjector) -> float:
    """max over layers of sigma_max / bound after a round."""
    return max(
        float(cs.operator_norm(layer.module.weight.detach(), layer.input_shape, **layer.geometry())) / layer.max_norm
        for layer in projector.layers
    )


def penalty_round(model: nn.Module, max_norm: float, sizes: dict[str, Any]) -> None:
    """One forward and backward pass of the hinge penalty on the exact operator norms."""
    model.zero_grad(set_to_none=True)
    operator_norm_penalty(model, max_norm, sizes).backward()


def measure(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    model, optimizer, step = make_training(device, args.batch, args.image_size)
    for _ in range(2):  # warm-up (also records the input sizes for the projector below)
        step()
    projector = OperatorNormProjector(model, args.max_norm, every=args.every, iterations=args.iterations)
    step()
    step_times = [timed(step, device) for _ in range(args.steps)]
    step_seconds = statistics.median(step_times)

    start_weights = conv_weights(model)
    sigma_before = sigma_ratio(projector)
    projections: dict[str, dict[str, Any]] = {}
    variants: dict[str, dict[str, Any]] = {"gram+eigh, on the weights' device": {}}
    if device.type == "cuda":
        variants["svd, on the weights' device"] = {"min_norm": 0.0}
        variants["gram+eigh, on the CPU"] = {"device": "cpu"}
        variants["svd, on the CPU"] = {"device": "cpu", "min_norm": 0.0}
    else:
        variants["svd"] = {"min_norm": 0.0}
    for name, options in variants.items():
        variant = OperatorNormProjector(
            model,
            args.max_norm,
            every=args.every,
            iterations=args.iterations,
            input_shapes=projector.input_shapes,
            **options,
        )
        rounds = []
        for _ in range(args.rounds):
            restore(model, start_weights)
            rounds.append(timed(variant.project_now, device))
        projections[name] = {"median_seconds": statistics.median(rounds), "seconds": rounds}
    # correctness of the measured path: the projector equals the core called directly
    restore(model, start_weights)
    projector.project_now()
    reference = direct_round(projector, start_weights, args.max_norm)
    pairs = zip(projector.layers, reference, strict=True)
    error = max(float((layer.module.weight.detach() - ref).abs().max()) for layer, ref in pairs)
    sigma_after = sigma_ratio(projector)

    penalty_times = []
    for _ in range(args.rounds):
        restore(model, start_weights)
        penalty_times.append(timed(lambda: penalty_round(model, args.max_norm, projector.input_shapes), device))

    projection_seconds = projections["gram+eigh, on the weights' device"]["median_seconds"]
    result: dict[str, Any] = {
        "device": str(device),
        "layers": len(projector.layers),
        "batch": args.batch,
        "image_size": args.image_size,
        "step_median_seconds": step_seconds,
        "step_seconds": step_times,
        "projection": projections,
        "projection_median_seconds": projection_seconds,
        "every": args.every,
        "iterations": args.iterations,
        "overhead": projection_seconds / (args.every * step_seconds),
        "best_variant_overhead": min(p["median_seconds"] for p in projections.values()) / (args.every * step_seconds),
        "max_abs_difference_vs_direct_core_call": error,
        "max_sigma_over_bound_before": sigma_before,
        "max_sigma_over_bound_after_one_round": sigma_after,
        "penalty_median_seconds": statistics.median(penalty_times),
        "penalty_seconds": penalty_times,
    }

    # end-to-end cross-check: plain steps, then steps with a projection every e2e_every steps
    restore(model, start_weights)
    plain = timed(lambda: [step() for _ in range(args.e2e_steps)], device)
    e2e = OperatorNormProjector(
        model, args.max_norm, every=args.e2e_every, iterations=args.iterations, input_shapes=projector.input_shapes
    )
    handle = e2e.attach(optimizer)
    projected = timed(lambda: [step() for _ in range(args.e2e_steps)], device)
    handle.remove()
    predicted = e2e.projections * projection_seconds
    result["end_to_end"] = {
        "steps": args.e2e_steps,
        "every": args.e2e_every,
        "projections": e2e.projections,
        "plain_seconds": plain,
        "with_projection_seconds": projected,
        "measured_extra_seconds": projected - plain,
        "predicted_extra_seconds": predicted,
    }
    return result


def layer_costs(shapes: list[tuple[int, int, int]], rounds: int, devices: list[torch.device]) -> list[dict[str, Any]]:
    """Seconds for one projection round (``iterations=1``) of one He-initialised 3x3 layer, per shape and device."""
    rows = []
    generator = torch.Generator().manual_seed(0)
    for channels, size, stride in shapes:
        conv = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        nn.init.kaiming_normal_(conv.weight, generator=generator)
        row: dict[str, Any] = {"channels": channels, "input_size": size, "stride": stride}
        for device in devices:
            conv = conv.to(device)
            projector = OperatorNormProjector(conv, 1.0, input_shapes=size)
            start = conv.weight.detach().clone()
            times = []
            for _ in range(rounds):
                restore(conv, [start])
                times.append(timed(projector.project_now, device))
            row[f"{device.type}_median_seconds"] = statistics.median(times)
        rows.append(row)
    return rows


def report_layer_costs(rows: list[dict[str, Any]]) -> None:
    print("\none projection round (iterations=1) of one 3x3 layer, He-initialised (every frequency clipped):")
    for row in rows:
        times = ", ".join(
            f"{key.split('_')[0]} {value * 1e3:8.1f} ms" for key, value in row.items() if key.endswith("seconds")
        )
        print(
            f"  {row['channels']:4d} -> {row['channels']:4d} channels, {row['input_size']:3d}x{row['input_size']:<3d} "
            f"stride {row['stride']}: {times}"
        )


def report(results: dict[str, Any]) -> None:
    info = results["machine"]
    print(
        f"machine: {info['cpu']}, {info['cores']} cores, numpy {info['numpy']}, BLAS {info['blas']}, "
        f"torch {info['torch']} ({info['torch_threads']} threads), GPU {info['gpu']}"
    )
    for run in results["runs"]:
        print(
            f"\nResNet-32, batch {run['batch']}, {run['image_size']}x{run['image_size']} images, "
            f"{run['layers']} conv layers, device {run['device']}"
        )
        print(f"  training step (median of {len(run['step_seconds'])}): {run['step_median_seconds'] * 1e3:9.1f} ms")
        for name, projection in run["projection"].items():
            print(
                f"  projection round, {name:<36s} (median of {len(projection['seconds'])}): "
                f"{projection['median_seconds'] * 1e3:9.1f} ms"
            )
        print(
            f"  operator_norm_penalty forward + backward, {run['layers']} layers "
            f"(median of {len(run['penalty_seconds'])}): "
            f"{run['penalty_median_seconds'] * 1e3:9.1f} ms"
        )
        print(
            f"  overhead with projection every {run['every']} steps (iterations={run['iterations']}): "
            f"{100 * run['overhead']:.2f}% (best variant {100 * run['best_variant_overhead']:.2f}%)"
        )
        print(
            f"  sigma_max / bound, max over layers: {run['max_sigma_over_bound_before']:.3f} before, "
            f"{run['max_sigma_over_bound_after_one_round']:.3f} after one round; "
            f"projector vs direct core call: max |diff| {run['max_abs_difference_vs_direct_core_call']:.1e}"
        )
        e2e = run["end_to_end"]
        print(
            f"  end to end, {e2e['steps']} steps: {e2e['plain_seconds']:.2f} s plain, "
            f"{e2e['with_projection_seconds']:.2f} s with {e2e['projections']} projections (every {e2e['every']}): "
            f"extra {e2e['measured_extra_seconds']:+.2f} s measured, {e2e['predicted_extra_seconds']:.2f} s predicted"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="batch 8 and a few steps: a smoke run")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="timed training steps (median reported)")
    parser.add_argument("--rounds", type=int, default=3, help="timed projection rounds (median reported)")
    parser.add_argument("--every", type=int, default=100, help="projection period in steps")
    parser.add_argument("--iterations", type=int, default=1, help="clip-and-restrict rounds per projection")
    parser.add_argument("--max-norm", type=float, default=1.0)
    parser.add_argument("--e2e-steps", type=int, default=20, help="steps per arm of the end-to-end check")
    parser.add_argument("--e2e-every", type=int, default=10, help="projection period in the end-to-end check")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch and BLAS threads (default: torch's and BLAS's own choice)"
    )
    parser.add_argument("--no-gpu", action="store_true", help="skip the GPU even when one is available")
    parser.add_argument("--json", metavar="FILE", default=str(RESULTS), help=f"JSON output (default {RESULTS})")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.image_size, args.steps, args.rounds, args.e2e_steps, args.e2e_every = 2, 8, 1, 1, 2, 1
    with limit_threads(args.threads):
        results: dict[str, Any] = {
            "machine": machine_description(),
            "argv": sys.argv[1:] if argv is None else argv,
            "runs": [],
        }
        devices = [torch.device("cpu")]
        if torch.cuda.is_available() and not args.no_gpu:
            devices.append(torch.device("cuda"))
        for device in devices:
            results["runs"].append(measure(args, device))
        results["layer_costs"] = layer_costs(QUICK_LAYER_SHAPES if args.quick else LAYER_SHAPES, args.rounds, devices)
    report(results)
    report_layer_costs(results["layer_costs"])
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
