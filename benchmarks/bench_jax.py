"""Benchmark: the JAX path (jitted) against the NumPy engine, on real 3x3 layer shapes, in one run.

For each layer (CIFAR ResNet 16/32/64 channels at 32/16/8, ResNet-50's 64 -> 64 at 56 and
256 -> 256 at 14; He-initialised Gaussian HWIO kernels) and each precision (float64, float32)
it times

* ``singular_values`` (all of them), ``operator_norm`` (wrap-around, exact) and one round of
  ``clip_operator_norm`` at half the norm,
* for the NumPy engine (``convspectra.*``, its own worker threads) and for ``convspectra.jax``
  under ``jax.jit`` on the CPU (and on the GPU when JAX has one).

The JAX times exclude compilation: each function is lowered and compiled first (that time is
reported apart), then the compiled call is timed with ``block_until_ready``. Every time is the
median over ``--repeats`` runs, methods interleaved; the ratio is NumPy time / JAX time (above 1:
JAX faster). The largest difference from the NumPy engine, relative to sigma_max, is reported
as a check. The machine (CPU, cores, thread settings, versions) is printed first.

Run ``python benchmarks/bench_jax.py`` (``--quick`` for a smoke run, ``--layers 16@32,64@56`` for a
subset, ``--json FILE`` to keep the numbers). Compiling the large layers takes minutes on a small CPU
(XLA constant-folds the static tables).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)  # float64 rows; the float32 rows stay float32

import jax.numpy as jnp  # noqa: E402

import convspectra as cs  # noqa: E402
import convspectra.jax as csj  # noqa: E402
from convspectra._threads import resolve_workers  # noqa: E402
from convspectra.experiments.machine import machine_description  # noqa: E402

# (channels, input size): CIFAR ResNet stages, then two ResNet-50 3x3 layers.
LAYERS = [(16, 32), (32, 16), (64, 8), (64, 56), (256, 14)]
QUICK_LAYERS = [(8, 8), (16, 4)]
FUNCTIONS = ("singular_values", "operator_norm", "clip_operator_norm")


def machine() -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, BLAS, versions, thread settings and JAX's devices."""
    threads = {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "XLA_FLAGS")}
    return {
        **machine_description(),
        "jax": jax.__version__,
        "jax_devices": [str(device) for device in jax.devices()],
        "numpy_engine_workers": resolve_workers(None),
        "thread_environment": threads,
    }


def gpu_device() -> Any:
    try:
        devices = jax.devices("gpu")
    except RuntimeError:
        return None
    return devices[0] if devices else None


def numpy_call(name: str, kernel: np.ndarray, n: int, bound: float) -> Any:
    if name == "singular_values":
        return cs.singular_values(kernel, n, layout="HWIO")
    if name == "operator_norm":
        return cs.operator_norm(kernel, n, layout="HWIO", padding="circular")
    return cs.clip_operator_norm(kernel, n, bound, iterations=1, layout="HWIO")


def jax_function(name: str, n: int, bound: float) -> Callable[[Any], Any]:
    if name == "singular_values":
        return lambda k: csj.singular_values(k, n)
    if name == "operator_norm":
        return lambda k: csj.operator_norm(k, n)
    return lambda k: csj.clip_operator_norm(k, n, bound, iterations=1)


def compile_for(jitted: Any, kernel: Any) -> Any:
    return jitted.lower(kernel).compile()


def run_compiled(compiled: Any, kernel: Any) -> Any:
    return jax.block_until_ready(compiled(kernel))


