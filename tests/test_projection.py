"""clip_operator_norm against the dense operator built with PyTorch's own convolution.

The oracle of one iteration is computed in operator space from dense matrices only: the SVD of
the dense matrix with its singular values clipped, then the orthogonal projection (least squares)
onto the span of the dense matrices of the unit kernels, i.e. onto the layers with this kernel
shape, stride, dilation and groups. Nothing in it shares code with the Fourier computation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import convspectra as cs
from convspectra.baselines import paper_clip_operator_norm
from convspectra.operator import dense_matrix

EPS = np.finfo(np.float64).eps


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The dense oracle runs many tiny convolutions: torch's thread pool only adds overhead
    there (measured 40x slower per call with two threads on a busy 2-core machine)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ----------------------------------------------------------------------------- dense oracle


def clip_dense(matrix: np.ndarray, high: float, low: float | None = None) -> np.ndarray:
    """U clip(S, low, high) V^H of a dense matrix."""
    u, s, vh = np.linalg.svd(matrix, full_matrices=False)
    return (u * np.clip(s, 0.0 if low is None else low, high)) @ vh


def unit_basis(shape, input_shape, **kwargs) -> np.ndarray:
    """(kernel entries, rows * cols): the dense matrix of every unit kernel, flattened."""
    size = math.prod(shape)
    rows = []
    for j in range(size):
        unit = np.zeros(size)
        unit[j] = 1.0
        rows.append(dense_matrix(unit.reshape(shape), input_shape, **kwargs).ravel())
    return np.array(rows)


def project_onto_layers(matrix: np.ndarray, basis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Orthogonal projection (Frobenius) of a dense matrix onto span(basis): (kernel, matrix)."""
    target = matrix.ravel()
    if np.iscomplexobj(target):  # the basis is real: real and imaginary parts separately
        real = np.linalg.lstsq(basis.T, target.real, rcond=None)[0]
        imag = np.linalg.lstsq(basis.T, target.imag, rcond=None)[0]
        coefficients = real + 1j * imag
    else:
        coefficients = np.linalg.lstsq(basis.T, target, rcond=None)[0]
    return coefficients, (coefficients @ basis).reshape(matrix.shape)


def dense_projection(kernel, input_shape, high, *, low=None, iterations=1, method="alternating", **kwargs):
    """Alternating projections / Dykstra in operator space, dense: returns the final dense matrix."""
    basis = unit_basis(kernel.shape, input_shape, **kwargs)
    x = dense_matrix(kernel, input_shape, **kwargs)
    correction = np.zeros_like(x)
    for _ in range(iterations):
        y = clip_dense(x + correction, high, low)
        if method == "dykstra":
            correction = x + correction - y
        x = project_onto_layers(y, basis)[1]
    return x


def operator_tolerance(matrix: np.ndarray, iterations: int = 1) -> float:
    """c * iterations * dimension * eps * sigma_max: rounding of dense SVDs and FFT-sized sums."""
    return 64 * iterations * max(matrix.shape) * EPS * max(np.linalg.norm(matrix, 2), 1.0)


# ----------------------------------------------------------------------------- layers for Hypothesis


@dataclass
class Layer:
    kernel: np.ndarray
    input_shape: tuple[int, ...]
    options: dict

    def dense(self, kernel=None):
        return dense_matrix(self.kernel if kernel is None else kernel, self.input_shape, **self.options)

    def collides(self) -> bool:
        n = self.forward_input
        for k, dil, size in zip(self.kernel.shape[2:], self.options["dilation"], n, strict=True):
            if len({(dil * t) % size for t in range(k)}) < k:
                return True
        return False

    @property
    def forward_input(self):
        if self.options["transposed"]:
            return tuple(m * s for m, s in zip(self.input_shape, self.options["stride"], strict=True))
        return self.input_shape


