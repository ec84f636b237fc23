"""benchmarks/bench_projection.py runs (smoke mode) and its accuracy figures hold; no timing is asserted."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_projection.py"


def test_projection_benchmark_quick_run(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_projection", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "bench.json"
    assert module.main(["--quick", "--json", str(out)]) == 0
    assert capsys.readouterr().out.startswith("machine: ")
    results = json.loads(out.read_text())
    scale = results["max_abs_kernel_entry"]
    assert results["max_abs_diff_vs_paper_stride1"]
    for diff in results["max_abs_diff_vs_paper_stride1"].values():
        assert diff <= 1e-9 * max(1.0, scale)
    assert results["max_abs_diff_loop_vs_batched"] <= 1e-12 * max(1.0, scale)
    assert results["max_abs_diff_exact_strides_1_vs_n_workers"] <= 1e-12 * max(1.0, scale)
    # one round pulls every norm down towards max_norm
    for before, after in zip(results["operator_norm_before"], results["operator_norm_after_one_round"], strict=True):
        assert after < before
