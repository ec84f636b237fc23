"""Reports that finish and fail soft: per-layer time budget, bracket only, partial reports, interruptions (issue 12)."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import convspectra as cs
from convspectra.analysis import REPORT_SCHEMA, layers_report, spectral_report, validate_report
from convspectra.analysis.records import MISSING_LAYER, MODEL_NORM_STATUSES, write_atomically
from convspectra.analysis.schema import REPORT_SCHEMA_V2
from convspectra.analysis.walk import LayerCall
from convspectra.cli import main
from convspectra.errors import ConvergenceWarning, MemoryBudgetError, ParameterError, ParameterTypeError

SMALL = ["--input-shape", "3", "8", "8"]


def _zero_padded_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=2),
        nn.ReLU(),
        nn.Conv2d(4, 3, 2, padding=1, dilation=2),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 5),
    )


def _dense_norm(module: nn.Module, size: tuple[int, int]) -> float:
    """The reference: the largest singular value of the matrix PyTorch's own conv applies (float64)."""
    conv = module.double()
    cin = conv.in_channels
    basis = torch.eye(cin * size[0] * size[1], dtype=torch.float64).reshape(-1, cin, *size)
    with torch.no_grad():
        columns = F.conv2d(basis, conv.weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
    return float(np.linalg.svd(columns.reshape(basis.shape[0], -1).numpy(), compute_uv=False)[0])


def _assert_brackets_hold(report, model: nn.Module) -> None:
    """Every conv's certified bracket contains the dense reference norm (a rounding allowance of 1e-12)."""
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    for layer, conv in zip(report.layers, convs, strict=False):
        exact = _dense_norm(conv, layer.input_shape)
        assert layer.sigma_max_model_lower <= exact * (1 + 1e-12), layer.name
        assert exact <= layer.sigma_max_model_upper * (1 + 1e-12), layer.name


# --- the time budget and the bracket only, in the library ----------------------------------------------


def test_exact_layers_say_so_and_agree_with_the_dense_reference():
    model = _zero_padded_model()
    report = spectral_report(model, (2, 8, 8), padding="model", layer_timeout=600)
    assert [layer.sigma_max_model_status for layer in report.layers] == ["exact"] * 4
    for layer, conv in zip(report.layers, [model[0], model[2], model[4]], strict=False):
        assert layer.sigma_max_model == pytest.approx(_dense_norm(conv, layer.input_shape), rel=1e-6)
    _assert_brackets_hold(report, model)
    assert report.layer_timeout == 600 and report.refine and report.complete and report.missing_layers == []


def test_bracket_only_reports_the_certified_bracket_and_no_value(monkeypatch):
    seen = []
    public = cs.operator_norm_bounds

    def recording(*args, **kwargs):
        seen.append(kwargs)
        return public(*args, **kwargs)

    monkeypatch.setattr(cs, "operator_norm_bounds", recording)
    model = _zero_padded_model()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # asked for: no warning
        report = spectral_report(model, (2, 8, 8), padding="model", refine=False)
    assert [kwargs.get("refine") for kwargs in seen] == [False] * 3
    statuses = [layer.sigma_max_model_status for layer in report.layers]
    assert statuses == ["bracket (requested)"] * 3 + ["exact"]  # the Linear head is always exact
    assert all(layer.sigma_max_model is None for layer in report.layers[:3])
    assert report.layers[3].sigma_max_model == report.layers[3].sigma_max
    _assert_brackets_hold(report, model)
    assert not report.refine
    # the network bound uses the certified upper ends, which a bracket has
    assert report.network_bound.value is not None
    document = json.loads(report.to_json())
    validate_report(document)
    assert document["refine"] is False and [layer["sigma_max_model_status"] for layer in document["layers"]] == statuses
    rows = list(csv.DictReader(io.StringIO(report.to_csv())))
    assert [row["sigma_max_model_status"] for row in rows] == statuses and rows[0]["sigma_max_model"] == ""
    assert report.to_table().count("bracket in [") == 3


def test_a_spent_time_budget_gives_the_real_bracket_recorded_as_a_time_limit():
    model = _zero_padded_model()
    report = spectral_report(model, (2, 8, 8), padding="model", layer_timeout=1e-9)  # spent before the solver
    assert [layer.sigma_max_model_status for layer in report.layers[:3]] == ["bracket (time limit)"] * 3
    assert all(layer.sigma_max_model is None and "time budget" in layer.note for layer in report.layers[:3])
    _assert_brackets_hold(report, model)
    assert "layer_timeout" in report.to_table()  # the notes say why
    validate_report(report.to_dict())


def test_the_solver_gets_what_is_left_of_the_layer_budget_and_its_stop_is_recorded(monkeypatch):
    limits = []

    def stopping(module, size, **kwargs):
        limits.append(kwargs.get("time_limit"))
        assert "refine" not in kwargs
        return cs.NormBounds(1.0, 3.0, 1.0, False, "Lanczos (4 products with A^H A); stopped at time_limit=0.1 s")

    monkeypatch.setattr(cs, "operator_norm_bounds", stopping)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1))
    report = spectral_report(model, (1, 8, 8), padding="model", layer_timeout=30.0)
    assert len(limits) == 2 and all(0 < limit <= 30.0 for limit in limits)
    for layer in report.layers:
        assert layer.sigma_max_model_status == "bracket (time limit)"
        assert (layer.sigma_max_model_lower, layer.sigma_max_model, layer.sigma_max_model_upper) == (1.0, None, 3.0)


