"""singular_values and frequency_spectrum against the dense oracle (PyTorch's convolution)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import convspectra as cs
import convspectra.spectrum as spectrum_module
from conftest import assert_spectrum_matches, layers, oracle_singular_values, spectrum_tolerance
from convspectra.baselines import paper_singular_values
from convspectra.spec import parse_layer


@given(layers())
def test_matches_dense_oracle(layer):
    kernel, input_shape, kwargs = layer
    ours = cs.singular_values(kernel, input_shape, **kwargs)
    assert isinstance(ours, np.ndarray)
    expected_dtype = np.float32 if kernel.dtype == np.float32 else np.float64
    assert ours.dtype == expected_dtype
    assert_spectrum_matches(ours, kernel, input_shape, **kwargs)


@given(layers(max_dense=300))
def test_torch_tensor_matches_dense_oracle_and_stays_torch(layer):
    kernel, input_shape, kwargs = layer
    tensor = torch.from_numpy(np.ascontiguousarray(kernel))
    ours = cs.singular_values(tensor, input_shape, **kwargs)
    assert isinstance(ours, torch.Tensor) and ours.device == tensor.device
    assert_spectrum_matches(ours, kernel, input_shape, **kwargs)


@given(layers(max_dense=300))
def test_torch_autograd_path_matches_numpy_path(layer):
    kernel, input_shape, kwargs = layer
    tensor = torch.tensor(np.asarray(kernel, dtype=np.float64), requires_grad=True)
    ours = cs.singular_values(tensor, input_shape, **kwargs)
    assert ours.requires_grad
    reference = cs.singular_values(np.asarray(kernel, dtype=np.float64), input_shape, **kwargs)
    tol = spectrum_tolerance(kernel, input_shape, np.float64, float(reference[0]), **kwargs)
    np.testing.assert_allclose(ours.detach().numpy(), reference, rtol=0, atol=tol)


@given(layers(max_dense=300), st.floats(-3, 3).filter(lambda a: abs(a) > 1e-3))
def test_scaling_the_kernel_scales_the_spectrum(layer, alpha):
    kernel, input_shape, kwargs = layer
    kernel = np.asarray(kernel, dtype=np.float64)
    base = cs.singular_values(kernel, input_shape, **kwargs)
    scaled = cs.singular_values(alpha * kernel, input_shape, **kwargs)
    tol = spectrum_tolerance(kernel, input_shape, np.float64, abs(alpha) * float(base[0]), **kwargs)
    np.testing.assert_allclose(scaled, abs(alpha) * base, rtol=0, atol=tol)


@given(layers(max_dense=300))
def test_transposed_layer_has_the_spectrum_of_its_forward_layer(layer):
    kernel, input_shape, kwargs = layer
    spec = cs.frequency_spectrum(kernel, input_shape, **kwargs).spec
    flipped = dict(kwargs, transposed=not kwargs["transposed"])
    other_input = spec.input_shape if kwargs["transposed"] else spec.output_shape
    np.testing.assert_array_equal(
        cs.singular_values(kernel, other_input, **flipped), cs.singular_values(kernel, input_shape, **kwargs)
    )


@given(layers(max_dense=300))
def test_frequency_spectrum_is_consistent(layer):
    kernel, input_shape, kwargs = layer
    fs = cs.frequency_spectrum(kernel, input_shape, **kwargs)
    spec = fs.spec
    assert int(fs.multiplicity.sum()) == math.prod(spec.output_shape)
    np.testing.assert_array_equal(fs.sorted(), cs.singular_values(kernel, input_shape, **kwargs))
    assert fs.sorted().size == spec.num_singular_values
    assert np.all(np.diff(fs.singular_values, axis=1) <= 0)
    grid = fs.to_grid()
    assert grid.shape == (*spec.output_shape, fs.singular_values.shape[1])
    np.testing.assert_array_equal(np.sort(grid.reshape(-1))[::-1], fs.sorted())
    assert float(fs.max()) == float(fs.sorted()[0])


def test_transfer_matrix_at_each_frequency_matches_a_direct_dft(rng):
    # Independent of the dense oracle: T(g) from numpy's FFT of the kernel placed (wrapped) on the grid.
    weight = rng.normal(size=(3, 2, 4, 2))
    n = (3, 4)  # kernel taller than the input: taps wrap
    placed = np.zeros((3, 2, *n))
    for t0 in range(4):
        for t1 in range(2):
            placed[:, :, t0 % n[0], t1 % n[1]] += weight[:, :, t0, t1]
    transfer = np.conj(np.fft.fft2(placed, axes=(2, 3)))  # e^{+2 pi i f t / n}
    fs = cs.frequency_spectrum(weight, n)
    grid = fs.to_grid()
    for g in np.ndindex(*n):
        expected = np.linalg.svd(transfer[:, :, g[0], g[1]], compute_uv=False)
        np.testing.assert_allclose(grid[g], expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("complex_kernel", [False, True])
def test_to_grid_matches_per_frequency_svds_for_numpy_and_torch(complex_kernel, rng):
    weight = rng.normal(size=(3, 2, 2, 3))
    if complex_kernel:
        weight = weight + 1j * rng.normal(size=weight.shape)
    n = (4, 5)
    placed = np.zeros((3, 2, *n), dtype=weight.dtype)
    for t0 in range(2):
        for t1 in range(3):
            placed[:, :, t0, t1] += weight[:, :, t0, t1]
    # e^{+2 pi i f t / n} = n * ifft; for complex kernels the conjugate trick does not apply.
    transfer = np.fft.ifft2(placed, axes=(2, 3)) * np.prod(n)
    grid = cs.frequency_spectrum(weight, n).to_grid()
    grid_torch = cs.frequency_spectrum(torch.from_numpy(weight), n).to_grid()
    assert isinstance(grid_torch, torch.Tensor)
    np.testing.assert_array_equal(grid_torch.numpy(), grid)
    for g in np.ndindex(*n):
        expected = np.linalg.svd(transfer[:, :, g[0], g[1]], compute_uv=False)
        np.testing.assert_allclose(grid[g], expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_kernel_larger_than_input_is_exact_where_the_papers_snippet_is_not(n, rng):
    kernel_hwio = rng.normal(size=(7, 7, 4, 4))
    ours = cs.singular_values(kernel_hwio, n, layout="HWIO")
    expected = oracle_singular_values(kernel_hwio, n, layout="HWIO")
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-11 * expected[0])
    paper = np.sort(paper_singular_values(kernel_hwio, (n, n)).ravel())[::-1]
    assert abs(paper[0] - expected[0]) > 0.05 * expected[0]  # cropping the kernel is wrong here


def test_matches_the_papers_method_when_the_kernel_fits(rng):
    kernel_hwio = rng.normal(size=(3, 3, 8, 5))
    ours = cs.singular_values(kernel_hwio, (12, 10), layout="HWIO")
    paper = np.sort(paper_singular_values(kernel_hwio, (12, 10)).ravel())[::-1]
    np.testing.assert_allclose(ours, paper, rtol=0, atol=1e-12 * paper[0])


def test_footnote_2_all_ones_kernel():
    # The reshaped 1x4 matrix has norm 2; the operator has norm 4 (Prop. 7: sum of entries).
    sv = cs.singular_values(np.ones((1, 1, 2, 2)), (6, 6))
    assert sv[0] == pytest.approx(4.0, abs=1e-14)
    assert np.linalg.norm(np.ones((1, 4)), 2) == pytest.approx(2.0)


@pytest.mark.parametrize(
    "shape, n, kwargs, matrices",
    [
        ((8, 8, 1, 1), 5, {}, 1),  # 1x1: one SVD, multiplicity n^2
        ((6, 4, 1, 1), (4, 6), {"stride": 2}, 1),  # strided 1x1 (ResNet downsample shortcut)
        ((6, 4, 1, 3), (4, 6), {"stride": (2, 3)}, 2),  # one single-tap axis: grid (1, 2)
        ((4, 4, 1, 1, 1), (2, 2, 4), {"stride": (1, 1, 2)}, 1),
    ],
)
def test_single_tap_axes_are_collapsed_exactly(shape, n, kwargs, matrices, rng):
    kernel = rng.normal(size=shape)
    fs = cs.frequency_spectrum(kernel, n, **kwargs)
    assert len(fs.frequencies) == matrices
    assert_spectrum_matches(fs.sorted(), kernel, n, **kwargs)


def test_depthwise_and_grouped(rng):
    depthwise = rng.normal(size=(12, 1, 3, 3))
    assert_spectrum_matches(cs.singular_values(depthwise, 6, groups=12), depthwise, 6, groups=12)
    multiplier = rng.normal(size=(12, 1, 3, 3))  # depth multiplier 3 on 4 channels
    assert_spectrum_matches(cs.singular_values(multiplier, 6, groups=4), multiplier, 6, groups=4)
    # A grouped layer's spectrum is the union of its groups' spectra.
    grouped = rng.normal(size=(6, 2, 3, 3))
    union = np.concatenate([cs.singular_values(grouped[2 * i : 2 * i + 2], 5) for i in range(3)])
    np.testing.assert_allclose(cs.singular_values(grouped, 5, groups=3), np.sort(union)[::-1], atol=1e-12)


def test_layouts_agree(rng):
    oihw = rng.normal(size=(5, 3, 3, 2))
    hwio = np.transpose(oihw, (2, 3, 1, 0))
    a = cs.singular_values(oihw, (6, 4), stride=2)
    b = cs.singular_values(hwio, (6, 4), stride=2, layout="HWIO")
    np.testing.assert_array_equal(a, b)
    oiw = rng.normal(size=(2, 3, 4))
    np.testing.assert_array_equal(
        cs.singular_values(oiw, 7, layout="OIW"), cs.singular_values(np.transpose(oiw, (2, 1, 0)), 7, layout="WIO")
    )
    oidhw = rng.normal(size=(2, 2, 2, 3, 2))
    np.testing.assert_array_equal(
        cs.singular_values(oidhw, 4, layout="OIDHW"),
        cs.singular_values(np.transpose(oidhw, (2, 3, 4, 1, 0)), 4, layout="DHWIO"),
    )


def test_transposed_has_the_adjoints_spectrum(rng):
    weight = rng.normal(size=(4, 6, 3, 3))
    forward = cs.singular_values(weight, (8, 8), stride=2)
    adjoint = cs.singular_values(weight, (4, 4), stride=2, transposed=True)
    np.testing.assert_array_equal(forward, adjoint)


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_modules_are_read_with_their_hyperparameters(dim, rng):
    torch.manual_seed(dim)
    conv = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}[dim]
    conv_t = {1: torch.nn.ConvTranspose1d, 2: torch.nn.ConvTranspose2d, 3: torch.nn.ConvTranspose3d}[dim]
    layer = conv(4, 6, 3, stride=2, dilation=2, groups=2, padding=2).double()
    n = (4,) * dim
    ours = cs.singular_values(layer, n)
    assert isinstance(ours, torch.Tensor) and ours.dtype == torch.float64
    assert_spectrum_matches(ours, layer.weight, n, stride=2, dilation=2, groups=2)
    layer_t = conv_t(6, 4, 3, stride=2, groups=2).double()
    ours_t = cs.singular_values(layer_t, (2,) * dim)
    assert_spectrum_matches(ours_t, layer_t.weight, (2,) * dim, stride=2, groups=2, transposed=True)


def test_module_with_autograd_gives_a_differentiable_spectrum():
    torch.manual_seed(0)
    layer = torch.nn.Conv2d(3, 4, 3).double()
    sv = cs.singular_values(layer, 5)
    assert sv.requires_grad
    sv[0].backward()
    assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all()


def test_gradient_of_the_spectrum_matches_finite_differences():
    torch.manual_seed(0)
    weight = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    # The sum of singular values (the nuclear norm) is smooth where none of them is zero.
    assert torch.autograd.gradcheck(lambda w: cs.singular_values(w, 4, stride=2).sum(), (weight,))


@pytest.mark.parametrize(
    "dtype, expected",
    [
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.float32),
        (torch.float32, torch.float32),
        (torch.float64, torch.float64),
        (torch.int64, torch.float64),
    ],
)
def test_torch_dtypes_are_upcast_not_rejected(dtype, expected, rng):
    kernel = torch.from_numpy(rng.integers(-2, 3, size=(3, 2, 2, 2))).to(dtype)
    sv = cs.singular_values(kernel, 4)
    assert sv.dtype == expected
    assert_spectrum_matches(sv, kernel, 4)


def test_numpy_float16_is_upcast(rng):
    kernel = rng.normal(size=(3, 3, 3, 3)).astype(np.float16)
    sv = cs.singular_values(kernel, 5)
    assert sv.dtype == np.float32
    assert_spectrum_matches(sv, kernel.astype(np.float32), 5)


@pytest.mark.parametrize("layout", ["OIHW", "HWIO"])
def test_complex_kernels_use_the_full_spectrum(layout, rng):
    kernel = rng.normal(size=(3, 2, 3, 2)) + 1j * rng.normal(size=(3, 2, 3, 2))
    if layout == "HWIO":
        kernel = np.transpose(kernel, (2, 3, 1, 0))
    for dtype in (np.complex128, np.complex64):
        sv = cs.singular_values(kernel.astype(dtype), (4, 6), stride=(1, 2), layout=layout)
        assert sv.dtype == (np.float64 if dtype == np.complex128 else np.float32)
        assert_spectrum_matches(sv, kernel.astype(dtype), (4, 6), stride=(1, 2), layout=layout)


def test_workers_and_chunking_do_not_change_the_result(rng, monkeypatch):
    kernel = rng.normal(size=(6, 5, 3, 3))
    reference = cs.singular_values(kernel, (10, 8), stride=2, workers=1)
    monkeypatch.setattr(spectrum_module, "_CHUNK_BYTES", 1)  # one frequency per chunk
    monkeypatch.setattr(spectrum_module, "_PARALLEL_MIN_WORK", 0)  # threads even for tiny work
    for workers in (1, 2, 3):
        np.testing.assert_array_equal(cs.singular_values(kernel, (10, 8), stride=2, workers=workers), reference)


def test_input_shape_as_int_or_tuple(rng):
    kernel = rng.normal(size=(2, 2, 3, 3))
    np.testing.assert_array_equal(cs.singular_values(kernel, 6), cs.singular_values(kernel, (6, 6)))
    np.testing.assert_array_equal(cs.singular_values(kernel, 6), cs.singular_values(kernel, np.array([6, 6])))


def test_jax_like_array_input_goes_through_numpy(rng):
    class ArrayLike:  # anything with __array__, e.g. a JAX array
        def __init__(self, data):
            self.data = data

        def __array__(self, dtype=None, copy=None):
            return self.data

    kernel = rng.normal(size=(3, 3, 2, 2))
    sv = cs.singular_values(ArrayLike(kernel), 5, layout="HWIO")
    np.testing.assert_array_equal(sv, cs.singular_values(kernel, 5, layout="HWIO"))


def test_resnet_sized_layer_matches_the_papers_method(rng):
    # A real-size layer, too big for the dense oracle: the paper's method is the reference.
    kernel_hwio = rng.normal(size=(3, 3, 64, 64)) * np.sqrt(2 / (9 * 64))
    ours = cs.singular_values(kernel_hwio, 16, layout="HWIO")
    paper = np.sort(paper_singular_values(kernel_hwio, (16, 16)).ravel())[::-1]
    np.testing.assert_allclose(ours, paper, rtol=0, atol=1e-12 * paper[0])
    ours32 = cs.singular_values(kernel_hwio.astype(np.float32), 16, layout="HWIO")
    np.testing.assert_allclose(ours32, paper, rtol=0, atol=16 * (64 + 64 + 9) * np.finfo(np.float32).eps * paper[0])


# --- extreme scales (issue 11): the kernel is scaled by a power of two before the transform -----


def _magnitudes(result):
    return result.detach().cpu().numpy().astype(np.float64) if hasattr(result, "detach") else result


@pytest.mark.parametrize("backend", ["numpy", "torch", "torch-autograd"])
@given(
    layer=layers(max_dense=200),
    exponent=st.floats(-300, 300),
    negative=st.booleans(),
)
def test_spectrum_scales_exactly_over_the_whole_float_range(backend, layer, exponent, negative):
    """sigma(alpha K) = |alpha| sigma(K) for alpha from 1e-300 to 1e300 (float64) / 1e-30 to 1e30 (float32)."""
    kernel, input_shape, kwargs = layer
    single = kernel.dtype == np.float32
    if single:
        exponent = exponent / 10
    alpha = (-1.0 if negative else 1.0) * 10.0**exponent
    dtype = np.float32 if single else np.float64
    base = np.asarray(kernel, dtype=np.float64)
    scaled = (alpha * base).astype(dtype)  # alpha K, rounded once to the kernel's dtype
    unit = base.astype(dtype)

    def spectrum(weights):
        if backend == "numpy":
            return _magnitudes(cs.singular_values(weights, input_shape, **kwargs))
        tensor = torch.from_numpy(np.ascontiguousarray(weights)).requires_grad_(backend == "torch-autograd")
        return _magnitudes(cs.singular_values(tensor, input_shape, **kwargs))

    reference = spectrum(unit)
    ours = spectrum(scaled)
    assert np.all(np.isfinite(ours)), ours
    spec, _ = parse_layer(unit, input_shape, **kwargs)
    p, q = spec.block_shape
    relative = 1e-12 if not single else 16 * (p + q + math.prod(spec.kernel_size)) * np.finfo(np.float32).eps
    expected = abs(alpha) * reference
    atol = relative * abs(alpha) * max(float(reference[0]), np.finfo(np.float64).tiny)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=atol)


@pytest.mark.parametrize("scale", [1e200, 1e300, 1e-300, 1e-310])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_one_row_kernel_does_not_overflow_or_underflow(scale, backend, rng):
    """The issue's case: a one-row kernel (one singular value per frequency) times 1e200 gave inf."""
    w = rng.normal(size=(1, 1, 1, 3))
    expected = np.sort(np.abs(np.fft.fft(w[0, 0, 0], 8)))[::-1]  # a 1-row kernel on 8 x 8: |DFT| along the row
    weights = w * scale
    if backend == "torch":
        weights = torch.from_numpy(weights).requires_grad_(True)
    ours = _magnitudes(cs.singular_values(weights, 8))
    assert ours.shape == (64,)
    np.testing.assert_allclose(ours[::8], scale * expected, rtol=1e-12 if scale > 1e-308 else 1e-9)


