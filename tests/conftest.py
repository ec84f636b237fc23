"""Shared test helpers: the dense oracle (PyTorch's own convolution) and tolerances."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

from convspectra.operator import dense_matrix
from convspectra.spec import parse_layer

settings.register_profile(
    "default", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.register_profile("thorough", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

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
