"""Bad input gets a clear error naming the parameter, what was expected and what was received."""

from __future__ import annotations

import warnings

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


# ---------------------------------------------------------------- issue 11: silent misuse and raw errors

RNG_KERNEL = np.random.default_rng(11).normal(size=(3, 3, 16, 32))  # an HWIO kernel: 3x3 taps, 16 -> 32 channels


def _public_calls(kernel, **layout):
    """Every public entry point that reads a kernel, as (name, thunk)."""
    return [
        ("singular_values", lambda: cs.singular_values(kernel, 8, **layout)),
        ("frequency_spectrum", lambda: cs.frequency_spectrum(kernel, 8, **layout)),
        ("operator_norm", lambda: cs.operator_norm(kernel, 8, **layout)),
        ("operator_norm padded", lambda: cs.operator_norm(kernel, 40, padding=1, **layout)),
        ("operator_norm_bounds", lambda: cs.operator_norm_bounds(kernel, 8, **layout)),
        ("clip_operator_norm", lambda: cs.clip_operator_norm(kernel, 8, 1.0, **layout)),
        ("clip_operator_norm_many", lambda: cs.clip_operator_norm_many([kernel], [8], 1.0, **layout)),
        ("dense_matrix", lambda: dense_matrix(kernel, 2, **layout)),
        ("l1_bound", lambda: cs.bounds.l1_bound(kernel, **layout)),
        ("reshaped_norm", lambda: cs.bounds.reshaped_norm(kernel, **layout)),
    ]


@pytest.mark.parametrize(
    "call",
    [
        lambda: cs.singular_values(K, None),
        lambda: cs.frequency_spectrum(K, None),
        lambda: cs.operator_norm(K, None),
        lambda: cs.operator_norm(K, None, padding=1),
        lambda: cs.operator_norm_bounds(K, None),
        lambda: cs.clip_operator_norm(K, None, 1.0),
        lambda: dense_matrix(K, None),
    ],
)
def test_input_shape_none_is_refused_not_a_one_by_one_grid(call):
    with pytest.raises(cs.ParameterTypeError, match=r"input_shape: expected .*got None"):
        call()


def test_a_channels_last_kernel_in_the_default_layout_warns_once_per_call_naming_the_fix():
    for name, call in _public_calls(RNG_KERNEL):
        with pytest.warns(cs.LayoutWarning) as record:
            call()
        layout_warnings = [w for w in record if issubclass(w.category, cs.LayoutWarning)]
        assert len(layout_warnings) == 1, (name, [str(w.message) for w in layout_warnings])
        message = str(layout_warnings[0].message)
        for fragment in ("kernel: shape (3, 3, 16, 32)", "'HWIO'", "layout='HWIO'", "layout='OIHW'", "LayoutWarning"):
            assert fragment in message, (name, fragment, message)
        assert layout_warnings[0].filename == __file__, (name, layout_warnings[0].filename)  # points at the caller


@pytest.mark.parametrize("layout", ["OIHW", "HWIO"])
def test_an_explicit_layout_silences_the_layout_warning(layout):
    with warnings.catch_warnings():
        warnings.simplefilter("error", cs.LayoutWarning)
        for _, call in _public_calls(RNG_KERNEL, layout=layout):
            call()


def test_the_layout_warning_changes_nothing_but_says_the_reading_differs():
    with pytest.warns(cs.LayoutWarning):
        default = cs.operator_norm(RNG_KERNEL, 8)
    assert default == cs.operator_norm(RNG_KERNEL, 8, layout="OIHW")
    hwio = cs.operator_norm(RNG_KERNEL, 8, layout="HWIO")
    assert hwio == cs.operator_norm(np.transpose(RNG_KERNEL, (3, 2, 0, 1)), 8)
    assert abs(default - hwio) > 0.5 * hwio  # the two readings really disagree (about 3x here)


@pytest.mark.parametrize(
    "shape",
    [
        (3, 3, 3, 3),
        (2, 2, 3, 3),
        (1, 1, 2, 3),
        (1, 1, 11, 11),
        (2, 2, 11, 11),
        (3, 3, 16, 16),
        (64, 64, 3, 3),
        (32, 16, 3, 3),
        (16, 1, 5, 5),
        (3, 3, 3, 64),
        (4, 4, 9),
        (2, 2, 2, 3, 4),
    ],
)
def test_common_channels_first_shapes_do_not_warn(shape):
    with warnings.catch_warnings():
        warnings.simplefilter("error", cs.LayoutWarning)
        cs.singular_values(np.ones(shape), 12)


