"""Benchmark: all singular values of conv layers, convspectra vs the paper's method vs dense SVD.

Suites (each baseline is measured in the same run, on the same kernels):

* ``resnet50``: the sixteen 3x3 convolutions of ResNet-50 at 224x224 input (3 x 64 channels at
  56x56, 4 x 128 at 28x28, 6 x 256 at 14x14, 3 x 512 at 7x7), He-initialised Gaussian kernels,
  float64 and float32, against the paper's NumPy method (FFT + one SVD per frequency).
* ``small``: 3x3 kernels on 16x16 inputs with few channels, where the dense matrix still fits,
  against the dense SVD of the operator (built with PyTorch's convolution) and the paper.

Every time is the median over ``--repeats`` runs (methods interleaved); the machine is printed.
Run ``python benchmarks/bench_singular_values.py`` (add ``--quick`` for a smoke run,
``--json FILE`` to keep the numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import convspectra as cs
from convspectra._threads import resolve_workers
from convspectra.baselines import paper_singular_values
from convspectra.experiments.machine import machine_description

RESNET50_3X3 = [(64, 56)] * 3 + [(128, 28)] * 4 + [(256, 14)] * 6 + [(512, 7)] * 3
QUICK_3X3 = [(16, 16)] * 2 + [(32, 8)] * 2
# ResNet-50's 36 1x1 convolutions at 224x224: (in, out, input size, stride, number of layers).
RESNET50_1X1 = [
    (64, 64, 56, 1, 1), (64, 256, 56, 1, 4), (256, 64, 56, 1, 2), (256, 128, 56, 1, 1),
    (128, 512, 28, 1, 4), (512, 128, 28, 1, 3), (512, 256, 28, 1, 1), (256, 1024, 14, 1, 6),
    (1024, 256, 14, 1, 5), (1024, 512, 14, 1, 1), (512, 2048, 7, 1, 3), (2048, 512, 7, 1, 2),
    (256, 512, 56, 2, 1), (512, 1024, 28, 2, 1), (1024, 2048, 14, 2, 1),
]  # fmt: skip
QUICK_1X1 = [(16, 32, 16, 1, 2), (32, 16, 8, 2, 1)]


def machine() -> dict[str, Any]:
    """What the numbers were measured on (CPU, cores, BLAS, versions, GPU, load) and the worker count."""
    return {**machine_description(), "workers": resolve_workers(None)}


def timed(function: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    value = function(*args)
    return value, time.perf_counter() - start


def paper_sorted(kernel_hwio: np.ndarray, n: int) -> np.ndarray:
    return np.sort(paper_singular_values(kernel_hwio, (n, n)).ravel())[::-1]


def resnet_suite(layers: list[tuple[int, int]], repeats: int, use_gpu: bool) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    kernels = [rng.normal(size=(3, 3, c, c)) * np.sqrt(2.0 / (9 * c)) for c, _ in layers]  # HWIO, He init
    methods: dict[str, Callable[[np.ndarray, int], Any]] = {
        "paper float64": lambda k, n: paper_sorted(k, n),
        "convspectra float64": lambda k, n: cs.singular_values(k, n, layout="HWIO"),
        "convspectra float64, 1 worker": lambda k, n: cs.singular_values(k, n, layout="HWIO", workers=1),
        "paper float32": lambda k, n: paper_sorted(k.astype(np.float32), n),
        "convspectra float32": lambda k, n: cs.singular_values(k.astype(np.float32), n, layout="HWIO"),
    }
    if use_gpu:
        import torch

        def gpu(k: np.ndarray, n: int, dtype: Any) -> Any:
            tensor = torch.from_numpy(k).to("cuda", dtype)
            values = cs.singular_values(tensor, n, layout="HWIO")
            torch.cuda.synchronize()
            return values.cpu().numpy()

        methods["convspectra float64, GPU"] = lambda k, n: gpu(k, n, torch.float64)
        methods["convspectra float32, GPU"] = lambda k, n: gpu(k, n, torch.float32)
        gpu(kernels[0], layers[0][1], torch.float32)  # warm up CUDA and cuSOLVER
    times: dict[str, list[list[float]]] = {name: [[] for _ in layers] for name in methods}
    errors: dict[str, float] = {name: 0.0 for name in methods}
    for _ in range(repeats):
        for index, (kernel, (_, n)) in enumerate(zip(kernels, layers, strict=True)):
            reference = None
            for name, method in methods.items():
                values, seconds = timed(method, kernel, n)
                times[name][index].append(seconds)
                if name == "paper float64":
                    reference = values
                else:
                    err = float(np.abs(np.asarray(values, dtype=np.float64) - reference).max() / reference[0])
                    errors[name] = max(errors[name], err)
    totals = {name: sum(statistics.median(t) for t in per_layer) for name, per_layer in times.items()}
    by_shape: dict[str, dict[str, float]] = {}
    for index, (c, n) in enumerate(layers):
        key = f"{c}ch@{n}x{n}"
        entry = by_shape.setdefault(key, {name: 0.0 for name in methods})
        for name in methods:
            entry[name] += statistics.median(times[name][index])
    return {
        "layers": len(layers),
        "total_seconds": totals,
        "by_shape_seconds": by_shape,
        "max_error_vs_paper_float64_relative_to_sigma_max": errors,
    }


def dense_singular_values(kernel: np.ndarray, n: int) -> np.ndarray:
    """The full-matrix method: the dense operator (PyTorch's conv on the identity basis), then its SVD."""
    from convspectra.operator import dense_matrix

    return np.linalg.svd(dense_matrix(kernel, n), compute_uv=False)


def one_by_one(kernel_hwio: np.ndarray, n: int, stride: int) -> np.ndarray:
    return cs.singular_values(kernel_hwio, n, layout="HWIO", stride=stride)


def one_by_one_suite(layers: list[tuple[int, int, int, int, int]], repeats: int) -> dict[str, Any]:
    """1x1 layers. The paper's method (stride 1 only) costs seconds per layer: it runs once per
    distinct shape and is weighted by the number of layers of that shape, like convspectra's median."""
    rng = np.random.default_rng(2)
    rows = []
    totals = {"paper, stride-1 layers": 0.0, "convspectra, stride-1 layers": 0.0, "convspectra, all layers": 0.0}
    for c_in, c_out, n, stride, count in layers:
        kernel = rng.normal(size=(1, 1, c_in, c_out)) * np.sqrt(2.0 / c_in)
        ours_times = []
        for _ in range(repeats):
            ours, seconds = timed(one_by_one, kernel, n, stride)
            ours_times.append(seconds)
        row: dict[str, Any] = {
            "in": c_in, "out": c_out, "input": n, "stride": stride, "layers": count,
            "convspectra_seconds": statistics.median(ours_times),
        }  # fmt: skip
        totals["convspectra, all layers"] += count * row["convspectra_seconds"]
        if stride == 1:
            paper, row["paper_seconds"] = timed(paper_sorted, kernel, n)
            row["max_error_vs_paper"] = float(np.abs(ours - paper).max() / paper[0])
            totals["paper, stride-1 layers"] += count * row["paper_seconds"]
            totals["convspectra, stride-1 layers"] += count * row["convspectra_seconds"]
        rows.append(row)
    return {"rows": rows, "total_seconds": totals}


def small_suite(channels: list[int], n: int, repeats: int) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    rows = []
    for c in channels:
        kernel = rng.normal(size=(c, c, 3, 3))
        hwio = np.transpose(kernel, (2, 3, 1, 0))
        measured: dict[str, list[float]] = {"dense SVD": [], "paper": [], "convspectra": []}
        for _ in range(repeats):
            dense, t_dense = timed(dense_singular_values, kernel, n)
            paper, t_paper = timed(paper_sorted, hwio, n)
            ours, t_ours = timed(cs.singular_values, kernel, n)
            measured["dense SVD"].append(t_dense)
            measured["paper"].append(t_paper)
            measured["convspectra"].append(t_ours)
        rows.append(
            {
                "channels": c,
                "input": n,
                "seconds": {name: statistics.median(values) for name, values in measured.items()},
                "max_error_vs_dense": float(np.abs(ours - dense).max() / dense[0]),
                "paper_max_error_vs_dense": float(np.abs(paper - dense).max() / dense[0]),
            }
        )
    return {"rows": rows}


def report_3x3(results: dict[str, Any]) -> None:
    resnet = results["resnet50"]
    totals = resnet["total_seconds"]
    print(f"\nResNet-50 3x3 layers ({resnet['layers']} layers, medians of {results['repeats']} runs):")
    print(f"  {'method':<32} {'seconds':>9} {'vs paper (same precision)':>26} {'max |err| / sigma_max':>22}")
    for name, seconds in totals.items():
        baseline = totals["paper float32" if "float32" in name else "paper float64"]
        err = resnet["max_error_vs_paper_float64_relative_to_sigma_max"][name]
        print(f"  {name:<32} {seconds:>9.2f} {baseline / seconds:>25.2f}x {err:>22.1e}")
    print("\n  by shape (seconds):")
    names = list(totals)
    print("  " + f"{'shape':<14}" + "".join(f"{name[:22]:>24}" for name in names))
    for shape, entry in resnet["by_shape_seconds"].items():
        print("  " + f"{shape:<14}" + "".join(f"{entry[name]:>24.3f}" for name in names))


def report_1x1(results: dict[str, Any]) -> None:
    one = results["resnet50_1x1"]
    print("\nResNet-50 1x1 layers (convspectra: median; paper: one run per shape, stride 1 only):")
    print(f"  {'in->out @ size, stride':<26} {'layers':>6} {'paper s':>9} {'ours s':>9} {'vs paper':>9} {'err':>9}")
    for row in one["rows"]:
        label = f"{row['in']}->{row['out']} @ {row['input']}, s{row['stride']}"
        if "paper_seconds" in row:
            paper = f"{row['paper_seconds']:>9.2f} {row['convspectra_seconds']:>9.4f} "
            paper += f"{row['paper_seconds'] / row['convspectra_seconds']:>8.0f}x {row['max_error_vs_paper']:>9.1e}"
        else:
            paper = f"{'n/a':>9} {row['convspectra_seconds']:>9.4f} {'n/a':>9}"
        print(f"  {label:<26} {row['layers']:>6} {paper}")
    t = one["total_seconds"]
    layers = sum(row["layers"] for row in one["rows"])
    speedup = t["paper, stride-1 layers"] / t["convspectra, stride-1 layers"]
    print(
        f"  weighted by layer count: paper {t['paper, stride-1 layers']:.1f} s vs convspectra "
        f"{t['convspectra, stride-1 layers']:.2f} s on the stride-1 layers ({speedup:.0f}x); "
        f"convspectra on all {layers} layers {t['convspectra, all layers']:.2f} s"
    )


def report_small(results: dict[str, Any]) -> None:
    rows = results["small"]["rows"]
    print(
        f"\n3x3 kernels on {rows[0]['input']}x{rows[0]['input']} inputs, float64 "
        "(dense SVD of the operator built by PyTorch's conv):"
    )
    print(
        f"  {'channels':>8} {'dense SVD s':>12} {'paper s':>9} {'ours s':>9} {'vs dense':>9} {'vs paper':>9} "
        f"{'ours err':>9}"
    )
    for row in rows:
        s = row["seconds"]
        print(
            f"  {row['channels']:>8} {s['dense SVD']:>12.3f} {s['paper']:>9.4f} {s['convspectra']:>9.4f} "
            f"{s['dense SVD'] / s['convspectra']:>8.0f}x {s['paper'] / s['convspectra']:>8.1f}x "
            f"{row['max_error_vs_dense']:>9.1e}"
        )


def report(results: dict[str, Any]) -> None:
    info = results["machine"]
    print(
        f"machine: {info['cpu']}, {info['cores']} cores, workers {info['workers']}, numpy {info['numpy']}, "
        f"BLAS {info['blas']}, torch {info['torch']}, GPU {info['gpu']}"
    )
    for key, show in (("resnet50", report_3x3), ("resnet50_1x1", report_1x1), ("small", report_small)):
        if key in results:
            show(results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes, one repeat: a smoke run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement (median reported)")
    parser.add_argument("--no-gpu", action="store_true", help="skip the GPU even when one is available")
    parser.add_argument(
        "--suites", nargs="+", choices=["3x3", "1x1", "small"], default=["3x3", "1x1", "small"], help="default: all"
    )
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    args = parser.parse_args(argv)
    info = machine()
    repeats = 1 if args.quick else args.repeats
    results: dict[str, Any] = {
        "machine": info,
        "repeats": repeats,
        "argv": sys.argv[1:],
        "env": {k: v for k, v in os.environ.items() if k.endswith("_NUM_THREADS")},
    }
    if "3x3" in args.suites:
        layers = QUICK_3X3 if args.quick else RESNET50_3X3
        results["resnet50"] = resnet_suite(layers, repeats, use_gpu=bool(info["gpu"]) and not args.no_gpu)
    if "1x1" in args.suites:
        results["resnet50_1x1"] = one_by_one_suite(QUICK_1X1 if args.quick else RESNET50_1X1, repeats)
    if "small" in args.suites and info["torch"]:
        results["small"] = small_suite([2, 4] if args.quick else [4, 8, 16], 8 if args.quick else 16, repeats)
    report(results)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