@st.composite
def layers(draw, max_dims: int = 3, full_support: bool = False, allow_complex: bool = True) -> Layer:
    d = draw(st.integers(1, max_dims))
    budget = {1: 6, 2: 4, 3: 2}[d]
    out_grid = tuple(draw(st.integers(1, budget)) for _ in range(d))
    stride = tuple(draw(st.integers(1, 2)) for _ in range(d))
    n = tuple(m * s for m, s in zip(out_grid, stride, strict=True))
    if full_support:  # every offset of the grid reached: k >= n, dilation coprime to n
        dilation = tuple(draw(st.sampled_from([1, 3])) if size % 3 else 1 for size in n)
        kernel_size = tuple(draw(st.integers(size, size + 1)) for size in n)
    else:
        dilation = tuple(draw(st.integers(1, 2)) for _ in range(d))
        kernel_size = tuple(draw(st.integers(1, 3)) for _ in range(d))
    groups = draw(st.integers(1, 2))
    rows = draw(st.integers(1, 3 if d < 3 else 2))
    cols = draw(st.integers(1, 3 if d < 3 else 2))
    transposed = draw(st.booleans())
    is_complex = allow_complex and draw(st.integers(0, 5)) == 0
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    shape = (groups * rows, cols, *kernel_size)
    kernel = rng.normal(size=shape)
    if is_complex:
        kernel = kernel + 1j * rng.normal(size=shape)
    input_shape = out_grid if transposed else n
    options = {"stride": stride, "dilation": dilation, "groups": groups, "transposed": transposed}
    return Layer(kernel, input_shape, options)


# ----------------------------------------------------------------------------- exactness


@settings(max_examples=40)
@given(layer=layers(full_support=True), fraction=st.sampled_from([0.3, 0.7, 0.95]))
def test_full_support_one_projection_is_the_nearest_operator(layer, fraction):
    """Support covering the grid: one iteration is U min(S, c) V^H of the dense matrix."""
    dense = layer.dense()
    c = fraction * np.linalg.norm(dense, 2)
    result, report = cs.clip_operator_norm_report(layer.kernel, layer.input_shape, c, **layer.options)
    assert result.shape == layer.kernel.shape and result.dtype == layer.kernel.dtype
    expected = clip_dense(dense, c)
    err = np.abs(layer.dense(result) - expected).max()
    assert err <= operator_tolerance(dense), err
    assert report.support_residual == 0.0 and not report.support_changed
    assert report.iterations == 1


@settings(max_examples=60)
@given(layer=layers(), fraction=st.sampled_from([0.2, 0.6]), iterations=st.integers(1, 3))
def test_alternating_iterations_equal_the_dense_oracle(layer, fraction, iterations):
    """Each round = dense SVD clip, then least-squares projection onto the layer's kernels."""
    dense = layer.dense()
    c = fraction * np.linalg.norm(dense, 2)
    result = cs.clip_operator_norm(layer.kernel, layer.input_shape, c, iterations=iterations, **layer.options)
    expected = dense_projection(layer.kernel, layer.input_shape, c, iterations=iterations, **layer.options)
    err = np.abs(layer.dense(result) - expected).max()
    assert err <= operator_tolerance(dense, iterations), err
    if not layer.collides():  # the kernel itself is determined by its operator
        basis = unit_basis(layer.kernel.shape, layer.input_shape, **layer.options)
        kernel = project_onto_layers(expected, basis)[0].reshape(layer.kernel.shape)
        assert np.abs(result - kernel).max() <= operator_tolerance(dense, iterations)


@settings(max_examples=20)
@given(layer=layers(max_dims=2), iterations=st.integers(2, 4))
def test_dykstra_iterations_equal_the_dense_oracle(layer, iterations):
    dense = layer.dense()
    c = 0.4 * np.linalg.norm(dense, 2)
    result = cs.clip_operator_norm(
        layer.kernel, layer.input_shape, c, iterations=iterations, method="dykstra", **layer.options
    )
    expected = dense_projection(
        layer.kernel, layer.input_shape, c, iterations=iterations, method="dykstra", **layer.options
    )
    assert np.abs(layer.dense(result) - expected).max() <= operator_tolerance(dense, iterations)


@settings(max_examples=25)
@given(layer=layers(max_dims=2, full_support=True), low=st.sampled_from([0.1, 0.5, 0.9]))
def test_band_at_full_support_is_the_nearest_operator(layer, low):
    dense = layer.dense()
    sigma = np.linalg.svd(dense, compute_uv=False)
    high = 0.8 * sigma[0]
    low = low * high
    result = cs.clip_operator_norm(layer.kernel, layer.input_shape, high, min_norm=low, **layer.options)
    err = np.abs(layer.dense(result) - clip_dense(dense, high, low)).max()
    assert err <= operator_tolerance(dense), err


