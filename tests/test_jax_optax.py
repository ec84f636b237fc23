"""The optax transform keeps every conv's norm within the bound; the model walkers find the conv kernels."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="convspectra.jax needs jax (pip install convspectra[jax])")
optax = pytest.importorskip("optax", reason="the optax transform needs optax (pip install convspectra[jax])")
nn = pytest.importorskip("flax.linen", reason="the Flax walker needs flax (pip install convspectra[jax])")
jax.config.update("jax_enable_x64", True)  # the dense-operator checks run in float64 (as tests/test_jax.py)
import jax.numpy as jnp  # noqa: E402

import convspectra as cs  # noqa: E402
import convspectra.jax as csj  # noqa: E402


class SmallCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(6, (3, 3), strides=2, padding="CIRCULAR")(x))
        x = nn.relu(nn.Conv(6, (3, 3), kernel_dilation=2, feature_group_count=2, padding="CIRCULAR")(x))
        return nn.Dense(2)(x.mean(axis=(1, 2)))


def test_optax_loop_keeps_every_conv_within_the_bound():
    model = SmallCNN()
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(8, 8, 8, 3)), dtype=jnp.float32)
    y = jnp.asarray(rng.integers(0, 2, size=8))
    params = model.init(jax.random.key(0), x)
    kernels = csj.find_conv_kernels_linen(model, params, x)
    assert kernels["params/Conv_0/kernel"].input_shape == (8, 8)
    assert kernels["params/Conv_1/kernel"] == csj.ConvKernel((4, 4), stride=(1, 1), dilation=(2, 2), groups=2)
    c, every = 0.5, 2
    tx = optax.chain(optax.adam(0.05), csj.clip_conv_kernels(every=every, max_norm=c, kernels=kernels, iterations=30))
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        def loss(p):
            logits = model.apply(p, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        grads = jax.grad(loss)(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    projected_steps = 0
    for index in range(1, 7):
        params, state = step(params, state)
        assert int(state[1].count) == index
        if index % every == 0:
            projected_steps += 1
            for name, kernel in kernels.items():
                leaf = params["params"][name.split("/")[1]]["kernel"]
                norm = cs.operator_norm(
                    np.asarray(leaf, dtype=np.float64), kernel.input_shape, padding="circular", **kernel.layer_args()
                )
                assert norm <= c * (1 + 1e-3), (index, name, norm)
    assert projected_steps == 3


def test_state_is_a_checkpointable_pytree_of_arrays():
    tx = csj.clip_conv_kernels(every=3, max_norm=1.0, kernels={"k": csj.ConvKernel((4, 4))})
    state = tx.init({"k": jnp.ones((2, 2, 1, 1))})
    leaves = jax.tree_util.tree_leaves(state)
    assert len(leaves) == 1 and leaves[0].dtype == jnp.int32
    with pytest.raises(cs.ParameterError, match="kernels"):
        tx.init({"other": jnp.ones((2, 2, 1, 1))})
    with pytest.raises(cs.ParameterError, match="every"):
        csj.clip_conv_kernels(every=0, max_norm=1.0, kernels={"k": csj.ConvKernel((4, 4))})


def test_walkers_find_nnx_and_equinox_convs():
    nnx = pytest.importorskip("flax.nnx", reason="needs flax.nnx")
    eqx = pytest.importorskip("equinox", reason="needs equinox (pip install convspectra[jax])")

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.conv1 = nnx.Conv(3, 4, (3, 3), strides=2, rngs=rngs)
            self.conv2 = nnx.Conv(4, 4, (3, 3), feature_group_count=2, rngs=rngs)

        def __call__(self, x):
            return self.conv2(self.conv1(x))

    net = Net(nnx.Rngs(0))
    found = csj.find_conv_kernels_nnx(net, jnp.zeros((1, 8, 8, 3)))
    assert found == {
        "conv1/kernel": csj.ConvKernel((8, 8), stride=(2, 2), dilation=(1, 1)),
        "conv2/kernel": csj.ConvKernel((4, 4), stride=(1, 1), dilation=(1, 1), groups=2),
    }
    model = eqx.nn.Sequential(
        [
            eqx.nn.Conv2d(3, 4, 3, stride=2, key=jax.random.key(0)),
            eqx.nn.Conv2d(4, 2, 3, dilation=2, key=jax.random.key(1)),
        ]
    )
    found = csj.find_conv_kernels_equinox(model, jnp.zeros((3, 12, 12)))
    assert found == {
        "layers/0/weight": csj.ConvKernel((12, 12), layout="OIHW", stride=(2, 2), dilation=(1, 1)),
        "layers/1/weight": csj.ConvKernel((5, 5), layout="OIHW", stride=(1, 1), dilation=(2, 2)),
    }
    leaf = model.layers[1].weight
    clipped = csj.clip_operator_norm(leaf, (5, 5), 0.1, iterations=20, **found["layers/1/weight"].layer_args())
    assert (
        cs.operator_norm(np.asarray(clipped, np.float64), (5, 5), padding="circular", layout="OIHW", dilation=2)
        <= 0.1 * 1.001
    )


def _dense_norm(apply, x):
    """The largest singular value of the layer's own (linear, bias-free) apply at input ``x``, from its jacobian."""
    jacobian = jax.jacobian(lambda z: apply(z.reshape(x.shape)).ravel())(jnp.ravel(x))
    return float(np.linalg.svd(np.asarray(jacobian, np.float64), compute_uv=False)[0])