def test_conv_modules_never_warn():
    conv = torch.nn.Conv2d(3, 3, (16, 32), bias=False)  # an odd but real OIHW weight of shape (3, 3, 16, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", cs.LayoutWarning)
        cs.operator_norm(conv, 40)


def test_conjugate_and_negative_views_are_resolved():
    kernel = torch.randn(2, 3, 3, 3, dtype=torch.complex128, generator=torch.Generator().manual_seed(0))
    for view in (kernel.conj(), kernel.conj().imag, torch.randn(2, 3, 3, 3).conj()):
        resolved = view.resolve_conj().resolve_neg()
        torch.testing.assert_close(cs.singular_values(view, 6), cs.singular_values(resolved, 6), rtol=0, atol=0)
        assert float(cs.operator_norm(view, 6)) == float(cs.operator_norm(resolved, 6))
        torch.testing.assert_close(cs.clip_operator_norm(view, 6, 1.0), cs.clip_operator_norm(resolved, 6, 1.0))


@pytest.mark.filterwarnings("ignore::UserWarning")  # torch's own beta / deprecation notes on these kinds
@pytest.mark.parametrize(
    "make, kind",
    [
        (lambda k: k.to_sparse(), "sparse tensor (layout torch.sparse_coo); pass kernel.to_dense()"),
        (lambda k: k.reshape(4, 18).to_sparse_csr(), "sparse tensor (layout torch.sparse_csr)"),
        (lambda k: torch.empty(k.shape, device="meta"), "meta tensor (shape (4, 2, 3, 3), no data)"),
        (lambda k: torch.quantize_per_tensor(k, 0.1, 0, torch.qint8), "quantized tensor (dtype torch.qint8)"),
        (lambda k: torch.nested.nested_tensor(list(k)), "nested tensor"),
    ],
)
def test_odd_tensor_kinds_are_refused_naming_the_kind(make, kind):
    kernel = make(torch.ones(4, 2, 3, 3))
    for call in (
        lambda: cs.singular_values(kernel, 6),
        lambda: cs.operator_norm(kernel, 6),
        lambda: cs.operator_norm(kernel, 6, padding=1),
        lambda: cs.clip_operator_norm(kernel, 6, 1.0),
        lambda: cs.bounds.l1_bound(kernel),
    ):
        with pytest.raises(cs.ParameterTypeError) as info:
            call()
        assert str(info.value).startswith("kernel: expected") and kind in str(info.value), str(info.value)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"dilation": 2**70}, "dilation: expected integers <= 2**31 - 1, got 1180591620717411303424"),
        ({"dilation": (1, 2**31)}, "dilation: expected integers <= 2**31 - 1"),
        ({"stride": 2**70}, "stride: expected integers <= 2**62"),
        ({"input_shape": 2**70}, "input_shape: expected integers <= 2**62"),
        ({"input_shape": (8, 10**40)}, "input_shape: expected integers <= 2**62, got (8, 100000... (an integer of 41"),
        ({"input_shape": 2**40, "stride": 2**40, "transposed": True}, "input_shape: expected a transposed layer's"),
    ],
)
def test_huge_integers_are_refused_naming_the_parameter(kwargs, fragment):
    kwargs = {"input_shape": 8, **kwargs}
    for function in (cs.singular_values, cs.operator_norm, cs.operator_norm_bounds):
        with pytest.raises(cs.ParameterError) as info:
            function(np.ones((1, 1, 3, 3)), **kwargs)
        assert fragment in str(info.value), (function.__name__, str(info.value))
    if "transposed" not in kwargs:
        with pytest.raises(cs.ParameterError, match=fragment.split(":")[0]):
            cs.operator_norm(np.ones((1, 1, 3, 3)), padding=1, **kwargs)
        with pytest.raises(cs.ParameterError, match=fragment.split(":")[0]):
            cs.clip_operator_norm(np.ones((1, 1, 3, 3)), max_norm=1.0, **kwargs)


def test_the_largest_dilation_is_exact():
    kernel = np.random.default_rng(1).normal(size=(2, 2, 3, 3))
    big = 2**31 - 1  # the taps land at 0, big mod 8 = 7 and 2 big mod 8 = 6: the same layer as dilation 7
    expected = cs.singular_values(kernel, 8, dilation=7)
    np.testing.assert_array_equal(cs.singular_values(kernel, 8, dilation=big), expected)


def test_a_number_beyond_the_float_range_is_a_parameter_error():
    with pytest.raises(cs.ParameterError, match=r"max_norm: expected a positive finite number, got 100000\.\.\. "):
        cs.clip_operator_norm(K, 8, 10**400)
