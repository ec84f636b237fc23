"""Issue 11, the values' part: extreme scales, the single-tap strided lower bound, the memory guard
of the operator-norm and projection entry points, and the operator norm's choice of method.

* sigma(alpha K) = |alpha| sigma(K) for alpha over 1e-300 ... 1e300: operator_norm (circular and
  padded), its certified bracket (which must contain the truth), the kernel-only bounds, and the
  projection, clip(alpha K, alpha c) = alpha clip(K, c); bit-identical for powers of two.
* Non-finite kernels: one ParameterError naming ``kernel``, from every entry point.
* The lower end of the bracket of a strided layer with a single tap along an axis is the value.
* A request of any size over the budget is refused in < 0.1 s and < 50 MB, by every entry point.
* The operator norm never decomposes more than the full spectrum would: the per-frequency top
  value comes from the Gram matrix's top eigenvalue, and a flat spectrum is detected before the
  branch and bound spends anything on second-order data.
"""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest

import convspectra as cs
from convspectra.bounds import channel_l1_bound, l1_bound, nonnegative_norm, reshaped_norm

SCALES = [1e-300, 1e-250, 1e-200, 1e-160, 1e-100, 1e-20, 1e20, 1e100, 1e160, 1e200, 1e250, 1e300]


@pytest.fixture(scope="module")
def kernel() -> np.ndarray:
    return np.random.default_rng(11).normal(size=(4, 3, 3, 3))


# --- extreme scales ------------------------------------------------------------------------------


@pytest.mark.parametrize("padding", ["circular", 1])
def test_the_operator_norm_is_homogeneous_from_1e_300_to_1e300(kernel, padding):
    reference = cs.operator_norm_bounds(kernel, 6, padding=padding)
    for alpha in SCALES + [-1e-300, -1e300]:
        value = cs.operator_norm(kernel * alpha, 6, padding=padding)
        assert abs(value / (abs(alpha) * reference.value) - 1) < 1e-12, (alpha, value)
        bounds = cs.operator_norm_bounds(kernel * alpha, 6, padding=padding)
        truth = abs(alpha) * reference.value  # the exact norm, to rounding
        assert bounds.lower <= truth * (1 + 1e-12) and bounds.upper >= truth * (1 - 1e-12), (alpha, bounds)
        assert bounds.lower <= bounds.value <= bounds.upper
        assert bounds.lower >= 0.999 * truth, (alpha, bounds)  # not the bracket [0, 0] of the issue


def test_the_issue_cases_at_1e_300_and_1e160(kernel):
    assert cs.operator_norm(kernel * 1e-300, 6, padding=1) > 0
    bounds = cs.operator_norm_bounds(kernel * 1e-300, 6, padding=1)
    assert bounds.upper > 0 and bounds.lower > 0
    value = cs.operator_norm(kernel * 1e160, 6, padding=1)  # was a raw LinAlgError
    assert abs(value / (1e160 * cs.operator_norm(kernel, 6, padding=1)) - 1) < 1e-12


def test_powers_of_two_give_bit_identical_norms(kernel):
    for padding in ("circular", 1):
        base = cs.operator_norm_bounds(kernel, 6, padding=padding)
        for k in (-1000, -600, -7, 9, 600, 1000):
            scaled = cs.operator_norm_bounds(np.ldexp(kernel, k), 6, padding=padding)
            assert scaled.value == np.ldexp(base.value, k), (padding, k)
            assert scaled.lower == np.ldexp(base.lower, k) and scaled.upper == np.ldexp(base.upper, k)


def test_a_torch_kernel_at_1e_300_keeps_its_gradient(kernel):
    torch = pytest.importorskip("torch")
    weight = torch.tensor(kernel * 1e-300, requires_grad=True)
    value = cs.operator_norm(weight, 6)
    value.backward()
    reference = torch.tensor(kernel, requires_grad=True)
    cs.operator_norm(reference, 6).backward()
    assert abs(float(value.detach()) / (1e-300 * float(cs.operator_norm(kernel, 6))) - 1) < 1e-12
    assert torch.allclose(weight.grad, reference.grad, rtol=1e-10, atol=0)  # the gradient is scale-free


def test_the_kernel_bounds_are_homogeneous(kernel):
    positive = np.abs(kernel)
    functions = [
        (l1_bound, kernel),
        (channel_l1_bound, kernel),
        (reshaped_norm, kernel),
        (nonnegative_norm, positive),
    ]
    for function, base in functions:
        reference = float(function(base))
        for alpha in SCALES:
            value = float(function(base * alpha))
            assert abs(value / (alpha * reference) - 1) < 1e-12, (function.__name__, alpha, value)


