"""``refine`` and ``time_limit`` of the padded operator norm: the bracket alone, a solver stopped by time."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import convspectra as cs
from convspectra.errors import ConvergenceWarning, ParameterError


def _kernel() -> np.ndarray:
    return np.random.default_rng(3).standard_normal((6, 4, 3, 3))


def test_bracket_only_contains_the_refined_value() -> None:
    kernel = _kernel()
    exact = cs.operator_norm_bounds(kernel, (20, 20), padding=1, rtol=1e-10)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # asked for: no warning
        bracket = cs.operator_norm_bounds(kernel, (20, 20), padding=1, refine=False)
    assert not bracket.converged and "bracket only" in bracket.method
    assert bracket.lower <= exact.value <= bracket.upper
    assert bracket.value == bracket.lower


def test_time_limit_stops_with_a_valid_bracket() -> None:
    kernel = _kernel()
    exact = cs.operator_norm_bounds(kernel, (40, 40), padding=1, rtol=1e-10)
    with pytest.warns(ConvergenceWarning, match="time_limit"):
        stopped = cs.operator_norm_bounds(kernel, (40, 40), padding=1, rtol=1e-14, time_limit=1e-9)
    assert not stopped.converged and "time_limit" in stopped.method
    assert stopped.lower <= exact.value <= stopped.upper


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), "soon"])
def test_bad_time_limit_is_named(value: object) -> None:
    with pytest.raises((ParameterError, TypeError), match="time_limit"):
        cs.operator_norm(_kernel(), (8, 8), padding=1, time_limit=value)


def test_bad_refine_is_named() -> None:
    with pytest.raises((ParameterError, TypeError), match="refine"):
        cs.operator_norm_bounds(_kernel(), (8, 8), padding=1, refine="no")
