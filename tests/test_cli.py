"""The command line, in-process and as a subprocess."""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import json
import re
import subprocess
import sys
import time

import numpy as np
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


# ---------------------------------------------------------------- reproduce: one verb for the paper, and its aliases


def _error_line(capsys) -> str:
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("convspectra: error: "), captured.err
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err, captured.err  # one line
    return captured.err


def _help(argv, capsys) -> str:
    assert main([*argv, "--help"]) == 0
    return capsys.readouterr().out


def _options(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z0-9][a-z0-9-]*", text)) - {"--help"}


@pytest.mark.parametrize(
    ("alias", "verb"), [(["bench", "figure1"], ["reproduce", "figure1"]), (["train"], ["reproduce", "figures2-3"])]
)
def test_aliases_have_the_options_of_reproduce_and_say_they_are_aliases(alias, verb, capsys):
    alias_help, verb_help = (" ".join(_help(argv, capsys).split()) for argv in (alias, verb))
    assert f"Alias of 'convspectra {' '.join(verb)}'" in alias_help
    assert _options(alias_help) == _options(verb_help) and len(_options(verb_help)) >= 8
    assert f"alias of 'convspectra {' '.join(verb)}'" in " ".join(_help([], capsys).split())  # convspectra --help


def test_reproduce_lists_the_three_experiments(capsys):
    text = _help(["reproduce"], capsys)
    assert all(name in text for name in ("figure1", "figures2-3", "figure4"))


def test_reproduce_figure1_quick_writes_the_rows(tmp_path, capsys):
    argv = ["reproduce", "figure1", "--quick", "--channels-3x3", "1", "--channels-11x11", "1", "--repeats", "1"]
    assert main([*argv, "--device", "cpu", "--csv", "-", "--plot", str(tmp_path / "f1.svg")]) == 0
    captured = capsys.readouterr()
    rows = list(csv.DictReader(io.StringIO(captured.out)))  # stdout carries the CSV alone; the log is on stderr
    assert {(row["panel"], row["channels"]) for row in rows} == {("3x3@16x16", "1"), ("11x11@64x64", "1")}
    ours = [row for row in rows if row["method"] == "convspectra (CPU)"]
    assert len(ours) == 2 and all(row["status"] == "ok" and float(row["max_error"]) < 1e-12 for row in ours)
    assert "machine:" in captured.err and (tmp_path / "f1-3x3-16x16.svg").read_text().startswith("<svg")


def test_reproduce_figures2_3_trains_and_the_train_alias_reads_the_same_runs(tmp_path, capsys):
    from convspectra.experiments.datasets import write_synthetic_idx

    write_synthetic_idx(tmp_path / "data", train=16, test=8, gzip_files=True, size=12)
    out = tmp_path / "out"
    argv = ["reproduce", "figures2-3", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path / "data"), "--depth",
            "8", "--epochs", "1", "--batch-size", "8", "--arms", "baseline", "--seeds", "0", "--device", "cpu",
            "--threads", "1", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    trained = capsys.readouterr().out
    assert "| baseline | 0 |" in trained and (out / "baseline" / "seed0" / "checkpoint.pt").is_file()
    assert main(["train", "--out", str(out), "--summary-only"]) == 0
    assert "| baseline | 0 |" in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())


# ---------------------------------------------------------------- output files: checked before any work


@pytest.fixture
def no_work(monkeypatch):
    """Make every command's work fail loudly: a refused output must be refused before any of it."""
    import convspectra.analysis
    import convspectra.commands._models
    import convspectra.commands.spectrum
    import convspectra.demo
    import convspectra.experiments.figure1
    import convspectra.experiments.training

    def boom(*args, **kwargs):
        raise AssertionError("the command started working before checking its outputs")

    monkeypatch.setattr(convspectra.analysis, "spectral_report", boom)
    monkeypatch.setattr(convspectra.commands._models, "resolve_model", boom)
    monkeypatch.setattr(convspectra.commands.spectrum, "load_kernel", boom)
    monkeypatch.setattr(convspectra.demo, "run_demo", boom)
    monkeypatch.setattr(convspectra.experiments.figure1, "run_figure1", boom)
    monkeypatch.setattr(convspectra.experiments.training, "run_experiment", boom)


