"""Thread limits and interrupts: BLAS and torch thread counts survive concurrent calls, the
library's workers run single-threaded, and Ctrl-C stops a long call within a second."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import threadpoolctl
import torch

import convspectra as cs
from convspectra._threads import limit_threads, run_chunks, single_threaded_blas


def blas_threads() -> list[int]:
    return [pool["num_threads"] for pool in threadpoolctl.threadpool_info() if pool["user_api"] == "blas"]


def fresh_thread_torch_threads() -> int:
    seen: list[int] = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    return seen[0]


def wait_for_workers() -> None:
    for thread in threading.enumerate():
        if thread.name.startswith("convspectra"):
            thread.join(timeout=10)


@pytest.fixture
def two_blas_threads():
    """BLAS at two threads for the test (a 1-core runner would otherwise show nothing), restored after.

    threadpoolctl's own ``with`` block would make this thread the only one allowed to change
    OpenBLAS, hiding what other threads do; so the limit is set and the control released.
    """
    release = threadpoolctl.OpenBLASController.clear_controlling_thread
    limiter = threadpoolctl.ThreadpoolController().limit(limits=2, user_api="blas")
    release(force=True)
    yield blas_threads()
    release(force=True)
    limiter.restore_original_limits()
    release(force=True)


def test_overlapping_blas_limits_end_with_the_original_count(two_blas_threads):
    # A enters, B enters, A leaves, B leaves: the order that left OpenBLAS at one thread for good
    entered, a_left = threading.Barrier(2), threading.Event()
    inside_b_after_a: list[list[int]] = []

    def a() -> None:
        with single_threaded_blas():
            entered.wait()
        a_left.set()

    def b() -> None:
        with single_threaded_blas():
            entered.wait()
            a_left.wait()
            inside_b_after_a.append(blas_threads())

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert inside_b_after_a == [[1] * len(two_blas_threads)]  # B's block still single-threaded
    assert blas_threads() == two_blas_threads


@pytest.mark.parametrize("workers", [None, 1, 2])
def test_concurrent_singular_values_calls_restore_blas_and_torch_threads(two_blas_threads, workers):
    torch_before, fresh_before = torch.get_num_threads(), fresh_thread_torch_threads()
    rng = np.random.default_rng(0)
    small, large = rng.normal(size=(8, 8, 3, 3)), rng.normal(size=(32, 32, 3, 3))
    expected = [cs.singular_values(small, 8), cs.singular_values(large, 48)]
    errors: list[BaseException] = []

    def calls() -> None:
        try:
            for _ in range(15):
                np.testing.assert_array_equal(cs.singular_values(small, 8, workers=workers), expected[0])
            np.testing.assert_array_equal(cs.singular_values(large, 48, workers=workers), expected[1])
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=calls) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert blas_threads() == two_blas_threads
    assert torch.get_num_threads() == torch_before
    assert fresh_thread_torch_threads() == fresh_before


def test_workers_run_blas_and_torch_single_threaded_and_restore_them(two_blas_threads):
    suite = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        fresh_before = fresh_thread_torch_threads()

        def seen(_: int) -> tuple[int, list[int]]:
            time.sleep(0.01)
            return torch.get_num_threads(), blas_threads()

        results = run_chunks(seen, range(8), workers=2)
        assert results == [(1, [1] * len(two_blas_threads))] * 8
        assert torch.get_num_threads() == 2 and blas_threads() == two_blas_threads
        assert fresh_thread_torch_threads() == fresh_before
    finally:
        torch.set_num_threads(suite)


def test_an_exception_in_a_worker_propagates_stops_the_rest_and_restores_the_limits(two_blas_threads):
    torch_before = torch.get_num_threads()
    ran: list[int] = []

    def chunk(item: int) -> int:
        ran.append(item)
        if item == 1:
            raise ValueError("chunk 1 failed")
        time.sleep(0.05)
        return item

    start = time.perf_counter()
    with pytest.raises(ValueError, match="chunk 1 failed"):
        run_chunks(chunk, range(200), workers=2)
    assert time.perf_counter() - start < 5  # the 200 x 0.05 s of remaining chunks were not run
    assert len(ran) < 50
    wait_for_workers()  # the chunks running when the error came end on their own, then BLAS is restored
    assert blas_threads() == two_blas_threads and torch.get_num_threads() == torch_before
    # the process goes on: the next call runs normally
    assert run_chunks(lambda x: x + 1, range(5), workers=2) == [1, 2, 3, 4, 5]


def test_nested_limits_restore_the_outer_ones(two_blas_threads):
    torch_before = torch.get_num_threads()
    with limit_threads(2):
        assert torch.get_num_threads() == 2
        with single_threaded_blas():
            assert blas_threads() == [1] * len(two_blas_threads)
            assert run_chunks(lambda _: torch.get_num_threads(), range(3), workers=2) == [1, 1, 1]
        assert blas_threads() == two_blas_threads and torch.get_num_threads() == 2
    assert torch.get_num_threads() == torch_before and blas_threads() == two_blas_threads


_LONG_CALL = """
import sys
import numpy as np
import convspectra as cs