def test_band_iterations_equal_the_dense_oracle(rng):
    kernel = rng.normal(size=(3, 2, 3, 3))
    expected = dense_projection(kernel, 4, 1.5, low=0.5, iterations=3)
    result = cs.clip_operator_norm(kernel, 4, 1.5, min_norm=0.5, iterations=3)
    assert np.abs(dense_matrix(result, 4) - expected).max() <= operator_tolerance(expected, 3)


# ----------------------------------------------------------------------------- convergence


@pytest.mark.parametrize("stride", [1, 2])
def test_alternating_converges_into_the_ball(rng, stride):
    kernel = rng.normal(size=(4, 3, 3, 3))
    c = 0.25 * np.linalg.norm(dense_matrix(kernel, 6, stride=stride), 2)
    result, report = cs.clip_operator_norm_report(kernel, 6, c, iterations=400, stride=stride)
    assert result.shape == kernel.shape
    norm = np.linalg.norm(dense_matrix(result, 6, stride=stride), 2)
    assert norm <= c * (1 + 1e-3)
    assert report.sigma_max_after == pytest.approx(norm, rel=1e-12)
    assert report.support_changed  # the 3x3 support of a 6x6 grid: the first clips left it
    assert report.support_residual < 1e-3 * np.linalg.norm(kernel)  # converged: the last one barely


def test_dykstra_is_never_farther_than_alternating_and_lands_in_the_ball(rng):
    kernel = rng.normal(size=(3, 2, 3, 3))
    dense = dense_matrix(kernel, 5)
    c = 0.3 * np.linalg.norm(dense, 2)
    alternating = cs.clip_operator_norm(kernel, 5, c, iterations=2000)
    dykstra = cs.clip_operator_norm(kernel, 5, c, iterations=2000, method="dykstra")
    for result in (alternating, dykstra):
        assert np.linalg.norm(dense_matrix(result, 5), 2) <= c * (1 + 1e-3)
    d_alt = np.linalg.norm(alternating - kernel)
    d_dyk = np.linalg.norm(dykstra - kernel)
    assert d_dyk <= d_alt * (1 + 1e-9)
    assert d_dyk < d_alt * 0.999  # here strictly nearer: the two methods do differ


def test_dykstra_nearest_point_optimality(rng):
    """At the nearest point K*, <K - K*, J - K*> <= 0 for feasible J with the same support."""
    kernel = rng.normal(size=(2, 2, 2, 2))
    c = 0.3 * float(cs.singular_values(kernel, 4)[0])
    nearest = cs.clip_operator_norm(kernel, 4, c, iterations=3000, method="dykstra")
    for _ in range(20):
        candidate = cs.clip_operator_norm(nearest + 0.05 * rng.normal(size=kernel.shape), 4, c, iterations=500)
        assert float(cs.singular_values(candidate, 4)[0]) <= c * (1 + 1e-6)
        assert np.vdot(kernel - nearest, candidate - nearest).real <= 1e-6 * np.linalg.norm(kernel) ** 2


# ----------------------------------------------------------------------------- unchanged cases


def test_inside_the_ball_comes_back_unchanged(rng):
    kernel = rng.normal(size=(8, 4, 3, 3))
    sigma = float(cs.singular_values(kernel, 8)[0])
    for method in cs.projection.METHODS:
        result, report = cs.clip_operator_norm_report(kernel, 8, 1.5 * sigma, iterations=5, method=method)
        assert np.array_equal(result, kernel) and result is not kernel
        assert report.iterations == 0 and report.distance == 0.0 and not report.support_changed
    tensor = torch.from_numpy(kernel).float()
    out = cs.clip_operator_norm(tensor, 8, 1.5 * sigma)
    assert torch.equal(out, tensor) and out.data_ptr() != tensor.data_ptr()


