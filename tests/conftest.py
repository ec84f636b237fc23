"""Shared test helpers: the dense oracle (PyTorch's own convolution) and tolerances."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from convspectra.operator import dense_matrix
from convspectra.spec import parse_layer

settings.register_profile(
    "default", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.register_profile("thorough", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# The data folder (pretrained CIFAR ResNets): $CONVSPECTRA_DATA, which the library, the CLI and the
# benchmarks honour; by default the shared data beside this repository. Subprocesses inherit it.
os.environ.setdefault("CONVSPECTRA_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))


def pretrained_checkpoint(depth: int) -> Path:
    """The pretrained CIFAR ResNet-``depth`` checkpoint under ``$CONVSPECTRA_DATA``, or a skip saying it is absent."""
    from convspectra.models import find_pretrained

    found = find_pretrained(f"resnet{depth}")
    if found is None:
        pytest.skip(
            f"pretrained CIFAR ResNet-{depth} checkpoint not found under $CONVSPECTRA_DATA="
            f"{os.environ.get('CONVSPECTRA_DATA')!r} (shared data absent; see the docs on pretrained weights)"
        )
    return found


EPS = {np.dtype(np.float32): np.finfo(np.float32).eps, np.dtype(np.float64): np.finfo(np.float64).eps}


def oracle_singular_values(kernel, input_shape, **kwargs) -> np.ndarray:
    """svdvals of the dense operator built by PyTorch's convolution (float64), descending."""
    if hasattr(kernel, "detach"):
        kernel = kernel.detach().cpu()
        kernel = kernel.to(torch.complex128 if kernel.is_complex() else torch.float64).numpy()
    matrix = dense_matrix(np.asarray(kernel), input_shape, **kwargs)
    return np.linalg.svd(matrix, compute_uv=False)


def spectrum_tolerance(kernel, input_shape, result_dtype, sigma_max: float, **kwargs) -> float:
    """Absolute tolerance: our error c*(p + q + taps)*eps(dtype) plus the dense SVD's c*N*eps64."""
    spec, _ = parse_layer(np.asarray(kernel) if not hasattr(kernel, "detach") else kernel, input_shape, **kwargs)
    p, q = spec.block_shape
    taps = math.prod(spec.kernel_size)
    ours = 16 * (p + q + taps) * EPS[np.dtype(result_dtype)]
    dense = 16 * max(spec.matrix_shape) * EPS[np.dtype(np.float64)]
    return (ours + dense) * max(sigma_max, np.finfo(np.float64).tiny)


def assert_spectrum_matches(ours, kernel, input_shape, **kwargs) -> None:
    """Whole sorted spectra equal: same length, every value within the dtype-aware tolerance."""
    if hasattr(ours, "detach"):
        dtype = str(ours.dtype).replace("torch.", "")
        ours = ours.detach().cpu().numpy()
    else:
        dtype = ours.dtype
    expected = oracle_singular_values(kernel, input_shape, **kwargs)
    assert ours.ndim == 1
    assert ours.shape == expected.shape, (ours.shape, expected.shape)
    assert np.all(np.diff(ours) <= 0), "not sorted descending"
    tol = spectrum_tolerance(kernel, input_shape, dtype, float(expected[0]) if expected.size else 0.0, **kwargs)
    err = np.abs(ours.astype(np.float64) - expected).max()
    assert err <= tol, f"max error {err:.3e} > tolerance {tol:.3e} (sigma_max {expected[0]:.3e})"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20190101)


def _kernel(rng, shape, kind):
    if kind == "normal":
        return rng.normal(size=shape)
    if kind == "ones":  # non-negative: repeated and zero singular values
        return np.ones(shape)
    if kind == "sparse":  # mostly zero: rank-deficient transfer matrices
        return rng.normal(size=shape) * (rng.random(shape) < 0.2)
    if kind == "integer":
        return rng.integers(-3, 4, size=shape)
    raise AssertionError(kind)


@st.composite
def layers(draw, max_dense: int = 600):
    """A random conv layer: dimension, channels, groups, kernel (possibly > input), stride,
    dilation, layout, transposition, dtype and kernel kind, with a dense matrix <= max_dense."""
    d = draw(st.integers(1, 3))
    groups = draw(st.integers(1, 3))
    c_out = groups * draw(st.integers(1, 3))
    c_in = groups * draw(st.integers(1, 3))
    kmax, mmax = {1: (7, 7), 2: (5, 5), 3: (3, 3)}[d]
    k = tuple(draw(st.integers(1, kmax)) for _ in range(d))
    s = tuple(draw(st.integers(1, 3)) for _ in range(d))
    dil = tuple(draw(st.integers(1, 3)) for _ in range(d))
    m = [draw(st.integers(1, mmax)) for _ in range(d)]
    while max(c_out * math.prod(m), c_in * math.prod(m) * math.prod(s)) > max_dense and max(m) > 1:
        m[m.index(max(m))] -= 1  # shrink the longest axis until the dense matrix is small
    m = tuple(m)
    n = tuple(mi * si for mi, si in zip(m, s, strict=True))
    transposed = draw(st.booleans())
    layout = draw(st.sampled_from(["OIHW", "HWIO"]))
    dtype = draw(st.sampled_from([np.float64, np.float32]))
    kind = draw(st.sampled_from(["normal", "normal", "ones", "sparse", "integer"]))
    seed = draw(st.integers(0, 2**32 - 1))
    weight = _kernel(np.random.default_rng(seed), (c_out, c_in // groups, *k), kind)
    if kind != "integer":
        weight = weight.astype(dtype)
    if layout == "HWIO":
        weight = np.transpose(weight, (*range(2, 2 + d), 1, 0))
    kwargs = dict(layout=layout, stride=s, dilation=dil, groups=groups, transposed=transposed)
    return weight, (m if transposed else n), kwargs
