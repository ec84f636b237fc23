"""Benchmark: the zero-padded ``operator_norm`` against the circular one on ResNet-50's 53 convolutions.

Every ``Conv2d`` of torchvision's ResNet-50 at the spatial size it sees for a 224x224 input, with
the padding of the model, read from the shared layer-shapes table
(``$CONVSPECTRA_DATA/layer-shapes/torchvision-conv-layers.json``; the benchmark says so and stops
when it is absent). Random He-initialised kernels, float64. For each distinct layer, in the same
process, the circular ``operator_norm`` and the zero-padded ``operator_norm`` are timed
alternately ``--repeats`` times and the medians compared (``padded / circular``); then, untimed,
``operator_norm_bounds`` gives the bracket's relative gap, and its peak traced memory
(``tracemalloc``, NumPy's allocations) is printed beside the library's own estimate and the 4 GiB
default budget.

``--suite aspp`` times DeepLabV3's ASPP convolutions (256 <- 2048 3x3, dilation = padding 12, 24,
36; the table's own shapes) at 1x1 to 4x4 inputs instead, against the norm of the centre tap,
after one untimed call (the first in a process pays lazy imports); beside the wall median it
prints the process CPU time per call, which a loaded machine does not inflate by waiting.

Run ``python benchmarks/bench_padded_norm.py`` (``--repeats``, ``--quick`` for the three smallest
layers, ``--suite resnet50|aspp``, ``--json FILE``). The machine is printed with the results.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

import convspectra as cs
from convspectra.norm._budget import request_bytes
from convspectra.norm._request import resolve_request

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_singular_values import machine

_TABLE = Path("layer-shapes") / "torchvision-conv-layers.json"


def table_path() -> Path | None:
    """The layer-shapes table under ``$CONVSPECTRA_DATA`` (or the shared data beside the repository)."""
    roots = [os.environ.get("CONVSPECTRA_DATA"), str(Path(__file__).resolve().parents[2] / "shared" / "data")]
    for root in roots:
        if root and (Path(root) / _TABLE).is_file():
            return Path(root) / _TABLE
    return None


def layers(model: str) -> list[tuple[tuple[int, ...], int, int, int, int, int]]:
    """``(weight shape, input size, stride, padding, dilation, groups)`` of every conv of ``model``."""
    path = table_path()
    if path is None:
        raise SystemExit(f"layer-shapes table not found ({_TABLE} under $CONVSPECTRA_DATA): nothing to benchmark")
    entries = json.loads(path.read_text())["models"][model]["layers"]
    return [
        (tuple(e["weight_shape"]), e["input_hw"][0], e["stride"][0], e["padding"][0], e["dilation"][0], e["groups"])
        for e in entries
    ]


def median_time(function: Any, repeats: int, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """``(last value, median seconds)`` of ``repeats`` calls."""
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = function(*args, **kwargs)
        times.append(time.perf_counter() - start)
    return value, statistics.median(times)


def run_resnet50(repeats: int, quick: bool, progress: bool = False) -> dict[str, Any]:
    convs = layers("resnet50")
    counts = Counter(convs)
    shapes = sorted(counts, key=lambda c: (c[1], int(np.prod(c[0]))))
    if quick:
        shapes = shapes[:3]
    rng = np.random.default_rng(0)
    rows = []
    for shape, n, stride, padding, dilation, groups in shapes:
        kernel = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))
        geometry = dict(stride=stride, dilation=dilation, groups=groups)
        t_circ, t_pad = [], []
        for _ in range(repeats):  # alternately, so that both see the same machine load
            _, seconds = median_time(cs.operator_norm, 1, kernel, n, **geometry)
            t_circ.append(seconds)
            _, seconds = median_time(cs.operator_norm, 1, kernel, n, padding=padding, **geometry)
            t_pad.append(seconds)
        tracemalloc.start()
        bounds = cs.operator_norm_bounds(kernel, n, padding=padding, **geometry)  # untimed: its bracket
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        estimate = request_bytes(resolve_request(kernel, n, padding=padding, **geometry), want_bracket=True)
        circ, pad = statistics.median(t_circ), statistics.median(t_pad)
        rows.append(
            {
                "layer": f"{shape[2]}x{shape[3]} s{stride} p{padding} {shape[1] * groups}->{shape[0]} @{n}",
                "count": counts[(shape, n, stride, padding, dilation, groups)],
                "circular_s": circ,
                "padded_s": pad,
                "ratio": pad / circ,
                "relative_gap": bounds.relative_gap,
                "converged": bounds.converged,
                "peak_mib": peak / 2**20,
                "estimate_mib": estimate / 2**20,
                "method": bounds.method,
            }
        )
        if progress:
            r = rows[-1]
            print(
                f"  {r['layer']}: padded/circular {r['ratio']:.2f} ({r['padded_s']:.2f} s)", file=sys.stderr, flush=True
            )
    expanded = [r["ratio"] for r in rows for _ in range(r["count"])]
    return {
        "machine": machine(),
        "repeats": repeats,
        "rows": rows,
        "layers": len(expanded),
        "median_ratio": statistics.median(expanded),
        "worst_ratio": max(expanded),
        "total_circular_s": sum(r["count"] * r["circular_s"] for r in rows),
        "total_padded_s": sum(r["count"] * r["padded_s"] for r in rows),
        "max_peak_mib": max(r["peak_mib"] for r in rows),
    }


def run_aspp(repeats: int) -> dict[str, Any]:
    convs = [c for c in layers("deeplabv3_resnet50") if c[4] > 1 and c[0][2] == 3 and c[3] == c[4] and c[4] >= 12]
    rng = np.random.default_rng(0)
    rows = []
    for shape, _, stride, padding, dilation, _groups in convs:
        kernel = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))
        centre = float(np.linalg.norm(kernel[:, :, 1, 1], 2))
        if not rows:  # untimed: the first call in a process pays the lazy imports (SciPy's BLAS wrappers)
            cs.operator_norm_bounds(kernel, 1, padding=padding, dilation=dilation, stride=stride)
        for n in (1, 2, 3, 4):
            cpu = time.process_time()
            bounds, seconds = median_time(
                cs.operator_norm_bounds, repeats, kernel, n, padding=padding, dilation=dilation, stride=stride
            )
            rows.append(
                {
                    "layer": f"3x3 d{dilation} {shape[1]}->{shape[0]} @{n}",
                    "seconds": seconds,
                    "cpu_s_per_call": (time.process_time() - cpu) / repeats,  # all threads: wall minus waiting
                    "value": bounds.value,
                    "relative_error_vs_centre_tap": abs(bounds.value - centre) / centre,
                    "relative_gap": bounds.relative_gap,
                }
            )
    return {"machine": machine(), "repeats": repeats, "rows": rows, "max_seconds": max(r["seconds"] for r in rows)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--suite", choices=("resnet50", "aspp"), default="resnet50")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    print(f"machine: {json.dumps(machine())}")
    if args.suite == "aspp":
        result = run_aspp(repeats)
        print(f"medians of {repeats}")
        for r in result["rows"]:
            print(
                f"{r['layer']:28s} {r['seconds']:8.3f}s (cpu {r['cpu_s_per_call']:.3f}s) value {r['value']:.10f} "
                f"vs centre tap {r['relative_error_vs_centre_tap']:.1e} gap {r['relative_gap']:.1e}"
            )
        print(f"slowest {result['max_seconds']:.3f} s")
    else:
        result = run_resnet50(repeats, args.quick, progress=True)
        print(
            f"medians of {repeats}; padded = operator_norm with the model's padding, circular = operator_norm; "
            "gap and peak: operator_norm_bounds"
        )
        print(
            f"{'layer':34s} {'count':>5s} {'circular':>9s} {'padded':>9s} {'ratio':>6s} "
            f"{'gap':>8s} {'peak':>8s} {'estimate':>9s}"
        )
        for r in result["rows"]:
            print(
                f"{r['layer']:34s} {r['count']:5d} {r['circular_s']:8.3f}s {r['padded_s']:8.3f}s {r['ratio']:6.2f} "
                f"{r['relative_gap']:8.1e} {r['peak_mib']:6.0f}MiB {r['estimate_mib']:7.0f}MiB"
                + ("" if r["converged"] else " NOT CONVERGED")
            )
        print(
            f"{result['layers']} layers: padded/circular median {result['median_ratio']:.2f}, worst "
            f"{result['worst_ratio']:.2f}; totals circular {result['total_circular_s']:.1f} s, padded "
            f"{result['total_padded_s']:.1f} s; largest peak {result['max_peak_mib']:.0f} MiB (budget 4096 MiB)"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
