"""ONNX models: layers read from graphs the tests build (onnx.helper) or export, checked against ONNX's own
reference evaluator (the node's operator, densely, at small sizes) and against the torch report of the same model."""

from __future__ import annotations

import json
import sys
import warnings

import numpy as np
import pytest
import torch

import convspectra as cs
from convspectra.analysis import spectral_report
from convspectra.cli import main
from convspectra.errors import ParameterError

onnx = pytest.importorskip("onnx", reason="the onnx package is not installed: pip install 'convspectra[onnx]'")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

from convspectra.models.onnx_graph import OnnxGraph, onnx_report  # noqa: E402

RTOL = 1e-6  # the padded solver's default rtol


def _graph(nodes, initializers, dims, path, dtype=TensorProto.DOUBLE):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", dtype, dims)],
        [helper.make_tensor_value_info(nodes[-1].output[0], dtype, None)],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def _one_node(op, weight, dims, path, **attrs):
    w = numpy_helper.from_array(weight, "w")
    return _graph([helper.make_node(op, ["x", "w"], ["y"], name="layer", **attrs)], [w], dims, path)


def _dense(path, input_dims):
    """The node's operator as a dense matrix, column by column from ONNX's reference evaluator."""
    session = ReferenceEvaluator(str(path))
    size = int(np.prod(input_dims))
    columns = []
    for j in range(size):
        x = np.zeros(size)
        x[j] = 1.0
        columns.append(session.run(None, {"x": x.reshape(1, *input_dims)})[0].ravel())
    return np.stack(columns, axis=1)


