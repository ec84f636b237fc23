"""Spectral normalisation for Flax (linen, nnx) and Equinox against the layer's own dense matrix.

The oracle: ``jax.jacfwd`` of the wrapped layer's own apply (the library's conv, its padding, in
float64) on a small input, and NumPy's SVD of that matrix. After the converge helper, the
normalised layer's true norm is within 1e-4 of ``max_norm``; a jitted training loop with one
iteration per step keeps it within 2% of 1; the state lives where each library keeps it.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="convspectra.jax needs jax (pip install convspectra[jax])")
nn = pytest.importorskip("flax.linen", reason="the Flax wrappers need flax (pip install convspectra[jax])")
eqx = pytest.importorskip("equinox", reason="the Equinox wrapper needs equinox (pip install convspectra[jax])")
optax = pytest.importorskip("optax", reason="the training loop uses optax (pip install convspectra[jax])")
jax.config.update("jax_enable_x64", True)  # float64 oracles; float32 layers stay float32
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

import convspectra as cs  # noqa: E402
import convspectra.jax as csj  # noqa: E402
from convspectra.errors import ConvergenceWarning, ParameterError, ParameterTypeError  # noqa: E402

F64 = jnp.float64


def dense_norm(function, shape) -> float:
    """The largest singular value of the linear part of ``function`` at inputs of ``shape`` (float64)."""
    matrix = jax.jacfwd(function)(jnp.zeros(shape, F64))  # forward mode: Flax cannot transpose input_dilation
    matrix = np.asarray(matrix).reshape(int(np.prod(matrix.shape[: matrix.ndim - len(shape)])), -1)
    return float(np.linalg.svd(matrix, compute_uv=False)[0])


# -- Flax linen -----------------------------------------------------------------------------------

LINEN_CASES = {
    "2d-same": (dict(features=3, kernel_size=(3, 3)), (6, 6, 2), 1.0),
    "2d-stride2": (dict(features=3, kernel_size=(3, 3), strides=2), (7, 7, 2), 0.5),
    "2d-dilation2": (dict(features=2, kernel_size=(3, 3), kernel_dilation=2), (7, 6, 2), 1.0),
    "2d-groups2": (dict(features=4, kernel_size=(3, 3), feature_group_count=2), (5, 5, 4), 0.5),
    "2d-valid": (dict(features=3, kernel_size=(3, 2), padding="VALID"), (6, 5, 2), 1.0),
    "2d-circular": (dict(features=3, kernel_size=(3, 3), padding="CIRCULAR"), (5, 6, 2), 0.5),
    "2d-pairs": (dict(features=2, kernel_size=(2, 3), padding=((1, 2), (0, 1))), (5, 5, 2), 1.0),
    "2d-input-dilation": (
        dict(features=2, kernel_size=(3, 3), input_dilation=2, padding=((1, 1), (2, 1))),
        (4, 4, 2),
        1.0,
    ),
    "1d-causal-stride2": (dict(features=3, kernel_size=(3,), strides=2, padding="CAUSAL"), (11, 2), 0.5),
    "3d-same": (dict(features=2, kernel_size=(2, 3, 2)), (4, 4, 3, 2), 1.0),
}


def linen_init(conv_kwargs, input_shape, **options):
    layer = csj.SpectralNormLinen(nn.Conv(**conv_kwargs, param_dtype=F64), **options)
    x = jnp.ones((2, *input_shape), F64)
    return layer, layer.init(jax.random.key(1), x, update_stats=False), x


@pytest.mark.parametrize("case", sorted(LINEN_CASES))
def test_linen_converges_to_the_true_norm(case):
    conv_kwargs, input_shape, c = LINEN_CASES[case]
    layer, variables, x = linen_init(conv_kwargs, input_shape, max_norm=c)
    variables, found = csj.converge_spectral_norm_linen(layer, variables, x, update_stats=False, tol=1e-6)
    raw = dense_norm(
        lambda v: nn.Conv(**conv_kwargs, param_dtype=F64).apply({"params": variables["params"]["layer_instance"]}, v),
        (1, *input_shape),
    )
    assert abs(found[""].sigma - raw) <= 1e-6 * raw  # the estimate is the unnormalised layer's norm
    ours = dense_norm(lambda v: layer.apply(variables, v, update_stats=False), (1, *input_shape))
    assert abs(ours - c) <= 1e-4 * c, (case, ours)


def test_linen_clip_leaves_a_small_layer_alone_and_clips_a_large_one():
    conv_kwargs, input_shape, _ = LINEN_CASES["2d-stride2"]
    for c, expected in ((100.0, None), (0.25, 0.25)):
        layer, variables, x = linen_init(conv_kwargs, input_shape, max_norm=c, mode="clip")
        variables, found = csj.converge_spectral_norm_linen(layer, variables, x, update_stats=False, tol=1e-6)
        ours = dense_norm(
            lambda v, layer=layer, variables=variables: layer.apply(variables, v, update_stats=False), (1, *input_shape)
        )
        target = found[""].sigma if expected is None else expected
        assert abs(ours - target) <= 1e-4 * target


def test_linen_state_lives_in_batch_stats_and_moves_only_with_update_stats():
    layer, variables, x = linen_init(dict(features=3, kernel_size=(3, 3)), (6, 6, 2))
    stats = variables["batch_stats"]
    assert jax.tree.map(jnp.shape, stats) == {"sigma": (), "u": (1, 6, 6, 3), "v": (1, 6, 6, 2)}
    assert set(variables) == {"params", "batch_stats"}
    _, same = layer.apply(variables, x, update_stats=False, mutable=["batch_stats"])
    assert all(np.array_equal(same["batch_stats"][k], stats[k]) for k in stats)
    layer.apply(variables, x, update_stats=False)  # eval needs no mutable collection
    _, moved = layer.apply(variables, x, update_stats=True, mutable=["batch_stats"])
    assert not np.array_equal(moved["batch_stats"]["v"], stats["v"])
    named = csj.SpectralNormLinen(nn.Conv(2, (3,)), collection_name="spectral")
    assert "spectral" in named.init(jax.random.key(0), jnp.ones((1, 8, 2)), update_stats=False)


def test_linen_gradient_flows_through_sigma():
    conv_kwargs, input_shape, _ = LINEN_CASES["2d-groups2"]
    layer, variables, x = linen_init(conv_kwargs, input_shape, max_norm=0.5)
    conv = nn.Conv(**conv_kwargs, param_dtype=F64)
    u, v = variables["batch_stats"]["u"], variables["batch_stats"]["v"]
    x = jax.random.normal(jax.random.key(2), x.shape, F64)

    def ours(params):
        return jnp.sum(jnp.sin(layer.apply({**variables, "params": params}, x, update_stats=False)))

    def explicit(params):  # sigma = <u, A v> with the layer's own apply, u and v fixed
        linear = {"params": {**params["layer_instance"], "bias": jnp.zeros_like(params["layer_instance"]["bias"])}}
        value = jnp.vdot(u, conv.apply(linear, v))
        scaled = {"params": {**params["layer_instance"], "kernel": params["layer_instance"]["kernel"] * 0.5 / value}}
        return jnp.sum(jnp.sin(conv.apply(scaled, x)))

    got, want = jax.grad(ours)(variables["params"]), jax.grad(explicit)(variables["params"])
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert np.abs(np.asarray(a) - np.asarray(b)).max() <= 1e-10 * np.abs(np.asarray(b)).max()
    assert np.abs(np.asarray(got["layer_instance"]["kernel"])).max() > 0


class _SmallCNN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        x = csj.SpectralNormLinen(nn.Conv(4, (3, 3)))(x, update_stats=train)
        x = csj.SpectralNormLinen(nn.Conv(4, (3, 3), strides=2, feature_group_count=2))(nn.relu(x), update_stats=train)
        return jnp.mean(x, axis=(1, 2))


def test_linen_jitted_training_keeps_the_norm_near_one():
    model = _SmallCNN()
    x = jax.random.normal(jax.random.key(0), (8, 8, 8, 3), jnp.float32)
    target = jax.random.normal(jax.random.key(1), (8, 4), jnp.float32)
    variables = model.init(jax.random.key(2), x, train=False)
    tx = optax.adam(1e-3)
    opt_state = tx.init(variables["params"])

    @jax.jit
    def step(variables, opt_state):
        def loss(params):
            out, updates = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
            return jnp.mean((out - target) ** 2), updates

        (_, updates), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
        change, opt_state = tx.update(grads, opt_state)
        return {"params": optax.apply_updates(variables["params"], change), **updates}, opt_state

    for _ in range(40):
        variables, opt_state = step(variables, opt_state)
    sizes = {"SpectralNormLinen_0": (8, 8, 3), "SpectralNormLinen_1": (8, 8, 4)}
    convs = {
        "SpectralNormLinen_0": nn.Conv(4, (3, 3)),
        "SpectralNormLinen_1": nn.Conv(4, (3, 3), strides=2, feature_group_count=2),
    }
    for name, conv in convs.items():
        wrapped = csj.SpectralNormLinen(conv)
        local = {
            "params": {"layer_instance": variables["params"][name.replace("SpectralNormLinen", "Conv")]},
            "batch_stats": variables["batch_stats"][name],
        }
        norm = dense_norm(
            lambda v, w=wrapped, local=local: w.apply(local, v.astype(jnp.float32), update_stats=False).astype(F64),
            (1, *sizes[name]),
        )
        assert abs(norm - 1) <= 0.02, (name, norm)


# -- Flax nnx -------------------------------------------------------------------------------------

NNX_CASES = {
    "2d-stride2-groups2": (
        dict(in_features=4, out_features=4, kernel_size=(3, 3), strides=2, feature_group_count=2),
        (7, 6),
        1.0,
    ),
    "2d-circular-dilation2": (
        dict(in_features=2, out_features=3, kernel_size=(3, 3), padding="CIRCULAR", kernel_dilation=2),
        (6, 6),
        0.5,
    ),
    "1d-valid": (dict(in_features=2, out_features=3, kernel_size=(4,), padding="VALID"), (12,), 1.0),
}


@pytest.mark.parametrize("case", sorted(NNX_CASES))
def test_nnx_converges_to_the_true_norm(case):
    conv_kwargs, size, c = NNX_CASES[case]
    layer = csj.SpectralNormNNX(nnx.Conv(**conv_kwargs, param_dtype=F64, rngs=nnx.Rngs(0)), max_norm=c)
    channels = conv_kwargs["in_features"]
    layer(jnp.ones((2, *size, channels), F64))  # records the input size
    found = csj.converge_spectral_norm_nnx(layer, tol=1e-6)
    layer.eval()
    ours = dense_norm(lambda v: layer(v), (1, *size, channels))
    assert abs(ours - c) <= 1e-4 * c, (case, ours)
    assert found[""].converged


def test_nnx_state_is_batch_stat_variables_updated_in_train_mode_only():
    conv = nnx.Conv(2, 3, (3, 3), rngs=nnx.Rngs(0))
    kernel = np.asarray(conv.kernel[...])
    layer = csj.SpectralNormNNX(conv, input_shape=(6, 6))
    stats = nnx.state(layer, nnx.BatchStat)
    assert {str(path[0]) for path, _ in nnx.to_flat_state(stats)} == {"u", "v", "sigma"}
    x = jnp.ones((1, 6, 6, 2), jnp.float32)
    v0 = np.asarray(layer.v[...])
    layer.eval()
    layer(x)
    assert np.array_equal(layer.v[...], v0)
    layer.train()
    step = nnx.jit(lambda model, x: model(x))
    step(layer, x)
    assert not np.array_equal(layer.v[...], v0)
    assert np.array_equal(conv.kernel[...], kernel)  # the parameter itself is never overwritten
    layer(x, update_stats=False)
    with pytest.raises(ParameterTypeError, match="layer_instance"):
        csj.SpectralNormNNX(nnx.Linear(2, 2, rngs=nnx.Rngs(0)))


# -- Equinox --------------------------------------------------------------------------------------

EQX_CASES = {
    "2d-padding1-groups2": (
        dict(num_spatial_dims=2, in_channels=4, out_channels=6, kernel_size=3, padding=1, groups=2),
        (6, 5),
        1.0,
    ),
    "2d-pairs-stride2": (
        dict(num_spatial_dims=2, in_channels=2, out_channels=3, kernel_size=3, stride=2, padding=((1, 0), (2, 1))),
        (7, 6),
        0.5,
    ),
    "2d-circular-mode": (
        dict(
            num_spatial_dims=2,
            in_channels=2,
            out_channels=2,
            kernel_size=3,
            padding=1,
            padding_mode="CIRCULAR",
            dilation=(1, 2),
        ),
        (6, 6),
        1.0,
    ),
    "1d-same-stride2": (
        dict(num_spatial_dims=1, in_channels=3, out_channels=2, kernel_size=4, stride=2, padding="SAME"),
        (11,),
        0.5,
    ),
    "3d-valid": (dict(num_spatial_dims=3, in_channels=2, out_channels=2, kernel_size=2), (4, 3, 4), 1.0),
}


def _clone(state):
    """A copy of an Equinox state that may be used again (Equinox refuses a state used twice)."""
    leaves, treedef = jax.tree_util.tree_flatten(state)
    return jax.tree_util.tree_unflatten(treedef, leaves)


@pytest.mark.parametrize("case", sorted(EQX_CASES))
def test_equinox_converges_to_the_true_norm(case):
    conv_kwargs, size, c = EQX_CASES[case]
    conv = eqx.nn.Conv(**conv_kwargs, dtype=F64, key=jax.random.key(0))
    layer, state = eqx.nn.make_with_state(csj.SpectralNormEquinox)(conv, input_shape=size, max_norm=c)
    state, found = csj.converge_spectral_norm_equinox(layer, state, tol=1e-6)
    raw = dense_norm(lambda v: conv(v), (conv.in_channels, *size))
    assert abs(found[""].sigma - raw) <= 1e-6 * raw
    ours = dense_norm(lambda v: layer(v, state, inference=True)[0], (conv.in_channels, *size))
    assert abs(ours - c) <= 1e-4 * c, (case, ours)


def test_equinox_state_moves_only_when_not_inference_and_gradient_flows_through_sigma():
    conv = eqx.nn.Conv2d(2, 3, 3, padding=1, dtype=F64, key=jax.random.key(0))
    layer, state = eqx.nn.make_with_state(csj.SpectralNormEquinox)(conv, input_shape=6, max_norm=0.5)
    x = jax.random.normal(jax.random.key(1), (2, 6, 6), F64)
    u0, v0 = state.get(layer.uv_index)
    assert u0.shape == (1, 3, 6, 6) and v0.shape == (1, 2, 6, 6)
    _, same = layer(x, _clone(state), inference=True)
    assert all(np.array_equal(a, b) for a, b in zip(same.get(layer.uv_index), (u0, v0), strict=True))
    _, moved = layer(x, _clone(state))
    assert not np.array_equal(moved.get(layer.uv_index)[1], v0)

    def ours(model):
        return jnp.sum(jnp.sin(model(x, _clone(state), inference=True)[0]))

    def explicit(model):
        linear = eqx.tree_at(lambda m: m.layer.bias, model, jnp.zeros_like(model.layer.bias))
        value = jnp.vdot(u0[0], linear.layer(v0[0]))
        scaled = eqx.tree_at(lambda m: m.weight, model.layer, model.layer.weight * 0.5 / value)
        return jnp.sum(jnp.sin(scaled(x)))

    got = eqx.filter_grad(ours)(layer).layer.weight
    want = eqx.filter_grad(explicit)(layer).layer.weight
    assert np.abs(np.asarray(got - want)).max() <= 1e-10 * np.abs(np.asarray(want)).max()


def test_equinox_jitted_sgd_training_keeps_the_norm_near_one():
    keys = jax.random.split(jax.random.key(0), 3)
    conv = eqx.nn.Conv2d(3, 4, 3, padding=1, dtype=jnp.float32, key=keys[0])
    model, state = eqx.nn.make_with_state(csj.SpectralNormEquinox)(conv, input_shape=(8, 8))
    x = jax.random.normal(keys[1], (6, 3, 8, 8), jnp.float32)
    target = jax.random.normal(keys[2], (6, 4, 8, 8), jnp.float32)
    tx = optax.sgd(0.05)
    opt_state = tx.init(eqx.filter(model, eqx.is_inexact_array))

    @eqx.filter_jit
    def step(model, state, opt_state):
        def loss(model, state):
            out, state = jax.vmap(model, axis_name="batch", in_axes=(0, None), out_axes=(0, None))(x, state)
            return jnp.mean((out - target) ** 2), state

        (_, state), grads = eqx.filter_value_and_grad(loss, has_aux=True)(model, state)
        updates, opt_state = tx.update(grads, opt_state)
        return eqx.apply_updates(model, updates), state, opt_state

    for _ in range(30):
        model, state, opt_state = step(model, state, opt_state)
    norm = dense_norm(lambda v: model(v.astype(jnp.float32), state, inference=True)[0].astype(F64), (3, 8, 8))
    assert abs(norm - 1) <= 0.02, norm


# -- the wrap-around operator against the NumPy engine ---------------------------------------------


def test_the_circular_sigma_equals_the_numpy_engine():
    conv = nn.Conv(4, (3, 3), strides=2, kernel_dilation=(1, 2), feature_group_count=2, param_dtype=F64)
    layer = csj.SpectralNormLinen(conv, padding="circular")
    x = jnp.ones((1, 8, 6, 4), F64)
    variables = layer.init(jax.random.key(0), x, update_stats=False)
    _, found = csj.converge_spectral_norm_linen(layer, variables, x, update_stats=False, tol=1e-9)
    kernel = np.asarray(variables["params"]["layer_instance"]["kernel"])
    expected = cs.operator_norm(kernel, (8, 6), padding="circular", layout="HWIO", stride=2, dilation=(1, 2), groups=2)
    assert abs(found[""].sigma - float(expected)) <= 1e-6 * float(expected)

    weight = eqx.nn.Conv1d(2, 3, 5, stride=3, dtype=F64, key=jax.random.key(3))
    eq, state = eqx.nn.make_with_state(csj.SpectralNormEquinox)(weight, input_shape=12, padding="circular")
    _, found = csj.converge_spectral_norm_equinox(eq, state, tol=1e-9)
    expected = cs.operator_norm(np.asarray(weight.weight), 12, padding="circular", layout="OIW", stride=3)
    assert abs(found[""].sigma - float(expected)) <= 1e-6 * float(expected)


# -- errors, warnings, imports --------------------------------------------------------------------


def test_bad_layers_and_options_are_refused_with_the_parameter_named():
    x = jnp.ones((1, 6, 6, 2))
    with pytest.raises(ParameterError, match="padding"):
        csj.SpectralNormLinen(nn.Conv(2, (3, 3), padding="REFLECT")).init(jax.random.key(0), x, update_stats=False)
    with pytest.raises(ParameterTypeError, match="layer_instance"):
        csj.SpectralNormLinen(nn.Dense(2)).init(jax.random.key(0), x, update_stats=False)
    with pytest.raises(ParameterError, match="mode"):
        csj.SpectralNormLinen(nn.Conv(2, (3, 3)), mode="halve").init(jax.random.key(0), x, update_stats=False)
    with pytest.raises(ParameterError, match="input_shape"):
        csj.SpectralNormLinen(nn.Conv(2, (3, 3), strides=4), padding="circular").init(
            jax.random.key(0), x, update_stats=False
        )
    conv = eqx.nn.Conv2d(2, 2, 3, padding=1, padding_mode="REFLECT", key=jax.random.key(0))
    with pytest.raises(ParameterError, match="padding_mode"):
        csj.SpectralNormEquinox(conv, input_shape=6)
    with pytest.raises(ParameterError, match="weight_name"):
        csj.SpectralNormEquinox(eqx.nn.Conv1d(1, 1, 3, key=jax.random.key(0)), "bias", input_shape=6)
    with pytest.raises(ParameterError, match="max_norm"):
        csj.SpectralNormNNX(nnx.Conv(2, 2, (3,), rngs=nnx.Rngs(0)), max_norm=0.0)


def test_converge_warns_when_it_stops_early():
    layer = csj.SpectralNormNNX(nnx.Conv(2, 2, (3, 3), rngs=nnx.Rngs(0)), input_shape=(8, 8))
    with pytest.warns(ConvergenceWarning, match="converge_spectral_norm_nnx"):
        found = csj.converge_spectral_norm_nnx(layer, tol=1e-30, max_iter=3)
    assert found[""].iterations == 3 and not found[""].converged
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert csj.converge_spectral_norm_nnx(layer, tol=1e-2)[""].converged


def test_importing_convspectra_jax_imports_neither_flax_nor_equinox():
    code = "import sys, convspectra.jax; print('flax' in sys.modules, 'equinox' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
