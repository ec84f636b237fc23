"""The command line, in-process and as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from convspectra import __version__
from convspectra.cli import main


@pytest.fixture
def digits():
    """The demo trains on scikit-learn's digits, part of the test extra."""
    pytest.importorskip("sklearn", reason="the demo needs scikit-learn: pip install 'convspectra[demo]'")


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"convspectra {__version__}"


def test_demo_in_process_checks_every_layer_against_the_dense_svd(digits, tmp_path, capsys):
    out = tmp_path / "demo.json"
    assert main(["demo", "--epochs", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and "sigma_max" in printed
    result = json.loads(out.read_text())
    assert [layer["kernel_shape"] for layer in result["layers"]] == [[16, 1, 3, 3], [32, 16, 3, 3], [32, 32, 3, 3]]
    assert [layer["input_shape"] for layer in result["layers"]] == [[8, 8], [8, 8], [4, 4]]
    for layer in result["layers"]:
        assert layer["max_abs_error"] <= 1e-12 * layer["sigma_max"]
        assert (
            layer["num_singular_values"]
            == min(layer["kernel_shape"][0], layer["kernel_shape"][1] * 4 ** (layer["stride"][0] == 2))
            * (layer["input_shape"][0] // layer["stride"][0]) ** 2
        )
    assert result["test_accuracy"] > 0.5  # ten classes: chance is 0.1
    assert result["lipschitz_upper_bound"] > 0


def test_demo_as_a_subprocess(digits):
    done = subprocess.run(
        [sys.executable, "-m", "convspectra", "demo", "--epochs", "1", "--json", "-"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["layers"]) == 3


@pytest.mark.parametrize("argv", [["demo", "--epochs", "0"], ["demo", "--epochs", "many"], ["nonsense"], []])
def test_bad_arguments_exit_with_status_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        code = main(argv)
        raise SystemExit(code)
    assert info.value.code == 2


def test_unwritable_json_path_is_refused_before_any_work(tmp_path, capsys):
    code = main(["demo", "--epochs", "1", "--json", str(tmp_path / "missing" / "out.json")])
    assert code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("convspectra: error: argument --json:") and captured.err.count("\n") == 1
    assert "missing" in captured.err