def test_on_the_boundary_comes_back_unchanged(rng):
    kernel = rng.normal(size=(6, 5, 3, 3))
    sigma = cs.singular_values(kernel, 8)
    for result in (
        cs.clip_operator_norm(kernel, 8, float(sigma[0])),
        cs.clip_operator_norm(kernel, 8, float(sigma[0]), min_norm=float(sigma[-1]), iterations=3),
        cs.clip_operator_norm(kernel, 8, float(sigma[0]), iterations=3, method="dykstra"),
    ):
        assert np.abs(result - kernel).max() <= 64 * EPS * np.abs(kernel).max()


def test_band_is_respected_after_iterations(rng):
    kernel = rng.normal(size=(4, 4, 3, 3))
    result = cs.clip_operator_norm(kernel, 6, 2.0, min_norm=1.0, iterations=300)
    sigma = np.linalg.svd(dense_matrix(result, 6), compute_uv=False)
    assert sigma[0] <= 2.0 * (1 + 1e-3)
    assert sigma[-1] >= 1.0 * (1 - 1e-3)


# ----------------------------------------------------------------------------- collisions


def test_colliding_taps_share_the_change_equally(rng):
    """A 1-D kernel of 7 taps on 3 points: the operator is projected, the change split equally."""
    kernel = rng.normal(size=(2, 2, 7))
    dense = dense_matrix(kernel, 3)
    c = 0.5 * np.linalg.norm(dense, 2)
    result = cs.clip_operator_norm(kernel, 3, c)
    assert np.abs(dense_matrix(result, 3) - clip_dense(dense, c)).max() <= operator_tolerance(dense)
    change = result - kernel
    for offset in range(3):
        same = change[..., offset::3]
        assert np.abs(same - same[..., :1]).max() <= 64 * EPS * np.abs(kernel).max()


# ----------------------------------------------------------------------------- paper baseline


@settings(max_examples=30)
@given(
    n=st.integers(3, 9),
    k=st.integers(1, 3),
    cin=st.integers(1, 5),
    cout=st.integers(1, 5),
    fraction=st.sampled_from([0.1, 0.5, 0.9]),
    seed=st.integers(0, 2**31 - 1),
)
def test_paper_baseline_equals_ours_at_stride_one(n, k, cin, cout, fraction, seed):
    kernel = np.random.default_rng(seed).normal(size=(k, k, cin, cout))
    c = fraction * float(cs.singular_values(kernel, n, layout="HWIO")[0])
    ours = cs.clip_operator_norm(kernel, n, c, layout="HWIO")
    paper = paper_clip_operator_norm(kernel, (n, n), c)
    assert np.abs(ours - paper).max() <= 1e-9 * max(1.0, np.abs(kernel).max())


# ----------------------------------------------------------------------------- kinds, layouts, batches


def test_torch_path_equals_numpy_path(rng):
    kernel = rng.normal(size=(6, 4, 3, 3))
    expected = cs.clip_operator_norm(kernel, 8, 1.0, iterations=3)
    double = cs.clip_operator_norm(torch.from_numpy(kernel), 8, 1.0, iterations=3)
    assert double.dtype == torch.float64 and not double.requires_grad
    assert np.abs(double.numpy() - expected).max() <= 1e-13 * np.abs(kernel).max()
    single = cs.clip_operator_norm(torch.from_numpy(kernel).float().requires_grad_(), 8, 1.0, iterations=3)
    assert single.dtype == torch.float32 and not single.requires_grad
    assert np.abs(single.numpy() - expected).max() <= 4 * np.finfo(np.float32).eps * np.abs(expected).max()


@pytest.mark.parametrize("band", [False, True])
@pytest.mark.parametrize("method", ["alternating", "dykstra"])
def test_torch_backend_equals_numpy_backend(rng, band, method):
    """The code path used for tensors on accelerators (backend="torch"), run on the CPU, agrees with NumPy."""
    kernel = rng.normal(size=(4, 3, 2, 3))
    options = {"stride": (2, 1), "dilation": (1, 2), "groups": 1}
    low = 0.4 if band else None
    result, torch_report = cs.clip_operator_norm_report(
        torch.from_numpy(kernel), 6, 1.0, min_norm=low, iterations=4, method=method, backend="torch", **options
    )
    ours, report = cs.clip_operator_norm_report(kernel, 6, 1.0, min_norm=low, iterations=4, method=method, **options)
    assert isinstance(result, torch.Tensor)
    assert np.abs(result.numpy() - ours).max() <= 1e-12 * np.abs(kernel).max()
    assert torch_report.sigma_max_after == pytest.approx(report.sigma_max_after, rel=1e-12)


