"""What one projection reports: norms before and after, distance, rounds, the last support restriction.

Example:
    >>> import numpy as np, convspectra as cs
    >>> _, report = cs.clip_operator_norm_report(np.ones((1, 1, 2, 2)), 4, 2.0)
    >>> report.method, report.max_norm, report.iterations
    ('alternating', 2.0, 1)
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ProjectionReport"]


@dataclass(frozen=True)
class ProjectionReport:
    """Diagnostics of one projection (all norms of the wrap-around operator, float64).

    Attributes:
        sigma_max_before: operator norm of the input kernel.
        sigma_max_after: operator norm of the returned kernel.
        sigma_min_before: smallest singular value of the input (``None`` unless ``min_norm`` given).
        sigma_min_after: smallest singular value of the result (``None`` unless ``min_norm`` given).
        distance: Frobenius norm of ``result - kernel`` (in the kernel's own layout).
        iterations: rounds that changed the kernel (0: it already satisfied the constraint;
            alternating projections stop early at a round that changes nothing).
        support_residual: Frobenius norm (of the folded kernel) of what the last support
            restriction removed: the part of the last clipped kernel outside the kernel's support
            (small when the iterations have converged). Exactly 0.0 when the support covers
            the whole input grid.
        support_changed: whether any round's support restriction removed more than rounding
            (``64 * eps`` times the norm of the clipped kernel); False when no round ran. After
            one iteration, False means the result is the exact nearest operator.
        method: ``"alternating"`` or ``"dykstra"``.
        max_norm: the upper bound asked for.
        min_norm: the lower bound asked for, or ``None``.
    """

    sigma_max_before: float
    sigma_max_after: float
    sigma_min_before: float | None
    sigma_min_after: float | None
    distance: float
    iterations: int
    support_residual: float
    support_changed: bool
    method: str
    max_norm: float
    min_norm: float | None