def timed(function: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = function()
    return value, time.perf_counter() - start


def layer_rows(channels: int, n: int, dtype: Any, repeats: int, gpu: Any) -> list[dict[str, Any]]:
    rng = np.random.default_rng(channels * 1000 + n)
    kernel = (rng.normal(size=(3, 3, channels, channels)) * np.sqrt(2.0 / (9 * channels))).astype(dtype)
    sigma = float(cs.operator_norm(kernel.astype(np.float64), n, layout="HWIO", padding="circular"))
    bound = 0.5 * sigma
    rows = []
    for name in FUNCTIONS:
        row: dict[str, Any] = {"layer": f"{channels}->{channels} @ {n}", "dtype": np.dtype(dtype).name}
        row["function"] = name
        targets = {"cpu": jax.devices("cpu")[0]}
        if gpu is not None:
            targets["gpu"] = gpu
        compiled, inputs = {}, {}
        for where, device in targets.items():
            inputs[where] = jax.device_put(jnp.asarray(kernel), device)
            jitted = jax.jit(jax_function(name, n, bound))
            compiled[where], row[f"jax_{where}_compile_seconds"] = timed(partial(compile_for, jitted, inputs[where]))
        measured: dict[str, list[float]] = {"numpy": [], **{f"jax_{where}": [] for where in targets}}
        for _ in range(repeats):
            expected, seconds = timed(partial(numpy_call, name, kernel, n, bound))
            measured["numpy"].append(seconds)
            for where in targets:
                ours, seconds = timed(partial(run_compiled, compiled[where], inputs[where]))
                measured[f"jax_{where}"].append(seconds)
                error = float(np.abs(np.asarray(ours, np.float64) - np.asarray(expected, np.float64)).max()) / sigma
                row[f"jax_{where}_max_error_relative_to_sigma_max"] = error
        row["seconds"] = {method: statistics.median(values) for method, values in measured.items()}
        for where in targets:
            row[f"ratio_numpy_over_jax_{where}"] = row["seconds"]["numpy"] / row["seconds"][f"jax_{where}"]
        rows.append(row)
    return rows


def report(results: dict[str, Any]) -> None:
    gpu = results["gpu"] is not None
    print(f"\nmedians of {results['repeats']} runs (seconds; ratio = NumPy engine / JAX, above 1: JAX faster)")
    header = f"  {'layer':<16} {'dtype':<8} {'function':<19} {'numpy':>9} {'jax cpu':>9} {'ratio':>7} {'compile':>8}"
    header += f" {'err/smax':>9}"
    if gpu:
        header += f" {'jax gpu':>9} {'ratio':>7}"
    print(header)
    for row in results["rows"]:
        s = row["seconds"]
        line = f"  {row['layer']:<16} {row['dtype']:<8} {row['function']:<19} {s['numpy']:>9.4f} {s['jax_cpu']:>9.4f}"
        line += f" {row['ratio_numpy_over_jax_cpu']:>6.2f}x {row['jax_cpu_compile_seconds']:>7.2f}s"
        line += f" {row['jax_cpu_max_error_relative_to_sigma_max']:>9.1e}"
        if gpu:
            line += f" {s['jax_gpu']:>9.4f} {row['ratio_numpy_over_jax_gpu']:>6.2f}x"
        print(line)
    if not gpu:
        print("  (no GPU device in JAX: GPU columns omitted)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two small layers, 2 repeats (smoke run)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per measurement (default 5, quick 2)")
    parser.add_argument("--layers", default=None, help='e.g. "16@32,64@56": channels@input size (default: all five)')
    parser.add_argument("--json", default=None, help="write the results to this file")
    args = parser.parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 5)
    layers = QUICK_LAYERS if args.quick else LAYERS
    if args.layers:
        layers = [(int(c), int(n)) for c, n in (item.split("@") for item in args.layers.split(","))]
    info = machine()
    print("machine: " + json.dumps(info), flush=True)
    gpu = gpu_device()
    rows = []
    for channels, n in layers:
        for dtype in (np.float64, np.float32):
            rows.extend(layer_rows(channels, n, dtype, repeats, gpu))
            print(f"  measured {channels}->{channels} @ {n} {np.dtype(dtype).name}", flush=True)
    results = {"machine": info, "repeats": repeats, "gpu": None if gpu is None else str(gpu), "rows": rows}
    report(results)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