def test_torch_backend_with_colliding_taps_and_complex_kernel(rng):
    kernel = rng.normal(size=(2, 2, 5)) + 1j * rng.normal(size=(2, 2, 5))
    result = cs.clip_operator_norm(torch.from_numpy(kernel), 3, 1.0, iterations=2, backend="torch")
    ours = cs.clip_operator_norm(kernel, 3, 1.0, iterations=2)
    assert result.dtype == torch.complex128
    assert np.abs(result.numpy() - ours).max() <= 1e-12 * np.abs(kernel).max()


@pytest.mark.parametrize("band", [False, True])
def test_backend_chooses_the_code_path(rng, monkeypatch, band):
    """ "auto" and "numpy" decompose CPU tensors with LAPACK, "torch" with torch.linalg (also for NumPy input)."""
    calls = []
    for name in ("eigh", "svd"):
        original = getattr(torch.linalg, name)
        monkeypatch.setattr(torch.linalg, name, lambda *a, _f=original, **kw: calls.append(1) or _f(*a, **kw))
    kernel = rng.normal(size=(4, 3, 3, 3))
    low = 0.3 if band else None
    tensor = torch.from_numpy(kernel)
    auto = cs.clip_operator_norm(tensor, 6, 1.0, min_norm=low, iterations=2)
    numpy = cs.clip_operator_norm(tensor, 6, 1.0, min_norm=low, iterations=2, backend="numpy")
    assert not calls and torch.equal(auto, numpy) and numpy.dtype == torch.float64
    on_torch = cs.clip_operator_norm(tensor, 6, 1.0, min_norm=low, iterations=2, backend="torch")
    assert calls and isinstance(on_torch, torch.Tensor)
    calls.clear()
    from_numpy = cs.clip_operator_norm(kernel, 6, 1.0, min_norm=low, iterations=2, backend="torch")
    assert calls and isinstance(from_numpy, np.ndarray) and from_numpy.dtype == kernel.dtype
    assert torch.equal(torch.from_numpy(from_numpy), on_torch)
    assert np.abs(from_numpy - auto.numpy()).max() <= 1e-12 * np.abs(kernel).max()


def test_module_gives_a_new_weight_and_is_untouched():
    torch.manual_seed(0)
    module = torch.nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False)
    before = module.weight.detach().clone()
    result = cs.clip_operator_norm(module, 8, 0.5, iterations=50)
    assert torch.equal(module.weight.detach(), before)
    assert result.shape == before.shape and result.dtype == before.dtype and not result.requires_grad
    expected = cs.clip_operator_norm(before.double().numpy(), 8, 0.5, iterations=50, stride=2)
    assert np.abs(result.numpy() - expected).max() <= 4 * np.finfo(np.float32).eps
    assert np.linalg.norm(dense_matrix(result.double().numpy(), 8, stride=2), 2) <= 0.5 * (1 + 1e-3)
    transposed = torch.nn.ConvTranspose2d(6, 4, 3, stride=2, bias=False)
    out = cs.clip_operator_norm(transposed, 4, 0.5, iterations=5)
    expected = cs.clip_operator_norm(
        transposed.weight.detach().double().numpy(), 4, 0.5, iterations=5, stride=2, transposed=True
    )
    assert np.abs(out.numpy() - expected).max() <= 4 * np.finfo(np.float32).eps


def test_channels_last_layout_and_dtypes(rng):
    kernel = rng.normal(size=(5, 3, 3, 3))  # OIHW
    expected = cs.clip_operator_norm(kernel, 6, 1.0, iterations=2)
    hwio = cs.clip_operator_norm(kernel.transpose(2, 3, 1, 0), 6, 1.0, iterations=2, layout="HWIO")
    assert np.abs(hwio.transpose(3, 2, 0, 1) - expected).max() <= 1e-13
    half = cs.clip_operator_norm(kernel.astype(np.float16), 6, 1.0)
    assert half.dtype == np.float16
    integer = cs.clip_operator_norm(np.arange(8).reshape(2, 1, 2, 2), 4, 1.0)
    assert integer.dtype == np.float64


