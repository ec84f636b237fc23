"""Benchmark: ``operator_norm`` against the full spectrum on ResNet-50's 53 convolutions.

Random He-initialised kernels (flat spectra: the hard case for the branch and bound) at every
convolution of torchvision's ResNet-50 (v1.5: the stride of a bottleneck's first block on its
3x3 convolution) at its native size for a 224x224 input, circular padding, float64. For each
distinct layer shape, the two calls are timed alternately in the same run, ``--repeats`` times,
and the medians compared: the ratio ``singular_values time / operator_norm time`` (above 1:
``operator_norm`` is faster), and whether both give the same largest value (to 1e-12
relatively). A call shorter than 0.05 s is repeated until 0.05 s have passed (its mean per call is
one sample). The totals weigh each shape by how many of the 53 layers have it.

``--threads 1`` runs both with one worker and BLAS at one thread (``limit_threads(1)``); the
default is the library's default workers. The machine is printed with the results.

Run ``python benchmarks/bench_norm_vs_spectrum.py`` (``--repeats``, ``--threads``, ``--quick``
for a smoke run on the smallest shapes, ``--json FILE``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

import convspectra as cs
from convspectra._threads import limit_threads

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_singular_values import machine


def resnet50_layers() -> list[tuple[int, int, int, int, int]]:
    """``(out, in, k, stride, input size)`` of ResNet-50's 53 convolutions (torchvision v1.5, 224 input)."""
    layers = [(64, 3, 7, 2, 224)]  # the stem; then a stride-2 max pool: 56
    size, inplanes = 56, 64
    for planes, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for block in range(blocks):
            s = stride if block == 0 else 1
            layers.append((planes, inplanes, 1, 1, size))  # conv1 1x1
            layers.append((planes, planes, 3, s, size))  # conv2 3x3 (carries the stride)
            out_size = size // s
            layers.append((4 * planes, planes, 1, 1, out_size))  # conv3 1x1
            if block == 0:
                layers.append((4 * planes, inplanes, 1, s, size))  # downsample 1x1
            inplanes, size = 4 * planes, out_size
    return layers


def timed(function: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """``(value, seconds per call)``, calling again until 0.05 s have passed (milliseconds calls)."""
    calls, start = 0, time.perf_counter()
    while True:
        value = function(*args, **kwargs)
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= 0.05:
            return value, elapsed / calls


def run(repeats: int, threads: int | None, quick: bool) -> dict[str, Any]:
    layers = resnet50_layers()
    counts = Counter(layers)
    shapes = sorted(counts, key=lambda shape: (shape[4], shape[0] * shape[1] * shape[2] ** 2))
    if quick:
        shapes = shapes[:3]
    rng = np.random.default_rng(0)
    workers = None if threads is None else threads
    rows = []
    context = limit_threads(threads) if threads is not None else contextlib.nullcontext()
    with context:
        for out_c, in_c, k, stride, n in shapes:
            kernel = rng.standard_normal((out_c, in_c, k, k)) * np.sqrt(2.0 / (in_c * k * k))
            t_norm, t_all = [], []
            for _ in range(repeats):
                norm, seconds = timed(cs.operator_norm, kernel, n, stride=stride, workers=workers)
                t_norm.append(seconds)
                values, seconds = timed(cs.singular_values, kernel, n, stride=stride, workers=workers)
                t_all.append(seconds)
            norm_s, all_s = statistics.median(t_norm), statistics.median(t_all)
            rows.append(
                {
                    "layer": f"{k}x{k} s{stride} {in_c}->{out_c} @{n}",
                    "count": counts[(out_c, in_c, k, stride, n)],
                    "operator_norm_s": norm_s,
                    "singular_values_s": all_s,
                    "ratio": all_s / norm_s,
                    "same_value": bool(abs(float(norm) - float(values[0])) <= 1e-12 * float(values[0])),
                }
            )
    total_norm = sum(r["count"] * r["operator_norm_s"] for r in rows)
    total_all = sum(r["count"] * r["singular_values_s"] for r in rows)
    return {
        "machine": machine(),
        "threads": "default workers" if threads is None else f"{threads} (workers and BLAS)",
        "repeats": repeats,
        "rows": rows,
        "layers": sum(r["count"] for r in rows),
        "total_operator_norm_s": total_norm,
        "total_singular_values_s": total_all,
        "total_ratio": total_all / total_norm,
        "min_ratio": min(r["ratio"] for r in rows),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    result = run(1 if args.quick else args.repeats, args.threads, args.quick)
    print(f"machine: {json.dumps(result['machine'])}")
    print(f"threads: {result['threads']}; medians of {result['repeats']}")
    print(f"{'layer':30s} {'count':>5s} {'operator_norm':>14s} {'singular_values':>16s} {'ratio':>7s} same")
    for r in result["rows"]:
        print(
            f"{r['layer']:30s} {r['count']:5d} {r['operator_norm_s']:13.4f}s {r['singular_values_s']:15.4f}s "
            f"{r['ratio']:7.2f} {r['same_value']}"
        )
    print(
        f"total over {result['layers']} layers: operator_norm {result['total_operator_norm_s']:.2f} s, "
        f"singular_values {result['total_singular_values_s']:.2f} s, ratio {result['total_ratio']:.2f}; "
        f"min ratio {result['min_ratio']:.2f}"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
