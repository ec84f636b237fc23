"""Benchmark: this checkout against a previous version of convspectra, in the same run.

The previous version is extracted from git (``--baseline-ref``, default ``HEAD~1``) or read from
a folder holding its ``convspectra`` package (``--baseline-src``), and imported side by side under
another name, so both run in one process on the same kernels, interleaved repeat by repeat. For
each case the script prints both medians, the ratio previous / current (above 1: the current code
is faster) and the largest difference between the two results relative to the result's scale.

Cases: the full spectrum (ResNet-50's 3x3 and 1x1 shapes), the exact circular operator norm
(random and smooth kernels), the zero-padded norm (ResNet-32 shapes), one projection round of
the 31 ResNet-32 convolutions (``clip_operator_norm_many``) and the whole-model report of
ResNet-20.

Run ``python benchmarks/bench_versions.py --baseline-ref 57eb2a5`` (``--quick`` for a smoke run,
``--json FILE`` to keep the numbers).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

import convspectra as current
from convspectra.experiments.machine import machine_description

ROOT = Path(__file__).resolve().parents[1]


def load_version(package_dir: Path, name: str = "convspectra_baseline") -> ModuleType:
    """Import the ``convspectra`` package in ``package_dir`` under ``name`` (its relative imports follow)."""
    spec = importlib.util.spec_from_file_location(
        name, package_dir / "__init__.py", submodule_search_locations=[str(package_dir)]
    )
    if spec is None or spec.loader is None:
        raise SystemExit(f"--baseline: no convspectra package in {package_dir}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def extract_ref(ref: str, folder: Path) -> Path:
    """``git archive`` of ``src/convspectra`` at ``ref`` into ``folder``; returns the package folder."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "src/convspectra"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder / "src" / "convspectra"


def _scale(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    if isinstance(value, list):
        return np.concatenate([_scale(v).ravel() for v in value])
    return np.asarray(value, dtype=np.float64)


def cases(quick: bool) -> list[tuple[str, Callable[[ModuleType], Any]]]:
    """(name, function of the package) pairs; each returns what is compared between versions."""
    rng = np.random.default_rng(0)
    shapes_3x3 = [(16, 16), (32, 8)] if quick else [(64, 56), (128, 28), (256, 14), (512, 7)]
    out: list[tuple[str, Callable[[ModuleType], Any]]] = []
    for channels, size in shapes_3x3:
        kernel = rng.standard_normal((channels, channels, 3, 3)) * np.sqrt(2 / (9 * channels))
        out.append(
            (
                f"singular_values {channels}x{channels}x3x3 @ {size}",
                lambda cs, k=kernel, n=size: cs.singular_values(k, n),
            )
        )
    one = rng.standard_normal((256, 64, 1, 1) if not quick else (32, 16, 1, 1))
    out.append((f"singular_values {one.shape[0]}x{one.shape[1]}x1x1 @ 56", lambda cs, k=one: cs.singular_values(k, 56)))
    flat = rng.standard_normal((64, 64, 3, 3) if not quick else (16, 16, 3, 3))
    smooth = flat * 0.1 + np.abs(rng.standard_normal((*flat.shape[:2], 1, 1)))
    size = 56 if not quick else 16
    out.append((f"operator_norm random {flat.shape[0]}ch @ {size}", lambda cs, k=flat, n=size: cs.operator_norm(k, n)))
    out.append(
        (f"operator_norm smooth {flat.shape[0]}ch @ {size}", lambda cs, k=smooth, n=size: cs.operator_norm(k, n))
    )
    for channels, size in [(16, 32), (64, 8)] if not quick else [(8, 8)]:
        kernel = rng.standard_normal((channels, channels, 3, 3)) * np.sqrt(2 / (9 * channels))
        out.append(
            (
                f"operator_norm padding=1 {channels}ch @ {size}",
                lambda cs, k=kernel, n=size: cs.operator_norm(k, n, padding=1),
            )
        )
    resnet32 = [(16, 3, 32, 1)] + [(16, 16, 32, 1)] * 10 + [(32, 16, 32, 2)] + [(32, 32, 16, 1)] * 9
    resnet32 += [(64, 32, 16, 2)] + [(64, 64, 8, 1)] * 9
    if quick:
        resnet32 = resnet32[:4]
    kernels = [rng.standard_normal((o, i, 3, 3)) * np.sqrt(2 / (9 * i)) for o, i, _, _ in resnet32]
    sizes = [[n, n] for _, _, n, _ in resnet32]  # a list of per-kernel sizes: the same meaning in every version
    strides = [s for _, _, _, s in resnet32]
    out.append(
        (
            f"clip_operator_norm_many {len(kernels)} ResNet-32 convs",
            lambda cs: cs.clip_operator_norm_many(kernels, sizes, 1.0, stride=strides),
        )
    )
    try:
        import torch
    except ImportError:
        return out
    torch.manual_seed(0)

    def report(cs: ModuleType) -> Any:
        from importlib import import_module

        analysis = import_module(f"{cs.__name__}.analysis")
        model = import_module(f"{cs.__name__}.models").resnet20()
        torch.manual_seed(0)
        for parameter in model.parameters():
            torch.nn.init.normal_(parameter, std=0.1)
        result = analysis.spectral_report(model, (3, 16, 16) if quick else (3, 32, 32))
        return [layer.sigma_max for layer in result.layers]

    out.append(("spectral_report resnet20 circular", report))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline-ref", default="HEAD~1", help="git revision of the previous version")
    parser.add_argument("--baseline-src", help="folder holding the previous version's convspectra package")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        package = Path(args.baseline_src) if args.baseline_src else extract_ref(args.baseline_ref, Path(folder))
        previous = load_version(package)
        machine = machine_description()
        print(
            f"machine: {machine['cpu']}, {machine['cores']} cores, numpy {machine['numpy']}, BLAS {machine['blas']}, "
            f"load average {machine.get('load_average')}"
        )
        print(f"previous: {args.baseline_src or args.baseline_ref}; current: {Path(current.__file__).parent}\n")
        rows = []
        header = f"{'case':<48} {'previous':>10} {'current':>10} {'prev/cur':>9} {'max rel diff':>13}"
        print(header)
        print("-" * len(header))
        for name, function in cases(args.quick):
            times: dict[str, list[float]] = {"previous": [], "current": []}
            results: dict[str, Any] = {}
            for repeat in range(args.repeats + 1):  # the first round warms up and is not timed
                for label, package_module in (("previous", previous), ("current", current)):
                    start = time.perf_counter()
                    results[label] = function(package_module)
                    if repeat:
                        times[label].append(time.perf_counter() - start)
            old, new = _scale(results["previous"]), _scale(results["current"])
            diff = float(np.abs(old - new).max() / max(np.abs(old).max(), 1e-300)) if old.shape == new.shape else None
            med = {label: statistics.median(values) for label, values in times.items()}
            rows.append({"case": name, **{f"{k}_seconds": v for k, v in med.items()}, "max_rel_diff": diff})
            shown = f"{diff:.1e}" if diff is not None else "shape differs"
            ratio = med["previous"] / med["current"]
            print(f"{name:<48} {med['previous']:>9.3f}s {med['current']:>9.3f}s {ratio:>8.2f}x {shown:>13}", flush=True)
        total_old = sum(row["previous_seconds"] for row in rows)
        total_new = sum(row["current_seconds"] for row in rows)
        print(f"\ntotal: previous {total_old:.2f} s, current {total_new:.2f} s, ratio {total_old / total_new:.2f}x")
        if args.json:
            Path(args.json).write_text(json.dumps({"machine": machine, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
