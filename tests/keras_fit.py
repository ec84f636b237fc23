"""Train a small Keras CNN under the constraint and under the callback; print every conv's certified norm.

Run by tests/test_keras.py in a subprocess per backend (Keras fixes its backend at import):
``KERAS_BACKEND=jax python tests/keras_fit.py``. Prints one JSON object: the backend, whether the
fit was compiled, the callback's projection count and, per model, ``[layer, kernel, upper, bound]``.
"""

from __future__ import annotations

import json
import sys

import keras
import numpy as np

import convspectra as cs
from convspectra.keras import OperatorNormCallback, OperatorNormConstraint, conv_layers, layer_kernels
from convspectra.keras.layouts import to_engine

BOUND = 0.5
N = 8


def model(constrained: bool) -> keras.Model:
    def c(shape: int, **kw: object) -> OperatorNormConstraint | None:
        return OperatorNormConstraint(BOUND, shape, **kw) if constrained else None

    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((N, N, 3)),
            keras.layers.Conv2D(8, 3, padding="same", kernel_constraint=c(N)),
            keras.layers.DepthwiseConv2D(
                3, depth_multiplier=2, padding="same", depthwise_constraint=c(N, kind="depthwise")
            ),
            keras.layers.SeparableConv2D(
                8,
                3,
                strides=2,
                padding="same",
                depthwise_constraint=c(N, stride=2, kind="depthwise"),
                pointwise_constraint=c(N // 2),
            ),
            keras.layers.Conv2DTranspose(
                4, 3, strides=2, padding="same", kernel_constraint=c(N // 2, stride=2, kind="transpose")
            ),
            keras.layers.Reshape((N * N, 4)),
            keras.layers.Conv1D(4, 3, padding="same", groups=2, kernel_constraint=c(N * N, groups=2)),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(1),
        ]
    )


def certified(net: keras.Model) -> list[list[object]]:
    rows = []
    for layer in conv_layers(net):
        for info in layer_kernels(layer):
            value = keras.ops.convert_to_numpy(getattr(layer, info.attribute)).astype(np.float64)
            kernel = to_engine(value, info.depthwise)
            upper = cs.operator_norm_bounds(kernel, info.input_shape, **info.engine_options()).upper
            rows.append([layer.name, info.attribute, float(upper), BOUND])
    return rows


def main() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, N, N, 3)).astype("float32")
    y = rng.normal(size=(32, 1)).astype("float32")
    result: dict[str, object] = {"backend": keras.backend.backend()}

    net = model(constrained=True)
    net.compile(keras.optimizers.Adam(0.05), "mse")  # jit_compile="auto": compiled where the backend does
    net.fit(x, y, batch_size=8, epochs=1, verbose=0)
    result["jit_compile"] = bool(net.jit_compile)
    result["constraint"] = certified(net)

    net = model(constrained=False)
    net.compile(keras.optimizers.Adam(0.05), "mse")
    callback = OperatorNormCallback(max_norm=BOUND, every=2, iterations=2)
    net.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[callback])  # 4 steps: the last one projects
    result["projections"] = callback.projections
    result["callback"] = certified(net)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
