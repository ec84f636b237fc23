"""The nn benchmark scripts run (smoke mode) and their accuracy figures hold; no timing is asserted."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def one_torch_thread():
    """Small models on a shared 2-core box: one torch thread avoids OpenMP contention (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_digits_training_check_keeps_every_norm_within_the_bound_after_each_projection(one_torch_thread):
    pytest.importorskip("sklearn", reason='scikit-learn is not installed (pip install "convspectra[demo]")')
    script = load("check_digits_training")
    results = script.run(epochs=1, every=1, batch=32, train_subset=64)  # 2 optimizer steps
    arms = results["arms"]
    assert arms["baseline"]["projections"] == 0 and arms["baseline"]["max_sigma_over_bound_after_projection"] is None
    for name in ("clip", "clip+rescale", "clip10+rescale"):
        assert arms[name]["projections"] == 2 and arms[name]["steps"] == 2
        assert 0.0 <= arms[name]["test_accuracy"] <= 1.0
    # one clip-and-restrict iteration from the initial weights does not reach the ball; the rescale does
    assert arms["clip"]["max_sigma_over_bound_after_projection"] > 1 + 1e-3
    for name in ("clip+rescale", "clip10+rescale"):
        assert arms[name]["max_sigma_over_bound_after_projection"] <= 1 + 1e-3
        assert max(arms[name]["final_norms"].values()) <= results["max_norm"] * (1 + 1e-3)


def test_training_overhead_benchmark_quick_run(tmp_path, capsys, one_torch_thread):
    script = load("bench_training_overhead")
    out = tmp_path / "overhead.json"
    assert script.main(["--quick", "--threads", "1", "--json", str(out)]) == 0
    assert capsys.readouterr().out.startswith("machine: ")
    results = json.loads(out.read_text())
    (run,) = [r for r in results["runs"] if r["device"] == "cpu"]
    assert run["layers"] == 31
    assert run["max_abs_difference_vs_direct_core_call"] == 0.0  # the projector is the core, bit for bit
    assert run["max_sigma_over_bound_after_one_round"] < run["max_sigma_over_bound_before"]
    assert run["end_to_end"]["projections"] == 2
    assert {"gram+eigh, on the weights' device", "svd"} <= set(run["projection"])
    assert len(results["layer_costs"]) == 2
