"""Bad input gets a clear error naming the parameter, what was expected and what was received."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import convspectra as cs
from convspectra.operator import dense_matrix

K = np.ones((4, 2, 3, 3))


@pytest.mark.parametrize(
    "kernel, input_shape, kwargs, error, fragments",
    [
        (np.full((2, 2, 3, 3), np.nan), 8, {}, cs.ParameterError, ["kernel", "finite", "36 NaN or infinite"]),
        (np.pad(np.ones((2, 2, 3, 3)), 0) * np.inf, 8, {}, cs.ParameterError, ["kernel", "finite"]),
        (K, (15, 16), {"stride": 2}, cs.ParameterError, ["stride", "divides", "(2, 2)", "(15, 16)"]),
        (K, 8, {"layout": "NCHW"}, cs.ParameterError, ["layout", "'NCHW'", "OIHW"]),
        (K, 8, {"layout": "oihw"}, cs.ParameterError, ["layout", "'oihw'"]),
        (K, (8, 8, 8), {}, cs.ParameterError, ["input_shape", "2 values", "3 values", "(8, 8, 8)"]),
        (np.ones((4, 2, 3, 3)), 8, {"layout": "OIW"}, cs.ParameterError, ["kernel", "'OIW'", "(4, 2, 3, 3)"]),
        (np.ones((4, 2, 3, 3)), 8, {"layout": "DHWIO"}, cs.ParameterError, ["kernel", "'DHWIO'"]),
        (np.ones((4, 3)), 8, {}, cs.ParameterError, ["kernel", "dimensions", "(4, 3)"]),
        (np.ones((2, 2, 2, 2, 2, 2)), 8, {}, cs.ParameterError, ["kernel", "(2, 2, 2, 2, 2, 2)"]),
        (K, 8, {"groups": 3}, cs.ParameterError, ["groups", "divisor", "out_channels (4", "got 3"]),
        (K, 8, {"groups": 0}, cs.ParameterError, ["groups", "got 0"]),
        (K, 8, {"groups": 2.0}, cs.ParameterTypeError, ["groups", "2.0"]),
        (K, 8, {"stride": 0}, cs.ParameterError, ["stride", ">= 1", "0"]),
        (K, 8, {"stride": (1, 2, 1)}, cs.ParameterError, ["stride", "3 values"]),
        (K, 8, {"dilation": -1}, cs.ParameterError, ["dilation", ">= 1"]),
        (K, 0, {}, cs.ParameterError, ["input_shape", ">= 1", "0"]),
        (K, 8.5, {}, cs.ParameterTypeError, ["input_shape", "8.5"]),
        (K, True, {}, cs.ParameterTypeError, ["input_shape", "True"]),
        (K, "8", {}, cs.ParameterTypeError, ["input_shape"]),
        (K, 8, {"transposed": "yes"}, cs.ParameterTypeError, ["transposed", "'yes'"]),
        ("kernel.npy", 8, {}, cs.ParameterTypeError, ["kernel", "str"]),
        (np.array([["a"]]), 8, {}, cs.ParameterTypeError, ["kernel", "dtype"]),
        (np.ones((2, 2, 3, 3), dtype=bool), 8, {}, cs.ParameterTypeError, ["kernel", "bool"]),
        (np.ones((2, 2, 3, 3), dtype=np.longdouble), 8, {}, cs.ParameterTypeError, ["kernel", "float128"]),
        (np.ones((0, 2, 3, 3)), 8, {}, cs.ParameterError, ["kernel", "empty", "(0, 2, 3, 3)"]),
        (K, 8, {"workers": 0}, cs.ParameterError, ["workers", "0"]),
        (K, 8, {"max_memory": -5}, cs.ParameterError, ["max_memory", "-5"]),
    ],
)
def test_bad_input_raises_a_clear_error(kernel, input_shape, kwargs, error, fragments):
    with pytest.raises(error) as info:
        cs.singular_values(kernel, input_shape, **kwargs)
    assert isinstance(info.value, cs.ConvSpectraError)
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))


def test_errors_are_also_builtin_value_and_type_errors():
    with pytest.raises(ValueError):
        cs.singular_values(K, 8, stride=3)
    with pytest.raises(TypeError):
        cs.singular_values(object(), 8)


def test_unsupported_module_type():
    with pytest.raises(cs.ParameterTypeError, match=r"kernel: .*got the module torch\.nn\.modules\.linear\.Linear"):
        cs.singular_values(torch.nn.Linear(3, 3), 8)


def test_nan_torch_kernel():
    with pytest.raises(cs.ParameterError, match="kernel: expected finite values, got 1 NaN"):
        cs.singular_values(torch.tensor([[[[float("nan")]]]]), 4)


def test_module_arguments_must_agree_with_the_module():
    layer = torch.nn.Conv2d(2, 2, 3, stride=2)
    with pytest.raises(cs.ParameterError, match=r"stride: the module Conv2d has stride=\(2, 2\), but stride=1"):
        cs.singular_values(layer, 8, stride=1)
    with pytest.raises(cs.ParameterError, match="layout"):
        cs.singular_values(layer, 8, layout="HWIO")
    np.testing.assert_array_equal(
        cs.singular_values(layer, 8, stride=2).detach().numpy(), cs.singular_values(layer, 8).detach().numpy()
    )


def test_lazy_module_must_be_initialised():
    with pytest.raises(cs.ParameterError, match="lazy module"):
        cs.singular_values(torch.nn.LazyConv2d(4, 3), 8)


def test_memory_budget_is_enforced_with_the_estimate():
    kernel = np.ones((64, 64, 3, 3))
    with pytest.raises(cs.MemoryBudgetError) as info:
        cs.singular_values(kernel, 2048, max_memory=2**30)
    message = str(info.value)
    assert "max_memory" in message and "268,435,456 singular values" in message and "GiB" in message
    with pytest.raises(cs.MemoryBudgetError, match="frequencies"):
        cs.frequency_spectrum(kernel, 2048, max_memory=2**20)


def test_default_budget_refuses_a_huge_3d_request_before_allocating():
    with pytest.raises(cs.MemoryBudgetError, match=r"over the budget of 4\.0 GiB"):
        cs.singular_values(np.ones((256, 256, 3, 3, 3)), 256)


def test_dense_matrix_refuses_large_matrices():
    with pytest.raises(cs.MemoryBudgetError, match="dense"):
        dense_matrix(np.ones((64, 64, 3, 3)), 64)
