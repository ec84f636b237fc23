"""operator_norm, operator_norm_bounds and ConvOperator against the dense operator built by PyTorch's own layers."""

from __future__ import annotations

import inspect
import math
import re
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import convspectra as cs
from conftest import layers, oracle_singular_values
from convspectra.norm import ConvOperator


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


def evaluated_and_total(bounds: cs.NormBounds) -> tuple[int, int]:
    """How many frequencies the circular solver evaluated, and how many the full spectrum decomposes."""
    found = re.fullmatch(r"exact: branch and bound over (\d+) frequencies, (\d+) evaluated", bounds.method)
    assert found is not None, bounds.method
    return int(found.group(2)), int(found.group(1))


MEDIUM_GRIDS = [  # at most 6144 candidate frequencies: enumerated directly
    ((8, 4, 3, 3), (96, 80), {}),
    ((8, 4, 3, 3), (64, 48), {"stride": 2}),
    ((6, 6, 3, 3), (60, 60), {"dilation": 2, "groups": 2}),
    ((4, 4, 5), (400,), {}),
    ((3, 3, 3, 3, 3), (16, 14, 12), {}),
    ((6, 2, 1, 3), (70, 70), {"stride": (1, 2)}),
]
LARGE_GRIDS = [  # more than 6144 candidate frequencies: the branch and bound runs
    ((8, 4, 3, 3), (160, 144), {}),
    ((8, 4, 3, 3), (256, 224), {"stride": 2}),
    ((6, 6, 3, 3), (128, 128), {"dilation": 2, "groups": 2}),
    ((4, 4, 5), (16000,), {}),
    ((3, 3, 3, 3, 3), (32, 28, 24), {}),
    ((6, 2, 1, 3), (4, 25000), {"stride": (1, 2)}),
]


@pytest.mark.parametrize(("shape", "n", "kwargs"), MEDIUM_GRIDS + LARGE_GRIDS)
@pytest.mark.parametrize("kind", ["normal", "smooth"])
def test_circular_norm_equals_the_full_spectrum_and_its_vector_attains_it(shape, n, kwargs, kind, rng):
    """Peaked and flat spectra; on the large grids the branch and bound (not the direct enumeration) decides.

    The bracket's lower end is ||A x|| / ||x|| for the top singular vector x found at the maximising
    frequency, pushed through the matrix-free operator: it attains the norm.
    """
    kernel = rng.normal(size=shape)
    if kind == "smooth":  # a trained-like kernel: a dominant low-frequency part, a peaked spectrum
        kernel = kernel * 0.1 + np.abs(rng.normal(size=shape[:2] + (1,) * (len(shape) - 2)))
    expected = cs.singular_values(kernel, n, **kwargs)[0]
    assert cs.operator_norm(kernel, n, **kwargs) == pytest.approx(expected, rel=1e-12)
    bounds = cs.operator_norm_bounds(kernel, n, **kwargs)
    assert bounds.value == pytest.approx(expected, rel=1e-12)
    assert bounds.lower == pytest.approx(expected, rel=1e-12)
    assert bounds.lower <= expected <= bounds.upper
    evaluated, total = evaluated_and_total(bounds)
    if (shape, n, kwargs) in LARGE_GRIDS:
        assert evaluated != total  # not the direct enumeration (which evaluates each frequency once)
        if kind == "smooth":
            assert evaluated < total / 4  # a peaked spectrum: most frequencies pruned
    else:
        assert evaluated == total


def test_top_singular_vector_attains_the_norm_of_a_strided_layer(rng):
    kernel = rng.normal(size=(3, 2, 3, 3))
    bounds = cs.operator_norm_bounds(kernel, (6, 4), stride=(2, 1))
    exact = oracle_singular_values(kernel, (6, 4), stride=(2, 1))[0]
    assert bounds.lower == pytest.approx(exact, rel=1e-12)
    assert bounds.value == pytest.approx(exact, rel=1e-12)


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


