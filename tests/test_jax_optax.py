"""The optax transform keeps every conv's norm within the bound; the model walkers find the conv kernels."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="convspectra.jax needs jax (pip install convspectra[jax])")
optax = pytest.importorskip("optax", reason="the optax transform needs optax (pip install convspectra[jax])")
nn = pytest.importorskip("flax.linen", reason="the Flax walker needs flax (pip install convspectra[jax])")
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