def test_many_equals_one_by_one(rng):
    kernels = [rng.normal(size=(4, 4, 3, 3)) for _ in range(3)] + [rng.normal(size=(8, 4, 3, 3))]
    shapes = [8, 8, 8, 8]
    norms = [0.5, 1.0, 2.0, 1.0]
    strides = [1, 1, 1, 2]
    many = cs.clip_operator_norm_many(kernels, shapes, norms, stride=strides, iterations=2)
    for kernel, n, c, s, result in zip(kernels, shapes, norms, strides, many, strict=True):
        one = cs.clip_operator_norm(kernel, n, c, stride=s, iterations=2)
        assert np.abs(result - one).max() <= 1e-13 * np.abs(kernel).max()
    inside = cs.clip_operator_norm_many([kernels[0] * 1e-3, kernels[1]], 8, 1.0)
    assert np.array_equal(inside[0], kernels[0] * 1e-3)


def test_many_a_list_is_per_kernel_anything_else_is_for_all(rng):
    """One rule for every per-kernel argument: a list gives one value per kernel, a tuple is one value for all."""
    kernels = [rng.normal(size=(3, 2, 3, 3)) for _ in range(3)]
    for_all = cs.clip_operator_norm_many(kernels, (8, 6), 1.0, stride=(2, 1), iterations=2)
    for kernel, result in zip(kernels, for_all, strict=True):
        one = cs.clip_operator_norm(kernel, (8, 6), 1.0, stride=(2, 1), iterations=2)
        assert np.abs(result - one).max() <= 1e-13 * np.abs(kernel).max()
    shapes, strides, highs, lows = [8, 6, (8, 6)], [2, 1, (2, 1)], [1.0, 0.5, 2.0], [None, 0.2, 0.5]
    per_kernel = cs.clip_operator_norm_many(
        kernels, shapes, highs, min_norm=lows, stride=strides, dilation=[1, 2, 1], iterations=2
    )
    for index, (kernel, result) in enumerate(zip(kernels, per_kernel, strict=True)):
        one = cs.clip_operator_norm(
            kernel,
            shapes[index],
            highs[index],
            min_norm=lows[index],
            stride=strides[index],
            dilation=[1, 2, 1][index],
            iterations=2,
        )
        assert np.abs(result - one).max() <= 1e-13 * np.abs(kernel).max()
    assert not np.allclose(for_all[0], per_kernel[0])  # the two readings do differ