BAD_OUTPUTS = [
    (["report", "resnet20", "--plot", "x.xyz"], "ending in .png, .svg or .pdf, got 'x.xyz'"),
    (["report", "resnet20", "--plot-norms", "norms.jpg"], "--plot-norms: expected a file name ending in .png"),
    (["report", "resnet20", "--plot", "MISSING/f.png"], "does not exist"),
    (["report", "resnet20", "--plot", "-"], "cannot go to stdout"),
    (["report", "resnet20", "--json", "-", "--csv", "-"], "--json, --csv: expected at most one output on stdout"),
    (["report", "resnet20", "--json", "MISSING/r.json"], "argument --json: expected a file in an existing folder"),
    (["report", "resnet20", "--csv", "."], "a folder"),
    (["reproduce", "figure4", "--observations", "MISSING/o.json"], "argument --observations"),
    (["reproduce", "figure4", "--json", "-", "--observations", "-"], "--json, --observations: expected at most one"),
    (["reproduce", "figure4", "--plot", "f4.gif"], "ending in .png, .svg or .pdf"),
    (["spectrum", "k.npy", "--input-shape", "8", "--json", "MISSING/s.json"], "argument --json"),
    (["demo", "--json", "MISSING/d.json"], "argument --json"),
    (["reproduce", "figure1", "--plot", "f1.pdf"], "ending in .svg or .png"),
    (["bench", "figure1", "--csv", "-", "--json", "-"], "--csv, --json: expected at most one output on stdout"),
    (["reproduce", "figure1", "--json", "MISSING/f1.json"], "argument --json"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_OUTPUTS)
def test_bad_outputs_are_refused_before_any_work(argv, message, no_work, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    assert main(argv) == 2
    assert time.perf_counter() - start < 5
    assert message in _error_line(capsys)


def test_plots_without_matplotlib_are_refused_before_any_work(no_work, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # find_spec then raises ValueError...
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real_find_spec(name, *a)
    )
    assert main(["report", "resnet20", "--plot", "f.png"]) == 2
    assert 'needs matplotlib, which is not installed: pip install "convspectra[plot]"' in _error_line(capsys)
    assert main(["reproduce", "figure1", "--plot", "f1.png"]) == 2
    assert "needs matplotlib" in _error_line(capsys)


# ---------------------------------------------------------------- spectrum of a .npy file: no torch


def test_spectrum_of_a_npy_file_never_imports_torch(tmp_path):
    kernel = np.random.default_rng(0).normal(size=(3, 2, 3, 3))
    np.save(tmp_path / "k.npy", kernel)
    script = (
        "import sys\n"
        "from convspectra.cli import main\n"
        f"assert main(['spectrum', {str(tmp_path / 'k.npy')!r}, '--input-shape', '6', '6', '--json', "
        f"{str(tmp_path / 's.json')!r}]) == 0\n"
        f"assert main(['spectrum', {str(tmp_path / 'k.npy')!r}, '--input-shape', '6', '--padding', '1']) == 0\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("torch imported: False"), done.stdout
    assert "in certified [" in done.stdout
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["spectrum"][0] == data["sigma_max"] and len(data["spectrum"]) == 2 * 36


# ---------------------------------------------------------------- the progress bar


def test_progress_bar_shows_the_label_and_an_eta_on_stderr(capsys):
    pytest.importorskip("tqdm", reason="tqdm not installed")
    from convspectra.commands._progress import progress_bar

    with progress_bar("layers", enabled=True) as progress:
        assert progress is not None
        for done, name in enumerate(["conv1", "layer1.0.conv1", "linear"], start=1):
            time.sleep(0.15)  # tqdm redraws at most every 0.1 s
            progress(done, 3, name)
        progress(1, 2, "epoch 2")  # a new phase starts the bar again
    captured = capsys.readouterr()
    assert captured.out == ""  # never on stdout, which may carry --json -
    assert "layers" in captured.err and "linear" in captured.err and "3/3" in captured.err
    assert re.search(r"\d\d:\d\d<\d\d:\d\d", captured.err)  # elapsed<remaining: the ETA


def test_progress_bar_falls_back_to_rich_then_to_nothing(monkeypatch, capsys):
    from convspectra.commands._progress import progress_bar

    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    if importlib.util.find_spec("rich") is not None:
        with progress_bar("layers", enabled=True) as progress:
            assert progress is not None and type(progress).__name__ == "_Rich"
            progress(1, 2, "conv1")
            progress(2, 2, "linear")
        assert capsys.readouterr().out == ""
    monkeypatch.setitem(sys.modules, "rich", None)
    monkeypatch.setitem(sys.modules, "rich.progress", None)
    monkeypatch.setitem(sys.modules, "rich.console", None)
    with progress_bar("layers", enabled=True) as progress:
        assert progress is None
    with progress_bar("layers") as progress:  # stderr is captured here, not a terminal: no bar by default
        assert progress is None


def test_report_draws_its_progress_through_the_adapter(monkeypatch, capsys):
    from convspectra.commands import _progress

    seen = []

    @contextlib.contextmanager
    def recording(description, *, enabled=None):
        yield lambda done, total, label: seen.append((done, total, label))

    monkeypatch.setattr(_progress, "progress_bar", recording)
    assert main(["report", "resnet20", "--input-shape", "3", "8", "8", "--quiet"]) == 0
    assert seen[0] == (1, 20, "conv1") and seen[-1] == (20, 20, "linear")


# ---------------------------------------------------------------- issue 11: one line on any failure, never a traceback


def _one_line(capsys, prefix: str = "convspectra: error: ") -> str:
    captured = capsys.readouterr()
    assert captured.err.startswith(prefix), captured.err
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err, captured.err
    return captured.err


@pytest.fixture
def user_modules(tmp_path, monkeypatch):
    """Importable modules for MODEL = 'package.module:callable': one whose callable raises, one with a syntax error."""
    (tmp_path / "raising_model.py").write_text("def make():\n    raise RuntimeError('cannot build it')\n")
    (tmp_path / "broken_syntax.py").write_text("def make(:\n    pass\n")
    (tmp_path / "failing_import.py").write_text("raise ValueError('no config found')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("raising_model", "broken_syntax", "failing_import"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return tmp_path


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("raising_model:make", "model: calling 'raising_model:make' (without arguments) raised RuntimeError: cannot"),
        ("broken_syntax:make", "model: could not import 'broken_syntax' (from 'broken_syntax:make'): SyntaxError"),
        ("failing_import:make", "could not import 'failing_import' (from 'failing_import:make'): ValueError: no conf"),
        (":x", "model: expected 'package.module:callable' (a module to import"),
        ("raising_model:", "expected 'package.module:callable'"),
        ("raising_model:make()", "expected 'package.module:callable'"),
    ],
)
def test_a_bad_import_path_is_one_line_and_status_2(model, message, user_modules, capsys):
    assert main(["report", model, "--input-shape", "3", "8", "8"]) == 2
    assert message in _one_line(capsys)


def test_a_raising_callable_as_a_subprocess_prints_no_traceback(user_modules):
    env = {**__import__("os").environ, "PYTHONPATH": str(user_modules)}
    done = subprocess.run(
        [sys.executable, "-m", "convspectra", "report", "raising_model:make"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr and "cannot build it" in done.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "kernel: expected a .npy array in"),
        (None, "kernel: expected 3, 4 or 5 dimensions"),  # a .npy of shape (0,)
        ("truncated", "kernel: could not read"),
        (b"not a numpy file at all", "kernel: could not read"),
    ],
)
def test_an_empty_or_damaged_npy_is_one_line_and_status_2(content, message, tmp_path, capsys):
    path = tmp_path / "k.npy"
    if content is None:
        np.save(path, np.zeros((0,)))
    elif content == "truncated":
        np.save(path, np.ones((4, 2, 3, 3)))
        path.write_bytes(path.read_bytes()[:100])
    else:
        path.write_bytes(content)
    assert main(["spectrum", str(path), "--input-shape", "8"]) == 2
    assert message in _one_line(capsys)


def test_figure1_channel_counts_that_cannot_fit_are_refused_before_any_work(no_work, capsys):
    for alias in (["bench", "figure1"], ["reproduce", "figure1"]):
        start = time.perf_counter()
        assert main([*alias, "--channels-3x3", "100000"]) == 2
        assert time.perf_counter() - start < 5
        message = _one_line(capsys)
        assert "argument --channels-3x3: expected a channel count whose 3x3@16x16 point fits in 4.0 GiB" in message
        assert "got 100000" in message and "TiB" in message
    assert main(["bench", "figure1", "--channels-11x11", "2", "5000"]) == 2
    assert "11x11@64x64" in _one_line(capsys)


def test_a_torchvision_whose_compiled_ops_fail_to_load_is_named(tmp_path, monkeypatch, capsys):
    fake = tmp_path / "torchvision"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise RuntimeError('operator torchvision::nms does not exist')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [name for name in sys.modules if name == "torchvision" or name.startswith("torchvision.")]:
        monkeypatch.delitem(sys.modules, name)
    assert main(["report", "resnet18"]) == 2
    message = _one_line(capsys)
    assert "torchvision is installed but failed to import (RuntimeError: operator torchvision::nms does not exist)" in (
        message
    )
    assert "got 'resnet18'" in message


def _raise_in_report(monkeypatch, error: BaseException) -> None:
    import convspectra.analysis

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(convspectra.analysis, "spectral_report", fail)


def test_an_unexpected_error_is_one_line_naming_the_step_and_status_1(monkeypatch, capsys):
    _raise_in_report(monkeypatch, RuntimeError("CUDA error: an illegal memory access\nwas encountered"))
    assert main(["report", "resnet20", "--input-shape", "3", "8", "8"]) == 1
    message = _one_line(capsys, "convspectra report: error while computing the report of 'resnet20': RuntimeError: ")
    assert "an illegal memory access was encountered (run again with --debug for the traceback)" in message


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback_before_the_line(where, monkeypatch, capsys):
    _raise_in_report(monkeypatch, RuntimeError("boom"))
    argv = ["report", "resnet20", "--input-shape", "3", "8", "8"]
    assert main(["--debug", *argv] if where == "before" else [*argv, "--debug"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):") and "in fail" in err
    last = err.splitlines()[-1]
    assert last == "convspectra report: error while computing the report of 'resnet20': RuntimeError: boom"
    assert main(["bench", "figure1", "--channels-3x3", "0", "--debug"]) == 2  # parse errors stay one line
    assert "Traceback" not in capsys.readouterr().err


def test_ctrl_c_is_one_line_and_status_130(monkeypatch, capsys):
    _raise_in_report(monkeypatch, KeyboardInterrupt())
    try:
        code = main(["report", "resnet20", "--input-shape", "3", "8", "8"])
    except KeyboardInterrupt:
        pytest.fail("main let the KeyboardInterrupt through (a traceback for the user)")
    assert code == 130
    assert _one_line(capsys, "convspectra report: interrupted") == "convspectra report: interrupted\n"


def test_spectrum_warns_in_one_line_when_a_kernel_looks_channels_last(tmp_path, capsys):
    np.save(tmp_path / "k.npy", np.random.default_rng(0).normal(size=(3, 3, 16, 32)))
    assert main(["spectrum", str(tmp_path / "k.npy"), "--input-shape", "8", "--padding", "1"]) == 2  # kernel > input
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert lines[0].startswith("convspectra: warning: kernel: shape (3, 3, 16, 32) is read as 'OIHW'")
    assert lines[0].endswith("(LayoutWarning)") and len(lines) == 2 and lines[1].startswith("convspectra: error: ")
    assert main(["spectrum", str(tmp_path / "k.npy"), "--input-shape", "8", "--layout", "HWIO", "--json", "-"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and json.loads(captured.out)["layout"] == "HWIO"
    assert main(["spectrum", str(tmp_path / "k.npy"), "--input-shape", "8", "--layout", "OIHW"]) == 0
    assert capsys.readouterr().err == ""


def _fake_zoo(monkeypatch, name: str, models: list[str], version: str = "9.9") -> list[tuple[str, object]]:
    """A fake ``torchvision`` or ``timm`` in sys.modules; returns the list of (name, kwargs) it was asked to build."""
    import types

    import torch

    built: list[tuple[str, object]] = []

    def build(model_name, **kwargs):
        built.append((model_name, kwargs))
        return torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3, padding=1))

    fake = types.ModuleType(name)
    fake.__version__ = version
    if name == "torchvision":
        fake.models = types.SimpleNamespace(list_models=lambda: list(models), get_model=build)
    else:
        fake.list_models = lambda: list(models)
        fake.is_model = lambda n: n in models

        def create_model(model_name, **kwargs):
            model = build(model_name, **kwargs)
            model.pretrained_cfg = {"input_size": (3, 12, 10)}
            return model

        fake.create_model = create_model
    monkeypatch.setitem(sys.modules, name, fake)
    return built


def test_zoo_prefixes_build_without_pretrained_weights_at_the_zoo_input_size(monkeypatch, capsys):
    from convspectra.commands._models import resolve_model

    vision = _fake_zoo(monkeypatch, "torchvision", ["resnet18", "tiny"])
    timm = _fake_zoo(monkeypatch, "timm", ["tiny", "vit_tiny"])
    said: list[str] = []
    _, shape = resolve_model("torchvision:tiny", notice=said.append)
    assert shape == (3, 224, 224) and vision == [("tiny", {"weights": None})] and said == []
    _, shape = resolve_model("timm:tiny", notice=said.append)
    assert shape == (3, 12, 10) and timm == [("tiny", {"pretrained": False})] and said == []
    _, shape = resolve_model("tiny", notice=said.append)  # bare: torchvision first, and it says so
    assert said == ["tiny: the torchvision model (torchvision 9.9; timm:tiny asks timm)"]
    _, shape = resolve_model("vit_tiny", notice=said.append)
    assert shape == (3, 12, 10) and said[-1] == "vit_tiny: the timm model (timm 9.9)"
    assert main(["report", "timm:tiny", "--csv", "-"]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("0,0,Conv2d,conv,2x3x3x3,12x10")
    assert main(["report", "tiny", "--input-shape", "3", "8", "8", "--quiet"]) == 0
    assert (
        capsys.readouterr().err.strip()
        == "convspectra: tiny: the torchvision model (torchvision 9.9; timm:tiny asks timm)"
    )


def test_an_unknown_name_under_a_prefix_names_the_zoo_and_close_names(monkeypatch, capsys):
    _fake_zoo(monkeypatch, "torchvision", ["resnet18", "resnet50", "vgg11"])
    assert main(["report", "torchvision:resnet5"]) == 2
    message = _one_line(capsys)
    assert "model: expected a torchvision model name after 'torchvision:', got 'resnet5'" in message
    assert "close names: resnet50, resnet18" in message
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    assert main(["report", "timm:resnet50"]) == 2
    assert "model: timm:resnet50 needs timm, but timm not installed" in _one_line(capsys)


def test_a_zoo_that_fails_to_import_is_one_line_for_prefixed_and_bare_names(tmp_path, monkeypatch, capsys):
    for zoo in ("torchvision", "timm"):
        (tmp_path / zoo).mkdir()
        (tmp_path / zoo / "__init__.py").write_text("raise RuntimeError('operator torchvision::nms does not exist')\n")
        for name in [name for name in sys.modules if name == zoo or name.startswith(f"{zoo}.")]:
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(tmp_path))
    broken = "is installed but failed to import (RuntimeError: operator torchvision::nms does not exist)"
    for zoo in ("torchvision", "timm"):
        assert main(["report", f"{zoo}:resnet18"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert f"model: {zoo}:resnet18 needs {zoo}, but {zoo} {broken}" in err
    assert main(["report", "resnet18"]) == 2
    message = _one_line(capsys)
    assert f"torchvision {broken}" in message and f"timm {broken}" in message and "got 'resnet18'" in message


def test_a_bare_name_falls_back_to_timm_when_torchvision_is_broken(tmp_path, monkeypatch, capsys):
    (tmp_path / "torchvision").mkdir()
    (tmp_path / "torchvision" / "__init__.py").write_text(
        "raise RuntimeError('operator torchvision::nms does not exist')\n"
    )
    for name in [name for name in sys.modules if name == "torchvision" or name.startswith("torchvision.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(tmp_path))
    _fake_zoo(monkeypatch, "timm", ["tiny"])
    assert main(["report", "tiny", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("convspectra: tiny: the timm model (timm 9.9; torchvision is installed but failed to import")


def test_spectrum_of_safetensors_kernels(tmp_path, capsys):
    safetensors = pytest.importorskip("safetensors.numpy", reason="safetensors not installed (optional)")
    from conftest import oracle_singular_values

    rng = np.random.default_rng(5)
    kernel, other = rng.normal(size=(4, 3, 3, 3)), rng.normal(size=(4, 4, 3, 3))
    safetensors.save_file({"k": kernel}, str(tmp_path / "one.safetensors"))
    safetensors.save_file({"conv1.weight": kernel, "conv2.weight": other}, str(tmp_path / "two.safetensors"))
    assert main(["spectrum", str(tmp_path / "one.safetensors"), "--input-shape", "5", "5", "--json", "-"]) == 0
    values = np.array(json.loads(capsys.readouterr().out)["spectrum"])
    np.testing.assert_allclose(values, oracle_singular_values(kernel, (5, 5)), rtol=0, atol=1e-12 * values[0])
    two = str(tmp_path / "two.safetensors")
    assert main(["spectrum", two, "--input-shape", "5", "--key", "conv2.weight", "--json", "-"]) == 0
    values = np.array(json.loads(capsys.readouterr().out)["spectrum"])
    np.testing.assert_allclose(values, oracle_singular_values(other, (5, 5)), rtol=0, atol=1e-12 * values[0])
    assert main(["spectrum", two, "--input-shape", "5"]) == 2
    assert "one of ['conv1.weight', 'conv2.weight']; got none" in _one_line(capsys)
    assert main(["spectrum", two, "--input-shape", "5", "--key", "conv2.weigth"]) == 2
    assert "got 'conv2.weigth' (close: conv2.weight" in _one_line(capsys)
    (tmp_path / "bad.safetensors").write_bytes(b"garbage that is no header")
    assert main(["spectrum", str(tmp_path / "bad.safetensors"), "--input-shape", "5"]) == 2
    assert "could not read" in _one_line(capsys)  # one line, status 2: not safetensors' own exception
