"""Benchmark: the operator norm (largest singular value) of conv layers.

Suites (every baseline is measured in the same run, on the same kernels, methods interleaved):

* ``trained``: every conv of the pretrained CIFAR ResNets (found under ``$CONVSPECTRA_DATA`` by
  :func:`convspectra.models.find_pretrained`) evaluated at a large input (default 224x224),
  circular padding, float64: ``operator_norm`` against the largest of ``singular_values``
  (convspectra's own full spectrum).
* ``random``: He-initialised Gaussian kernels at ResNet-50's 3x3 shapes at 224 (flat spectra, the
  hard case for pruning): the same comparison.
* ``padded``: the pretrained ResNet-32's convs at their native input sizes (32, 16, 8) with their
  real zero padding 1: exact zero-padded norm against the circular norm (time ratio), and the
  certified bracket's relative gap.
* ``peers``: on the same layers, methods from the literature implemented here from their
  published descriptions: Gram iteration on the FFT of the kernel (Delattre et al. 2023; an upper
  bound of the circular norm) and power iteration on the true zero-padded operator with PyTorch's
  conv and conv_transpose (Ryu et al. 2019; Farnia et al. 2019; a lower bound). Time and error
  against convspectra's exact values.

Run ``python benchmarks/bench_operator_norm.py`` (``--quick`` for a smoke run, ``--suites``,
``--nets 20,32,44,56``, ``--size``, ``--repeats``, ``--json FILE``). Medians are reported.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import convspectra as cs
from convspectra.models import DATA_ENV, find_pretrained

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_singular_values import machine

RESNET50_3X3 = [(64, 56)] * 3 + [(128, 28)] * 4 + [(256, 14)] * 6 + [(512, 7)] * 3


def pretrained_layers(depth: int) -> list[tuple[str, np.ndarray, int, int]] | None:
    """``(name, kernel float64 OIHW, stride, native input size)`` of every conv, or None if absent."""
    path = find_pretrained(f"resnet{depth}")
    if path is None:
        return None
    import torch

    from convspectra.models import cifar_resnet, load_weights
    from convspectra.nn import capture_input_shapes

    model = load_weights(cifar_resnet(depth), path)
    sizes = capture_input_shapes(model, torch.zeros(1, 3, 32, 32))
    return [
        (name, m.weight.detach().double().numpy(), m.stride[0], sizes[name][-1])
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Conv2d)
    ]


def timed(function: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    value = function(*args, **kwargs)
    return value, time.perf_counter() - start


def compare_suite(layers: list[tuple[str, np.ndarray, int, int]], size: int, repeats: int) -> dict[str, Any]:
    """operator_norm vs max(singular_values), circular, at input ``size``."""
    rows = []
    for name, kernel, stride, _ in layers:
        times: dict[str, list[float]] = {"operator_norm": [], "singular_values": []}
        for _ in range(repeats):
            norm, t_norm = timed(cs.operator_norm, kernel, size, stride=stride)
            spectrum, t_all = timed(cs.singular_values, kernel, size, stride=stride)
            times["operator_norm"].append(t_norm)
            times["singular_values"].append(t_all)
        rows.append(
            {
                "layer": name,
                "shape": list(kernel.shape),
                "stride": stride,
                "seconds_operator_norm": statistics.median(times["operator_norm"]),
                "seconds_singular_values": statistics.median(times["singular_values"]),
                "relative_error": float(abs(norm - spectrum[0]) / spectrum[0]),
            }
        )
    total_norm = sum(r["seconds_operator_norm"] for r in rows)
    total_all = sum(r["seconds_singular_values"] for r in rows)
    ratios = [r["seconds_singular_values"] / r["seconds_operator_norm"] for r in rows]
    return {
        "input_size": size,
        "repeats": repeats,
        "rows": rows,
        "total_seconds_operator_norm": total_norm,
        "total_seconds_singular_values": total_all,
        "speedup_total": total_all / total_norm,
        "speedup_median_layer": statistics.median(ratios),
        "speedup_min_layer": min(ratios),
        "max_relative_error": max(r["relative_error"] for r in rows),
    }


def gram_iteration_norm(kernel: np.ndarray, n: int, iterations: int = 6) -> float:
    """Delattre et al. (2023): Gram iteration on every frequency's matrix of the kernel's FFT.

    Upper bound of the circular (stride-1) operator norm: ``||G_t||_F^(1/2^t)`` with ``G_{t+1} = G_t^H G_t``,
    rescaled every step (the scale kept as a logarithm), maximised over frequencies.
    """
    w = np.fft.fft2(kernel, s=(n, n)).transpose(2, 3, 0, 1).reshape(n * n, *kernel.shape[:2])
    log_scale = np.zeros(len(w))
    for _ in range(iterations):
        norm = np.linalg.norm(w, axis=(1, 2))
        w = w / norm[:, None, None]
        log_scale = 2 * (log_scale + np.log(norm))
        w = np.conj(np.swapaxes(w, 1, 2)) @ w
    log_norm = (np.log(np.linalg.norm(w, axis=(1, 2))) + log_scale) / 2**iterations
    return float(np.exp(log_norm.max()))


def power_iteration_norm(kernel: np.ndarray, n: int, stride: int, padding: int, iterations: int) -> float:
    """Power iteration on ``A^T A`` with PyTorch's conv2d and its adjoint (conv_transpose2d)."""
    import torch
    import torch.nn.functional as F

    w = torch.from_numpy(kernel)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, kernel.shape[1], n, n, dtype=torch.float64, generator=generator)
    out_size = (n + 2 * padding - kernel.shape[-1]) // stride + 1
    output_padding = n - ((out_size - 1) * stride - 2 * padding + kernel.shape[-1])
    with torch.no_grad():
        for _ in range(iterations):
            x = x / torch.linalg.vector_norm(x)
            y = F.conv2d(x, w, stride=stride, padding=padding)
            x = F.conv_transpose2d(y, w, stride=stride, padding=padding, output_padding=output_padding)
        x = x / torch.linalg.vector_norm(x)
        return float(torch.linalg.vector_norm(F.conv2d(x, w, stride=stride, padding=padding)))


