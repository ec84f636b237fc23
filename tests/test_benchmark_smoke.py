"""The benchmark script runs (smoke mode) and its accuracy figures hold; no timing is asserted."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from convspectra.models import find_pretrained

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_singular_values.py"


def test_benchmark_quick_run_reports_every_suite(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_singular_values", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "bench.json"
    assert module.main(["--quick", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("machine: ")
    results = json.loads(out.read_text())
    errors = results["resnet50"]["max_error_vs_paper_float64_relative_to_sigma_max"]
    assert errors["convspectra float64"] <= 1e-12
    assert errors["convspectra float32"] <= 1e-5
    for row in results["resnet50_1x1"]["rows"]:
        assert row.get("max_error_vs_paper", 0.0) <= 1e-12
    for row in results["small"]["rows"]:
        assert row["max_error_vs_dense"] <= 1e-12


def test_operator_norm_benchmark_quick_run(tmp_path, capsys):
    path = BENCHMARK.parent / "bench_operator_norm.py"
    spec = importlib.util.spec_from_file_location("bench_operator_norm", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "norm.json"
    assert module.main(["--quick", "--suites", "trained,random,padded,peers", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["random"]["max_relative_error"] <= 1e-12
    weights_present = find_pretrained("resnet32") is not None  # under $CONVSPECTRA_DATA, as the benchmark looks
    assert ("trained" in results) == weights_present
    if weights_present:
        assert results["trained"]["max_relative_error"] <= 1e-12
        for row in results["padded"]["rows"]:
            assert row["bracket"][0] <= row["zero_padded"] <= row["bracket"][1]
        errors = {row["method"]: row["max_relative_error"] for row in results["peers"]["rows"]}
        assert errors["convspectra circular (exact)"] <= 1e-12
        assert errors["convspectra zero padding (default rtol)"] <= 1e-6


def test_jax_benchmark_quick_run(tmp_path, capsys):
    pytest.importorskip("jax", reason="the JAX benchmark needs jax (pip install convspectra[jax])")
    path = BENCHMARK.parent / "bench_jax.py"
    spec = importlib.util.spec_from_file_location("bench_jax", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "jax.json"
    assert module.main(["--quick", "--repeats", "1", "--json", str(out)]) == 0
    assert capsys.readouterr().out.startswith("machine: ")
    results = json.loads(out.read_text())
    assert {row["function"] for row in results["rows"]} == {"singular_values", "operator_norm", "clip_operator_norm"}
    for row in results["rows"]:
        limit = 1e-9 if row["dtype"] == "float64" else 1e-5
        assert row["jax_cpu_max_error_relative_to_sigma_max"] <= limit, row
        assert row["jax_cpu_compile_seconds"] > 0 and row["seconds"]["jax_cpu"] > 0