@pytest.mark.parametrize(("stride", "groups"), [(1, 1), (2, 1), (1, 2)])
def test_report_support_residual_is_what_the_restriction_removed(rng, stride, groups):
    """One round: the clipped operator minus the result's operator, in kernel units."""
    kernel = rng.normal(size=(4, 4 // groups, 3, 3))
    options = {"stride": stride, "groups": groups}
    dense = dense_matrix(kernel, 6, **options)
    clipped = clip_dense(dense, 0.5 * np.linalg.norm(dense, 2))
    result, report = cs.clip_operator_norm_report(kernel, 6, 0.5 * np.linalg.norm(dense, 2), **options)
    outputs = (6 // stride) ** 2  # ||A(K)||_F^2 = (output pixels) * ||K||_F^2
    removed = np.linalg.norm(clipped - dense_matrix(result, 6, **options)) / math.sqrt(outputs)
    assert report.support_residual == pytest.approx(removed, rel=1e-9)
    assert report.support_changed


def test_report_matches_independent_measurements(rng):
    kernel = rng.normal(size=(4, 3, 3, 3))
    result, report = cs.clip_operator_norm_report(kernel, 6, 1.0, min_norm=0.2, iterations=3)
    sigma_before = cs.singular_values(kernel, 6)
    sigma_after = cs.singular_values(result, 6)
    assert report.sigma_max_before == pytest.approx(float(sigma_before[0]), rel=1e-12)
    assert report.sigma_min_before == pytest.approx(float(sigma_before[-1]), rel=1e-9, abs=1e-12)
    assert report.sigma_max_after == pytest.approx(float(sigma_after[0]), rel=1e-12)
    assert report.sigma_min_after == pytest.approx(float(sigma_after[-1]), rel=1e-9, abs=1e-12)
    assert report.distance == pytest.approx(float(np.linalg.norm(result - kernel)), rel=1e-12)
    assert report.iterations == 3 and report.method == "alternating"
    assert report.max_norm == 1.0 and report.min_norm == 0.2
    # the residual of the last restriction: what the last clip put outside the 3x3 support
    assert report.support_changed and report.support_residual > 0


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "exception", "words"),
    [
        ({"max_norm": 0.0}, cs.ParameterError, ["max_norm", "positive", "0.0"]),
        ({"max_norm": -1}, cs.ParameterError, ["max_norm", "-1"]),
        ({"max_norm": float("nan")}, cs.ParameterError, ["max_norm", "nan"]),
        ({"max_norm": "1"}, cs.ParameterTypeError, ["max_norm", "'1'"]),
        ({"max_norm": True}, cs.ParameterTypeError, ["max_norm", "True"]),
        ({"min_norm": 2.0}, cs.ParameterError, ["min_norm", "max_norm", "2.0"]),
        ({"min_norm": -0.5}, cs.ParameterError, ["min_norm", "-0.5"]),
        ({"iterations": 0}, cs.ParameterError, ["iterations", "positive", "0"]),
        ({"iterations": 1.5}, cs.ParameterTypeError, ["iterations", "1.5"]),
        ({"method": "newton"}, cs.ParameterError, ["method", "alternating", "dykstra", "newton"]),
        ({"workers": 0}, cs.ParameterError, ["workers", "0"]),
        ({"backend": "cuda"}, cs.ParameterError, ["backend", "'auto'", "'torch'", "'numpy'", "'cuda'"]),
    ],
)
def test_bad_arguments_name_the_parameter(kwargs, exception, words):
    arguments = {"max_norm": 1.0, **kwargs}
    max_norm = arguments.pop("max_norm")
    with pytest.raises(exception) as info:
        cs.clip_operator_norm(np.ones((2, 2, 3, 3)), 8, max_norm, **arguments)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize(
    ("arguments", "exception", "words"),
    [
        ({"input_shapes": [8]}, cs.ParameterError, ["input_shapes", "one value per kernel", "2 kernels", "length 1"]),
        ({"max_norm": [1.0, 2.0, 3.0]}, cs.ParameterError, ["max_norm", "2 kernels", "length 3"]),
        ({"min_norm": [0.1]}, cs.ParameterError, ["min_norm", "2 kernels", "length 1"]),
        ({"stride": [1, 2, 1]}, cs.ParameterError, ["stride", "2 kernels", "length 3"]),
        ({"layout": ["OIHW"]}, cs.ParameterError, ["layout", "2 kernels", "length 1"]),
        ({"groups": [1, 1, 1]}, cs.ParameterError, ["groups", "2 kernels", "length 3"]),
        (
            {"max_norm": (1.0, 2.0)},
            cs.ParameterTypeError,
            ["max_norm", "(1.0, 2.0)", "a list gives one bound per kernel"],
        ),
        ({"min_norm": (0.1, 0.2)}, cs.ParameterTypeError, ["min_norm", "a list gives one bound per kernel"]),
        ({"input_shapes": 9, "stride": [1, 2]}, cs.ParameterError, ["stride: expected a stride that divides"]),
        ({"kernels": np.ones((2, 2, 3, 3))}, cs.ParameterTypeError, ["kernels", "list of kernels", "numpy.ndarray"]),
    ],
)
def test_many_rejects_mismatched_arguments(arguments, exception, words):
    call = {"kernels": [np.ones((2, 2, 3, 3))] * 2, "input_shapes": 8, "max_norm": 1.0, **arguments}
    with pytest.raises(exception) as info:
        cs.clip_operator_norm_many(call.pop("kernels"), call.pop("input_shapes"), call.pop("max_norm"), **call)
    for word in words:
        assert word in str(info.value)