def padded_suite(layers: list[tuple[str, np.ndarray, int, int]], repeats: int) -> dict[str, Any]:
    rows = []
    for name, kernel, stride, n in layers:
        t_c, t_z = [], []
        for _ in range(repeats):
            circular, seconds = timed(cs.operator_norm, kernel, n, stride=stride)
            t_c.append(seconds)
            zero, seconds = timed(cs.operator_norm, kernel, n, stride=stride, padding=1)
            t_z.append(seconds)
        bounds = cs.operator_norm_bounds(kernel, n, stride=stride, padding=1)
        rows.append(
            {
                "layer": name,
                "input_size": n,
                "stride": stride,
                "circular": float(circular),
                "zero_padded": float(zero),
                "seconds_circular": statistics.median(t_c),
                "seconds_zero_padded": statistics.median(t_z),
                "bracket": [bounds.lower, bounds.upper],
                "bracket_relative_gap": bounds.relative_gap,
            }
        )
    ratios = [r["seconds_zero_padded"] / r["seconds_circular"] for r in rows]
    return {
        "rows": rows,
        "time_ratio_zero_over_circular_median": statistics.median(ratios),
        "time_ratio_zero_over_circular_max": max(ratios),
        "total_seconds_circular": sum(r["seconds_circular"] for r in rows),
        "total_seconds_zero_padded": sum(r["seconds_zero_padded"] for r in rows),
        "bracket_relative_gap_max": max(r["bracket_relative_gap"] for r in rows),
        "zero_over_circular_min": min(r["zero_padded"] / r["circular"] for r in rows),
    }


def peers_suite(layers: list[tuple[str, np.ndarray, int, int]], repeats: int) -> dict[str, Any]:
    methods: dict[str, Any] = {
        "convspectra circular (exact)": lambda k, n, s: cs.operator_norm(k, n, stride=s),
        "Gram iteration, 6 steps (circular, upper bound)": lambda k, n, s: gram_iteration_norm(k, n),
        "convspectra zero padding (default rtol)": lambda k, n, s: cs.operator_norm(k, n, stride=s, padding=1),
        "power iteration, 50 steps (zero padding)": lambda k, n, s: power_iteration_norm(k, n, s, 1, 50),
        "power iteration, 200 steps (zero padding)": lambda k, n, s: power_iteration_norm(k, n, s, 1, 200),
    }
    stride_one = [layer for layer in layers if layer[2] == 1]  # Gram iteration as published has no stride
    seconds = {name: 0.0 for name in methods}
    errors: dict[str, list[float]] = {name: [] for name in methods}
    for _, kernel, stride, n in stride_one:
        reference = {
            "circular": float(cs.operator_norm(kernel, n, stride=stride)),
            "zero": float(cs.operator_norm(kernel, n, stride=stride, padding=1, rtol=1e-12)),
        }
        for name, method in methods.items():
            samples = []
            for _ in range(repeats):
                value, t = timed(method, kernel, n, stride)
                samples.append(t)
            seconds[name] += statistics.median(samples)
            truth = reference["circular" if "circular" in name else "zero"]
            errors[name].append(abs(value - truth) / truth)
    return {
        "layers": len(stride_one),
        "rows": [
            {"method": name, "total_seconds": seconds[name], "max_relative_error": max(errors[name])}
            for name in methods
        ],
    }


