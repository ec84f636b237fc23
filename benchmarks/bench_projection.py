"""Benchmark: one operator-norm projection round of every conv layer of a CIFAR ResNet-32.

One round = clip every frequency's singular values at ``--max-norm`` and restrict to the 3x3
support (``clip_operator_norm(..., iterations=1)``), for all 31 conv layers, float64, NumPy.
Input sizes (32, 16, 8) are captured from a forward pass of ``convspectra.models.resnet32``;
the weights are the pretrained checkpoint found by :func:`convspectra.models.find_pretrained`
in the folder named by ``$CONVSPECTRA_DATA`` when it is there (else He-initialised Gaussian
kernels, said in the output).

Methods, interleaved in every repeat, medians reported:

* ``paper``: the paper's NumPy method (Section 3: full FFT at n, one full SVD per frequency,
  clip, inverse FFT, crop), :func:`convspectra.baselines.paper_clip_operator_norm`, layer by
  layer. It has no stride, so the two strided layers are projected as stride 1 (the
  "stride-1 semantics"); BLAS single-threaded (with two busy cores, OpenBLAS's own threads
  make every method several times slower and the comparison meaningless).
* ``convspectra stride-1``: :func:`convspectra.clip_operator_norm_many` with the same
  stride-1 semantics (compared with the paper for equality), with 1 worker and with every core.
* ``convspectra exact strides``: the real layers (stride 2 where the network has it).
* ``convspectra one call per layer``: :func:`convspectra.clip_operator_norm` in a loop (no
  batching across layers of the same shape).
* ``drifted kernels``: the training regime. The layers projected 20 rounds, then perturbed by
  1% noise: most frequencies are inside the ball and are skipped by the cheap bounds.

Wall time and this process's CPU time are both reported (medians); on a shared machine the CPU
time is the steadier measure of work.

Run ``CONVSPECTRA_DATA=/path/to/data python benchmarks/bench_projection.py`` (``--quick`` for a
smoke run, ``--json FILE`` to keep the numbers; by default they go to
``benchmarks/results/bench_projection.json``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import convspectra as cs
from convspectra._threads import resolve_workers
from convspectra.baselines import paper_clip_operator_norm
from convspectra.experiments.machine import machine_description


def resnet32_layers() -> tuple[list[np.ndarray], list[int], list[int], str]:
    """The 31 conv kernels (OIHW float64), their input sizes and strides, and where the weights came from."""
    import torch

    from convspectra.models import find_pretrained, load_weights, resnet32

    torch.manual_seed(0)
    model = resnet32()
    source = "He-initialised (no checkpoint under $CONVSPECTRA_DATA)"
    checkpoint = find_pretrained("resnet32")
    if checkpoint is not None:
        load_weights(model, checkpoint)
        source = f"pretrained {checkpoint.name}"
    sizes: dict[str, int] = {}
    convs = [(name, module) for name, module in model.named_modules() if isinstance(module, torch.nn.Conv2d)]
    hooks = [
        module.register_forward_hook(
            lambda mod, inputs, output, name=name: sizes.__setitem__(name, inputs[0].shape[-1])
        )
        for name, module in convs
    ]
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    for hook in hooks:
        hook.remove()
    kernels = [module.weight.detach().double().numpy().copy() for _, module in convs]
    return kernels, [sizes[name] for name, _ in convs], [module.stride[0] for _, module in convs], source


def timed(function: Callable[[], Any]) -> tuple[Any, float, float]:
    """(value, wall seconds, CPU seconds of this process)."""
    start, cpu = time.perf_counter(), time.process_time()
    value = function()
    return value, time.perf_counter() - start, time.process_time() - cpu


def run(quick: bool, repeats: int, max_norm: float) -> dict[str, Any]:
    from threadpoolctl import threadpool_limits

    kernels, sizes, strides, source = resnet32_layers()
    if quick:  # the first layer, the strided layers and one of each stage
        keep = [0, 1, 11, 21, 22]
        kernels, sizes, strides = [kernels[i] for i in keep], [sizes[i] for i in keep], [strides[i] for i in keep]
    workers = resolve_workers(None)

    def paper() -> list[np.ndarray]:
        with threadpool_limits(limits=1, user_api="blas"):
            return [
                paper_clip_operator_norm(k.transpose(2, 3, 1, 0), (n, n), max_norm).transpose(3, 2, 0, 1)
                for k, n in zip(kernels, sizes, strict=True)
            ]

    methods: dict[str, Callable[[], list[np.ndarray]]] = {
        "paper (stride-1 semantics)": paper,
        "convspectra stride-1, 1 worker": lambda: cs.clip_operator_norm_many(kernels, sizes, max_norm, workers=1),
        f"convspectra stride-1, {workers} workers": lambda: cs.clip_operator_norm_many(
            kernels, sizes, max_norm, workers=workers
        ),
        f"convspectra exact strides, {workers} workers": lambda: cs.clip_operator_norm_many(
            kernels, sizes, max_norm, stride=strides, workers=workers
        ),
        "convspectra exact strides, 1 worker": lambda: cs.clip_operator_norm_many(
            kernels, sizes, max_norm, stride=strides, workers=1
        ),
        "convspectra one call per layer": lambda: [
            cs.clip_operator_norm(k, n, max_norm, stride=s, workers=1)
            for k, n, s in zip(kernels, sizes, strides, strict=True)
        ],
    }
    # The training regime: kernels already projected (20 rounds, exact strides), then a small
    # drift (1% Gaussian noise, like a few hundred SGD steps): most frequencies stay inside.
    settled = cs.clip_operator_norm_many(kernels, sizes, max_norm, stride=strides, iterations=3 if quick else 20)
    rng = np.random.default_rng(0)
    drifted = [k + 0.01 * np.abs(k).mean() * rng.normal(size=k.shape) for k in settled]
    methods["convspectra exact strides, drifted kernels, 1 worker"] = lambda: cs.clip_operator_norm_many(
        drifted, sizes, max_norm, stride=strides, workers=1
    )
    times: dict[str, list[float]] = {name: [] for name in methods}
    cpu_times: dict[str, list[float]] = {name: [] for name in methods}
    outputs: dict[str, list[np.ndarray]] = {}
    for _ in range(repeats):
        for name, method in methods.items():
            outputs[name], seconds, cpu = timed(method)
            times[name].append(seconds)
            cpu_times[name].append(cpu)
    paper_out = outputs["paper (stride-1 semantics)"]
    scale = max(float(np.abs(k).max()) for k in kernels)

    def max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
        return max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True))

    exact = outputs[f"convspectra exact strides, {workers} workers"]
    norms_before = [
        float(cs.singular_values(k, n, stride=s)[0]) for k, n, s in zip(kernels, sizes, strides, strict=True)
    ]
    norms_after = [float(cs.singular_values(k, n, stride=s)[0]) for k, n, s in zip(exact, sizes, strides, strict=True)]
    medians = {name: statistics.median(values) for name, values in times.items()}
    cpu_medians = {name: statistics.median(values) for name, values in cpu_times.items()}
    baseline = medians["paper (stride-1 semantics)"]
    cpu_baseline = cpu_medians["paper (stride-1 semantics)"]
    return {
        "machine": machine_description(),
        "workers": workers,
        "weights": source,
        "layers": len(kernels),
        "input_sizes": sizes,
        "strides": strides,
        "max_norm": max_norm,
        "repeats": repeats,
        "seconds": times,
        "median_seconds": medians,
        "speedup_vs_paper": {name: baseline / value for name, value in medians.items()},
        "cpu_seconds": cpu_times,
        "median_cpu_seconds": cpu_medians,
        "cpu_speedup_vs_paper": {name: cpu_baseline / value for name, value in cpu_medians.items()},
        "max_abs_diff_vs_paper_stride1": {
            name: max_diff(outputs[name], paper_out)
            for name in outputs
            if "stride-1" in name and not name.startswith("paper")
        },
        "max_abs_kernel_entry": scale,
        "max_abs_diff_exact_strides_1_vs_n_workers": max_diff(exact, outputs["convspectra exact strides, 1 worker"]),
        "max_abs_diff_loop_vs_batched": max_diff(exact, outputs["convspectra one call per layer"]),
        "operator_norm_before": norms_before,
        "operator_norm_after_one_round": norms_after,
    }


def report(results: dict[str, Any]) -> None:
    info = results["machine"]
    print(
        f"machine: {info['cpu']}, {info['cores']} cores ({results['workers']} workers), BLAS {info['blas']}, "
        f"numpy {info['numpy']}, torch {info['torch']}, python {info['python']}, "
        f"load average {info.get('load_average', 'unknown')}"
    )
    print(
        f"ResNet-32, {results['layers']} conv layers ({results['weights']}), one projection round at "
        f"max_norm={results['max_norm']}, float64, medians of {results['repeats']} interleaved runs:"
    )
    print(f"  {'method':<52} {'wall s':>8} {'vs paper':>9} {'CPU s':>8} {'vs paper':>9}")
    for name, seconds in results["median_seconds"].items():
        cpu = results["median_cpu_seconds"][name]
        print(
            f"  {name:<52} {seconds:>8.3f} {results['speedup_vs_paper'][name]:>8.2f}x "
            f"{cpu:>8.3f} {results['cpu_speedup_vs_paper'][name]:>8.2f}x"
        )
    for name, diff in results["max_abs_diff_vs_paper_stride1"].items():
        largest = results["max_abs_kernel_entry"]
        print(f"  max |difference| vs paper, {name}: {diff:.1e} (largest |kernel entry| {largest:.2f})")
    print(f"  max |difference| loop vs batched: {results['max_abs_diff_loop_vs_batched']:.1e}")
    before, after = results["operator_norm_before"], results["operator_norm_after_one_round"]
    print(
        f"  operator norms (exact strides): before {min(before):.2f}..{max(before):.2f}, "
        f"after one round {min(after):.3f}..{max(after):.3f}"
    )
    print("  (CPU s: this process's CPU time, summed over its threads; a shared machine: only ratios")
    print("  measured in the same run are meaningful)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="five layers, one repeat: a smoke run")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved runs per method (median reported)")
    parser.add_argument("--max-norm", type=float, default=1.0, help="the bound c (default 1.0)")
    parser.add_argument("--json", metavar="FILE", help="where to write the results (default benchmarks/results/)")
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else max(1, args.repeats)
    results = run(args.quick, repeats, args.max_norm)
    report(results)
    path = Path(args.json) if args.json else Path(__file__).resolve().parent / "results" / "bench_projection.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
