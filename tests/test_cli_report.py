"""``convspectra report``, ``spectrum`` and ``reproduce figure4``: in-process and as subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

import convspectra as cs
from conftest import assert_spectrum_matches, pretrained_checkpoint
from convspectra.analysis import validate_report
from convspectra.cli import main
from convspectra.models import load_weights, resnet20, resnet32

SMALL = ["--input-shape", "3", "8", "8"]  # the CIFAR ResNets run on any size divisible by 4: keep tests fast


def _error(capsys) -> str:
    captured = capsys.readouterr()
    assert captured.err.startswith("convspectra: error: "), captured.err
    assert captured.err.count("\n") == 1, captured.err  # one line, no traceback
    return captured.err


def test_report_builtin_with_pretrained_weights_writes_every_output(tmp_path, capsys):
    weights = pretrained_checkpoint(20)
    out = {name: tmp_path / name for name in ("r.json", "r.csv", "fig4.png", "norms.svg")}
    files = ["--json", str(out["r.json"]), "--csv", str(out["r.csv"]), "--plot", str(out["fig4.png"])]
    options = ["--weights", str(weights), "--fold-bn", "--full-spectrum", *SMALL, "--plot-norms", str(out["norms.svg"])]
    code = main(["report", "resnet20", *options, *files, "--log"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "layer3.2.conv2" in printed and "network Lipschitz UPPER bound" in printed
    document = json.loads(out["r.json"].read_text())
    validate_report(document)
    assert document["fold_bn"] and len(document["layers"]) == 20
    assert all(layer["spectrum"] for layer in document["layers"])
    model = load_weights(resnet20(), weights)
    first = cs.singular_values(model.conv1.weight.detach().double(), (8, 8))
    assert document["layers"][0]["folded_batchnorm"] == "bn1"
    assert len(out["r.csv"].read_text().splitlines()) == 21
    assert out["fig4.png"].read_bytes().startswith(b"\x89PNG")
    assert b"<svg" in out["norms.svg"].read_bytes()[:2000]
    assert first.shape[0] == document["layers"][0]["num_singular_values"]


def test_report_json_to_stdout_as_a_subprocess():
    done = subprocess.run(
        [sys.executable, "-m", "convspectra", "report", "resnet20", *SMALL, "--json", "-"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    validate_report(document)
    assert [layer["input_shape"] for layer in document["layers"][:2]] == [[8, 8], [8, 8]]
    assert document["layers"][0]["spectrum"] is None  # only with --full-spectrum


def test_bad_path_as_a_subprocess_exits_2_with_one_line():
    done = subprocess.run(
        [sys.executable, "-m", "convspectra", "report", "resnet20", "--weights", "/nonexistent/w.th"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "/nonexistent/w.th" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_report_torchscript_file_and_import_path_agree(tmp_path, capsys):
    torch.manual_seed(0)
    model = resnet20().eval()
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    weights = tmp_path / "w.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, weights)
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert main(["report", str(path), *SMALL, "--json", str(a), "--quiet"]) == 0
    spec = "convspectra.models:resnet20"
    assert main(["report", spec, *SMALL, "--weights", str(weights), "--json", str(b), "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    left, right = json.loads(a.read_text())["layers"], json.loads(b.read_text())["layers"]
    assert [layer["name"] for layer in left] == [layer["name"] for layer in right]
    for x, y in zip(left, right, strict=True):
        assert x["sigma_max"] == pytest.approx(y["sigma_max"], rel=1e-12)


def test_report_safetensors_weights(tmp_path, capsys):
    safetensors = pytest.importorskip("safetensors.torch", reason="safetensors not installed (optional)")
    torch.manual_seed(1)
    model = resnet20()
    path = tmp_path / "w.safetensors"
    safetensors.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    out = tmp_path / "r.json"
    assert main(["report", "resnet20", *SMALL, "--weights", str(path), "--json", str(out), "--quiet"]) == 0
    expected = cs.singular_values(model.conv1.weight.detach().double(), (8, 8))[0]
    assert json.loads(out.read_text())["layers"][0]["sigma_max"] == pytest.approx(float(expected), rel=1e-12)


def test_report_zoo_names_when_torchvision_is_installed(monkeypatch, capsys):
    fake = types.ModuleType("torchvision")
    fake.models = types.SimpleNamespace(
        list_models=lambda: ["tiny"],
        get_model=lambda name, weights=None: torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3, padding=1)),
    )
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    assert main(["report", "tiny", "--input-shape", "3", "8", "8", "--csv", "-"]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("0,0,Conv2d,conv,2x3x3x3,8x8")


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["report", "no_such_model"], ["no_such_model", "built-in", "torchvision"]),
        (["report", "/nonexistent/model.pt"], ["/nonexistent/model.pt", "no such file"]),
        (["report", "resnet20", "--weights", "/nonexistent/w.th"], ["weights", "/nonexistent/w.th"]),
        (["report", "resnet20", "--input-shape", "1", "8", "8"], ["example_input", "(1, 1, 8, 8)"]),
        (["report", "convspectra.models:no_such"], ["no_such"]),
        (["report", "no_such_package.x:y"], ["no_such_package"]),
        (["report", "convspectra.models:MODELS"], ["torch.nn.Module", "dict"]),
        (["report", "collections:OrderedDict"], ["torch.nn.Module", "OrderedDict"]),
        (["spectrum", "/nonexistent/k.npy", "--input-shape", "8"], ["/nonexistent/k.npy", "no such file"]),
    ],
)
def test_bad_input_exits_2_naming_the_problem(argv, words, capsys):
    assert main(argv) == 2
    message = _error(capsys)
    for word in words:
        assert word in message


def test_mismatched_weights_and_non_torchscript_files(tmp_path, capsys):
    assert main(["report", "resnet32", "--weights", str(pretrained_checkpoint(20))]) == 2
    assert "does not match" in _error(capsys)
    bogus = tmp_path / "notscript.pt"
    torch.save({"a": torch.zeros(1)}, bogus)
    assert main(["report", str(bogus), *SMALL]) == 2
    assert "TorchScript" in _error(capsys)
    assert main(["report", "convspectra.models:resnet20"]) == 2  # no default input shape
    assert "--input-shape" in _error(capsys)


def test_spectrum_of_npy_and_pt_kernels_matches_the_oracle(tmp_path, capsys):
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(4, 3, 3, 3))
    np.save(tmp_path / "k.npy", kernel)
    torch.save({"conv.weight": torch.from_numpy(kernel)}, tmp_path / "k.pt")
    out = tmp_path / "s.json"
    code = main(["spectrum", str(tmp_path / "k.npy"), "--input-shape", "6", "6", "--stride", "2", "--json", str(out)])
    assert code == 0 and "sigma_max" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert_spectrum_matches(np.array(data["spectrum"]), kernel, (6, 6), stride=2)
    assert data["sigma_max"] == data["spectrum"][0]
    code = main(["spectrum", str(tmp_path / "k.pt"), "--key", "conv.weight", "--input-shape", "6", "--json", "-"])
    assert code == 0
    assert_spectrum_matches(np.array(json.loads(capsys.readouterr().out)["spectrum"]), kernel, (6, 6))
    assert main(["spectrum", str(tmp_path / "k.pt"), "--input-shape", "6"]) == 2
    assert "conv.weight" in _error(capsys)
    assert main(["spectrum", str(tmp_path / "k.npy"), "--input-shape", "7", "--stride", "2"]) == 2
    assert "stride" in _error(capsys)
    assert main(["spectrum", str(tmp_path / "k.npy"), "--input-shape", "6", "--layout", "OIW"]) == 2
    assert "expected" in _error(capsys)


def test_spectrum_zero_padding_bracket(tmp_path, capsys):
    kernel = np.random.default_rng(1).normal(size=(2, 2, 3, 3))
    np.save(tmp_path / "k.npy", kernel)
    assert main(["spectrum", str(tmp_path / "k.npy"), "--input-shape", "5", "--padding", "1", "--json", "-"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["sigma_max_padded_lower"] <= data["sigma_max_padded"] <= data["sigma_max_padded_upper"]


def test_reproduce_figure4_states_the_observations(tmp_path, capsys):
    weights = pretrained_checkpoint(20)
    plot, observations = tmp_path / "f4.png", tmp_path / "obs.json"
    argv = ["reproduce", "figure4", "--model", "resnet20", "--weights", str(weights), "--input-shape", "3", "16", "16"]
    assert main([*argv, "--plot", str(plot), "--observations", str(observations)]) == 0
    printed = capsys.readouterr().out
    assert "Largest operator norms" in printed and "Non-negligible singular values" in printed
    data = json.loads(observations.read_text())
    assert len(data["layers"]) == 19 and data["relative_threshold"] == 0.01
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_reproduce_figure4_without_weights_says_how_to_set_the_data_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CONVSPECTRA_DATA", raising=False)
    assert main(["reproduce", "figure4"]) == 2
    message = _error(capsys)
    assert "--weights" in message and "CONVSPECTRA_DATA (not set)" in message and "export CONVSPECTRA_DATA=" in message
    monkeypatch.setenv("CONVSPECTRA_DATA", str(tmp_path))
    assert main(["reproduce", "figure4"]) == 2
    assert repr(str(tmp_path)) in _error(capsys)


def test_reproduce_figure4_finds_the_checkpoint_in_the_data_folder(tmp_path, monkeypatch, capsys):
    weights = pretrained_checkpoint(20)
    monkeypatch.setenv("CONVSPECTRA_DATA", str(weights.parent))
    monkeypatch.chdir(tmp_path)
    argv = ["reproduce", "figure4", "--model", "resnet20", "--input-shape", "3", "8", "8", "--plot", ""]
    assert main([*argv, "--observations", "-"]) == 0
    captured = capsys.readouterr()
    assert len(json.loads(captured.out)["layers"]) == 19  # stdout carries the JSON alone
    assert str(weights) in captured.err and "Largest operator norms" in captured.err
    assert list(tmp_path.iterdir()) == []  # --plot '' turns the default figure4.png off


def test_report_weights_and_spectrum_key_read_checkpoints_the_same_way(tmp_path, capsys):
    torch.manual_seed(2)
    model = resnet20()
    path = tmp_path / "wrapped.pth"  # a DataParallel + torch.compile checkpoint inside a Lightning-style wrapper
    torch.save({"epoch": 3, "state_dict": {"module._orig_mod." + k: v for k, v in model.state_dict().items()}}, path)
    assert main(["report", "resnet20", *SMALL, "--weights", str(path), "--json", "-"]) == 0
    report = json.loads(capsys.readouterr().out)
    argv = ["spectrum", str(path), "--key", "layer2.0.conv1.weight", "--input-shape", "8", "8", "--stride", "2"]
    assert main([*argv, "--json", "-"]) == 0
    spectrum = json.loads(capsys.readouterr().out)
    layer = next(layer for layer in report["layers"] if layer["name"] == "layer2.0.conv1")
    assert (
        spectrum["sigma_max"] == layer["sigma_max"] and spectrum["num_singular_values"] == layer["num_singular_values"]
    )
    assert_spectrum_matches(
        np.array(spectrum["spectrum"]), model.layer2[0].conv1.weight.detach().double(), (8, 8), stride=2
    )
    assert main(["spectrum", str(path), "--key", "conv9.weight", "--input-shape", "8"]) == 2
    message = _error(capsys)
    assert "conv9.weight" in message and "conv1.weight" in message  # the names, as the model has them


def test_spectrum_of_a_tensor_in_the_pretrained_checkpoint(capsys):
    weights = pretrained_checkpoint(32)
    kernel = load_weights(resnet32(), weights).conv1.weight.detach().double()
    assert main(["spectrum", str(weights), "--key", "conv1.weight", "--input-shape", "32", "32", "--json", "-"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["kernel_shape"] == [16, 3, 3, 3]
    np.testing.assert_array_equal(np.array(data["spectrum"]), cs.singular_values(kernel, (32, 32)))
    assert main(["spectrum", str(weights), "--key", "conv1.weight", "--input-shape", "8", "--json", "-"]) == 0
    assert_spectrum_matches(np.array(json.loads(capsys.readouterr().out)["spectrum"]), kernel, (8, 8))
    assert main(["spectrum", str(weights), "--input-shape", "8"]) == 2  # a state dict needs --key
    assert "conv1.weight" in _error(capsys)


def test_spectrum_of_safetensors_and_single_tensor_files(tmp_path, capsys):
    kernel = torch.from_numpy(np.random.default_rng(3).normal(size=(3, 2, 3, 3)))
    torch.save(kernel, tmp_path / "k.pt")
    assert main(["spectrum", str(tmp_path / "k.pt"), "--input-shape", "5", "--json", "-"]) == 0
    assert_spectrum_matches(np.array(json.loads(capsys.readouterr().out)["spectrum"]), kernel, (5, 5))
    assert main(["spectrum", str(tmp_path / "k.pt"), "--key", "w", "--input-shape", "5"]) == 2
    assert "single tensor" in _error(capsys)
    safetensors = pytest.importorskip("safetensors.torch", reason="safetensors not installed (report extra)")
    safetensors.save_file({"module.conv.weight": kernel.contiguous()}, str(tmp_path / "k.safetensors"))
    argv = ["spectrum", str(tmp_path / "k.safetensors"), "--key", "conv.weight", "--input-shape", "5", "--json", "-"]
    assert main(argv) == 0
    assert_spectrum_matches(np.array(json.loads(capsys.readouterr().out)["spectrum"]), kernel, (5, 5))


def test_spectrum_reads_the_readme_checkpoint_layout_with_one_loader(tmp_path, capsys):
    """Issue 11: 'spectrum resnet32-d509ac18.th --key conv1.weight' said "--key: expected one of [], ...".

    The file is built like the README's checkpoint: {'state_dict': {'module.<name>': tensor}} (plus other entries).
    """
    torch.manual_seed(5)
    model = resnet32()
    path = tmp_path / "resnet32-test.th"
    torch.save({"best_prec1": 92.6, "state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, path)
    argv = ["spectrum", str(path), "--key", "conv1.weight", "--input-shape", "32", "32", "--json", "-"]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    kernel = model.conv1.weight.detach().double()
    assert data["kernel_shape"] == [16, 3, 3, 3]
    np.testing.assert_array_equal(np.array(data["spectrum"]), cs.singular_values(kernel, (32, 32)))
    assert main(["report", "resnet32", *SMALL, "--weights", str(path), "--json", "-"]) == 0  # the same file, same names
    first = next(layer for layer in json.loads(capsys.readouterr().out)["layers"] if layer["name"] == "conv1")
    assert first["sigma_max"] == pytest.approx(float(cs.operator_norm(kernel, (8, 8))), rel=1e-12)