CASES = [
    # op, weight shape, spatial input, attributes
    ("Conv", (4, 3, 3, 3), (6, 6), {"pads": [1, 1, 1, 1]}),
    ("Conv", (4, 3, 3, 3), (8, 6), {"pads": [2, 0, 1, 1], "strides": [2, 2]}),  # (2, 1): cropped; (0, 1): mirrored
    ("Conv", (4, 3, 3, 3), (8, 6), {"pads": [1, 0, 2, 1], "strides": [2, 2]}),  # (1, 2): mirrored
    ("Conv", (4, 2, 3, 3), (8, 8), {"pads": [2, 2, 2, 2], "dilations": [2, 2], "group": 2}),
    ("Conv", (4, 3, 3, 3), (8, 8), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),  # TF SAME: (0, 1)
    ("Conv", (4, 3, 2, 2), (6, 5), {"auto_pad": "SAME_LOWER"}),  # stride 1, (1, 0): torch 'same', mirrored
    ("Conv", (4, 3, 2, 2), (6, 5), {"auto_pad": "SAME_UPPER"}),  # stride 1, (0, 1): torch 'same'
    ("Conv", (4, 3, 3, 3), (6, 6), {"auto_pad": "VALID"}),
    ("Conv", (3, 2, 3, 3), (6, 6), {"pads": [0, 1, 2, 1]}),  # (0, 2) on an axis at stride 1: no torch padding
    ("Conv", (2, 3, 5), (9,), {"pads": [2, 1], "strides": [3]}),  # 1-D
    ("Conv", (2, 2, 3, 3, 3), (4, 4, 4), {"pads": [1, 0, 1, 1, 1, 1]}),  # 3-D, one mirrored-free crop
    ("ConvTranspose", (3, 2, 4, 4), (4, 4), {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ("ConvTranspose", (3, 2, 3, 3), (4, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]}),
    ("ConvTranspose", (2, 2, 3, 3), (4, 4), {"strides": [2, 2], "pads": [0, 1, 1, 0]}),
    ("ConvTranspose", (2, 2, 3, 3), (3, 3), {"pads": [0, 0, 2, 1]}),  # stride 1, unequal: no torch padding
    ("ConvTranspose", (2, 3, 3, 3), (4, 4), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    ("ConvTranspose", (2, 3, 3, 3), (4, 4), {"auto_pad": "SAME_LOWER", "strides": [2, 2]}),
    ("ConvTranspose", (2, 3, 3, 3), (4, 4), {"auto_pad": "SAME_UPPER", "strides": [2, 2], "output_shape": [8, 7]}),
]


@pytest.mark.parametrize(("op", "shape", "size", "attrs"), CASES)
def test_each_node_is_its_onnx_operator(op, shape, size, attrs, tmp_path):
    rng = np.random.default_rng(len(str(attrs)))
    weight = rng.normal(size=shape)
    channels = shape[0] if op == "ConvTranspose" else shape[1] * attrs.get("group", 1)
    dims = [1, channels, *size]
    path = _one_node(op, weight, ["N", channels, *size], tmp_path / "one.onnx", **attrs)
    layers = OnnxGraph(path).layers()
    (call,) = layers.calls
    assert call.input_shape == tuple(size)
    x = rng.normal(size=dims)
    expected = ReferenceEvaluator(str(path)).run(None, {"x": x})[0]
    with torch.no_grad():
        got = call.module.double()(torch.from_numpy(x)).numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12 * np.abs(expected).max())

    report = onnx_report(path, padding="model", full_spectrum=True)
    (row,) = report.layers
    # The circular spectrum: that of the ONNX weight with the node's stride, dilation and groups.
    geometry = {"stride": attrs.get("strides", 1), "dilation": attrs.get("dilations", 1), "groups": attrs.get("group")}
    circular = cs.singular_values(weight, size, transposed=op == "ConvTranspose", **geometry)
    np.testing.assert_allclose(row.spectrum, circular, rtol=0, atol=1e-12 * circular[0])
    # The norm with the node's own padding: the dense operator ONNX itself computes.
    exact = np.linalg.svd(_dense(path, dims[1:]), compute_uv=False)[0]
    if type(call.module).__name__.startswith("ExplicitPadding"):
        assert row.sigma_max_model is None and "not a torch padding" in row.note
        return
    assert row.sigma_max_model_lower <= row.sigma_max_model <= row.sigma_max_model_upper
    assert row.sigma_max_model_lower <= exact * (1 + 1e-12) and exact <= row.sigma_max_model_upper * (1 + 1e-12)
    assert row.sigma_max_model == pytest.approx(exact, rel=10 * RTOL)


def test_dynamic_dims_are_fixed_by_the_input_shape(tmp_path):
    weight = np.ones((2, 3, 3, 3))
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["h"], name="a", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Conv", ["r", "v"], ["y"], name="b", pads=[1, 1, 1, 1]),
    ]
    inits = [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.ones((2, 2, 3, 3)), "v")]
    path = _graph(nodes, inits, ["N", 3, "H", "W"], tmp_path / "dyn.onnx")
    graph = OnnxGraph(path)
    assert graph.default_input_shape is None
    with pytest.raises(ParameterError, match=r"input_shape: the ONNX input 'x' .* has dynamic dims \(Nx3xHxW\)"):
        graph.layers()
    assert [call.input_shape for call in graph.layers((3, 20, 12)).calls] == [(20, 12), (10, 6)]
    with pytest.raises(ParameterError, match="expected 3 positive sizes"):
        graph.layers((20, 12))
    assert main(["report", str(path)]) == 2  # no default shape: --input-shape is asked for
    assert main(["report", str(path), "--input-shape", "3", "8", "8", "--csv", "-"]) == 0


