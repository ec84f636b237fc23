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
    >>> paper_clip_operator_norm(np.ones((2, 2, 1, 1)), (4, 4), 2.0).shape
    (2, 2, 1, 1)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["paper_clip_operator_norm", "paper_singular_values"]


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


def paper_clip_operator_norm(kernel_hwio: np.ndarray, input_shape: Sequence[int], clip_to: float) -> np.ndarray:
    """One projection by the paper's method (Section 3): clip every frequency's singular values.

    FFT of the ``(k1, k2, c_in, c_out)`` kernel at the input size, a full SVD of every
    frequency's ``c_in x c_out`` matrix, singular values clipped at ``clip_to``, inverse FFT,
    real part, and the ``k1 x k2`` corner kept (the support restriction). Stride 1, no
    dilation; a kernel larger than the input is cropped by the FFT, as published.

    Args:
        kernel_hwio: ``(k1, k2, c_in, c_out)`` kernel.
        input_shape: ``(n1, n2)``.
        clip_to: the bound on the operator norm.

    Returns:
        The clipped kernel, ``(k1, k2, c_in, c_out)`` float64.
    """
    transform = np.fft.fft2(kernel_hwio, tuple(input_shape), axes=(0, 1))
    u, s, vh = np.linalg.svd(transform, full_matrices=False)
    clipped = np.matmul(u * np.minimum(s, clip_to)[..., None, :], vh)
    kernel = np.fft.ifft2(clipped, axes=(0, 1)).real
    return kernel[tuple(slice(0, size) for size in kernel_hwio.shape)]