def test_convergence_warning_points_at_the_callers_line(rng):
    kernel = rng.normal(size=(4, 4, 3, 3))
    for function in (cs.operator_norm, cs.operator_norm_bounds):
        with pytest.warns(cs.ConvergenceWarning) as record:
            line = inspect.currentframe().f_lineno + 1
            function(kernel, (8, 8), padding=1, max_iter=2)
        assert len(record) == 1
        assert record[0].filename == __file__, (function.__name__, record[0].filename)
        assert record[0].lineno == line, function.__name__


def test_the_solver_memory_budget_is_enforced_with_the_estimate(rng):
    kernel = rng.normal(size=(8, 8, 3, 3))
    with pytest.raises(cs.MemoryBudgetError, match=r"max_memory: the padded operator norm of this layer .* needs"):
        cs.operator_norm(kernel, (64, 64), padding=1, max_memory=2**20)
    with pytest.raises(cs.MemoryBudgetError, match=r"max_memory: the wrap-around operator norm of this layer"):
        cs.operator_norm(kernel, (64, 64), max_memory=2**20)
    assert cs.operator_norm(kernel, (64, 64), max_memory=64 * 2**20) > 0  # the exact circular path needs less


# --- the matrix-free operator against PyTorch's convolutions ------------------------------------


def torch_padded(x: torch.Tensor, pads, mode: str) -> torch.Tensor:
    """``x`` (1, C, *n) padded per axis by (left, right): zeros, or indices modulo n (circular)."""
    flat = [p for pair in reversed(pads) for p in pair]
    return torch.nn.functional.pad(x, flat, mode="constant" if mode == "zeros" else "circular")


def torch_unpadded(z: torch.Tensor, pads, n, mode: str) -> torch.Tensor:
    """The adjoint of :func:`torch_padded`: crop (zeros), or fold the wrapped copies back (circular)."""
    for axis, ((left, _), size) in enumerate(zip(pads, n, strict=True)):
        dim = 2 + axis
        if mode == "zeros":
            z = z.narrow(dim, left, size)
        else:
            index = torch.as_tensor((np.arange(z.shape[dim]) - left) % size)
            shape = list(z.shape)
            shape[dim] = size
            z = torch.zeros(shape, dtype=z.dtype).index_add_(dim, index, z)
    return z