def test_weights_through_identity_constant_and_computed(tmp_path):
    w = np.random.default_rng(0).normal(size=(2, 3, 3, 3))
    nodes = [
        helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(w, "c")),
        helper.make_node("Identity", ["c"], ["w2"]),
        helper.make_node("Conv", ["x", "w2"], ["h"], name="through_identity", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Mul", ["v", "s"], ["computed"]),
        helper.make_node("Conv", ["r", "computed"], ["y"], name="computed_weight"),
    ]
    inits = [numpy_helper.from_array(np.ones((2, 2, 1, 1)), "v"), numpy_helper.from_array(np.array(2.0), "s")]
    report = onnx_report(_graph(nodes, inits, [1, 3, 6, 6], tmp_path / "c.onnx"))
    assert [row.name for row in report.layers] == ["through_identity"]
    assert report.layers[0].sigma_max == pytest.approx(cs.singular_values(w, (6, 6))[0], rel=1e-12)
    assert any("computed_weight" in note and "not a constant" in note for note in report.notes)
    assert report.network_bound.value is None and "ONNX" in report.network_bound.description


def test_gemm_matmul_and_batchnorm(tmp_path):
    rng = np.random.default_rng(3)
    w, a, b = rng.normal(size=(4, 3, 3, 3)), rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    scale, shift, mean, var = rng.uniform(0.5, 2, 4), rng.normal(size=4), rng.normal(size=4), rng.uniform(0.5, 2, 4)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["h"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["h", "g", "b", "m", "v"], ["n"], name="bn", epsilon=1e-3),
        helper.make_node("GlobalAveragePool", ["n"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "a"], ["z"], name="gemm", transB=1, alpha=0.5),
        helper.make_node("MatMul", ["z", "bt"], ["y"], name="matmul"),
    ]
    inits = [
        numpy_helper.from_array(v, k)
        for k, v in {"w": w, "g": scale, "b": shift, "m": mean, "v": var, "a": a, "bt": b}.items()
    ]
    path = _graph(nodes, inits, [1, 3, 5, 5], tmp_path / "g.onnx")
    report = onnx_report(path, fold_bn=True)
    conv, gemm, matmul = report.layers
    assert (conv.folded_batchnorm, gemm.kind, gemm.input_shape, matmul.input_shape) == ("bn", "linear", (4,), (5,))
    eps = float(np.float32(1e-3))  # an ONNX float attribute is float32
    folded = w * (scale / np.sqrt(var + eps))[:, None, None, None]
    assert conv.sigma_max == pytest.approx(cs.singular_values(folded, (5, 5))[0], rel=1e-12)
    assert gemm.sigma_max == pytest.approx(0.5 * np.linalg.norm(a, 2), rel=1e-12)
    assert matmul.sigma_max == pytest.approx(np.linalg.norm(b, 2), rel=1e-12)


class _Net(torch.nn.Module):
    def __init__(self, batchnorm: bool) -> None:
        super().__init__()
        norm = torch.nn.BatchNorm2d(8) if batchnorm else torch.nn.Identity()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1),
            norm,
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2),
            torch.nn.ReLU(),
            torch.nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1),
            torch.nn.Conv2d(4, 4, 3, dilation=2, padding=2),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(4, 10),
        )
        if batchnorm:
            torch.nn.init.uniform_(norm.weight, 0.5, 2.0)
            norm.running_var.uniform_(0.5, 2.0)
            norm.running_mean.normal_()

    def forward(self, x):
        return self.body(x)


def _export(model, path):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                torch.zeros(1, 3, 12, 12),
                str(path),
                dynamo=False,
                dynamic_axes={"x": {0: "N"}},
                input_names=["x"],
            )
    except Exception as err:  # the exporter's own dependencies or a torch build without it
        pytest.skip(f"torch.onnx.export (TorchScript exporter) does not work here: {type(err).__name__}: {err}")
    return path


