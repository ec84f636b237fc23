"""Benchmark: ``convspectra report MODEL --padding model`` on five ImageNet models at 224x224, end to end.

For each model (default: torchvision's resnet50, resnext50_32x4d, mobilenet_v3_large,
efficientnet_b0, convnext_tiny, random weights) the whole command runs in a fresh process:
wall time, peak resident memory of that process (``os.wait4``), the report's own time, and from
its JSON the count of layers whose own-padding norm is exact, only a certified bracket (by
status) or failed. The baseline, measured in the same run on the same model, is the circular
report (``--padding circular``: the paper's spectra only); the ratio is printed.

Needs torchvision (the models); run it with a Python that has it and this checkout on the path::

    PYTHONPATH=src /work/venv-tv/bin/python benchmarks/report_imagenet.py
    PYTHONPATH=src python benchmarks/report_imagenet.py --models resnet50 --repeats 3 --json out.json

Options: ``--models a,b``, ``--layer-timeout S`` (passed to the command), ``--repeats N`` (medians),
``--no-baseline``, ``--keep DIR`` (the reports' JSON files), ``--json FILE`` (the results).
``--quick`` runs the built-in CIFAR ResNet-20 at 8x8 instead (a smoke run; no torchvision).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from convspectra.experiments.machine import machine_description

MODELS = ("resnet50", "resnext50_32x4d", "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny")


def run_report(model: str, padding: str, out: Path, extra: list[str]) -> dict[str, Any]:
    """One ``convspectra report`` process: wall seconds, peak RSS (bytes), exit status and its JSON."""
    command = [sys.executable, "-m", "convspectra", "report", model, "--padding", padding, "--quiet"]
    command += ["--json", str(out), *extra]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert process.stderr is not None
    err = process.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    result: dict[str, Any] = {"wall_s": wall, "peak_rss_bytes": usage.ru_maxrss * 1024, "exit": process.returncode}
    if process.returncode != 0:
        result["stderr"] = err.strip().splitlines()[-1:] if err.strip() else []
    if out.exists():
        document = json.loads(out.read_text())
        layers = document["layers"]
        statuses = collections.Counter(
            "failed" if layer["error"] else (layer["sigma_max_model_status"] or "none") for layer in layers
        )
        result.update(
            report_s=document["seconds"],
            layers=len(layers),
            complete=document["complete"],
            statuses=dict(statuses),
            slowest_layer=max(((layer["seconds"], layer["name"]) for layer in layers), default=(0.0, "")),
        )
    return result


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(row[key] for row in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--layer-timeout", type=float, default=None)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--keep", type=Path, default=None, help="folder for the reports' JSON files")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="smoke run: CIFAR ResNet-20 at 8x8")
    args = parser.parse_args(argv)
    models = ["resnet20"] if args.quick else [name for name in args.models.split(",") if name]
    extra = ["--layer-timeout", str(args.layer_timeout)] if args.layer_timeout is not None else []
    shape = ["--input-shape", "3", "8", "8"] if args.quick else []
    folder = args.keep or Path(tempfile.mkdtemp(prefix="report-imagenet-"))
    folder.mkdir(parents=True, exist_ok=True)
    info = machine_description()
    print("machine: " + json.dumps(info))
    print(f"command: convspectra report MODEL --padding model --quiet --json FILE {' '.join(extra)}".rstrip())
    results: dict[str, Any] = {"machine": info, "options": {"layer_timeout": args.layer_timeout}, "models": {}}
    header = (
        f"{'model':<20} {'layers':>6} {'exact':>5} {'bracket':>7} {'failed':>6} {'wall s':>7} {'report s':>8} "
        f"{'peak RSS':>9} {'circ. s':>7} {'ratio':>6}  slowest layer"
    )
    print(header)
    print("-" * len(header))
    for model in models:
        runs = [
            run_report(model, "model", folder / f"{model}-model-{k}.json", [*shape, *extra])
            for k in range(args.repeats)
        ]
        base = []
        if not args.no_baseline:
            base = [
                run_report(model, "circular", folder / f"{model}-circular-{k}.json", shape) for k in range(args.repeats)
            ]
        results["models"][model] = {"model": runs, "circular": base}
        last = runs[-1]
        if "layers" not in last:
            print(f"{model:<20} failed: exit {last['exit']} {' '.join(last.get('stderr', []))}")
            continue
        statuses = last["statuses"]
        bracket = sum(count for status, count in statuses.items() if status.startswith("bracket"))
        wall = _median(runs, "wall_s")
        circular = _median(base, "wall_s") if base else None
        seconds, name = last["slowest_layer"]
        peak = max(run["peak_rss_bytes"] for run in runs) / 2**30
        counts = f"{last['layers']:>6} {statuses.get('exact', 0):>5} {bracket:>7} {statuses.get('failed', 0):>6}"
        times = f"{wall:>7.1f} {_median(runs, 'report_s'):>8.1f} {peak:>5.2f} GiB"
        baseline = f"{circular:>7.1f} {wall / circular:>6.2f}" if circular else f"{'-':>7} {'-':>6}"
        print(f"{model:<20} {counts} {times} {baseline}  {name} ({seconds:.1f} s)", flush=True)
    print(f"(wall: the whole command, medians of {args.repeats}; peak RSS: the largest; reports in {folder})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