def test_statuses_are_those_the_schema_names():
    enum = REPORT_SCHEMA["properties"]["layers"]["items"]["properties"]["sigma_max_model_status"]["enum"]
    assert enum == [*MODEL_NORM_STATUSES, None]
    circular = spectral_report(nn.Sequential(nn.Conv2d(1, 2, 3, padding=1)), (1, 6, 6))
    assert circular.layers[0].sigma_max_model_status is None  # no own-padding norm asked for


@pytest.mark.parametrize(
    ("options", "error", "words"),
    [
        ({"layer_timeout": 5}, ParameterError, "layer_timeout: applies to the own-padding norms, expected padding="),
        ({"refine": False}, ParameterError, "refine: applies to the own-padding norms"),
        ({"padding": "model", "layer_timeout": 0}, ParameterError, "layer_timeout"),
        ({"padding": "model", "layer_timeout": -1.0}, ParameterError, "layer_timeout"),
        ({"padding": "model", "layer_timeout": "10"}, ParameterTypeError, "layer_timeout"),
        ({"padding": "model", "refine": "no"}, ParameterTypeError, "refine"),
    ],
)
def test_bad_norm_options_are_refused_before_any_work(options, error, words):
    with pytest.raises(error, match=words):
        spectral_report(nn.Sequential(nn.Conv2d(1, 2, 3, padding=1)), (1, 6, 6), **options)


# --- failing layers: recorded, never an abort -----------------------------------------------------------


def _solver_for_the_first_conv(monkeypatch, behaviour) -> list[dict]:
    """Make ``operator_norm_bounds`` on the first conv (2 input channels) do ``behaviour(kwargs)``; record its calls."""
    public = cs.operator_norm_bounds
    seen: list[dict] = []

    def solver(module, size, **kwargs):
        if module.in_channels == 2:
            seen.append(kwargs)
            return behaviour(lambda **changes: public(module, size, **{**kwargs, **changes}), kwargs)
        return public(module, size, **kwargs)

    monkeypatch.setattr(cs, "operator_norm_bounds", solver)
    return seen


def test_a_layer_raising_inside_the_solver_keeps_its_circular_numbers_and_is_recorded(monkeypatch):
    def raising(solve, kwargs):
        raise RuntimeError("LAPACK routine failed")

    _solver_for_the_first_conv(monkeypatch, raising)
    model = _zero_padded_model()
    report = spectral_report(model, (2, 8, 8), padding="model")
    first = report.layers[0]
    assert first.failed and first.error == "own-padding norm: RuntimeError: LAPACK routine failed"
    assert first.sigma_max == pytest.approx(float(cs.singular_values(model[0].weight.detach().double(), 8)[0]))
    assert first.sigma_max_model is first.sigma_max_model_upper is first.sigma_max_model_status is None
    assert all(layer.sigma_max_model_status == "exact" for layer in report.layers[1:])
    assert report.notes == [
        "layer '0' (Conv2d): its own-padding norm failed, its circular numbers are there: "
        "own-padding norm: RuntimeError: LAPACK routine failed"
    ]
    assert report.network_bound.value is None and "failed: own-padding norm" in report.network_bound.description
    validate_report(json.loads(report.to_json()))


