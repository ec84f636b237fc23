"""convspectra.keras: Keras kernel layouts against the layers' own dense operators and the NumPy engine,
the keras.ops projection against the engine's, and training under the constraint and the callback.

The layouts are checked on the layer's own computation: the Keras layer (no bias, ``padding="valid"``)
applied to every basis vector of a wrap-around padded input is the circular operator, whose singular
values the engine computes exactly (for a transposed layer: the ``"valid"`` output folded modulo
``n``, the adjoint's wrap-around). Training runs in a subprocess per backend (Keras fixes its
backend at import): tests/keras_fit.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import convspectra as cs

keras = pytest.importorskip("keras", reason="convspectra.keras needs keras (pip install 'convspectra[keras]')")
from convspectra.keras import OperatorNormConstraint, layer_kernels  # noqa: E402
from convspectra.keras.layouts import from_engine, to_engine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def _dense(layer, n: tuple[int, ...], channels: int, extent: tuple[int, ...], *, fold: tuple[int, ...] | None = None):
    """The matrix of x -> layer(wrap-pad(x)) (or the layer's output folded modulo ``fold``), channels-last."""
    size = int(np.prod(n)) * channels
    basis = np.eye(size, dtype="float32").reshape(size, *n, channels)
    pads = [(0, 0), *((0, e) for e in extent), (0, 0)]
    out = _numpy(layer(np.pad(basis, pads, mode="wrap")))
    if fold is not None:
        folded = np.zeros((size, *fold, out.shape[-1]), dtype=np.float64)
        for index in np.ndindex(*out.shape[1:-1]):
            target = tuple(i % f for i, f in zip(index, fold, strict=True))
            folded[(slice(None), *target)] += out[(slice(None), *index)]
        out = folded
    return out.reshape(size, -1).T.astype(np.float64)


def _engine_values(layer, n, attribute="kernel"):
    (info,) = [k for k in layer_kernels(layer, n) if k.attribute == attribute]
    kernel = to_engine(_numpy(getattr(layer, info.attribute)).astype(np.float64), info.depthwise)
    return np.sort(cs.singular_values(kernel, info.input_shape, **info.engine_options()))[::-1]


def _compare(dense: np.ndarray, values: np.ndarray) -> None:
    mine = np.linalg.svd(dense, compute_uv=False)
    assert mine.shape == values.shape
    np.testing.assert_allclose(mine, values, rtol=0, atol=2e-5 * values[0])


L = keras.layers
FORWARD = [
    ("conv1d", lambda: L.Conv1D(6, 3, strides=2, dilation_rate=1, groups=2, use_bias=False), (8,), 4),
    ("conv2d", lambda: L.Conv2D(4, (3, 2), dilation_rate=(2, 1), use_bias=False), (6, 5), 3),
    ("conv2d-stride", lambda: L.Conv2D(4, 3, strides=2, groups=2, use_bias=False), (6, 4), 4),
    ("conv3d", lambda: L.Conv3D(3, 2, use_bias=False), (3, 4, 3), 2),
    ("depthwise2d", lambda: L.DepthwiseConv2D(3, depth_multiplier=3, use_bias=False), (5, 4), 3),
    ("depthwise2d-stride", lambda: L.DepthwiseConv2D(3, strides=2, depth_multiplier=2, use_bias=False), (6, 4), 2),
    ("depthwise1d", lambda: L.DepthwiseConv1D(4, dilation_rate=2, depth_multiplier=2, use_bias=False), (7,), 3),
]


@pytest.mark.parametrize(("name", "make", "n", "channels"), FORWARD, ids=[f[0] for f in FORWARD])
def test_forward_layouts_match_the_layers_own_operator(name, make, n, channels) -> None:
    layer = make()
    layer.build((None, *n, channels))
    extent = tuple((k - 1) * d for k, d in zip(layer.kernel_size, layer.dilation_rate, strict=True))
    _compare(_dense(layer, n, channels, extent), _engine_values(layer, n))


@pytest.mark.parametrize(("kernel_size", "strides", "n"), [(3, 2, (3, 4)), ((2, 3), 1, (4, 3)), (3, 3, (2, 2))])
def test_transposed_layout_matches_the_layers_own_operator(kernel_size, strides, n) -> None:
    layer = keras.layers.Conv2DTranspose(3, kernel_size, strides=strides, use_bias=False)
    layer.build((None, *n, 2))
    stride = layer.strides
    dense = _dense(layer, n, 2, (0, 0), fold=tuple(m * s for m, s in zip(n, stride, strict=True)))
    _compare(dense, _engine_values(layer, n))


def test_separable_kernels_match_the_layers_own_operator() -> None:
    n, channels, multiplier = (6, 4), 3, 2
    width = channels * multiplier
    layer = keras.layers.SeparableConv2D(width, 3, strides=2, depth_multiplier=multiplier, use_bias=False)
    layer.build((None, *n, channels))
    depthwise = _numpy(layer.depthwise_kernel)
    pointwise = _numpy(layer.pointwise_kernel)
    # the depthwise half alone: the pointwise kernel set to the identity
    layer.pointwise_kernel.assign(np.eye(width, dtype="float32").reshape(1, 1, width, width))
    _compare(_dense(layer, n, channels, (2, 2)), _engine_values(layer, n, "depthwise_kernel"))
    # the pointwise half alone, on the depthwise output grid: a depthwise kernel that passes channel c to c*M
    delta = np.zeros_like(depthwise)
    delta[0, 0, :, 0] = 1.0
    layer.depthwise_kernel.assign(delta)
    layer.pointwise_kernel.assign(pointwise)
    dense = _dense(layer, n, channels, (2, 2))  # x -> pointwise(subsample(x)) on channels c*M
    inner = np.linalg.svd(dense, compute_uv=False)
    (_, info) = layer_kernels(layer, n)
    kernel = pointwise[:, :, ::multiplier, :].astype(np.float64)
    values = np.sort(cs.singular_values(kernel, info.input_shape, **info.engine_options()))[::-1]
    np.testing.assert_allclose(inner[: values.size], values, rtol=0, atol=2e-5 * values[0])
    assert np.all(inner[values.size :] <= 2e-5 * values[0])  # the channels c*M+m, m > 0, carry nothing
    assert info.input_shape == (3, 2) and info.groups == 1


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_the_layers_own_zero_padding_is_the_engines(padding: str) -> None:
    layer = keras.layers.Conv2D(3, 3, padding=padding, use_bias=False)
    layer.build((None, 6, 6, 2))
    dense = _dense(layer, (6, 6), 2, (0, 0))
    kernel = _numpy(layer.kernel).astype(np.float64)
    bounds = cs.operator_norm_bounds(kernel, 6, layout="HWIO", padding=1 if padding == "same" else 0)
    top = np.linalg.svd(dense, compute_uv=False)[0]
    assert bounds.lower * (1 - 1e-5) <= top <= bounds.upper * (1 + 1e-5)
    assert top == pytest.approx(bounds.value, rel=1e-5)


def test_depthwise_layout_round_trip_and_channel_order() -> None:
    kernel = np.arange(2 * 2 * 3 * 2.0).reshape(2, 2, 3, 2)
    engine = to_engine(kernel, True)
    assert engine.shape == (2, 2, 1, 6)
    assert all(engine[..., 0, c * 2 + m].tolist() == kernel[..., c, m].tolist() for c in range(3) for m in range(2))
    assert np.array_equal(from_engine(engine, kernel.shape), kernel)
    tensor = keras.ops.convert_to_tensor(kernel)
    assert np.array_equal(_numpy(from_engine(to_engine(tensor, True), kernel.shape)), kernel)


CONSTRAINTS = [
    ("conv", (3, 3, 2, 8), (8, 8), {"stride": 2, "groups": 2, "dilation": (1, 2)}),
    ("conv1d", (4, 3, 6), (9,), {"dilation": 3}),  # taps collide modulo 9
    ("depthwise", (3, 3, 4, 2), (6, 6), {"kind": "depthwise"}),
    ("transpose", (3, 3, 6, 4), (4, 4), {"kind": "transpose", "stride": 2}),
]


@pytest.mark.parametrize(("name", "shape", "n", "options"), CONSTRAINTS, ids=[c[0] for c in CONSTRAINTS])
def test_constraint_equals_the_engines_projection(name, shape, n, options) -> None:
    rng = np.random.default_rng(3)
    kernel = rng.normal(size=shape).astype("float32")
    constraint = OperatorNormConstraint(1.0, n, iterations=3, rescale=False, **options)
    mine = _numpy(constraint(keras.ops.convert_to_tensor(kernel)))
    kind = options.get("kind", "conv")
    engine_options = {
        "stride": options.get("stride"),
        "dilation": options.get("dilation"),
        "groups": shape[-2] if kind == "depthwise" else options.get("groups"),
        "transposed": kind == "transpose",
    }
    engine = cs.clip_operator_norm(
        to_engine(kernel.astype(np.float64), kind == "depthwise"), n, 1.0, iterations=3, layout="HWIO", **engine_options
    )
    engine = from_engine(engine, shape)
    assert mine.shape == shape and mine.dtype == np.float32
    assert not np.allclose(engine, kernel, atol=1e-3)  # the projection did something
    np.testing.assert_allclose(mine, engine, rtol=0, atol=2e-5 * np.abs(kernel).max())
    rescaled = OperatorNormConstraint(1.0, n, **options)(keras.ops.convert_to_tensor(kernel))
    rescaled = to_engine(_numpy(rescaled).astype(np.float64), kind == "depthwise")
    norm = cs.operator_norm(rescaled, n, layout="HWIO", **engine_options)
    assert 1.0 - 1e-4 <= float(norm) <= 1.0 + 1e-5


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_constraint_runs_torch_at_the_librarys_thread_limit_and_restores_it(backend, monkeypatch) -> None:
    torch = pytest.importorskip("torch", reason="the torch backend's thread limit needs torch")
    import convspectra.keras.constraint as constraint_module

    monkeypatch.setattr(keras.backend, "backend", lambda: backend)  # the decision the library takes per backend
    inside = []
    original = constraint_module.clip_kernel

    def spy(*args, **kwargs):
        inside.append(torch.get_num_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(constraint_module, "clip_kernel", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        kernel = keras.ops.convert_to_tensor(np.random.default_rng(0).normal(size=(3, 3, 2, 4)).astype("float32"))
        OperatorNormConstraint(1.0, 6)(kernel)
        assert inside == ([1] if backend == "torch" else [2])  # one intra-op thread inside; other backends: untouched
        assert torch.get_num_threads() == 2  # restored on exit
    finally:
        torch.set_num_threads(before)


def test_bad_arguments_name_the_parameter() -> None:
    with pytest.raises(cs.ParameterError, match="kind"):
        OperatorNormConstraint(1.0, 8, kind="dense")
    with pytest.raises(cs.ParameterError, match="max_norm"):
        OperatorNormConstraint(-1.0, 8)
    with pytest.raises(cs.ParameterError, match="stride"):
        OperatorNormConstraint(1.0, 7, stride=2)(keras.ops.ones((3, 3, 2, 2)))
    with pytest.raises(cs.ParameterTypeError, match="layer"):
        layer_kernels(keras.layers.Dense(3), 8)
    subclassed = keras.layers.Conv2D(2, 3)
    subclassed.build((None, 8, 8, 1))
    with pytest.raises(cs.ParameterError, match="input_shapes"):
        layer_kernels(subclassed)


def test_import_convspectra_does_not_import_keras() -> None:
    code = "import sys, convspectra, convspectra.nn; assert 'keras' not in sys.modules, 'keras imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr


def test_callback_bounds_per_layer_and_explicit_sizes() -> None:
    from convspectra.keras import OperatorNormCallback

    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            keras.layers.Conv2D(4, 3, padding="same", name="a"),
            keras.layers.Conv2D(4, 3, padding="same", name="b"),
            keras.layers.Flatten(),
            keras.layers.Dense(1),
        ]
    )
    model.compile("sgd", "mse")
    before = _numpy(model.get_layer("b").kernel)
    callback = OperatorNormCallback({"a": 0.25}, every=1, input_shapes={"a": (12, 12)})
    x, y = np.ones((2, 6, 6, 2), "float32"), np.ones((2, 1), "float32")
    model.fit(x, y, batch_size=2, epochs=1, verbose=0, callbacks=[callback])
    assert callback.projections == 1 and list(callback.kernels) == ["a"]
    assert callback.kernels["a"][0].input_shape == (12, 12)
    norm = cs.operator_norm(_numpy(model.get_layer("a").kernel).astype(np.float64), 12, layout="HWIO")
    assert norm <= 0.25 * (1 + 1e-5)
    assert not np.array_equal(_numpy(model.get_layer("b").kernel), before)  # trained, not projected
    assert cs.operator_norm(_numpy(model.get_layer("b").kernel).astype(np.float64), 6, layout="HWIO") > 0.25


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_fit_under_constraint_and_callback_keeps_every_norm(backend: str) -> None:
    pytest.importorskip(backend, reason=f"the Keras {backend} backend needs {backend}")
    # No OMP_NUM_THREADS here: the constraint and the callback run torch at the library's own thread limit.
    env = {**os.environ, "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu"}
    env.pop("OMP_NUM_THREADS", None)
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "keras_fit.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["backend"] == backend
    if backend == "jax":
        assert report["jit_compile"] is True  # the constraint ran inside the compiled train step
    assert report["projections"] == 2
    for key in ("constraint", "callback"):
        rows = report[key]
        assert len(rows) == 6, rows
        for layer, attribute, upper, bound in rows:
            assert upper <= bound * (1 + 1e-3), (key, layer, attribute, upper)