@pytest.mark.parametrize(("stride", "size", "n"), [(2, 3, 4), (1, 4, 5)])
def test_linen_conv_transpose_is_recorded_and_clipped_to_its_true_norm(stride, size, n):
    layer = nn.ConvTranspose(
        3, (size, size), strides=(stride, stride), padding="CIRCULAR", transpose_kernel=True, use_bias=False,
        param_dtype=jnp.float64,
    )  # fmt: skip
    x = jnp.zeros((1, n, n, 2), jnp.float64)
    variables = layer.init(jax.random.key(stride), x)
    found = csj.find_conv_kernels_linen(layer, variables, x)
    assert found == {"params/kernel": csj.ConvKernel((n, n), stride=(stride,) * 2, dilation=(1, 1), transposed=True)}
    kernel, args = variables["params"]["kernel"], found["params/kernel"].layer_args()
    dense = _dense_norm(lambda z: layer.apply(variables, z), x)  # the layer's own operator, wrap-around padding
    assert abs(float(csj.operator_norm(kernel, (n, n), **args)) - dense) <= 1e-9 * dense
    target = 0.5 * dense
    clipped = csj.clip_operator_norm(kernel, (n, n), target, iterations=50, **args)
    true_norm = _dense_norm(lambda z: layer.apply({"params": {"kernel": clipped}}, z), x)
    assert target * (1 - 1e-3) <= true_norm <= target * (1 + 1e-3)


def test_nnx_conv_transpose_is_recorded_and_matches_its_operator():
    nnx = pytest.importorskip("flax.nnx", reason="needs flax.nnx")
    layer = nnx.ConvTranspose(
        2, 3, (3, 3), strides=2, padding="CIRCULAR", transpose_kernel=True, use_bias=False,
        param_dtype=jnp.float64, rngs=nnx.Rngs(0),
    )  # fmt: skip
    x = jnp.zeros((1, 4, 4, 2), jnp.float64)
    found = csj.find_conv_kernels_nnx(layer, x)
    assert found == {"kernel": csj.ConvKernel((4, 4), stride=(2, 2), dilation=(1, 1), transposed=True)}
    dense = _dense_norm(layer, x)
    assert abs(float(csj.operator_norm(layer.kernel.value, (4, 4), **found["kernel"].layer_args())) - dense) <= (
        1e-9 * dense
    )


def test_conv_transpose_kernels_no_layout_describes_are_skipped_with_a_warning():
    layer = nn.ConvTranspose(3, (3, 3))  # transpose_kernel=False: (k, k, in, out), not flipped
    x = jnp.zeros((1, 4, 4, 2))
    model = nn.Sequential([nn.Conv(2, (3, 3)), layer])
    variables = model.init(jax.random.key(0), x)
    with pytest.warns(UserWarning, match="params/layers_1/kernel: a flax.linen ConvTranspose"):
        found = csj.find_conv_kernels_linen(model, variables, x)
    assert list(found) == ["params/layers_0/kernel"]
    eqx = pytest.importorskip("equinox", reason="needs equinox (pip install convspectra[jax])")
    eq_model = eqx.nn.Sequential(
        [eqx.nn.Conv2d(2, 3, 3, key=jax.random.key(0)), eqx.nn.ConvTranspose2d(3, 2, 3, key=jax.random.key(1))]
    )
    with pytest.warns(UserWarning, match="layers/1/weight: a equinox.nn ConvTranspose"):
        found = csj.find_conv_kernels_equinox(eq_model, jnp.zeros((2, 6, 6)))
    assert list(found) == ["layers/0/weight"]