def test_clipping_commutes_with_scale(kernel):
    reference, report = cs.clip_operator_norm_report(kernel, 6, 1.0, iterations=3)
    for alpha in SCALES:
        clipped, scaled = cs.clip_operator_norm_report(kernel * alpha, 6, alpha, iterations=3)
        assert np.abs(clipped / alpha - reference).max() <= 1e-12 * np.abs(reference).max(), alpha
        for name in ("sigma_max_before", "sigma_max_after", "distance", "support_residual"):
            mine, theirs = getattr(scaled, name), alpha * getattr(report, name)
            assert abs(mine - theirs) <= 1e-12 * abs(theirs), (alpha, name, mine, theirs)
    exact = cs.clip_operator_norm(np.ldexp(kernel, -900), 6, np.ldexp(1.0, -900), iterations=3)
    assert np.array_equal(exact, np.ldexp(reference, -900))


def test_the_issue_clip_at_1e_300(kernel):
    clipped, report = cs.clip_operator_norm_report(kernel * 1e-300, 6, 1e-300)
    assert report.sigma_max_before > 1e-300  # was 0
    one_round = float(cs.operator_norm(cs.clip_operator_norm(kernel, 6, 1.0), 6))  # the support keeps it above 1
    assert one_round < 0.5 * float(cs.operator_norm(kernel, 6))
    after = cs.operator_norm(clipped * 1e300, 6)
    assert abs(after - one_round) <= 1e-12 * one_round  # was unchanged: 7.8 x max_norm
    assert abs(report.sigma_max_after * 1e300 - one_round) <= 1e-12 * one_round
    many = cs.clip_operator_norm_many([kernel * 1e-300, kernel * 1e300], 6, [1e-300, 1e300], iterations=200)
    assert cs.operator_norm(many[0] * 1e300, 6) <= 1 + 1e-3
    assert cs.operator_norm(many[1] * 1e-300, 6) <= 1 + 1e-3


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_kernel_is_refused_by_every_entry_point(kernel, bad):
    broken = kernel.copy()
    broken[0, 0, 1, 1] = bad
    calls = [
        lambda: cs.operator_norm(broken, 6),
        lambda: cs.operator_norm(broken, 6, padding=1),
        lambda: cs.operator_norm_bounds(broken, 6),
        lambda: cs.operator_norm_bounds(broken, 6, padding="same"),
        lambda: cs.clip_operator_norm(broken, 6, 1.0),
        lambda: cs.clip_operator_norm_report(broken, 6, 1.0),
        lambda: cs.clip_operator_norm_many([kernel, broken], 6, 1.0),
        lambda: l1_bound(broken),
        lambda: channel_l1_bound(broken),
        lambda: reshaped_norm(broken),
    ]
    for call in calls:
        with pytest.raises(cs.ParameterError, match=r"^kernel: expected finite values"):
            call()


# --- the single-tap strided lower bound ----------------------------------------------------------

SINGLE_TAP = [
    ((4, 2, 1, 1), 4, {"stride": 2}),  # the issue's example (was 0.5000)
    ((256, 128, 1, 1), 28, {"stride": 2}),  # a ResNeXt/RegNet 1x1 stride-2 shortcut
    ((8, 4, 1, 3), 8, {"stride": 2}),  # single tap along one axis only
    ((8, 4, 2, 2), 2, {"stride": 2}),  # 2x2 stride 2 (ConvNeXt downsampling) on its last grid
    ((8, 4, 2, 2), (2, 4), {"stride": 2}),
    ((4, 8, 2, 2), 1, {"stride": 2, "transposed": True}),  # a stride-2 transposed head
    ((4, 8, 1, 1), 4, {"stride": 2, "transposed": True}),
    ((8, 4, 3, 3), 3, {"stride": 3}),
    ((4, 2, 1, 1, 1), 4, {"stride": (2, 1, 2)}),
]


@pytest.mark.parametrize(("shape", "size", "geometry"), SINGLE_TAP)
def test_the_lower_end_is_the_value_on_single_tap_strided_layers(shape, size, geometry):
    weight = np.random.default_rng(0).normal(size=shape)
    bounds = cs.operator_norm_bounds(weight, size, **geometry)
    truth = float(cs.singular_values(weight, size, **geometry)[0])
    assert bounds.converged
    assert bounds.lower >= bounds.value * (1 - 1e-9), (bounds.lower / bounds.value, bounds)
    assert bounds.lower <= truth <= bounds.upper


