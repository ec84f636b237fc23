"""The real-architecture tier (issue 11): layer shapes of real networks at their native input sizes.

The shapes are written here as tables (no model zoo): ResNet-50, ResNeXt-50 32x4d, MobileNetV2,
MobileNetV3-Large, EfficientNet-B0, ConvNeXt-T, RegNetX-400MF, a DeepLab-v3 head (dilated
backbone and ASPP) and U-Net / pix2pix decoders (transposed 2x2 and 4x4, stride 2). Kernels are
random. Every public function runs on every shape and is compared with an independent reference
written below, which shares no code with the engine (nothing from convspectra.transfer or
convspectra.spectrum): the DFT of the zero-padded kernel at each frequency, stride by stacking the
``s^d`` aliased frequency blocks, groups as blocks of a block-diagonal matrix, a transposed layer as
the adjoint of its forward convolution, one SVD per frequency.

Checked per layer, in float64, against the reference: the whole sorted spectrum (NumPy path and
torch path) within 1e-9 sigma_max, ``operator_norm`` (circular), ``operator_norm_bounds`` (the
bracket holds the truth and is tight), and one round of ``clip_operator_norm`` (the kernel the
reference's one round gives: clip every frequency's singular values at c, back to the kernel's
own taps; the support and shape are kept and sigma_max does not grow).

The CI subset (one or two layers per architecture) runs by default; every shape of every table
runs with ``python -m pytest tests/test_scale.py -m scale_full`` (slow: minutes per large layer).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import pytest
import torch

import convspectra as cs
from convspectra.operator import dense_matrix

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover - threadpoolctl is a test dependency
    threadpool_limits = None

RTOL = 1e-9  # of sigma_max, float64
_CHUNK = 32 * 2**20  # bytes of transfer matrices per reference chunk


@dataclass(frozen=True)
class Layer:
    """One conv layer: the forward weight is (out, in / groups, k, k); a transposed layer is given as
    PyTorch's ConvTranspose2d(in, out, k, stride) weight (in, out / groups, k, k) on its own input."""

    name: str
    out: int
    inp: int
    k: int
    n: int
    stride: int = 1
    groups: int = 1
    dilation: int = 1
    transposed: bool = False

    @property
    def shape(self) -> tuple[int, ...]:
        if self.transposed:
            return (self.inp, self.out // self.groups, self.k, self.k)
        return (self.out, self.inp // self.groups, self.k, self.k)

    @property
    def kwargs(self) -> dict:
        return dict(stride=self.stride, groups=self.groups, dilation=self.dilation, transposed=self.transposed)

    def __str__(self) -> str:
        return self.name


def _dw(name, channels, k, n, stride=1, dilation=1):
    return Layer(name, channels, channels, k, n, stride, groups=channels, dilation=dilation)


# --- the tables: (architecture, layer) at the native input size (224 for ImageNet) --------------------

RESNET50 = [
    Layer("stem 7x7/2 64<-3 @224", 64, 3, 7, 224, 2),
    Layer("l1 1x1 64<-64 @56", 64, 64, 1, 56),
    Layer("l1 3x3 64 @56", 64, 64, 3, 56),
    Layer("l1 1x1 256<-64 @56", 256, 64, 1, 56),
    Layer("l1 1x1 64<-256 @56", 64, 256, 1, 56),
    Layer("l2 1x1 128<-256 @56", 128, 256, 1, 56),
    Layer("l2 3x3/2 128 @56", 128, 128, 3, 56, 2),
    Layer("l2 shortcut 1x1/2 512<-256 @56", 512, 256, 1, 56, 2),
    Layer("l2 3x3 128 @28", 128, 128, 3, 28),
    Layer("l2 1x1 512<-128 @28", 512, 128, 1, 28),
    Layer("l2 1x1 128<-512 @28", 128, 512, 1, 28),
    Layer("l3 3x3/2 256 @28", 256, 256, 3, 28, 2),
    Layer("l3 shortcut 1x1/2 1024<-512 @28", 1024, 512, 1, 28, 2),
    Layer("l3 3x3 256 @14", 256, 256, 3, 14),
    Layer("l3 1x1 1024<-256 @14", 1024, 256, 1, 14),
    Layer("l3 1x1 256<-1024 @14", 256, 1024, 1, 14),
    Layer("l4 3x3/2 512 @14", 512, 512, 3, 14, 2),
    Layer("l4 shortcut 1x1/2 2048<-1024 @14", 2048, 1024, 1, 14, 2),
    Layer("l4 3x3 512 @7", 512, 512, 3, 7),
    Layer("l4 1x1 2048<-512 @7", 2048, 512, 1, 7),
    Layer("l4 1x1 512<-2048 @7", 512, 2048, 1, 7),
]
RESNEXT50 = [  # 32x4d: grouped 3x3 with 32 groups
    Layer("l1 3x3 g32 128 @56", 128, 128, 3, 56, groups=32),
    Layer("l2 3x3/2 g32 256 @56", 256, 256, 3, 56, 2, groups=32),
    Layer("l2 3x3 g32 256 @28", 256, 256, 3, 28, groups=32),
    Layer("l3 3x3/2 g32 512 @28", 512, 512, 3, 28, 2, groups=32),
    Layer("l3 3x3 g32 512 @14", 512, 512, 3, 14, groups=32),
    Layer("l4 3x3/2 g32 1024 @14", 1024, 1024, 3, 14, 2, groups=32),
    Layer("l4 3x3 g32 1024 @7", 1024, 1024, 3, 7, groups=32),
    Layer("l1 1x1 128<-64 @56", 128, 64, 1, 56),
]
MOBILENET_V2 = [
    Layer("stem 3x3/2 32<-3 @224", 32, 3, 3, 224, 2),
    _dw("dw 3x3 32 @112", 32, 3, 112),
    Layer("1x1 16<-32 @112", 16, 32, 1, 112),
    Layer("1x1 96<-16 @112", 96, 16, 1, 112),
    _dw("dw 3x3/2 96 @112", 96, 3, 112, 2),
    _dw("dw 3x3 144 @56", 144, 3, 56),
    _dw("dw 3x3/2 144 @56", 144, 3, 56, 2),
    _dw("dw 3x3 192 @28", 192, 3, 28),
    _dw("dw 3x3/2 192 @28", 192, 3, 28, 2),
    _dw("dw 3x3 384 @14", 384, 3, 14),
    _dw("dw 3x3 576 @14", 576, 3, 14),
    _dw("dw 3x3/2 576 @14", 576, 3, 14, 2),
    _dw("dw 3x3 960 @7", 960, 3, 7),
    Layer("1x1 320<-960 @7", 320, 960, 1, 7),
    Layer("1x1 1280<-320 @7", 1280, 320, 1, 7),
]
MOBILENET_V3 = [  # Large
    Layer("stem 3x3/2 16<-3 @224", 16, 3, 3, 224, 2),
    _dw("dw 3x3/2 64 @112", 64, 3, 112, 2),
    _dw("dw 5x5/2 72 @56", 72, 5, 56, 2),
    _dw("dw 5x5 120 @28", 120, 5, 28),
    _dw("dw 3x3/2 240 @28", 240, 3, 28, 2),
    _dw("dw 3x3 480 @14", 480, 3, 14),
    _dw("dw 5x5/2 672 @14", 672, 5, 14, 2),
    _dw("dw 5x5 960 @7", 960, 5, 7),
    Layer("1x1 160<-672 @7", 160, 672, 1, 7),
    Layer("SE 1x1 240<-960 @1", 240, 960, 1, 1),
]
EFFICIENTNET_B0 = [
    Layer("stem 3x3/2 32<-3 @224", 32, 3, 3, 224, 2),
    _dw("dw 3x3 32 @112", 32, 3, 112),
    _dw("dw 3x3/2 96 @112", 96, 3, 112, 2),
    _dw("dw 3x3 144 @56", 144, 3, 56),
    _dw("dw 5x5/2 144 @56", 144, 5, 56, 2),
    _dw("dw 5x5 240 @28", 240, 5, 28),
    _dw("dw 3x3/2 240 @28", 240, 3, 28, 2),
    _dw("dw 3x3 480 @14", 480, 3, 14),
    _dw("dw 5x5 480 @14", 480, 5, 14),
    _dw("dw 5x5 672 @14", 672, 5, 14),
    _dw("dw 5x5/2 672 @14", 672, 5, 14, 2),
    _dw("dw 5x5 1152 @7", 1152, 5, 7),
    _dw("dw 3x3 1152 @7", 1152, 3, 7),
    Layer("1x1 192<-1152 @7", 192, 1152, 1, 7),
    Layer("head 1x1 1280<-320 @7", 1280, 320, 1, 7),
    Layer("SE 1x1 48<-1152 @1", 48, 1152, 1, 1),
]
CONVNEXT_T = [
    Layer("stem 4x4/4 96<-3 @224", 96, 3, 4, 224, 4),
    _dw("dw 7x7 96 @56", 96, 7, 56),
    Layer("down 2x2/2 192<-96 @56", 192, 96, 2, 56, 2),
    _dw("dw 7x7 192 @28", 192, 7, 28),
    Layer("down 2x2/2 384<-192 @28", 384, 192, 2, 28, 2),
    _dw("dw 7x7 384 @14", 384, 7, 14),
    Layer("down 2x2/2 768<-384 @14", 768, 384, 2, 14, 2),
    _dw("dw 7x7 768 @7", 768, 7, 7),
    Layer("mlp 1x1 384<-96 @56", 384, 96, 1, 56),
]
REGNETX_400MF = [  # widths 32, 64, 160, 384, group width 16
    Layer("stem 3x3/2 32<-3 @224", 32, 3, 3, 224, 2),
    Layer("s1 3x3/2 g2 32 @112", 32, 32, 3, 112, 2, groups=2),
    Layer("s1 shortcut 1x1/2 32<-32 @112", 32, 32, 1, 112, 2),
    Layer("s2 3x3/2 g4 64 @56", 64, 64, 3, 56, 2, groups=4),
    Layer("s2 shortcut 1x1/2 64<-32 @56", 64, 32, 1, 56, 2),
    Layer("s3 3x3/2 g10 160 @28", 160, 160, 3, 28, 2, groups=10),
    Layer("s3 3x3 g10 160 @14", 160, 160, 3, 14, groups=10),
    Layer("s3 shortcut 1x1/2 160<-64 @28", 160, 64, 1, 28, 2),
    Layer("s4 3x3/2 g24 384 @14", 384, 384, 3, 14, 2, groups=24),
    Layer("s4 3x3 g24 384 @7", 384, 384, 3, 7, groups=24),
    Layer("s4 shortcut 1x1/2 384<-160 @14", 384, 160, 1, 14, 2),
]
DEEPLAB_V3 = [  # output stride 16 on a 513 input (33) and 8 (65); MobileNetV3 and ResNet-50 backbones
    _dw("mnv3 dw 5x5 d2 960 @33", 960, 5, 33, dilation=2),
    Layer("classifier 1x1 21<-256 @33", 21, 256, 1, 33),
    Layer("head 3x3 256 @33", 256, 256, 3, 33),
    Layer("r50 l4 3x3 d2 512 @33", 512, 512, 3, 33, dilation=2),
    Layer("ASPP 3x3 d6 256<-2048 @33", 256, 2048, 3, 33, dilation=6),
    Layer("ASPP 3x3 d12 256<-2048 @33", 256, 2048, 3, 33, dilation=12),
    Layer("ASPP 3x3 d18 256<-2048 @33", 256, 2048, 3, 33, dilation=18),
    Layer("OS8 l3 3x3 d2 256 @65", 256, 256, 3, 65, dilation=2),
    Layer("OS8 ASPP 3x3 d24 256<-512 @65", 256, 512, 3, 65, dilation=24),
]
UNET_DECODERS = [  # ConvTranspose2d(in, out, k, stride=2) on its input size
    Layer("unet up 2x2/2 1024->512 @28", 512, 1024, 2, 28, 2, transposed=True),
    Layer("unet up 2x2/2 512->256 @52", 256, 512, 2, 52, 2, transposed=True),
    Layer("unet up 2x2/2 256->128 @100", 128, 256, 2, 100, 2, transposed=True),
    Layer("unet up 2x2/2 128->64 @196", 64, 128, 2, 196, 2, transposed=True),
    Layer("pix2pix up 4x4/2 512->512 @1", 512, 512, 4, 1, 2, transposed=True),
    Layer("pix2pix up 4x4/2 1024->512 @8", 512, 1024, 4, 8, 2, transposed=True),
    Layer("pix2pix up 4x4/2 256->64 @64", 64, 256, 4, 64, 2, transposed=True),
    Layer("pix2pix up 4x4/2 128->3 @128", 3, 128, 4, 128, 2, transposed=True),
]
ARCHITECTURES = {
    "resnet50": RESNET50,
    "resnext50": RESNEXT50,
    "mobilenet_v2": MOBILENET_V2,
    "mobilenet_v3": MOBILENET_V3,
    "efficientnet_b0": EFFICIENTNET_B0,
    "convnext_t": CONVNEXT_T,
    "regnetx_400mf": REGNETX_400MF,
    "deeplab_v3": DEEPLAB_V3,
    "unet": UNET_DECODERS,
}
#: The CI subset: one or two layers per architecture, cheap for the reference.
FAST = {
    "resnet50": ["stem 7x7/2 64<-3 @224"],
    "resnext50": ["l2 3x3/2 g32 256 @56"],
    "mobilenet_v2": ["dw 3x3/2 96 @112"],
    "mobilenet_v3": ["dw 5x5/2 72 @56"],
    "efficientnet_b0": ["dw 5x5 1152 @7"],
    "convnext_t": ["dw 7x7 96 @56"],
    "regnetx_400mf": ["s3 3x3/2 g10 160 @28", "s1 shortcut 1x1/2 32<-32 @112"],
    "deeplab_v3": ["mnv3 dw 5x5 d2 960 @33"],
    "unet": ["pix2pix up 4x4/2 512->512 @1"],
}


def _cases():
    for arch, table in ARCHITECTURES.items():
        names = [layer.name for layer in table]
        assert len(set(names)) == len(names), arch
        assert set(FAST[arch]) <= set(names), arch
        for layer in table:
            marks = () if layer.name in FAST[arch] else (pytest.mark.scale_full,)
            yield pytest.param(layer, id=f"{arch}: {layer.name}", marks=marks)


CASES = list(_cases())


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """The reference's batched SVDs at one BLAS thread (on a shared 2-core machine, OpenBLAS's own threads
    make them ~5x slower); ``CONVSPECTRA_SCALE_THREADS`` raises it on a bigger machine."""
    threads = int(os.environ.get("CONVSPECTRA_SCALE_THREADS", "1"))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        if threadpool_limits is None:
            yield
        else:
            with threadpool_limits(threads):
                yield
    finally:
        torch.set_num_threads(previous)


# --- the independent reference --------------------------------------------------------------------


def _geometry(layer: Layer):
    """(forward weight shape, forward input grid n, output grid m) of the layer."""
    if layer.transposed:  # the adjoint of the forward conv (out=in_T, in=out_T) on the grid n = input * stride
        m = (layer.n, layer.n)
    else:
        assert layer.n % layer.stride == 0
        m = (layer.n // layer.stride,) * 2
    n = tuple(mi * layer.stride for mi in m)
    return n, m


def _frequency_blocks(weight: np.ndarray, layer: Layer, freqs: np.ndarray) -> np.ndarray:
    """Per output frequency g, per group: T(g) = S^(-1/2) [W^(g + j m)]_j, shape (F, groups, O/G, S * I/G).

    W^(f) = sum_t W[t] exp(-2 pi i f . (dilation t mod n) / n) is the DFT of the zero-padded kernel
    (the kernel's taps placed on the n-grid at their dilated offsets) at the input frequency f.
    """
    n, m = _geometry(layer)
    s, g_count = layer.stride, layer.groups
    o, i_per = weight.shape[:2]
    k = weight.shape[2:]
    taps = np.array([(a, b) for a in range(k[0]) for b in range(k[1])])  # row-major taps
    offsets = (taps * layer.dilation) % np.array(n)  # the zero-padded kernel's support
    aliases = np.array([(a, b) for a in range(s) for b in range(s)])
    f = freqs[:, None, :] + aliases[None, :, :] * np.array(m)  # (F, S, 2) input frequencies
    angle = ((f[..., None, 0] * offsets[:, 0]) % n[0]) / n[0] + ((f[..., None, 1] * offsets[:, 1]) % n[1]) / n[1]
    phase = np.exp(-2j * np.pi * angle)  # (F, S, taps)
    flat = weight.reshape(o * i_per, -1)  # (O * I/G, taps)
    what = phase.reshape(-1, len(taps)) @ flat.T  # (F * S, O * I/G): W^ at each alias
    o_per = o // g_count
    what = what.reshape(len(freqs), s * s, g_count, o_per, i_per)
    # T(g) per group: rows the group's outputs, columns (alias, the group's inputs)
    return what.transpose(0, 2, 3, 1, 4).reshape(len(freqs), g_count, o_per, s * s * i_per) / s


def _frequency_chunks(layer: Layer, weight: np.ndarray):
    _, m = _geometry(layer)
    grid = np.stack(np.meshgrid(np.arange(m[0]), np.arange(m[1]), indexing="ij"), axis=-1).reshape(-1, 2)
    per = max(1, _CHUNK // (48 * weight.shape[0] * weight.shape[1] * layer.stride**2))
    for start in range(0, len(grid), per):
        yield grid[start : start + per]


def reference_spectrum(weight: np.ndarray, layer: Layer) -> np.ndarray:
    """All singular values, descending: one SVD per frequency and group."""
    parts = []
    for freqs in _frequency_chunks(layer, weight):
        parts.append(np.linalg.svd(_frequency_blocks(weight, layer, freqs), compute_uv=False).ravel())
    return np.sort(np.concatenate(parts))[::-1]


def reference_one_round(weight: np.ndarray, layer: Layer, c: float) -> np.ndarray:
    """One projection round: clip every T(g)'s singular values at c, then keep the kernel's own taps.

    The clipped blocks give W'^(f) at every input frequency f (each f is one alias of one g); the
    inverse DFT read at the taps' offsets gives the new kernel (the orthogonal projection onto the
    kernels with the same support, as no two taps share an offset here).
    """
    n, m = _geometry(layer)
    s, g_count = layer.stride, layer.groups
    o, i_per = weight.shape[:2]
    o_per = o // g_count
    k = weight.shape[2:]
    taps = np.array([(a, b) for a in range(k[0]) for b in range(k[1])])
    offsets = (taps * layer.dilation) % np.array(n)
    assert len(np.unique(offsets, axis=0)) == len(offsets), "taps collide: not this reference's case"
    aliases = np.array([(a, b) for a in range(s) for b in range(s)])
    result = np.zeros((len(taps), o, i_per), dtype=np.complex128)
    for freqs in _frequency_chunks(layer, weight):
        blocks = _frequency_blocks(weight, layer, freqs)
        u, sigma, vh = np.linalg.svd(blocks, full_matrices=False)
        clipped = (u * np.minimum(sigma, c)[..., None, :]) @ vh  # (F, G, O/G, S * I/G)
        what = clipped.reshape(len(freqs), g_count, o_per, s * s, i_per).transpose(0, 3, 1, 2, 4) * s
        what = what.reshape(len(freqs), s * s, o, i_per)  # W'^ at each alias f = g + j m
        f = freqs[:, None, :] + aliases[None, :, :] * np.array(m)
        angle = ((f[..., None, 0] * offsets[:, 0]) % n[0]) / n[0] + ((f[..., None, 1] * offsets[:, 1]) % n[1]) / n[1]
        inverse = np.exp(2j * np.pi * angle).reshape(-1, len(taps))  # (F * S, taps)
        result += (inverse.T @ what.reshape(-1, o * i_per)).reshape(len(taps), o, i_per)  # inverse DFT at the taps
    kernel = (result / math.prod(n)).real
    return kernel.transpose(1, 2, 0).reshape(weight.shape)


def _kernel(layer: Layer) -> np.ndarray:
    seed = sum(map(ord, layer.name)) + 7919 * layer.n
    return np.random.default_rng(seed).normal(size=layer.shape) / math.sqrt(layer.shape[1] * layer.k**2)


def _forward_weight(kernel: np.ndarray, layer: Layer) -> np.ndarray:
    return kernel  # PyTorch's ConvTranspose weight (in_T, out_T/G, k...) is the forward conv's weight


# --- the reference is itself checked against the dense operator and numpy's FFT ------------------------


@pytest.mark.parametrize(
    "layer",
    [
        Layer("t 3x3/2 g2", 4, 6, 3, 6, 2, groups=2),
        Layer("t 2x2/2 transposed", 3, 4, 2, 3, 2, transposed=True),
        Layer("t 4x4/2 transposed g2", 4, 2, 4, 2, 2, groups=2, transposed=True),
        Layer("t 3x3 d2 dw", 3, 3, 3, 7, groups=3, dilation=2),
        Layer("t 1x1/2", 5, 3, 1, 4, 2),
        Layer("t 5x5 d3 on 5", 2, 2, 5, 5, dilation=3),
    ],
    ids=str,
)
def test_reference_matches_the_dense_operator(layer):
    kernel = _kernel(layer)
    dense = np.linalg.svd(dense_matrix(kernel, layer.n, **layer.kwargs), compute_uv=False)
    ours = reference_spectrum(_forward_weight(kernel, layer), layer)
    assert ours.shape == dense.shape
    np.testing.assert_allclose(ours, dense, rtol=0, atol=1e-12 * dense[0])


def test_reference_transform_is_the_fft_of_the_zero_padded_kernel():
    layer = Layer("fft", 3, 2, 3, 10, dilation=3)
    kernel = _kernel(layer)
    padded = np.zeros((3, 2, 10, 10))
    for a in range(3):
        for b in range(3):
            padded[:, :, (3 * a) % 10, (3 * b) % 10] += kernel[:, :, a, b]
    fft = np.fft.fft2(padded)  # (O, I, 10, 10)
    freqs = np.array([[0, 0], [3, 7], [9, 1]])
    blocks = _frequency_blocks(kernel, layer, freqs)[:, 0]
    np.testing.assert_allclose(blocks, fft[:, :, freqs[:, 0], freqs[:, 1]].transpose(2, 0, 1), atol=1e-13)


def test_reference_one_round_is_the_nearest_operator_when_the_support_is_everything():
    """With a 3x3 kernel on a 3x3 grid the kernel space is every operator: one round = U min(S, c) V^T."""
    layer = Layer("full", 2, 2, 3, 3)
    kernel = _kernel(layer)
    c = 0.5 * reference_spectrum(kernel, layer)[0]
    projected = reference_one_round(kernel, layer, c)
    matrix = dense_matrix(kernel, 3)
    u, s, vh = np.linalg.svd(matrix)
    np.testing.assert_allclose(dense_matrix(projected, 3), (u * np.minimum(s, c)) @ vh, atol=1e-12)


# --- the tier -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def references():
    """Reference spectra, computed once per layer for the tests of this module."""
    cache: dict[str, np.ndarray] = {}

    def get(layer: Layer) -> np.ndarray:
        if layer.name not in cache:
            cache[layer.name] = reference_spectrum(_forward_weight(_kernel(layer), layer), layer)
        return cache[layer.name]

    return get


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("layer", CASES)
def test_all_singular_values_numpy_and_torch_match_the_reference(layer, references):
    kernel = _kernel(layer)
    expected = references(layer)
    atol = RTOL * expected[0]
    ours = cs.singular_values(kernel, layer.n, **layer.kwargs)
    assert ours.shape == expected.shape, (ours.shape, expected.shape)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=atol)
    tensor = torch.from_numpy(kernel).to(_device()).requires_grad_(True)  # the torch path (autograd)
    try:
        on_torch = cs.singular_values(tensor, layer.n, **layer.kwargs)
    except cs.MemoryBudgetError as refused:  # autograd keeps every frequency's factors: over 4 GiB on the widest
        assert "needs about" in str(refused)  # layers, refused before allocating; compare the graph-free torch path
        on_torch = cs.singular_values(tensor.detach(), layer.n, **layer.kwargs)
    else:
        assert on_torch.requires_grad
    assert isinstance(on_torch, torch.Tensor)
    np.testing.assert_allclose(on_torch.detach().cpu().numpy(), ours, rtol=0, atol=atol)


@pytest.mark.parametrize("layer", CASES)
def test_operator_norm_and_its_bracket_match_the_reference(layer, references):
    kernel = _kernel(layer)
    sigma = references(layer)[0]
    value = float(cs.operator_norm(kernel, layer.n, **layer.kwargs))
    assert abs(value - sigma) <= RTOL * sigma, (value, sigma)
    bounds = cs.operator_norm_bounds(kernel, layer.n, **layer.kwargs)
    assert bounds.lower <= sigma * (1 + RTOL) and bounds.upper >= sigma * (1 - RTOL), (bounds, sigma)
    assert bounds.lower >= sigma * (1 - 1e-6), f"lower/value = {bounds.lower / sigma:.4f}: {bounds}"
    assert bounds.upper <= sigma * (1 + 1e-6), f"upper/value = {bounds.upper / sigma:.4f}: {bounds}"


@pytest.mark.parametrize("layer", CASES)
def test_one_projection_round_matches_the_reference(layer, references):
    kernel = _kernel(layer)
    sigma = references(layer)[0]
    c = 0.5 * sigma
    projected = cs.clip_operator_norm(kernel, layer.n, c, **layer.kwargs)
    assert isinstance(projected, np.ndarray) and projected.shape == kernel.shape  # the support is kept
    after = reference_spectrum(_forward_weight(projected, layer), layer)[0]
    assert after <= sigma * (1 + RTOL), (after, sigma)
    n, _ = _geometry(layer)
    if layer.k > n[0]:  # taps collide on the grid: the reference's read-back does not apply
        return
    expected = reference_one_round(_forward_weight(kernel, layer), layer, c)
    np.testing.assert_allclose(projected, expected, rtol=0, atol=RTOL * sigma)


# --- depthwise regressions (issue 11: 96, 144, 240 channels crashed on the NumPy path) -------------------


@pytest.mark.parametrize(
    "layer",
    [
        _dw("issue: dw 3x3 96 @112", 96, 3, 112),
        _dw("dw 3x3/2 96 @112", 96, 3, 112, 2),
        _dw("dw 3x3 144 @56", 144, 3, 56),
        _dw("dw 5x5/2 144 @56", 144, 5, 56, 2),
        _dw("dw 5x5 240 @28", 240, 5, 28),
        _dw("dw 3x3/2 240 @28", 240, 3, 28, 2),
        _dw("dw 3x3 240 @56", 240, 3, 56),
        _dw("dw 5x5 1152 @7", 1152, 5, 7),
        _dw("dw 3x3/2 1152 @14", 1152, 3, 14, 2),
        _dw("dw 5x5 1152 @28", 1152, 5, 28),
    ],
    ids=str,
)
def test_depthwise_layers_at_imagenet_sizes(layer, references):
    kernel = _kernel(layer)
    expected = references(layer)
    numpy_path = cs.singular_values(kernel, layer.n, **layer.kwargs)
    torch_path = cs.singular_values(torch.from_numpy(kernel).requires_grad_(True), layer.n, **layer.kwargs)
    np.testing.assert_allclose(numpy_path, expected, rtol=0, atol=RTOL * expected[0])
    np.testing.assert_allclose(torch_path.detach().numpy(), expected, rtol=0, atol=RTOL * expected[0])
    fs = cs.frequency_spectrum(kernel, layer.n, **layer.kwargs)
    assert int(fs.multiplicity.sum()) == (layer.n // layer.stride) ** 2
    np.testing.assert_array_equal(fs.sorted(), numpy_path)