def test_a_refinement_over_the_memory_budget_falls_back_to_the_bracket(monkeypatch):
    def tight_refinement(solve, kwargs):  # the solver's own refusal when refining; the bracket fits
        return solve(max_memory=1024) if kwargs.get("refine", True) else solve()

    seen = _solver_for_the_first_conv(monkeypatch, tight_refinement)
    model = _zero_padded_model()
    report = spectral_report(model, (2, 8, 8), padding="model")
    first = report.layers[0]
    assert [kwargs.get("refine", True) for kwargs in seen] == [True, False]
    assert first.sigma_max_model_status == "bracket (memory budget)" and first.sigma_max_model is None
    assert "over the memory budget (MemoryBudgetError: max_memory: " in first.note and not first.failed
    _assert_brackets_hold(report, model)
    assert report.notes == [] and report.network_bound.value is not None
    validate_report(report.to_dict())


def test_a_bracket_over_the_memory_budget_is_recorded_with_the_circular_numbers(monkeypatch):
    _solver_for_the_first_conv(monkeypatch, lambda solve, kwargs: solve(max_memory=1024))
    report = spectral_report(_zero_padded_model(), (2, 8, 8), padding="model")
    first = report.layers[0]
    assert first.error.startswith("own-padding norm: MemoryBudgetError: max_memory: ")
    assert first.sigma_max is not None and first.sigma_max_model_status is None
    assert len(report.notes) == 1 and report.notes[0].startswith("layer '0' (Conv2d): its own-padding norm failed")
    validate_report(report.to_dict())
    with pytest.raises(MemoryBudgetError):  # the refusal above is the solver's own
        cs.operator_norm_bounds(nn.Conv2d(2, 4, 3, padding=1), (8, 8), padding="module", refine=False, max_memory=1024)


# --- partial reports: the checkpoint hook and the files ------------------------------------------------


def test_checkpoint_sees_a_valid_partial_report_before_and_after_every_layer():
    model = _zero_padded_model()
    partial = []
    report = spectral_report(model, (2, 8, 8), padding="model", checkpoint=partial.append)
    names = ["0", "2", "4", "6"]
    assert [len(p.layers) for p in partial] == [0, 1, 2, 3, 4]
    assert [p.missing_layers for p in partial] == [names[k:] for k in range(5)]
    for k, p in enumerate(partial):
        assert not p.complete and p.network_bound.value is None and "partial" in p.network_bound.description
        assert [layer.name for layer in p.layers] == names[:k]
        document = json.loads(p.to_json())
        validate_report(document)
        assert document["complete"] is False and document["missing_layers"] == names[k:]
        assert "PARTIAL report" in p.to_table()
        rows = list(csv.DictReader(io.StringIO(p.to_csv())))
        assert [row["name"] for row in rows] == names  # one row per layer, reported or not
        assert [row["error"] == MISSING_LAYER for row in rows] == [i >= k for i in range(4)]
        assert all(row["sigma_max"] == "" for row in rows[k:]) and all(row["sigma_max"] for row in rows[:k])
    assert report.complete and report.missing_layers == [] and report.network_bound.value is not None
    assert [layer.sigma_max for layer in partial[-1].layers] == [layer.sigma_max for layer in report.layers]


def test_an_exception_in_the_checkpoint_stops_the_report():
    def interrupt(partial):
        if len(partial.layers) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        spectral_report(_zero_padded_model(), (2, 8, 8), checkpoint=interrupt)


