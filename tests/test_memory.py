"""The memory guard refuses an over-budget request before any large allocation (issue 11).

For every entry point of the spectrum engine (``singular_values`` on the NumPy and the torch
path, ``frequency_spectrum``, ``FrequencySpectrum.sorted`` / ``.to_grid`` and the dense oracle
``operator.dense_matrix``), a request over ``max_memory`` must raise ``MemoryBudgetError`` in
under 0.1 s with under 50 MB allocated, for grids up to ``2**40`` per side and up to 4096
channels. NumPy allocations are measured with ``tracemalloc``; the torch path, whose allocator
tracemalloc does not see, in a subprocess by its peak resident memory (with an address-space
limit as a safety net, so a regression fails instead of exhausting the machine).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import convspectra as cs
from convspectra._memory import frequency_count, frequency_grid_bytes, nbytes, resolve_budget
from convspectra.operator import dense_matrix
from convspectra.spec import MAX_DILATION

SECONDS = 0.1
PEAK_BYTES = 50 * 2**20
BUDGET = 2**20  # 1 MiB: every request below needs far more


def _refusal(call) -> tuple[float, int, str]:
    """(seconds, tracemalloc peak bytes, message) of a call that must raise MemoryBudgetError."""
    seconds = float("inf")
    for _ in range(3):  # best of three: the refusal's own cost, not the machine's load
        start = time.perf_counter()
        with pytest.raises(cs.MemoryBudgetError) as info:
            call()
        seconds = min(seconds, time.perf_counter() - start)
    tracemalloc.start()
    try:
        with pytest.raises(cs.MemoryBudgetError):
            call()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return seconds, peak, str(info.value)


def _assert_refused_cheaply(call) -> str:
    call_ok = False
    try:  # warm-up: first-call imports (threadpoolctl, torch) are not the refusal's cost
        call()
        call_ok = True
    except cs.MemoryBudgetError:
        pass
    assert not call_ok, "the request was not refused"
    seconds, peak, message = _refusal(call)
    assert seconds < SECONDS, f"refusal took {seconds:.3f} s"
    assert peak < PEAK_BYTES, f"refusal allocated {peak / 2**20:.1f} MiB"
    assert message.startswith("max_memory: ") and "over the budget of" in message, message
    return message


@st.composite
def huge_requests(draw):
    """A layer on a grid of 2**20 .. 2**40 per side, up to 4096 channels, kernel of at most 2**18 entries."""
    d = draw(st.integers(1, 3))
    out = draw(st.sampled_from([1, 3, 16, 96, 512, 1152, 4096]))
    groups = draw(st.sampled_from([g for g in (1, 2, 32, out) if out % g == 0]))
    in_per_group = draw(st.sampled_from([1, 2, 8, 64]))
    k = tuple(draw(st.integers(1, 7)) for _ in range(d))
    while out * in_per_group * math.prod(k) > 2**18 and in_per_group > 1:
        in_per_group //= 2
    while out * in_per_group * math.prod(k) > 2**18:
        k = tuple(max(1, ki // 2) for ki in k)
    stride = tuple(draw(st.sampled_from([1, 2, 4])) for _ in range(d))
    n = tuple(draw(st.sampled_from([2**20, 3 * 2**20, 2**30, 2**40])) for _ in range(d))
    dilation = tuple(draw(st.sampled_from([1, 2, 24, MAX_DILATION])) for _ in range(d))
    transposed = draw(st.booleans())
    kernel = np.random.default_rng(0).normal(size=(out, in_per_group, *k))
    kwargs = dict(stride=stride, dilation=dilation, groups=groups, transposed=transposed, max_memory=BUDGET)
    return kernel, n, kwargs


@given(huge_requests())
def test_singular_values_refuses_any_size_at_once(request_):
    kernel, n, kwargs = request_
    _assert_refused_cheaply(lambda: cs.singular_values(kernel, n, **kwargs))


@given(huge_requests())
def test_frequency_spectrum_refuses_any_size_at_once(request_):
    kernel, n, kwargs = request_
    if max(kernel.shape[2:]) == 1:  # a 1x1 layer is one frequency: not over budget, and not the point here
        kernel = np.repeat(kernel, 2, axis=-1)
    _assert_refused_cheaply(lambda: cs.frequency_spectrum(kernel, n, **kwargs))


@given(huge_requests())
def test_dense_matrix_refuses_any_size_at_once(request_):
    kernel, n, kwargs = request_
    _assert_refused_cheaply(lambda: dense_matrix(kernel, n, **kwargs))


@pytest.mark.parametrize("n", [2**30, 2**40])
def test_default_budget_refuses_a_tiny_kernel_on_a_huge_grid(n):
    """The issue's cases: 2**30 raised MemoryError, 2**40 was killed by the OS."""
    message = _assert_refused_cheaply(lambda: cs.singular_values(np.ones((1, 1, 3, 3)), n))
    assert "over the budget of 4.0 GiB" in message and f"{n * n:,} singular values" in message


def test_512_channels_at_8192_squared_is_refused_at_once():
    """The issue's case: refused only after 7.8 s and 2.3 GB."""
    kernel = np.zeros((512, 512, 3, 3))
    _assert_refused_cheaply(lambda: cs.singular_values(kernel, 8192))
    _assert_refused_cheaply(lambda: cs.frequency_spectrum(kernel, 8192))