# --- the memory guard ----------------------------------------------------------------------------

HUGE = [
    (np.ones((1, 1, 3, 3)), 2**20, {}),  # 2**40 frequencies
    (np.ones((1, 1, 3)), 2**40, {}),
    (np.ones((4096, 1, 3, 3)), 2**14, {"groups": 4096}),  # 4096 channels, depthwise
    (np.ones((64, 4096, 3, 3), dtype=np.float32), 2**13, {}),  # 4096 input channels
]


def _refusal(call) -> tuple[float, int, str]:
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(cs.MemoryBudgetError) as error:
            call()
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return seconds, peak, str(error.value)


@pytest.mark.parametrize(
    ("weight", "size", "geometry"), HUGE, ids=["2d-2**40", "1d-2**40", "depthwise-4096", "4096-in"]
)
def test_an_over_budget_request_is_refused_at_once_by_every_entry_point(weight, size, geometry):
    calls = {
        "operator_norm circular": lambda: cs.operator_norm(weight, size, **geometry),
        "operator_norm padded": lambda: cs.operator_norm(weight, size, padding=1, **geometry),
        "operator_norm valid": lambda: cs.operator_norm(weight, size, padding="valid", **geometry),
        "bounds circular": lambda: cs.operator_norm_bounds(weight, size, **geometry),
        "bounds padded": lambda: cs.operator_norm_bounds(weight, size, padding=1, **geometry),
        "clip": lambda: cs.clip_operator_norm(weight, size, 1.0, **geometry),
        "clip report": lambda: cs.clip_operator_norm_report(weight, size, 1.0, **geometry),
        "clip band": lambda: cs.clip_operator_norm(weight, size, 1.0, min_norm=0.5, **geometry),
        "clip many": lambda: cs.clip_operator_norm_many([weight, weight], size, 1.0, **geometry),
    }
    _refusal(calls["operator_norm circular"])  # warm up (first-call imports are not the guard's)
    for name, call in calls.items():
        seconds, peak, message = _refusal(call)
        assert seconds < 0.1, (name, seconds)
        assert peak < 50 * 2**20, (name, peak)
        assert message.startswith("max_memory: ") and "over the budget of 4.0 GiB" in message, (name, message)


def test_max_memory_is_honoured_both_ways(kernel):
    for call in (
        lambda budget: cs.operator_norm(kernel, 64, max_memory=budget),
        lambda budget: cs.operator_norm(kernel, 64, padding=1, max_memory=budget),
        lambda budget: cs.operator_norm_bounds(kernel, 64, max_memory=budget),
        lambda budget: cs.clip_operator_norm(kernel, 64, 1.0, max_memory=budget),
        lambda budget: cs.clip_operator_norm_many([kernel], 64, 1.0, max_memory=budget),
    ):
        with pytest.raises(cs.MemoryBudgetError, match="over the budget of 64.0 KiB"):
            call(2**16)
        call(2**30)  # runs


# --- the operator norm's method ------------------------------------------------------------------


def test_the_direct_path_takes_the_top_value_without_the_svd(monkeypatch):
    weight = np.random.default_rng(1).normal(size=(32, 32, 3, 3))
    expected = float(cs.singular_values(weight, 7)[0])

    def refuse(*args, **kwargs):
        raise AssertionError("the full SVD was called for the top singular value")

    monkeypatch.setattr(np.linalg, "svd", refuse)
    value = cs.operator_norm(weight, 7)
    assert abs(value - expected) <= 1e-13 * expected


def test_a_flat_spectrum_skips_the_second_order_data(monkeypatch):
    from convspectra.norm import _circular

    def refuse(*args, **kwargs):
        raise AssertionError("second-order box data computed for a flat spectrum")

    weight = np.random.default_rng(2).normal(size=(16, 3, 7, 7))  # a random stem: flat spectrum
    expected = float(cs.singular_values(weight, 192, stride=2)[0])
    monkeypatch.setattr(_circular, "centre_values", refuse)
    plan, flat = _circular.circular_plan(weight, (192, 192), stride=(2, 2), dilation=(1, 1), groups=1)
    found = _circular.circular_maximum(plan, flat)
    assert found.evaluated <= 1.05 * found.total  # the first round's probes, then every frequency once
    assert abs(found.value - expected) <= 1e-13 * expected
