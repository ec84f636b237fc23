"""operator_norm and operator_norm_bounds against the dense operator built by PyTorch's own layers."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import convspectra as cs
from conftest import layers, oracle_singular_values
from convspectra._maximum import circular_maximum, top_singular_vector
from convspectra.operator import dense_matrix
from convspectra.spec import parse_layer
from convspectra.transfer import FrequencyPlan, flat_weight


def module_matrix(module: torch.nn.Module, input_shape) -> np.ndarray:
    """Dense matrix of a conv module as PyTorch computes it (bias removed): identity basis through forward."""
    in_channels = module.in_channels
    size = in_channels * math.prod(input_shape)
    with torch.no_grad():
        module = module.double()
        basis = torch.eye(size, dtype=torch.float64).reshape(size, in_channels, *input_shape)
        out = module(basis) - module(torch.zeros_like(basis[:1]))
    return out.reshape(size, -1).T.numpy()


def truth(module, input_shape) -> float:
    return float(np.linalg.svd(module_matrix(module, input_shape), compute_uv=False)[0])


# --- circular padding: exact --------------------------------------------------------------------


@given(layers())
def test_circular_norm_is_the_largest_singular_value_of_the_dense_operator(layer):
    kernel, n, kwargs = layer
    expected = oracle_singular_values(kernel, n, **kwargs)[0]
    ours = cs.operator_norm(kernel, n, **kwargs)
    assert isinstance(ours, np.float64)
    assert abs(ours - expected) <= 1e-9 * expected + 1e-12


@pytest.mark.parametrize(
    ("shape", "n", "kwargs"),
    [
        ((8, 4, 3, 3), (96, 80), {}),
        ((8, 4, 3, 3), (64, 48), {"stride": 2}),
        ((6, 6, 3, 3), (60, 60), {"dilation": 2, "groups": 2}),
        ((4, 4, 5), (400,), {}),
        ((3, 3, 3, 3, 3), (16, 14, 12), {}),
        ((6, 2, 1, 3), (70, 70), {"stride": (1, 2)}),
    ],
)
@pytest.mark.parametrize("kind", ["normal", "smooth"])
def test_branch_and_bound_equals_the_full_spectrum_on_large_grids(shape, n, kwargs, kind, rng):
    """Grids large enough that pruning runs (not the direct enumeration), peaked and flat spectra."""
    kernel = rng.normal(size=shape)
    if kind == "smooth":  # a trained-like kernel: a dominant low-frequency part, a peaked spectrum
        kernel = kernel * 0.1 + np.abs(rng.normal(size=shape[:2] + (1,) * (len(shape) - 2)))
    expected = cs.singular_values(kernel, n, **kwargs)[0]
    spec, weight = parse_layer(kernel, n, **kwargs)
    plan = FrequencyPlan.create(spec, real=True)
    found = circular_maximum(plan, flat_weight(weight))
    assert found.value == pytest.approx(expected, rel=1e-12)
    assert cs.operator_norm(kernel, n, **kwargs) == pytest.approx(expected, rel=1e-12)


def test_top_singular_vector_attains_the_norm(rng):
    kernel = rng.normal(size=(3, 2, 3, 3))
    spec, weight = parse_layer(kernel, (6, 4), stride=(2, 1))
    plan = FrequencyPlan.create(spec, real=True)
    found = circular_maximum(plan, flat_weight(weight))
    x = top_singular_vector(plan, flat_weight(weight), found.frequency)
    matrix = dense_matrix(kernel, (6, 4), stride=(2, 1))
    assert np.linalg.norm(x) == pytest.approx(1.0)
    assert np.linalg.norm(matrix @ x.ravel()) == pytest.approx(found.value, rel=1e-12)


def test_circular_bounds_bracket_the_exact_value(rng):
    kernel = rng.normal(size=(5, 3, 3, 3))
    bounds = cs.operator_norm_bounds(kernel, (12, 10))
    exact = oracle_singular_values(kernel, (12, 10))[0]
    assert bounds.lower <= exact <= bounds.upper
    assert bounds.relative_gap < 1e-12 and bounds.converged


# --- zero padding and modules: the real layer -------------------------------------------------


CASES = [
    (torch.nn.Conv2d, dict(in_channels=3, out_channels=5, kernel_size=3, padding=0), (7, 6)),
    (torch.nn.Conv2d, dict(in_channels=3, out_channels=5, kernel_size=3, padding=1), (8, 8)),
    (torch.nn.Conv2d, dict(in_channels=4, out_channels=2, kernel_size=3, padding=2), (6, 7)),
    (torch.nn.Conv2d, dict(in_channels=3, out_channels=5, kernel_size=3, padding=1, stride=2), (8, 8)),
    (torch.nn.Conv2d, dict(in_channels=3, out_channels=4, kernel_size=3, padding=1, stride=2), (7, 9)),
    (torch.nn.Conv2d, dict(in_channels=2, out_channels=6, kernel_size=(3, 5), padding=(0, 2), stride=(1, 2)), (6, 9)),
    (torch.nn.Conv2d, dict(in_channels=4, out_channels=4, kernel_size=3, padding=2, dilation=2, groups=2), (7, 7)),
    (torch.nn.Conv2d, dict(in_channels=4, out_channels=4, kernel_size=4, padding="same"), (6, 6)),
    (torch.nn.Conv2d, dict(in_channels=3, out_channels=2, kernel_size=3, padding="valid"), (6, 5)),
    (torch.nn.Conv1d, dict(in_channels=3, out_channels=4, kernel_size=5, padding=2, stride=2), (17,)),
    (torch.nn.Conv3d, dict(in_channels=2, out_channels=3, kernel_size=3, padding=1), (4, 3, 5)),
    (torch.nn.Conv2d, dict(in_channels=3, out_channels=3, kernel_size=3, padding=2, padding_mode="circular"), (6, 6)),
    (torch.nn.Conv2d, dict(in_channels=2, out_channels=3, kernel_size=3, padding=1, padding_mode="circular"), (7, 6)),
    (
        torch.nn.Conv2d,
        dict(in_channels=2, out_channels=3, kernel_size=3, padding=1, stride=2, padding_mode="circular"),
        (7, 8),
    ),
    (torch.nn.ConvTranspose2d, dict(in_channels=4, out_channels=3, kernel_size=3, padding=1, stride=2), (4, 5)),
    (
        torch.nn.ConvTranspose2d,
        dict(in_channels=2, out_channels=4, kernel_size=3, padding=1, stride=2, output_padding=1),
        (4, 4),
    ),
    (torch.nn.ConvTranspose1d, dict(in_channels=3, out_channels=2, kernel_size=4, padding=0, stride=2), (6,)),
]


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize(("cls", "params", "n"), CASES, ids=lambda v: getattr(v, "__name__", None))
def test_module_norm_matches_the_module_itself(cls, params, n):
    torch.manual_seed(sum(map(ord, repr(params))))
    module = cls(**params, bias=True).double()
    expected = truth(module, n)
    with torch.no_grad():
        value = cs.operator_norm(module, n, padding="module")
    assert float(value) == pytest.approx(expected, rel=1e-6)
    bounds = cs.operator_norm_bounds(module, n, padding="module")
    assert bounds.lower <= expected <= bounds.upper, bounds
    assert bounds.converged and bounds.value == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("padding", [0, 1, 2, (1, 0)])
@pytest.mark.parametrize("stride", [1, 2])
def test_explicit_zero_padding_on_arrays_matches_pytorch(padding, stride, rng):
    kernel = rng.normal(size=(5, 3, 3, 3))  # c_in != c_out
    n = (8, 8)
    module = torch.nn.Conv2d(3, 5, 3, padding=padding, stride=stride, bias=False).double()
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(kernel))
    expected = truth(module, n)
    assert cs.operator_norm(kernel, n, padding=padding, stride=stride) == pytest.approx(expected, rel=1e-6)
    hwio = np.transpose(kernel, (2, 3, 1, 0))
    assert cs.operator_norm(hwio, n, padding=padding, stride=stride, layout="HWIO") == pytest.approx(expected, rel=1e-6)
    bounds = cs.operator_norm_bounds(kernel, n, padding=padding, stride=stride)
    assert bounds.lower <= expected <= bounds.upper


@settings(max_examples=25)
@given(
    st.integers(1, 3),
    st.integers(1, 4),
    st.integers(1, 4),
    st.integers(1, 4),
    st.integers(0, 3),
    st.integers(1, 2),
    st.integers(1, 2),
    st.integers(0, 2**31),
)
def test_zero_padded_norm_property(d, c_in, c_out, k, pad, stride, dilation, seed):
    rng = np.random.default_rng(seed)
    if d == 3:  # keep the dense matrix small
        k, dilation = min(k, 2), 1
    smallest = max(1, dilation * (k - 1) + 1 - 2 * pad)  # the output must not be empty
    n = tuple(int(v) for v in rng.integers(smallest, smallest + (5 if d < 3 else 2), size=d))
    cls = getattr(torch.nn, f"Conv{d}d")
    module = cls(c_in, c_out, k, padding=pad, stride=stride, dilation=dilation, bias=False).double()
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(rng.normal(size=module.weight.shape)))
    expected = truth(module, n)
    bounds = cs.operator_norm_bounds(module, n, padding="module")
    assert bounds.lower <= expected <= bounds.upper
    assert bounds.value == pytest.approx(expected, rel=1e-6)


def test_zero_padding_is_below_the_enlarged_circular_norm_and_close_on_large_inputs(rng):
    kernel = rng.normal(size=(4, 4, 3, 3))
    zero = cs.operator_norm(kernel, (40, 40), padding=1)
    circular = cs.operator_norm(kernel, (42, 42))
    assert zero <= circular * (1 + 1e-12)
    assert zero >= 0.97 * circular  # the boundary matters less and less


def test_non_convergence_warns_with_the_bracket_and_returns_a_lower_bound(rng):
    module = torch.nn.Conv2d(4, 4, 3, padding=1, bias=False).double()
    expected = truth(module, (8, 8))
    with pytest.warns(cs.ConvergenceWarning, match="did not reach"):
        value = cs.operator_norm(module.weight.detach().numpy(), (8, 8), padding=1, max_iter=2)
    assert value <= expected * (1 + 1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cs.ConvergenceWarning)
        bounds = cs.operator_norm_bounds(module.weight.detach().numpy(), (8, 8), padding=1, max_iter=2)
    assert not bounds.converged and bounds.lower <= expected <= bounds.upper


# --- PyTorch: kinds, devices, gradients ---------------------------------------------------------


def test_torch_in_torch_out(rng):
    kernel = torch.from_numpy(rng.normal(size=(3, 3, 3, 3)))
    value = cs.operator_norm(kernel, (10, 10))
    assert isinstance(value, torch.Tensor) and value.ndim == 0
    assert float(value) == pytest.approx(float(cs.singular_values(kernel, (10, 10))[0]), rel=1e-12)
    assert cs.operator_norm(kernel.float(), (10, 10)).dtype == torch.float32


@pytest.mark.parametrize("padding", ["circular", 1])
def test_gradcheck(padding):
    torch.manual_seed(0)
    kernel = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)

    def norm(k):
        return cs.operator_norm(k, (6, 6), padding=padding, stride=2, rtol=1e-14)

    assert torch.autograd.gradcheck(norm, (kernel,), eps=1e-6, atol=1e-6)


def test_gradient_is_finite_when_the_top_singular_value_is_repeated():
    q, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))
    kernel = q.reshape(4, 4, 1, 1).clone().requires_grad_(True)  # every singular value is 1
    for padding in ("circular", 0):
        value = cs.operator_norm(kernel, (5, 5), padding=padding)
        (grad,) = torch.autograd.grad(value, kernel)
        assert float(value.detach()) == pytest.approx(1.0) and torch.isfinite(grad).all()


def test_module_weight_gradient_for_a_hinge_penalty():
    conv = torch.nn.Conv2d(3, 4, 3, padding=1).double()
    penalty = torch.relu(cs.operator_norm(conv, (8, 8), padding="module") - 0.1)
    penalty.backward()
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()
    assert conv.weight.grad.abs().sum() > 0


# --- the paper's bounds -------------------------------------------------------------------------


def test_footnote_2_all_ones_kernel():
    kernel = np.ones((1, 1, 2, 2))
    assert cs.operator_norm(kernel, (8, 8)) == pytest.approx(4.0)
    assert cs.bounds.reshaped_norm(kernel) == pytest.approx(2.0)
    assert cs.bounds.nonnegative_norm(kernel) == pytest.approx(4.0)


@pytest.mark.parametrize("groups", [1, 2])
def test_propositions_6_and_11_bound_the_truth_for_both_paddings(groups, rng):
    kernel = rng.normal(size=(4, 4 // groups, 3, 3))
    exact = cs.operator_norm(kernel, (9, 9), groups=groups)
    zero = cs.operator_norm(kernel, (9, 9), padding=1, groups=groups)
    prop11 = cs.bounds.channel_l1_bound(kernel, groups=groups)
    assert max(exact, zero) <= prop11 * (1 + 1e-12) <= cs.bounds.l1_bound(kernel) * (1 + 1e-12)


def test_proposition_7_is_exact_for_non_negative_kernels(rng):
    kernel = rng.random((3, 5, 3, 3))
    expected = oracle_singular_values(kernel, (7, 7))[0]
    assert cs.bounds.nonnegative_norm(kernel) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(cs.ParameterError, match="non-negative"):
        cs.bounds.nonnegative_norm(kernel - 0.5)
    with pytest.raises(cs.ParameterError, match="stride"):
        cs.bounds.nonnegative_norm(kernel, stride=2)


def test_reshaped_norm_matches_torch_spectral_norm_target(rng):
    conv = torch.nn.Conv2d(3, 6, 3, bias=False).double()
    expected = torch.linalg.matrix_norm(conv.weight.detach().reshape(6, -1), ord=2)
    assert float(cs.bounds.reshaped_norm(conv)) == pytest.approx(float(expected))
    assert isinstance(cs.bounds.l1_bound(conv.weight), torch.Tensor)


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"padding": "reflect"}, "padding: expected 'circular', 'module', 'same', 'valid'"),
        ({"padding": -1}, "padding: expected integers >= 0"),
        ({"padding": (1, 1, 1)}, "padding: expected an int or 2 values"),
        ({"padding": "same", "stride": 2}, "'same' needs stride 1"),
        ({"padding": "module"}, "padding: 'module' reads a torch conv module"),
        ({"padding": 0, "input_shape": (2, 2)}, "the output would be empty"),
        ({"rtol": 0}, "rtol: expected a number in"),
        ({"max_iter": 0}, "max_iter: expected a positive int"),
    ],
)
def test_bad_input_names_the_parameter(kwargs, match, rng):
    kwargs = dict(kwargs)
    n = kwargs.pop("input_shape", (8, 8))
    with pytest.raises(cs.ParameterError, match=match):
        cs.operator_norm(rng.normal(size=(2, 2, 3, 3)), n, **kwargs)


def test_reflect_and_replicate_modules_are_refused():
    module = torch.nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect")
    with pytest.raises(cs.ParameterError, match="padding_mode is 'reflect'"):
        cs.operator_norm(module, (8, 8), padding="module")
    with pytest.raises(cs.ParameterTypeError, match="padding: expected"):
        cs.operator_norm(module, (8, 8), padding=None)
