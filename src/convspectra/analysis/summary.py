r"""Summary statistics of a spectrum: operator norm, condition number, stable and effective rank (NumPy only).

Torch-free, so that ``convspectra spectrum KERNEL.npy`` never imports torch; re-exported as
:func:`convspectra.analysis.spectrum_summary`.

Example:
    >>> import numpy as np
    >>> from convspectra.analysis import spectrum_summary
    >>> spectrum_summary(np.array([3.0, 0.0]), 1e-3)["condition_number"] is None
    True
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["SUMMARY_FIELDS", "spectrum_summary"]

#: The keys of :func:`spectrum_summary`'s result, in order.
SUMMARY_FIELDS: tuple[str, ...] = (
    "num_singular_values",
    "sigma_max",
    "sigma_min",
    "condition_number",
    "stable_rank",
    "effective_rank",
)


def spectrum_summary(values: Any, relative_threshold: float) -> dict[str, Any]:
    r"""Summary statistics of a spectrum (descending singular values).

    Args:
        values: the singular values, in descending order (any array-like).
        relative_threshold: values above ``relative_threshold * sigma_max`` count in the effective rank.

    Returns:
        A dict with the :data:`SUMMARY_FIELDS`: ``num_singular_values``, ``sigma_max``,
        ``sigma_min``, ``condition_number`` (``sigma_max / sigma_min``, None when ``sigma_min`` is 0),
        ``stable_rank`` (``sum sigma^2 / sigma_max^2``, None for the zero operator) and
        ``effective_rank`` (count of ``sigma > relative_threshold * sigma_max``).

    Example:
        >>> import numpy as np
        >>> from convspectra.analysis import spectrum_summary
        >>> s = spectrum_summary(np.array([2.0, 1.0, 1e-6]), 1e-3)
        >>> s["stable_rank"], s["effective_rank"], s["condition_number"]
        (1.25, 2, 2000000.0)
    """
    values = np.asarray(values, dtype=np.float64)
    top = float(values[0]) if values.size else 0.0
    bottom = float(values[-1]) if values.size else 0.0
    return {
        "num_singular_values": int(values.size),
        "sigma_max": top,
        "sigma_min": bottom,
        "condition_number": top / bottom if bottom > 0 else None,
        "stable_rank": float(np.sum((values / top) ** 2)) if top > 0 else None,
        "effective_rank": int(np.count_nonzero(values > relative_threshold * top)) if top > 0 else 0,
    }
