"""All singular values of a convolution layer with wrap-around boundary.

The layer is block-diagonalised by the discrete Fourier transform (see
:mod:`convspectra.transfer`); its singular values are the union of the singular values of the
small per-frequency transfer matrices (Sedghi, Gupta & Long 2019, Theorem 8), here extended to
stride, dilation, groups, transposed layers, 1-D/2-D/3-D kernels and kernels larger than the
input.

How it is fast: one matrix per conjugate pair of frequencies for real kernels, one matrix for
every axis where the kernel has a single tap, transfer matrices built by one BLAS product of a
phase table with the kernel, and batched LAPACK decompositions split over the cores, in chunks
whose size bounds the memory.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._backend import is_tensor
from ._memory import DEFAULT_MEMORY_BUDGET, check_budget, resolve_budget
from ._rescale import extreme_exponent, scale_down, scale_up
from ._threads import resolve_workers, run_chunks
from .spec import ConvSpec, parse_layer
from .transfer import FrequencyPlan, flat_weight

__all__ = ["DEFAULT_MEMORY_BUDGET", "FrequencySpectrum", "frequency_spectrum", "singular_values"]

#: Target size, in bytes, of the transfer matrices of one chunk of frequencies.
_CHUNK_BYTES = 8 * 2**20

#: Below this many multiply-adds (sum of p^2 q over the SVDs), work stays on one thread.
_PARALLEL_MIN_WORK = 2 * 10**7


def _itemsize(values: Any) -> int:
    """Bytes per element of a NumPy array or torch tensor."""
    return int(values.element_size()) if is_tensor(values) else int(values.dtype.itemsize)


def _expansion_bytes(spec: ConvSpec, rows: int, rank: int, itemsize: int) -> int:
    """What :meth:`FrequencySpectrum.sorted` allocates: the sort of the ``rows x rank`` table (int64 counts
    and order) and the repeated result."""
    return spec.num_singular_values * itemsize + rows * rank * (24 + itemsize)


@dataclass(frozen=True)
class FrequencySpectrum:
    """The spectrum of a layer resolved by frequency.

    Attributes:
        singular_values: ``(F, r)`` array (NumPy, or torch on the kernel's device), row ``q``
            the singular values of the transfer matrix at ``frequencies[q]``, descending;
            ``r = min(out_channels, stride_prod * in_channels)`` of the forward convolution.
        frequencies: ``(F, d)`` int64 NumPy array of output-grid frequencies
            (``0 <= g_a < output_shape[a]``): one representative of each conjugate pair (real
            kernels); 0 on axes where the kernel has a single tap (every frequency of such an
            axis has the same matrix).
        multiplicity: ``(F,)`` int64 NumPy array, how many frequencies of the full output grid
            have the singular values of row ``q``; it sums to ``prod(output_shape)``.
        plan: which frequencies were computed (:class:`~convspectra.transfer.FrequencyPlan`).
    """

    singular_values: Any
    frequencies: np.ndarray
    multiplicity: np.ndarray
    plan: FrequencyPlan

    @property
    def spec(self) -> ConvSpec:
        """The normalised layer."""
        return self.plan.spec

    @property
    def grid_shape(self) -> tuple[int, ...]:
        """The output-frequency grid (the forward convolution's output size)."""
        return self.spec.output_shape

    def max(self) -> Any:
        """The largest singular value (the operator norm), as a 0-d array of the result's kind."""
        return self.singular_values[:, 0].max()

    def sorted(self, *, max_memory: int | None = None) -> Any:
        """The whole spectrum, each value repeated by its multiplicity, descending.

        This is exactly what :func:`singular_values` returns. ``max_memory`` (bytes, default
        :data:`DEFAULT_MEMORY_BUDGET`): refuse with :class:`~convspectra.errors.MemoryBudgetError`,
        before allocating, when the expanded spectrum would not fit.
        """
        values = self.singular_values
        check_budget(
            _expansion_bytes(self.spec, values.shape[0], values.shape[1], _itemsize(values)),
            resolve_budget(max_memory),
            f"the full spectrum ({self.spec.num_singular_values:,} singular values)",
        )
        counts = np.repeat(self.multiplicity, values.shape[1])
        if is_tensor(values):
            torch = sys.modules["torch"]
            flat = values.reshape(-1)
            order = torch.argsort(flat, descending=True)
            repeats = torch.from_numpy(counts).to(flat.device)[order]
            return flat[order].repeat_interleave(repeats)
        flat = values.reshape(-1)
        order = np.argsort(flat)[::-1]  # ties hold equal values: any order gives the same result, bit for bit
        return np.repeat(flat[order], counts[order])

    def to_grid(self, *, max_memory: int | None = None) -> Any:
        """Singular values of every output frequency, ``(*grid_shape, r)``.

        Conjugate partners and collapsed axes are filled in, so ``out[g]`` holds the
        singular values of T(g) for every g. ``max_memory`` as in :meth:`sorted`.
        """
        values = self.singular_values
        cells = math.prod(self.spec.output_shape) * values.shape[1]
        check_budget(
            cells * _itemsize(values) + self.plan.size * values.shape[1] * _itemsize(values) + 16 * self.plan.size,
            resolve_budget(max_memory),
            f"the frequency grid ({cells:,} values)",
        )
        plan_grid = self.plan.grid
        targets = [np.ravel_multi_index(tuple(self.frequencies.T), plan_grid)]
        if self.plan.real:  # T(-g) has the singular values of T(g)
            targets.append(np.ravel_multi_index(tuple(((-self.frequencies) % np.asarray(plan_grid)).T), plan_grid))
        target_shape = (*self.spec.output_shape, values.shape[1])
        if is_tensor(values):
            grid = values.new_empty((self.plan.size, values.shape[1]))
            for target in targets:
                grid[sys.modules["torch"].from_numpy(target).to(values.device)] = values
            return grid.reshape(*plan_grid, -1).expand(*target_shape).contiguous()
        grid = np.empty((self.plan.size, values.shape[1]), dtype=values.dtype)
        for target in targets:
            grid[target] = values
        return np.ascontiguousarray(np.broadcast_to(grid.reshape(*plan_grid, -1), target_shape))


def _decompose_numpy(matrices: np.ndarray) -> np.ndarray:
    """Singular values, descending, of a batch ``(B, p, q)`` of matrices."""
    if min(matrices.shape[1:]) == 1:
        return np.linalg.norm(matrices.reshape(matrices.shape[0], matrices.shape[1] * matrices.shape[2]), axis=1)[
            :, None
        ]
    return np.linalg.svd(matrices, compute_uv=False)


def _decompose_torch(matrices: Any) -> Any:
    torch = sys.modules["torch"]
    if min(matrices.shape[1:]) == 1:
        return torch.linalg.vector_norm(matrices, dim=(1, 2))[:, None]
    return torch.linalg.svdvals(matrices)


class _Computation:
    """One spectrum computation: plan, chunking, memory check, scaling, backend choice."""

    def __init__(self, spec: ConvSpec, weight: Any, workers: int | None, max_memory: int | None) -> None:
        self.spec = spec
        self.weight = weight
        self.budget = resolve_budget(max_memory)
        torch = sys.modules.get("torch")
        self.use_torch = is_tensor(weight) and (
            weight.device.type != "cpu" or (weight.requires_grad and torch.is_grad_enabled())
        )
        self.keeps_graph = self.use_torch and weight.requires_grad and torch.is_grad_enabled()
        self.is_complex = bool(weight.is_complex()) if is_tensor(weight) else bool(np.iscomplexobj(weight))
        self.plan = plan = FrequencyPlan.create(spec, real=not self.is_complex)
        self.workers = 1 if self.use_torch else resolve_workers(workers)
        rows, cols = plan.block_shape  # what is decomposed, per group and frequency
        work = plan.count * spec.groups * min(rows, cols) ** 2 * max(rows, cols)
        if work < _PARALLEL_MIN_WORK:  # a few milliseconds: threads would cost more than they save
            self.workers = 1
        single = weight.dtype in (np.float32, np.complex64) or str(weight.dtype) in ("torch.float32", "torch.complex64")
        self.real_itemsize = 4 if single else 8
        self.rank = min(spec.block_shape) * spec.groups  # singular values per frequency
        # Bytes per frequency: its transfer matrices (complex), and its rows of the phase table (complex128
        # with the int64 steps and the looked-up roots beside it). A chunk holds about _CHUNK_BYTES of the larger.
        self.matrix_bytes = 2 * self.real_itemsize * rows * cols * spec.groups
        self.phase_bytes = 48 * plan.aliases * math.prod(spec.kernel_size)
        self.per_chunk = max(1, _CHUNK_BYTES // max(self.matrix_bytes, self.phase_bytes))
        if self.workers > 1:  # enough chunks to keep every worker busy
            self.per_chunk = max(1, min(self.per_chunk, -(-plan.count // (8 * self.workers))))

    def check_memory(self, *, expanded: bool) -> None:
        """Refuse, with the estimate, a request that would exceed the budget (integer arithmetic only)."""
        plan, spec = self.plan, self.spec
        concurrent = min(plan.count, self.workers * self.per_chunk)  # frequencies in flight at once
        index_bytes = 32 * (3 + 2 * spec.ndim)  # representatives(): two indices per frequency at most
        total = concurrent * (3 * self.matrix_bytes + self.phase_bytes + index_bytes)
        total += plan.count * (self.rank * self.real_itemsize + 8 * (spec.ndim + 1))  # the FrequencySpectrum
        if self.keeps_graph:  # autograd keeps every chunk's phases, matrices and factors until backward
            total += plan.count * (self.phase_bytes // 3 + 3 * self.matrix_bytes)
        if expanded:
            total += _expansion_bytes(spec, plan.count, self.rank, self.real_itemsize)
        what = (
            f"{spec.num_singular_values:,} singular values"
            if expanded
            else f"{plan.count:,} frequencies x {self.rank} singular values"
        )
        hint = ", or use frequency_spectrum(), which stores one row per frequency pair" if expanded else ""
        check_budget(total, self.budget, f"this request ({what})", hint)

    def run(self) -> FrequencySpectrum:
        plan = self.plan
        ranges = plan.chunks(self.per_chunk)  # lazy
        if self.use_torch:
            flat = flat_weight(self.weight)
            exponent = extreme_exponent(flat)
            flat = scale_down(flat, exponent)
            parts = [self._chunk_torch(flat, r) for r in ranges]
            values = sys.modules["torch"].cat([p[0] for p in parts])
        else:
            weight = self.weight.detach().cpu().numpy() if is_tensor(self.weight) else self.weight
            flat = flat_weight(weight)
            exponent = extreme_exponent(flat)
            flat = scale_down(flat, exponent)
            parts = run_chunks(lambda r: self._chunk_numpy(flat, r), ranges, self.workers)
            values = np.concatenate([p[0] for p in parts])
            if is_tensor(self.weight):
                values = sys.modules["torch"].from_numpy(values)
        return FrequencySpectrum(
            singular_values=scale_up(values, exponent),
            frequencies=np.concatenate([p[1] for p in parts]),
            multiplicity=np.concatenate([p[2] for p in parts]),
            plan=plan,
        )

    def _rows(self, values: Any, batch: int) -> Any:
        """(B*G, computed rank) -> (B, rank): the zeros of collapsed aliases added, each row descending."""
        zeros = self.plan.zeros_per_block
        if zeros:
            if is_tensor(values):
                values = sys.modules["torch"].nn.functional.pad(values, (0, zeros))
            else:
                values = np.pad(values, ((0, 0), (0, zeros)))
        values = values.reshape(batch, self.rank)
        if self.spec.groups > 1:  # union of the groups' values, descending per frequency
            if is_tensor(values):
                values = values.sort(dim=1, descending=True).values
            else:
                values = -np.sort(-values, axis=1)
        return values

    def _chunk_numpy(self, flat: np.ndarray, index_range: tuple[int, int]) -> tuple[Any, np.ndarray, np.ndarray]:
        freqs, multiplicity = self.plan.representatives(*index_range)
        values = _decompose_numpy(self.plan.transfer_numpy(flat, freqs))
        return self._rows(values, len(freqs)), freqs, multiplicity

    def _chunk_torch(self, flat: Any, index_range: tuple[int, int]) -> tuple[Any, np.ndarray, np.ndarray]:
        freqs, multiplicity = self.plan.representatives(*index_range)
        values = _decompose_torch(self.plan.transfer_torch(flat, freqs))
        return self._rows(values, len(freqs)), freqs, multiplicity


def frequency_spectrum(
    kernel: Any,
    input_shape: int | Sequence[int],
    *,
    layout: str | None = None,
    stride: int | Sequence[int] | None = None,
    dilation: int | Sequence[int] | None = None,
    groups: int | None = None,
    transposed: bool | None = None,
    workers: int | None = None,
    max_memory: int | None = None,
) -> FrequencySpectrum:
    """Singular values of a wrap-around convolution, frequency by frequency.

    Same arguments as :func:`singular_values`. Returns a :class:`FrequencySpectrum`: the
    singular values of each frequency's transfer matrix T(g) with the frequency and its
    multiplicity. ``.sorted()`` gives the full spectrum, ``.max()`` the operator norm,
    ``.to_grid()`` an array indexed by frequency (for heat maps).

    Example:
        >>> import numpy as np, convspectra as cs
        >>> fs = cs.frequency_spectrum(np.ones((1, 1, 2, 2)), (4, 4))
        >>> fs.singular_values.shape, int(fs.multiplicity.sum())
        ((10, 1), 16)
        >>> float(fs.max())
        4.0
        >>> fs.to_grid()[:, :, 0].round(3)
        array([[4.   , 2.828, 0.   , 2.828],
               [2.828, 2.   , 0.   , 2.   ],
               [0.   , 0.   , 0.   , 0.   ],
               [2.828, 2.   , 0.   , 2.   ]])
    """
    spec, weight = parse_layer(
        kernel, input_shape, layout=layout, stride=stride, dilation=dilation, groups=groups, transposed=transposed
    )
    computation = _Computation(spec, weight, workers, max_memory)
    computation.check_memory(expanded=False)
    return computation.run()


def singular_values(
    kernel: Any,
    input_shape: int | Sequence[int],
    *,
    layout: str | None = None,
    stride: int | Sequence[int] | None = None,
    dilation: int | Sequence[int] | None = None,
    groups: int | None = None,
    transposed: bool | None = None,
    workers: int | None = None,
    max_memory: int | None = None,
) -> Any:
    r"""All singular values of a convolution layer with wrap-around (circular) boundary.

    The layer maps an input of spatial size ``input_shape`` (channels ``in``) to its output
    (channels ``out``, size ``input_shape / stride``), reading tap ``t`` of the kernel at
    offset ``dilation * t`` modulo the input size on every axis. The result is exactly the
    multiset that ``svdvals`` of the layer's dense matrix would return, computed from small
    per-frequency matrices (Sedghi, Gupta & Long 2019, Theorem 8) instead of the dense SVD.

    Args:
        kernel: the weights: a NumPy array (or anything ``np.asarray`` takes, such as a JAX
            array), a ``torch.Tensor`` on any device, or a ``torch.nn.Conv1d/2d/3d`` /
            ``ConvTranspose1d/2d/3d`` module (its stride, dilation, groups and kind are used;
            its padding is not: this is always the wrap-around operator).
        input_shape: spatial size of the layer's input: an int (every axis) or one int per
            spatial axis of the kernel. For a transposed layer, the transposed layer's input.
        layout: ``"OIHW"`` (channels first: PyTorch; ``"OIW"``, ``"OIDHW"`` fix 1-D/3-D) or
            ``"HWIO"`` (channels last: TensorFlow, JAX/Flax; ``"WIO"``, ``"DHWIO"``). The
            number of spatial dimensions (1-3) comes from the kernel.
        stride: int or per-axis ints (default 1). Must divide every input side (not needed
            for a transposed layer, whose output is ``stride`` times its input).
        dilation: int or per-axis ints (default 1).
        groups: channel groups (default 1); depthwise when it equals the channel count.
        transposed: the kernel is the weight of a transposed convolution (PyTorch's
            ``(in, out/groups, k...)`` in "OIHW", TensorFlow's ``(k..., out, in)`` in "HWIO").
            Its singular values are those of its adjoint, the forward convolution.
        workers: threads for the NumPy path (default: every core when ``threadpoolctl`` is
            installed, else 1).
        max_memory: memory budget in bytes (default :data:`DEFAULT_MEMORY_BUDGET`, 4 GiB);
            larger requests are refused with the estimate, never run out of memory.

    Returns:
        1-D array of ``min(rows, columns)`` singular values in descending order: NumPy for
        NumPy input, a torch tensor on the kernel's device for torch input (differentiable
        when the kernel requires grad). float32 for float32/float16/bfloat16/complex64
        kernels, float64 for float64/complex128/integer kernels.

    Raises:
        ParameterTypeError: unsupported kernel type or dtype.
        ParameterError: bad layout, shapes, stride (not dividing the input), groups, or a
            kernel with NaN/Inf entries.
        MemoryBudgetError: the result would not fit in ``max_memory``.

    Example:
        >>> import numpy as np, convspectra as cs
        >>> kernel = np.ones((1, 1, 2, 2))         # footnote 2 of the paper
        >>> cs.singular_values(kernel, 4)[:4]
        array([4.        , 2.82842712, 2.82842712, 2.82842712])
        >>> sv = cs.singular_values(np.random.default_rng(0).normal(size=(64, 32, 3, 3)), 16, stride=2)
        >>> sv.shape                                # min(64 * 8 * 8, 32 * 16 * 16)
        (4096,)

    References:
        H. Sedghi, V. Gupta, P. M. Long. The Singular Values of Convolutional Layers. ICLR 2019.
    """
    spec, weight = parse_layer(
        kernel, input_shape, layout=layout, stride=stride, dilation=dilation, groups=groups, transposed=transposed
    )
    computation = _Computation(spec, weight, workers, max_memory)
    computation.check_memory(expanded=True)
    return computation.run().sorted()