def test_layers_report_takes_the_same_options():
    call = LayerCall("conv", nn.Conv2d(2, 3, 3, padding=1), (6, 6), 1, None, None)
    partial = []
    report = layers_report(
        [call], model_name="x", input_shape=(1, 2, 6, 6), padding="model", layer_timeout=1e-9, checkpoint=partial.append
    )
    assert report.layers[0].sigma_max_model_status == "bracket (time limit)"
    assert [p.missing_layers for p in partial] == [["conv"], []] and report.complete


def test_a_complete_report_missing_layers_is_invalid_and_version_2_files_still_validate():
    document = spectral_report(nn.Sequential(nn.Conv2d(1, 2, 3, padding=1)), (1, 6, 6)).to_dict()
    validate_report(document)
    with pytest.raises(ParameterError, match="missing_layers"):
        validate_report({**document, "missing_layers": ["x"]})
    validate_report({**document, "complete": False, "missing_layers": ["x"]})
    old = {key: value for key, value in document.items() if key not in ("layer_timeout", "refine", "complete")}
    del old["missing_layers"]
    old["schema_version"] = 2
    old["layers"] = [{k: v for k, v in layer.items() if k != "sigma_max_model_status"} for layer in old["layers"]]
    old["network_bound"] = {k: v for k, v in old["network_bound"].items() if k != "rules"}
    validate_report(old)  # a file written before version 3
    with pytest.raises(ParameterError, match="Additional properties"):
        validate_report({**old, "complete": True})
    assert REPORT_SCHEMA_V2["properties"]["schema_version"] == {"const": 2}


def test_atomic_writes_leave_the_old_file_when_the_rename_fails(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    write_atomically(path, "old\n")
    assert oct(path.stat().st_mode & 0o777) == "0o644"

    def failing(source, target):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError, match="disk full"):
        write_atomically(path, "new\n")
    assert path.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


# --- the command line ------------------------------------------------------------------------------------


def _interrupting_bar(monkeypatch, after: int) -> None:
    """A progress display whose callback raises KeyboardInterrupt once ``after`` layers are done (like Ctrl-C)."""
    import contextlib

    from convspectra.commands import _progress

    @contextlib.contextmanager
    def bar(description, *, enabled=None):
        def progress(done, total, label):
            if done == after:
                raise KeyboardInterrupt

        yield progress

    monkeypatch.setattr(_progress, "progress_bar", bar)


def test_ctrl_c_after_some_layers_leaves_valid_partial_files_and_exits_130(tmp_path, monkeypatch, capsys):
    _interrupting_bar(monkeypatch, after=3)
    files = ["--json", str(tmp_path / "r.json"), "--csv", str(tmp_path / "r.csv")]
    assert main(["report", "resnet20", *SMALL, "--padding", "model", *files]) == 130
    captured = capsys.readouterr()
    assert captured.out == ""  # no table for an unfinished report
    assert captured.err == (
        f"convspectra report: interrupted after 3 of 20 layers; the partial report (17 layers missing) is in "
        f"{tmp_path / 'r.json'}, {tmp_path / 'r.csv'}\n"
    )
    document = json.loads((tmp_path / "r.json").read_text())
    validate_report(document)
    assert document["complete"] is False and len(document["layers"]) == 3 and len(document["missing_layers"]) == 17
    assert document["missing_layers"][0] == "layer1.1.conv1" and document["missing_layers"][-1] == "linear"
    assert all(layer["sigma_max_model_status"] == "exact" for layer in document["layers"])
    rows = list(csv.DictReader(io.StringIO((tmp_path / "r.csv").read_text())))
    assert len(rows) == 20 and [row["error"] == MISSING_LAYER for row in rows] == [False] * 3 + [True] * 17
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


def test_a_finished_run_rewrites_its_files_as_complete(tmp_path, capsys):
    files = ["--json", str(tmp_path / "r.json"), "--csv", str(tmp_path / "r.csv")]
    assert main(["report", "resnet20", *SMALL, "--padding", "model", "--bracket-only", "--quiet", *files]) == 0
    document = json.loads((tmp_path / "r.json").read_text())
    validate_report(document)
    assert document["complete"] and document["missing_layers"] == [] and document["network_bound"]["value"]
    statuses = {layer["sigma_max_model_status"] for layer in document["layers"][:-1]}
    assert statuses == {"bracket (requested)"} and document["layers"][-1]["sigma_max_model_status"] == "exact"
    assert MISSING_LAYER not in (tmp_path / "r.csv").read_text()