@pytest.mark.parametrize("batchnorm", [False, True])
def test_an_exported_torch_model_reports_as_the_torch_model(batchnorm, tmp_path):
    torch.manual_seed(0)
    model = _Net(batchnorm).eval()
    path = _export(model, tmp_path / "net.onnx")
    ours = onnx_report(path, padding="model")
    theirs = spectral_report(model, (3, 12, 12), padding="model", fold_bn=batchnorm)  # the exporter folds BN
    assert len(ours.layers) == len(theirs.layers) == 5
    rel = 1e-5 if batchnorm else 1e-12  # the exporter folds in float32
    for a, b in zip(ours.layers, theirs.layers, strict=True):
        assert (a.kind, a.kernel_shape, a.input_shape, a.stride, a.groups, a.transposed, a.num_singular_values) == (
            b.kind,
            b.kernel_shape,
            b.input_shape,
            b.stride,
            b.groups,
            b.transposed,
            b.num_singular_values,
        )
        assert a.padding == b.padding
        for field in ("sigma_max", "sigma_min", "stable_rank", "sigma_max_model"):
            assert getattr(a, field) == pytest.approx(
                getattr(b, field), rel=max(rel, 10 * RTOL if "model" in field else 0)
            )


def test_cli_report_and_spectrum_of_an_onnx_file(tmp_path, capsys):
    torch.manual_seed(1)
    model = _Net(False).eval()
    path = _export(model, tmp_path / "net.onnx")
    out = tmp_path / "r.json"
    assert main(["report", str(path), "--padding", "model", "--json", str(out), "--csv", str(tmp_path / "r.csv")]) == 0
    printed = capsys.readouterr().out
    assert "net.onnx on input (1, 3, 12, 12), 5 layers" in printed
    data = json.loads(out.read_text())
    assert data["model"] == "net.onnx" and len(data["layers"]) == 5
    first = model.body[0].weight.detach().double()
    assert data["layers"][0]["sigma_max"] == pytest.approx(float(cs.singular_values(first, (12, 12))[0]), rel=1e-12)

    assert main(["spectrum", str(path)]) == 2
    listed = capsys.readouterr().err
    assert "--layer: expected one of the 5 layers" in listed and "ConvTranspose 8x4x4x4 on 6x6" in listed
    name = data["layers"][2]["name"]
    assert main(["spectrum", str(path), "--layer", name, "--padding", "model", "--json", "-"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["input_shape"] == [6, 6] and result["transposed"] is True
    assert result["sigma_max"] == pytest.approx(data["layers"][2]["sigma_max"], rel=1e-12)
    assert result["sigma_max_padded"] == pytest.approx(data["layers"][2]["sigma_max_model"], rel=1e-9)
    assert main(["spectrum", str(path), "--layer", name, "--stride", "2"]) == 2
    assert "--stride: expected none for an ONNX model" in capsys.readouterr().err
    assert main(["spectrum", str(path), "--layer", "nope"]) == 2
    assert "got 'nope'" in capsys.readouterr().err


def test_without_the_onnx_package_the_message_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    path = _one_node("Conv", np.ones((1, 1, 1, 1)), [1, 1, 2, 2], tmp_path / "m.onnx")
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError
    assert main(["report", str(path)]) == 2
    assert 'needs the onnx package: pip install "convspectra[onnx]"' in capsys.readouterr().err


def test_a_file_that_is_not_onnx_is_one_line(tmp_path, capsys):
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"\x00not a protobuf at all")
    assert main(["report", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "could not read" in err and "bad.onnx" in err


def test_spectrum_refuses_the_own_padding_norm_of_pads_torch_cannot_express(tmp_path, capsys):
    weight = np.random.default_rng(2).normal(size=(2, 3, 3, 3))
    path = str(_one_node("Conv", weight, [1, 3, 8, 8], tmp_path / "odd.onnx", pads=[0, 0, 2, 2]))
    assert main(["spectrum", path, "--layer", "layer", "--padding", "model"]) == 2
    assert "--padding: 'model' for the layer 'layer': ONNX pads (0,2)x(0,2) are not a torch padding" in (
        capsys.readouterr().err
    )
    assert main(["spectrum", path, "--layer", "w", "--json", "-"]) == 0  # by its weight's name; circular spectrum
    values = np.array(json.loads(capsys.readouterr().out)["spectrum"])
    np.testing.assert_allclose(values, cs.singular_values(weight, (8, 8)), rtol=0, atol=1e-12 * values[0])
