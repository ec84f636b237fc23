"""The paper's own method, as a baseline to measure against.

Sedghi, Gupta & Long (2019) compute the singular values with a two-dimensional FFT of the
kernel at the input size followed by one SVD per frequency, on a channels-last ``(k, k, c_in,
c_out)`` kernel. This is our rendition of that method, kept deliberately as published:
full spectrum, one ``numpy.linalg.svd`` call, stride 1, no wrap-around for kernels larger
than the input (``fft2`` with ``s=input_shape`` crops them, which is wrong there).

Example:
    >>> import numpy as np
    >>> from convspectra.baselines import paper_singular_values
    >>> paper_singular_values(np.ones((2, 2, 1, 1)), (4, 4)).shape
    (4, 4, 1)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["paper_singular_values"]


def paper_singular_values(kernel_hwio: np.ndarray, input_shape: Sequence[int]) -> np.ndarray:
    """Per-frequency singular values by the paper's method: ``(n1, n2, min(c_in, c_out))``.

    Args:
        kernel_hwio: ``(k1, k2, c_in, c_out)`` kernel.
        input_shape: ``(n1, n2)``.

    Returns:
        The singular values of every frequency's ``c_in x c_out`` matrix, unsorted across
        frequencies, as the paper's snippet returns them.
    """
    transfer = np.fft.fft2(kernel_hwio, tuple(input_shape), axes=(0, 1))
    return np.linalg.svd(transfer, compute_uv=False)