def test_extreme_complex_kernel_and_frequency_spectrum(rng):
    kernel = rng.normal(size=(3, 2, 2, 2)) + 1j * rng.normal(size=(3, 2, 2, 2))
    base = cs.frequency_spectrum(kernel, 4)
    for scale in (2.0**-1000, 1e250):
        scaled = cs.frequency_spectrum(kernel * scale, 4)
        np.testing.assert_allclose(scaled.singular_values, scale * base.singular_values, rtol=1e-12)
        np.testing.assert_allclose(scaled.to_grid(), scale * base.to_grid(), rtol=1e-12)


def test_zero_kernel_has_a_zero_spectrum():
    for kernel in (
        np.zeros((4, 2, 3, 3)),
        torch.zeros(4, 2, 3, 3, requires_grad=True),
        np.zeros((4, 2, 3, 3), np.float32),
    ):
        values = _magnitudes(cs.singular_values(kernel, 6, stride=2))
        assert values.shape == (4 * 3 * 3,) and not values.any()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_kernels_are_refused_naming_the_kernel(bad):
    kernel = np.ones((2, 2, 3, 3))
    kernel[1, 0, 2, 1] = bad
    for weights in (kernel, torch.from_numpy(kernel).requires_grad_(True)):
        with pytest.raises(cs.ParameterError, match=r"^kernel: expected finite values, got 1 NaN or infinite"):
            cs.singular_values(weights, 8)


def test_ordinary_scales_are_not_rescaled():
    """Only kernels outside the safe range are scaled: results at ordinary scales do not change, bit for bit."""
    from convspectra._rescale import extreme_exponent as scale_exponent

    assert scale_exponent(np.array([3.0, -1e-3])) == 0 and scale_exponent(np.zeros(3)) == 0
    assert scale_exponent(np.array([1e70])) == 0 and scale_exponent(np.array([1e-70])) == 0
    assert scale_exponent(np.array([1e80])) == math.frexp(1e80)[1]
    assert scale_exponent(np.array([1e-80 + 0j])) == math.frexp(1e-80)[1]
    assert scale_exponent(np.array([1e9], np.float32)) == 0 and scale_exponent(np.array([1e10], np.float32)) == 34
    assert scale_exponent(torch.tensor([1e10])) == 34 and scale_exponent(torch.tensor([1e10], dtype=torch.float64)) == 0