workers = None if sys.argv[2] == "None" else int(sys.argv[2])
print("started", flush=True)
try:
    if sys.argv[1] == "singular_values":  # 256 channels at 256 x 256: minutes of work
        weight = np.random.default_rng(0).normal(size=(256, 256, 3, 3))
        cs.singular_values(weight, 256, workers=workers)
    else:  # 20 rounds of 544 clips of 128 x 128 matrices: half a minute or more
        weight = np.random.default_rng(0).normal(size=(128, 128, 3, 3))
        cs.clip_operator_norm(weight, 32, 1.0, iterations=20, workers=workers)
except KeyboardInterrupt:
    print("interrupted", flush=True)
    raise
print("finished", flush=True)
"""


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, 6 * 2**30))


@pytest.mark.parametrize("workers", ["None", "2", "1"])
@pytest.mark.parametrize("call", ["singular_values", "clip_operator_norm"])
def test_ctrl_c_stops_a_long_call_within_a_second(call, workers):
    # the signal comes one second into a call of half a minute or more
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_LONG_CALL), call, workers],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_limit_memory,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout.readline().strip() == "started"
        time.sleep(1.0)
        assert process.poll() is None, "the call ended before it was signalled"
        signalled = time.perf_counter()
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
        stopped = time.perf_counter() - signalled
        out, err = process.communicate()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "interrupted" in out and "finished" not in out, (out, err)
    assert process.returncode != 0 and "KeyboardInterrupt" in err
    assert stopped < 1.5, f"stopped {stopped:.2f} s after SIGINT"


def test_the_demo_trains_on_one_thread_and_restores_the_settings(two_blas_threads, monkeypatch):
    pytest.importorskip("sklearn", reason="the demo needs scikit-learn: pip install 'convspectra[demo]'")
    import convspectra.demo as demo

    seen: list[tuple[int, list[int]]] = []
    build = demo.digits_cnn

    def recording_cnn() -> torch.nn.Module:
        model = build()
        model[0].register_forward_pre_hook(lambda *_: seen.append((torch.get_num_threads(), blas_threads())))
        return model

    monkeypatch.setattr(demo, "digits_cnn", recording_cnn)
    suite = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        result = demo.run_demo(epochs=1)
        assert result.threads == 1 and result.test_accuracy > 0.5
        assert seen and set(map(repr, seen)) == {repr((1, [1] * len(blas_threads())))}
        assert torch.get_num_threads() == 2 and blas_threads()[: len(two_blas_threads)] == two_blas_threads
        seen.clear()
        demo.run_demo(epochs=1, threads=None)  # the process's own settings
        assert {threads for threads, _ in seen} == {2}
        with pytest.raises(cs.errors.ParameterError, match="threads: expected a positive int, got 0"):
            demo.run_demo(epochs=1, threads=0)
    finally:
        torch.set_num_threads(suite)
