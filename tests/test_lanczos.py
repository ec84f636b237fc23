"""The Lanczos solver of the padded norm, alone: exact and mixed-precision runs against values known by construction."""

from __future__ import annotations

import numpy as np
import pytest

from convspectra.norm._lanczos import largest_singular_value


def clustered(n: int, seed: int) -> tuple[np.ndarray, float]:
    """A random ``n x n`` matrix whose top singular values are clustered (as a padded layer's are), and its norm."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((n, n)))
    v, _ = np.linalg.qr(rng.standard_normal((n, n)))
    s = np.sort(rng.uniform(0.0, 1.0, n))[::-1]
    s[:12] = 3.0 - 3e-4 * np.arange(12) ** 1.5  # a tight cluster at the top
    return (u * s) @ v.T, float(s[0])


def single_gram(a: np.ndarray):
    a32 = a.astype(np.float32)
    return lambda x: (a32.T @ (a32 @ x.astype(np.float32))).astype(np.float64)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mixed_precision_run_meets_the_exact_norm(seed: int) -> None:
    a, norm = clustered(400, seed)
    start = np.random.default_rng(10 + seed).standard_normal(400)
    exact = largest_singular_value(a.__matmul__, a.T.__matmul__, start, rtol=1e-6, max_iter=2000, basis=80)
    mixed = largest_singular_value(
        a.__matmul__, a.T.__matmul__, start, rtol=1e-6, max_iter=2000, basis=80, fast=single_gram(a)
    )
    assert exact.converged and mixed.converged
    assert mixed.fast_iterations > 0
    for result in (exact, mixed):
        assert result.value <= norm * (1 + 1e-14)  # a Rayleigh quotient: never above the norm
        assert result.value >= norm * (1 - 1e-6)
        assert result.residual <= 1e-6  # the residual reported is the exact one
        image = a @ result.vector
        assert result.value == pytest.approx(np.linalg.norm(image), rel=1e-14)


def test_a_misleading_fast_product_is_caught_by_the_exact_check() -> None:
    a, norm = clustered(300, 3)
    wrong = np.diag(np.linspace(5.0, 0.1, 300))  # another operator altogether: its top vector is e_0
    start = np.random.default_rng(0).standard_normal(300)
    result = largest_singular_value(
        a.__matmul__, a.T.__matmul__, start, rtol=1e-8, max_iter=3000, basis=100, fast=lambda x: wrong.T @ (wrong @ x)
    )
    assert result.converged
    assert result.iterations > result.fast_iterations + 1  # the exact run went on after the check failed
    assert norm * (1 - 1e-8) <= result.value <= norm * (1 + 1e-14)


def test_mixed_precision_below_single_precision_accuracy_finishes_in_double() -> None:
    a, norm = clustered(300, 4)
    start = np.random.default_rng(1).standard_normal(300)
    result = largest_singular_value(
        a.__matmul__, a.T.__matmul__, start, rtol=1e-11, max_iter=3000, basis=100, fast=single_gram(a)
    )
    assert result.converged and result.residual <= 1e-11
    assert norm * (1 - 1e-11) <= result.value <= norm * (1 + 1e-14)


def test_max_iter_counts_every_product() -> None:
    a, _ = clustered(200, 5)
    start = np.ones(200)
    result = largest_singular_value(
        a.__matmul__, a.T.__matmul__, start, rtol=1e-12, max_iter=7, basis=50, fast=single_gram(a)
    )
    assert not result.converged and result.iterations <= 7
