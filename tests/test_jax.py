"""convspectra.jax against the NumPy engine (itself proven against the dense operator): values, jit, vmap, grad."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

jax = pytest.importorskip("jax", reason="convspectra.jax needs jax (pip install convspectra[jax])")
jax.config.update("jax_enable_x64", True)  # float64 checks; float32 inputs stay float32
import jax.numpy as jnp  # noqa: E402

import convspectra as cs  # noqa: E402
import convspectra.jax as csj  # noqa: E402
from conftest import layers  # noqa: E402


def _tolerance(dtype, sigma_max: float) -> float:
    return (1e-9 if dtype == np.float64 else 1e-5) * max(sigma_max, 1e-30)


@settings(max_examples=15, deadline=None)
@given(layers(max_dense=300))
def test_singular_values_and_norm_equal_the_numpy_engine(layer):
    kernel, input_shape, kwargs = layer
    expected = cs.singular_values(kernel, input_shape, **kwargs)
    ours = np.asarray(csj.singular_values(jnp.asarray(kernel), input_shape, **kwargs))
    assert ours.shape == expected.shape and ours.dtype == expected.dtype
    tol = _tolerance(expected.dtype, float(expected[0]))
    assert np.abs(ours - expected).max() <= tol
    norm = float(csj.operator_norm(jnp.asarray(kernel), input_shape, **kwargs))
    assert abs(norm - float(expected[0])) <= tol


@settings(max_examples=10, deadline=None)
@given(layers(max_dense=200), st.sampled_from([0.3, 0.8]), st.sampled_from(["alternating", "dykstra"]))
def test_clip_equals_the_numpy_engine(layer, fraction, method):
    kernel, input_shape, kwargs = layer
    kernel = np.asarray(kernel, dtype=np.float64)
    sigma = float(cs.singular_values(kernel, input_shape, **kwargs)[0])
    c = fraction * sigma if sigma > 0 else 1.0
    expected = cs.clip_operator_norm(kernel, input_shape, c, iterations=3, method=method, **kwargs)
    ours = np.asarray(
        csj.clip_operator_norm(jnp.asarray(kernel), input_shape, c, iterations=3, method=method, **kwargs)
    )
    assert ours.shape == kernel.shape and ours.dtype == np.float64
    assert np.abs(ours - expected).max() <= 1e-9 * max(sigma, 1e-30)


def test_float32_and_bfloat16_are_computed_in_float32(rng):
    kernel = rng.normal(size=(3, 3, 4, 8)).astype(np.float32)
    expected = cs.singular_values(kernel, 6, layout="HWIO", stride=2)
    ours = csj.singular_values(jnp.asarray(kernel), 6, stride=2)
    assert ours.dtype == jnp.float32
    assert np.abs(np.asarray(ours) - expected).max() <= 1e-5 * expected[0]
    low = jnp.asarray(kernel, dtype=jnp.bfloat16)
    upcast = cs.singular_values(np.asarray(low.astype(jnp.float32)), 6, layout="HWIO", stride=2)
    norm = csj.operator_norm(low, 6, stride=2)
    assert norm.dtype == jnp.float32 and abs(float(norm) - upcast[0]) <= 1e-5 * upcast[0]
    clipped = csj.clip_operator_norm(low, 6, 1.0, stride=2)
    assert clipped.dtype == jnp.bfloat16


def test_equinox_layout_oihw(rng):
    kernel = rng.normal(size=(6, 2, 3, 3))
    expected = cs.singular_values(kernel, 8, groups=2, dilation=2, layout="OIHW")
    ours = csj.singular_values(jnp.asarray(kernel), 8, groups=2, dilation=2, layout="OIHW")
    assert np.abs(np.asarray(ours) - expected).max() <= 1e-9 * expected[0]


def test_jit_and_vmap_over_a_batch_of_kernels(rng):
    kernels = rng.normal(size=(4, 5, 3, 2, 3))  # 4 HWIO 2-D kernels (5, 3, 2, 3)
    kw = dict(stride=(1, 3), dilation=(2, 1), transposed=True)
    norms = jax.jit(jax.vmap(lambda k: csj.operator_norm(k, (4, 2), **kw)))(jnp.asarray(kernels))
    spectra = jax.jit(jax.vmap(lambda k: csj.singular_values(k, (4, 2), **kw)))(jnp.asarray(kernels))
    clipped = jax.jit(jax.vmap(lambda k: csj.clip_operator_norm(k, (4, 2), 1.0, iterations=2, **kw)))(kernels)
    for i, kernel in enumerate(kernels):
        expected = cs.singular_values(kernel, (4, 2), layout="HWIO", **kw)
        assert abs(float(norms[i]) - expected[0]) <= 1e-9 * expected[0]
        assert np.abs(np.asarray(spectra[i]) - expected).max() <= 1e-9 * expected[0]
        reference = cs.clip_operator_norm(kernel, (4, 2), 1.0, iterations=2, layout="HWIO", **kw)
        assert np.abs(np.asarray(clipped[i]) - reference).max() <= 1e-9 * expected[0]


@pytest.mark.parametrize(
    ("shape", "input_shape", "kwargs"),
    [
        ((3, 3, 4, 5), 6, {}),
        ((3, 2, 6), 8, {"stride": 2, "groups": 2}),
        ((2, 2, 2, 3, 2), 4, {"dilation": 3, "transposed": True}),
        ((7, 2, 3), 3, {}),  # kernel larger than the input
    ],
)
def test_gradient_of_the_norm_matches_finite_differences(shape, input_shape, kwargs, rng):
    kernel = rng.normal(size=shape)
    grad = np.asarray(jax.jit(jax.grad(lambda k: csj.operator_norm(k, input_shape, **kwargs)))(jnp.asarray(kernel)))

    def norm(k: np.ndarray) -> float:
        return float(cs.operator_norm(k, input_shape, padding="circular", layout="HWIO", **kwargs))

    h = 1e-6
    direction = rng.normal(size=shape)
    numeric = (norm(kernel + h * direction) - norm(kernel - h * direction)) / (2 * h)
    assert abs(float((grad * direction).sum()) - numeric) <= 1e-6 * max(1.0, abs(numeric))
    # the whole spectrum's gradient, through a smooth function of it
    total = jax.grad(lambda k: jnp.sum(csj.singular_values(k, input_shape, **kwargs) ** 2))(jnp.asarray(kernel))
    assert np.isfinite(np.asarray(total)).all()
    num_total = (
        (cs.singular_values(kernel + h * direction, input_shape, layout="HWIO", **kwargs) ** 2).sum()
        - (cs.singular_values(kernel - h * direction, input_shape, layout="HWIO", **kwargs) ** 2).sum()
    ) / (2 * h)
    assert abs(float(jnp.sum(total * direction)) - num_total) <= 1e-5 * max(1.0, abs(num_total))


def test_importing_convspectra_does_not_import_jax():
    import subprocess
    import sys

    code = "import sys, convspectra; assert 'jax' not in sys.modules, 'jax imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bad_input_names_the_parameter():
    with pytest.raises(cs.ParameterError, match="stride"):
        csj.singular_values(jnp.ones((3, 3, 2, 2)), 5, stride=2)
    with pytest.raises(cs.ParameterError, match="max_norm"):
        csj.clip_operator_norm(jnp.ones((3, 3, 2, 2)), 4, 0.0)
    with pytest.raises(cs.ParameterTypeError, match="kernel"):
        csj.operator_norm([1.0, 2.0], 4)