@st.composite
def operator_cases(draw):
    d = draw(st.integers(1, 3))
    groups = draw(st.integers(1, 2))
    c_in, c_out = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    k = tuple(draw(st.integers(1, 3 if d == 3 else 4)) for _ in range(d))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(d))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(d))
    mode = draw(st.sampled_from(["zeros", "circular", "wrap"]))
    n, pads = [], []
    for a in range(d):
        reach = dilation[a] * (k[a] - 1)
        if mode == "wrap":  # the wrap-around layer is circular padding by the kernel's reach on the right
            smallest = max(1, -(-reach // stride[a]))  # PyTorch's circular padding is at most the input
            m = draw(st.integers(smallest, max(smallest, 4)))
            n.append(m * stride[a])
            pads.append((0, reach))
        else:
            size = draw(st.integers(max(1, reach - 2), 6 if d < 3 else 4))
            most = 3 if mode == "zeros" else size  # PyTorch's circular padding is at most the input
            left, right = draw(st.integers(0, most)), draw(st.integers(0, most))
            if size + left + right <= reach:  # the output must not be empty
                right += reach + 1 - (size + left + right)
                if mode == "circular" and right > size:
                    size = right
            n.append(size)
            pads.append((left, right))
    seed = draw(st.integers(0, 2**32 - 1))
    return d, c_in, c_out, groups, k, stride, dilation, mode, tuple(n), tuple(pads), seed


@settings(max_examples=120)
@given(operator_cases())
def test_conv_operator_matches_pytorchs_conv_and_conv_transpose(case):
    d, c_in, c_out, groups, k, stride, dilation, mode, n, pads, seed = case
    rng = np.random.default_rng(seed)
    weight = rng.normal(size=(c_out, c_in // groups, *k))
    op = ConvOperator.create(
        weight,
        input_shape=n,
        padding=None if mode == "wrap" else pads,
        mode=mode,
        stride=stride,
        dilation=dilation,
        groups=groups,
    )
    w = torch.from_numpy(weight)
    x = torch.from_numpy(rng.normal(size=(1, c_in, *n)))
    conv = getattr(torch.nn.functional, f"conv{d}d")
    expected = conv(torch_padded(x, pads, mode), w, stride=stride, dilation=dilation, groups=groups)[0]
    assert op.output_shape == tuple(expected.shape[1:])
    ours = op.matvec(x[0].numpy())
    scale = float(np.abs(weight).sum() * np.abs(x.numpy()).max())
    np.testing.assert_allclose(ours, expected.numpy(), rtol=0, atol=1e-13 * scale)
    # the adjoint: PyTorch's conv_transpose onto the padded input grid, then the padding's adjoint
    y = torch.from_numpy(rng.normal(size=(1, c_out, *op.output_shape)))
    padded_n = [size + left + right for size, (left, right) in zip(n, pads, strict=True)]
    reach = [dl * (kk - 1) + 1 for dl, kk in zip(dilation, k, strict=True)]
    output_padding = [
        size - ((m - 1) * s + r) for size, m, s, r in zip(padded_n, op.output_shape, stride, reach, strict=True)
    ]
    transpose = getattr(torch.nn.functional, f"conv_transpose{d}d")
    z = transpose(y, w, stride=stride, dilation=dilation, groups=groups, output_padding=output_padding)
    expected_adjoint = torch_unpadded(z, pads, n, mode)[0]
    repeats = math.prod(-(-m * s // size) for m, s, size in zip(op.output_shape, stride, n, strict=True))
    scale_adjoint = float(np.abs(weight).sum() * np.abs(y.numpy()).max()) * max(1, repeats)
    np.testing.assert_allclose(op.rmatvec(y[0].numpy()), expected_adjoint.numpy(), rtol=0, atol=1e-13 * scale_adjoint)


@pytest.mark.parametrize("mode", ["zeros", "circular", "wrap"])
def test_conv_operator_adjoint_identity_for_complex_kernels(mode, rng):
    shape = (4, 3, 3, 2)
    weight = rng.normal(size=shape) + 1j * rng.normal(size=shape)
    n = (6, 8)
    op = ConvOperator.create(weight, input_shape=n, padding=((1, 2), (0, 1)), mode=mode, stride=(2, 1), dilation=(1, 2))
    x = rng.normal(size=(3, *n)) + 1j * rng.normal(size=(3, *n))
    y = rng.normal(size=(4, *op.output_shape)) + 1j * rng.normal(size=(4, *op.output_shape))
    left, right = np.vdot(op.matvec(x), y), np.vdot(x, op.rmatvec(y))
    assert abs(left - right) <= 1e-13 * abs(left)
    assert op.dtype == np.complex128 and op.shape == (4 * math.prod(op.output_shape), 3 * math.prod(n))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"mode": "reflect"}, cs.ParameterError, "mode: expected one of 'zeros', 'circular', 'wrap'"),
        ({"mode": "wrap", "stride": 3}, cs.ParameterError, "input_shape: the wrap-around mode needs a multiple"),
        ({"input_shape": 2, "padding": 0}, cs.ParameterError, "the output would be empty"),
        ({"padding": -1}, cs.ParameterError, "padding: expected integers >= 0"),
        ({"padding": ((1, 1),)}, cs.ParameterError, r"padding: expected one \(left, right\) pair per spatial axis"),
        ({"padding": ((1, 1), (1, 2, 3))}, cs.ParameterError, r"padding\[1\]: expected an int or 2 values"),
        ({"groups": 0}, cs.ParameterError, "groups: expected a positive int"),
        ({"input_shape": (8, 8, 8)}, cs.ParameterError, "input_shape: expected an int or 2 values"),
    ],
)
def test_conv_operator_bad_input_names_the_parameter(kwargs, error, match):
    arguments = {"input_shape": 8, **kwargs}
    with pytest.raises(error, match=match):
        ConvOperator.create(np.ones((2, 2, 3, 3)), **arguments)
    op = ConvOperator.create(np.ones((2, 2, 3, 3)), input_shape=8, padding=1)
    with pytest.raises(cs.ParameterError, match=r"x: expected 128 values"):
        op.matvec(np.ones((2, 7, 8)))
    with pytest.raises(cs.ParameterError, match=r"y: expected 128 values"):
        op.rmatvec(np.ones(127))


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


@pytest.mark.parametrize("sign", ["normal", "non-negative"])
@pytest.mark.parametrize("groups", [1, 2])
def test_propositions_6_and_11_bound_the_truth_for_both_paddings(groups, sign, rng):
    kernel = rng.normal(size=(4, 4 // groups, 3, 3))
    if sign == "non-negative":  # no cancellation between channels: where the paper's printed form fails
        kernel = np.abs(kernel)
    exact = cs.operator_norm(kernel, (9, 9), groups=groups)
    zero = cs.operator_norm(kernel, (9, 9), padding=1, groups=groups)
    prop11 = cs.bounds.channel_l1_bound(kernel, groups=groups)
    assert max(exact, zero) <= prop11 * (1 + 1e-12) <= cs.bounds.l1_bound(kernel) * (1 + 1e-12)


def test_proposition_11_as_printed_is_not_a_bound_and_the_corrected_one_is():
    kernel = np.ones((2, 3, 1, 1))
    truth = oracle_singular_values(kernel, (4, 4))[0]  # sqrt(6)
    sums = np.abs(kernel).sum(axis=(2, 3))
    printed = np.sqrt((sums.max(axis=1) ** 2).sum())  # sqrt(sum_c max_d S_cd^2) = sqrt(2)
    assert printed < truth * 0.6
    assert cs.bounds.channel_l1_bound(kernel) == pytest.approx(truth, rel=1e-12)


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
        ({"padding": "reflect"}, "padding: expected one of 'circular', 'module', 'same', 'valid', got 'reflect'"),
        ({"padding": -1}, "padding: expected integers >= 0"),
        ({"padding": (1, 1, 1)}, "padding: expected an int or 2 values"),
        ({"padding": "same", "stride": 2}, "'same' needs stride 1"),
        ({"padding": "module"}, "padding: 'module' reads a torch conv module"),
        ({"padding": 0, "input_shape": (2, 2)}, "the output would be empty"),
        ({"rtol": 0}, r"rtol: expected a number in \(0, 1\), got 0"),
        ({"rtol": 1.0}, r"rtol: expected a number in \(0, 1\), got 1.0"),
        ({"rtol": float("nan")}, r"rtol: expected a number in \(0, 1\), got nan"),
        ({"max_iter": 0}, "max_iter: expected a positive int, got 0"),
        ({"max_memory": 0}, "max_memory: expected a positive int, got 0"),
        ({"workers": 0}, "workers: expected a positive int, got 0"),
    ],
)
def test_bad_input_names_the_parameter(kwargs, match, rng):
    kwargs = dict(kwargs)
    n = kwargs.pop("input_shape", (8, 8))
    with pytest.raises(cs.ParameterError, match=match):
        cs.operator_norm(rng.normal(size=(2, 2, 3, 3)), n, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rtol": "small"}, "rtol: expected a number in"),
        ({"rtol": True}, "rtol: expected a number in"),
        ({"max_iter": 2.5}, "max_iter: expected a positive int"),
        ({"max_memory": 1.5}, "max_memory: expected a positive int"),
        ({"padding": None}, "padding: expected an int or a sequence of 2 ints"),
        ({"padding": 1.5}, "padding: expected an int or a sequence of 2 ints"),
    ],
)
def test_bad_types_name_the_parameter(kwargs, match, rng):
    with pytest.raises(cs.ParameterTypeError, match=match):
        cs.operator_norm(rng.normal(size=(2, 2, 3, 3)), (8, 8), **kwargs)


def test_reflect_and_replicate_modules_are_refused():
    module = torch.nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect")
    with pytest.raises(cs.ParameterError, match="padding_mode is 'reflect'"):
        cs.operator_norm(module, (8, 8), padding="module")
    with pytest.raises(cs.ParameterTypeError, match="padding: expected"):
        cs.operator_norm(module, (8, 8), padding=None)


@pytest.mark.parametrize(
    ("shape", "n", "stride", "dilation", "groups", "complex_"),
    [
        ((4, 2, 3, 3), (8, 8), (1, 1), (1, 1), 1, False),
        ((6, 2, 3), (12,), (2,), (2,), 3, False),
        ((4, 4, 1, 1), (6, 8), (2, 2), (1, 1), 1, True),
        ((2, 3, 2, 3, 2), (4, 6, 4), (2, 1, 2), (1, 2, 1), 1, False),
        ((8, 1, 5, 5), (10, 10), (2, 2), (3, 3), 8, False),
        ((3, 2, 4, 4), (2, 2), (2, 2), (1, 1), 1, False),  # kernel larger than the grid
    ],
)
def test_tap_by_tap_product_equals_the_fft_operator(rng, shape, n, stride, dilation, groups, complex_):
    from convspectra.norm._direct import wrap_matvec

    weight = rng.normal(size=shape) + (1j * rng.normal(size=shape) if complex_ else 0)
    x = rng.normal(size=(shape[1] * groups, *n)) + (1j * rng.normal(size=(shape[1] * groups, *n)) if complex_ else 0)
    op = ConvOperator.create(weight, input_shape=n, mode="wrap", stride=stride, dilation=dilation, groups=groups)
    direct = wrap_matvec(weight, x, stride=stride, dilation=dilation, groups=groups)
    np.testing.assert_allclose(direct, op.matvec(x), rtol=0, atol=1e-13 * np.abs(weight).sum() * np.abs(x).max())


def test_bracket_of_a_wide_strided_shortcut_fits_the_default_budget(rng):
    # ResNet-50's layer2 shortcut: the FFT operator alone would hold 3 GiB of kernel transform
    weight = rng.normal(size=(512, 256, 1, 1))
    bounds = cs.operator_norm_bounds(weight, 56, stride=2)
    exact = np.linalg.norm(weight[:, :, 0, 0], 2)  # a 1x1 layer: the norm of its channel matrix
    assert bounds.lower <= exact <= bounds.upper
    assert bounds.lower >= exact * (1 - 1e-9) and bounds.upper <= exact * (1 + 1e-9)


@pytest.mark.parametrize("complex_", [True, False])
@pytest.mark.parametrize("shape", [(40, 12, 12), (40, 7, 15), (40, 15, 7)])
def test_cholesky_floor_keeps_every_value_above_it_exact(rng, shape, complex_):
    from convspectra.norm._sigma import sigma_max

    matrices = rng.normal(size=shape) + (1j * rng.normal(size=shape) if complex_ else 0)
    exact = np.linalg.svd(matrices, compute_uv=False)[:, 0]
    floor = float(np.median(exact))
    got = sigma_max(matrices, floor)
    above = exact > floor * (1 + 1e-12)
    np.testing.assert_allclose(got[above], exact[above], rtol=1e-13)
    assert np.all(got[~above] <= floor * (1 + 1e-12)) and np.all(got >= np.minimum(exact, floor) * (1 - 1e-12))
