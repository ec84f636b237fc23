"""The dense oracle itself, anchored to PyTorch's own layers.

``dense_matrix`` must be the matrix of what ``torch.nn.Conv*d(padding_mode="circular")`` and
``torch.nn.ConvTranspose*d`` compute (up to the circular shift their padding introduces, and the
wrap-around fold a transposed layer needs), so that every spectrum test downstream compares
against PyTorch's convolution and not against our own arithmetic.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convspectra.operator import dense_matrix

CONV = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}
CONV_T = {1: torch.nn.ConvTranspose1d, 2: torch.nn.ConvTranspose2d, 3: torch.nn.ConvTranspose3d}

CASES = [
    # (d, in, out, kernel, input, stride, dilation, groups)
    (1, 3, 4, (3,), (8,), (1,), (1,), 1),
    (1, 4, 2, (5,), (9,), (3,), (2,), 2),
    (2, 2, 3, (3, 3), (6, 6), (1, 1), (1, 1), 1),
    (2, 4, 6, (3, 5), (8, 6), (2, 2), (1, 1), 2),
    (2, 3, 3, (3, 3), (6, 9), (2, 3), (2, 1), 3),
    (2, 2, 4, (1, 1), (4, 6), (2, 1), (1, 1), 1),
    (3, 2, 2, (3, 3, 3), (4, 4, 6), (1, 2, 2), (1, 1, 1), 1),
]


@pytest.mark.parametrize("d, c_in, c_out, k, n, s, dil, g", CASES)
def test_dense_matrix_is_pytorch_circular_conv(d, c_in, c_out, k, n, s, dil, g):
    torch.manual_seed(0)
    padding = tuple(di * (ki - 1) // 2 for di, ki in zip(dil, k, strict=True))  # symmetric for odd k
    layer = CONV[d](
        c_in, c_out, k, stride=s, dilation=dil, groups=g, padding=padding, padding_mode="circular", bias=False
    ).double()
    x = torch.randn(3, c_in, *n, dtype=torch.float64)
    expected = layer(x)
    matrix = dense_matrix(layer.weight.detach(), n, stride=s, dilation=dil, groups=g)
    # PyTorch reads input s*u + dil*t - padding: our operator applied to x shifted by the padding.
    shifted = torch.roll(x, shifts=padding, dims=tuple(range(2, 2 + d)))
    ours = (matrix @ shifted.reshape(3, -1).T).T.reshape(expected.shape)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("d, c_in, c_out, k, n, s, dil, g", CASES)
def test_dense_matrix_of_transposed_layer_is_folded_conv_transpose(d, c_in, c_out, k, n, s, dil, g):
    torch.manual_seed(1)
    m = tuple(ni // si for ni, si in zip(n, s, strict=True))  # the transposed layer's input
    layer = CONV_T[d](c_out, c_in, k, stride=s, dilation=dil, groups=g, bias=False).double()
    y = torch.randn(2, c_out, *m, dtype=torch.float64)
    full = layer(y)  # no wrap-around: length (m-1)*s + dil*(k-1) + 1 per axis
    folded = torch.zeros(2, c_in, *n, dtype=torch.float64)
    for index in np.ndindex(*full.shape[2:]):
        target = tuple(i % ni for i, ni in zip(index, n, strict=True))
        folded[(slice(None), slice(None), *target)] += full[(slice(None), slice(None), *index)]
    matrix = dense_matrix(layer.weight.detach(), m, stride=s, dilation=dil, groups=g, transposed=True)
    ours = (matrix @ y.reshape(2, -1).T).T.reshape(folded.shape)
    torch.testing.assert_close(ours, folded, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("d, c_in, c_out, k, n, s, dil, g", CASES)
def test_transposed_layer_is_the_adjoint(d, c_in, c_out, k, n, s, dil, g):
    weight = np.random.default_rng(2).normal(size=(c_out, c_in // g, *k))
    m = tuple(ni // si for ni, si in zip(n, s, strict=True))
    forward = dense_matrix(weight, n, stride=s, dilation=dil, groups=g)
    adjoint = dense_matrix(weight, m, stride=s, dilation=dil, groups=g, transposed=True)
    np.testing.assert_allclose(adjoint, forward.T, rtol=0, atol=1e-14)


def test_kernel_larger_than_input_wraps_taps_modulo_n():
    # 1-D, one channel, taps 0..4 on a grid of 3: tap t lands on offset t mod 3.
    weight = np.arange(1.0, 6.0).reshape(1, 1, 5)
    matrix = dense_matrix(weight, 3)
    first_row = [1 + 4, 2 + 5, 3]  # offsets 0, 1, 2 collect taps {0, 3}, {1, 4}, {2}
    np.testing.assert_array_equal(matrix[0], first_row)
    np.testing.assert_array_equal(matrix[1], np.roll(first_row, 1))