def test_progress_lines_show_each_layer_with_elapsed_time_and_eta(capsys):
    argv = ["report", "resnet20", *SMALL, "--padding", "model", "--layer-timeout", "60", "--progress", "lines"]
    assert main([*argv, "--json", "-"]) == 0
    captured = capsys.readouterr()
    json.loads(captured.out)  # stdout carries the JSON alone
    lines = captured.err.splitlines()
    assert len(lines) == 21 and lines[0] == "layers 0/20 | next: conv1"
    assert lines[1].startswith("layers 1/20 | elapsed ") and ", ETA " in lines[1]
    assert "| conv1: exact in " in lines[1] and lines[1].endswith("| next: layer1.0.conv1")
    assert lines[-1].startswith("layers 20/20 | ") and "| linear: exact in " in lines[-1]


@pytest.mark.parametrize("option", [["--layer-timeout", "5"], ["--bracket-only"]])
def test_norm_options_need_padding_model(option, capsys):
    assert main(["report", "resnet20", *SMALL, *option]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"convspectra: error: {option[0]}: applies to the own-padding norms") and err.count("\n") == 1


def test_bad_layer_timeout_is_refused_by_the_parser(capsys):
    assert main(["report", "resnet20", "--padding", "model", "--layer-timeout", "0"]) == 2
    assert "expected a positive number of seconds, got '0'" in capsys.readouterr().err


# A report run in a subprocess that stops for good inside its third layer: the parent then kills it.
_STALLING_RUN = textwrap.dedent(
    """
    import pathlib, sys, time
    import convspectra.analysis.report as report
    from convspectra.cli import main

    engine, calls = report.singular_values, []

    def stalling(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # two layers are reported (and written): stall in the third
            pathlib.Path(sys.argv[1]).write_text("stalled")
            while True:
                time.sleep(0.05)
        return engine(*args, **kwargs)

    report.singular_values = stalling
    sys.exit(main(sys.argv[2:]))
    """
)


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_a_killed_run_leaves_a_valid_partial_json(how, tmp_path):
    script = tmp_path / "stalling.py"
    script.write_text(_STALLING_RUN)
    marker, out = tmp_path / "stalled", tmp_path / "r.json"
    argv = [sys.executable, str(script), str(marker), "report", "resnet20", *SMALL, "--json", str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(cs.__file__).parents[1]), *sys.path])}
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the run never reached its third layer"
            time.sleep(0.05)
        process.send_signal(getattr(signal, how))
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    if how == "SIGKILL":
        assert process.returncode == -signal.SIGKILL
    else:  # stopped like Ctrl-C: one line, its own exit status
        assert process.returncode == 143
        said = "convspectra report: terminated after 2 of 20 layers; the partial report (18 layers missing) is in"
        assert err == f"{said} {out}\n"
    document = json.loads(out.read_text())
    validate_report(document)
    assert document["complete"] is False and [layer["name"] for layer in document["layers"]] == [
        "conv1",
        "layer1.0.conv1",
    ]
    assert len(document["missing_layers"]) == 18 and document["missing_layers"][0] == "layer1.0.conv2"


def test_the_imagenet_report_benchmark_runs_and_counts_the_statuses(tmp_path, capsys):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "report_imagenet.py"
    spec = importlib.util.spec_from_file_location("report_imagenet", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "bench.json"
    assert module.main(["--quick", "--no-baseline", "--keep", str(tmp_path), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("machine: ") and "resnet20" in printed
    (run,) = json.loads(out.read_text())["models"]["resnet20"]["model"]
    assert run["exit"] == 0 and run["layers"] == 20 and run["complete"] and run["statuses"] == {"exact": 20}
    assert run["peak_rss_bytes"] > 0 and run["wall_s"] >= run["report_s"] > 0