def test_expanding_a_cheap_spectrum_is_guarded():
    """A 1x1 layer on a huge grid is one frequency (cheap), but its full spectrum or grid is not."""
    fs = cs.frequency_spectrum(np.ones((4, 4, 1, 1)), 2**30)
    assert fs.singular_values.shape == (1, 4) and int(fs.multiplicity.sum()) == 2**60
    assert "full spectrum" in _assert_refused_cheaply(lambda: fs.sorted())
    assert "frequency grid" in _assert_refused_cheaply(lambda: fs.to_grid())
    small = cs.frequency_spectrum(np.ones((1, 1, 2, 2)), 4)
    np.testing.assert_array_equal(small.sorted(max_memory=2**20), cs.singular_values(np.ones((1, 1, 2, 2)), 4))
    with pytest.raises(cs.MemoryBudgetError):
        small.sorted(max_memory=16)


def test_the_phase_table_is_planned_for_large_kernels():
    """A kernel with many taps: the phase table, not the 1x1 matrices, sizes the chunks (within budget)."""
    kernel = np.random.default_rng(1).normal(size=(1, 1, 24, 24))
    tracemalloc.start()
    try:
        values = cs.singular_values(kernel, 256, workers=1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    reference = np.sort(np.abs(np.fft.fft2(kernel[0, 0], s=(256, 256))).ravel())[::-1]
    np.testing.assert_allclose(values, reference, rtol=0, atol=1e-10 * reference[0])
    assert peak < 64 * 2**20, f"peak {peak / 2**20:.0f} MiB"  # 32k frequencies x 576 taps of phases would be 600 MB


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("x", cs.ParameterTypeError),
        (-1, cs.ParameterError),
        (0, cs.ParameterError),
        (True, cs.ParameterTypeError),
        (float("nan"), cs.ParameterTypeError),
        (float("inf"), cs.ParameterTypeError),
        (1.5, cs.ParameterTypeError),
        (2.0**30, cs.ParameterTypeError),
    ],
)
def test_max_memory_is_validated_by_every_entry_point(value, error):
    kernel = np.ones((2, 2, 3, 3))
    calls = [
        lambda: cs.singular_values(kernel, 8, max_memory=value),
        lambda: cs.frequency_spectrum(kernel, 8, max_memory=value),
        lambda: cs.frequency_spectrum(kernel, 8).sorted(max_memory=value),
        lambda: cs.frequency_spectrum(kernel, 8).to_grid(max_memory=value),
        lambda: dense_matrix(kernel, 4, max_memory=value),
    ]
    for call in calls:
        with pytest.raises(error, match=r"^max_memory: expected a positive int, got "):
            call()


def test_resolve_budget_accepts_integers_of_any_kind():
    assert resolve_budget(None) == cs.DEFAULT_MEMORY_BUDGET
    assert resolve_budget(np.int64(2**33)) == 2**33 and type(resolve_budget(np.int64(5))) is int
    assert resolve_budget(2**100) == 2**100


def test_size_helpers_are_exact_python_integers():
    assert nbytes(16, (2**40, 2**40, 2**40), 4096) == 2**136
    assert frequency_count((2**40, 3), real=True) == (3 * 2**40 + 2) // 2
    assert frequency_count((5, 4, 1), real=True) == 11 and frequency_count((5, 4, 1), real=False) == 20
    brute = {min(((g0, g1), ((-g0) % 6, (-g1) % 5))) for g0 in range(6) for g1 in range(5)}
    assert frequency_count((6, 5), real=True) == len(brute)
    assert frequency_grid_bytes((6, 5), (3, 8), groups=2, itemsize=8, real=True) == len(brute) * 3 * 8 * 2 * 8


_TORCH_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, time
    import numpy as np, torch
    import convspectra as cs

    torch.set_num_threads(1)
    cs.singular_values(torch.ones(2, 2, 3, 3, requires_grad=True), 8)  # warm up every lazy import
    cases = [
        (torch.ones(1, 1, 3, 3, dtype=torch.float64, requires_grad=True), 2**30, {}),
        (torch.ones(1, 1, 3, 3, requires_grad=True), 2**40, {}),
        (torch.randn(96, 1, 3, 3, requires_grad=True), 2**20, {"groups": 96}),
        (torch.randn(512, 512, 3, 3), 8192, {}),  # CPU tensor without grad: the NumPy path
        (torch.randn(4096, 1, 5, 5, dtype=torch.float64, requires_grad=True), (2**40, 2**20), {"groups": 4096, "stride": 2}),
        (torch.randn(64, 4, 2, 2, requires_grad=True), 2**20, {"transposed": True, "stride": 2, "max_memory": 2**20}),
        (torch.randn(16, 16, 3, 3, 3, requires_grad=True), 2**20, {"dilation": 2**31 - 1}),
    ]
    with open("/proc/self/status") as status:
        vm = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    soft = vm + 512 * 2**20 if hard == resource.RLIM_INFINITY else min(hard, vm + 512 * 2**20)
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))  # a safety net only
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    worst = 0.0
    for kernel, n, kwargs in cases:
        for function in (cs.singular_values, cs.frequency_spectrum):
            best = float("inf")
            for _ in range(3):  # best of three: the refusal's own cost, not the machine's load
                start = time.perf_counter()
                try:
                    function(kernel, n, **kwargs)
                except cs.MemoryBudgetError:
                    best = min(best, time.perf_counter() - start)
                else:
                    sys.exit(f"not refused: {function.__name__} {tuple(kernel.shape)} {n} {kwargs}")
            worst = max(worst, best)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": worst, "peak_growth": after - before}))
    """
)


def test_torch_path_refuses_at_once_in_a_subprocess():
    result = subprocess.run([sys.executable, "-c", _TORCH_SCRIPT], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:] + result.stdout[-2000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["seconds"] < SECONDS, figures
    assert figures["peak_growth"] < PEAK_BYTES, figures