def print_compare(title: str, result: dict[str, Any]) -> None:
    print(
        f"\n{title} (input {result['input_size']}x{result['input_size']}, {len(result['rows'])} layers, float64, "
        f"median of {result['repeats']}):"
    )
    print(
        f"  operator_norm {result['total_seconds_operator_norm']:.2f} s vs all singular values "
        f"{result['total_seconds_singular_values']:.2f} s: {result['speedup_total']:.1f}x in total; per layer "
        f"median {result['speedup_median_layer']:.1f}x, worst {result['speedup_min_layer']:.2f}x; max relative error "
        f"{result['max_relative_error']:.1e}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (seconds)")
    parser.add_argument("--suites", default="trained,random,padded,peers")
    parser.add_argument("--nets", default="32", help="pretrained CIFAR ResNet depths for 'trained' (20,32,44,56)")
    parser.add_argument("--size", type=int, default=224, help="input size for 'trained' (default 224)")
    parser.add_argument("--repeats", type=int, default=None, help="repeats (default 1 for trained, 3 otherwise)")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    suites = args.suites.split(",")
    info = machine()
    print("machine: " + json.dumps(info))
    results: dict[str, Any] = {"machine": info}
    resnet32 = pretrained_layers(32)
    if resnet32 is None:
        print(
            f"pretrained weights not found under ${DATA_ENV}={os.environ.get(DATA_ENV)!r}: "
            "the trained, padded and peers suites are skipped"
        )
    if args.quick:
        resnet32 = resnet32[:6] if resnet32 else None
    if "trained" in suites and resnet32 is not None:
        layers = []
        for depth in [int(d) for d in args.nets.split(",")]:
            found = pretrained_layers(depth)
            if found is None:
                print(f"resnet{depth}: weights absent, skipped")
                continue
            layers += [(f"resnet{depth}.{name}", k, s, n) for name, k, s, n in found]
        if args.quick:
            layers = layers[:4]
        size = 64 if args.quick else args.size
        results["trained"] = compare_suite(layers, size, args.repeats or 1)
        print_compare(f"trained kernels, ResNet {args.nets}", results["trained"])
    if "random" in suites:
        rng = np.random.default_rng(0)
        shapes = [(16, 16), (32, 8)] if args.quick else RESNET50_3X3
        layers = [(f"{c}@{n}", rng.standard_normal((c, c, 3, 3)) * math.sqrt(2 / (9 * c)), 1, n) for c, n in shapes]
        result = {"rows": []}
        rows = []
        for name, kernel, stride, n in layers:
            rows += compare_suite([(name, kernel, stride, n)], n, args.repeats or (1 if args.quick else 3))["rows"]
        total_norm = sum(r["seconds_operator_norm"] for r in rows)
        total_all = sum(r["seconds_singular_values"] for r in rows)
        result = {
            "rows": rows,
            "total_seconds_operator_norm": total_norm,
            "total_seconds_singular_values": total_all,
            "speedup_total": total_all / total_norm,
            "speedup_min_layer": min(r["seconds_singular_values"] / r["seconds_operator_norm"] for r in rows),
            "max_relative_error": max(r["relative_error"] for r in rows),
        }
        results["random"] = result
        print(
            f"\nrandom Gaussian kernels, ResNet-50 3x3 shapes at 224: operator_norm {total_norm:.2f} s vs all "
            f"singular values {total_all:.2f} s: {result['speedup_total']:.2f}x (worst layer "
            f"{result['speedup_min_layer']:.2f}x); max relative error {result['max_relative_error']:.1e}"
        )
    if "padded" in suites and resnet32 is not None:
        results["padded"] = padded_suite(resnet32, args.repeats or (1 if args.quick else 3))
        p = results["padded"]
        print(
            f"\nzero padding 1 at native sizes (ResNet-32, {len(p['rows'])} layers): exact zero-padded norm takes "
            f"{p['time_ratio_zero_over_circular_median']:.1f}x the circular norm's time (median; worst "
            f"{p['time_ratio_zero_over_circular_max']:.1f}x; totals {p['total_seconds_zero_padded']:.2f} s vs "
            f"{p['total_seconds_circular']:.2f} s); certified bracket relative gap <= "
            f"{p['bracket_relative_gap_max']:.1e}; "
            f"zero-padded / circular norm >= {p['zero_over_circular_min']:.3f}"
        )
    if "peers" in suites and resnet32 is not None:
        results["peers"] = peers_suite(resnet32, args.repeats or (1 if args.quick else 3))
        print(f"\npeers on ResNet-32's {results['peers']['layers']} stride-1 layers at native sizes (totals):")
        for row in results["peers"]["rows"]:
            print(
                f"  {row['method']:<50} {row['total_seconds']:8.3f} s   "
                f"max relative error {row['max_relative_error']:.1e}"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
