"""The nn benchmark scripts run (smoke mode) and their accuracy figures hold; no timing is asserted."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_digits_training_check_keeps_every_norm_within_the_bound_after_each_projection():
    pytest.importorskip("sklearn", reason='scikit-learn is not installed (pip install "convspectra[demo]")')
    script = load("check_digits_training")
    results = script.run(epochs=1, every=2, batch=32, train_subset=128)  # 4 optimizer steps
    arms = results["arms"]
    assert arms["baseline"]["projections"] == 0 and arms["baseline"]["max_sigma_over_bound_after_projection"] is None
    for name in ("clip", "clip+rescale"):
        assert arms[name]["projections"] == 2 and arms[name]["steps"] == 4
        assert 0.0 <= arms[name]["test_accuracy"] <= 1.0
    # one clip-and-restrict iteration from the initial weights does not reach the ball; the rescale does
    assert arms["clip"]["max_sigma_over_bound_after_projection"] > 1 + 1e-3
    assert arms["clip+rescale"]["max_sigma_over_bound_after_projection"] <= 1 + 1e-3
    assert max(arms["clip+rescale"]["final_norms"].values()) <= results["max_norm"] * (1 + 1e-3)


def test_training_overhead_benchmark_quick_run(tmp_path, capsys):
    script = load("bench_training_overhead")
    out = tmp_path / "overhead.json"
    assert script.main(["--quick", "--json", str(out)]) == 0
    assert capsys.readouterr().out.startswith("machine: ")
    results = json.loads(out.read_text())
    (run,) = [r for r in results["runs"] if r["device"] == "cpu"]
    assert run["layers"] == 31
    assert run["max_abs_difference_vs_direct_core_call"] == 0.0  # the projector is the core, bit for bit
    assert run["max_sigma_over_bound_after_one_round"] < run["max_sigma_over_bound_before"]
    assert run["end_to_end"]["projections"] == 2
    assert {"gram+eigh, on the weights' device", "svd"} <= set(run["projection"])
    assert len(results["layer_costs"]) == 2
