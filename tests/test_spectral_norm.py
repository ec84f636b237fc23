"""convspectra.nn.spectral_norm: the layer normalised by its true operator norm, a drop-in for PyTorch's.

Oracles, independent of the power iteration under test:

* the dense matrix of the layer as PyTorch's own module computes it (the identity basis fed
  through the module, bias removed), for the module's padding; its largest singular value by
  LAPACK;
* ``convspectra.operator.dense_matrix`` (wrap-around, tiled input) for ``padding="circular"``;
* ``convspectra.operator_norm`` at a real size.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import convspectra as cs
from convspectra.errors import ConvergenceWarning, ConvSpectraError, ParameterError, ParameterTypeError
from convspectra.nn import (
    certify,
    converge_spectral_norm,
    operator_norm_estimate,
    spectral_norm,
    spectral_norms,
)
from convspectra.nn._power import LayerOperator, sigma
from convspectra.nn.recording import eval_mode
from convspectra.operator import dense_matrix

# (module class, keyword arguments, input size): every kind the parametrization must handle.
LAYERS = [
    (nn.Conv1d, dict(in_channels=2, out_channels=3, kernel_size=3, padding=1), (7,)),
    (nn.Conv1d, dict(in_channels=2, out_channels=3, kernel_size=4, padding="same"), (8,)),
    (nn.Conv1d, dict(in_channels=2, out_channels=3, kernel_size=3, stride=2, padding=1), (8,)),
    (nn.Conv1d, dict(in_channels=3, out_channels=2, kernel_size=5, dilation=2, padding=4), (9,)),
    (nn.Conv2d, dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1, groups=2), (6, 4)),
    (nn.Conv2d, dict(in_channels=2, out_channels=3, kernel_size=3, padding=1, padding_mode="circular"), (5, 6)),
    (
        nn.Conv2d,
        dict(in_channels=2, out_channels=2, kernel_size=3, dilation=2, padding=2, padding_mode="circular"),
        (6, 6),
    ),
    (
        nn.Conv2d,
        dict(in_channels=2, out_channels=2, kernel_size=3, stride=2, padding=1, padding_mode="circular"),
        (6, 4),
    ),
    (nn.Conv2d, dict(in_channels=3, out_channels=2, kernel_size=(2, 3), padding="valid"), (5, 5)),
    (nn.Conv3d, dict(in_channels=2, out_channels=2, kernel_size=2, stride=(1, 2, 1), padding=(0, 1, 1)), (3, 4, 3)),
    (nn.ConvTranspose1d, dict(in_channels=2, out_channels=3, kernel_size=4, stride=2, padding=1), (5,)),
    (
        nn.ConvTranspose2d,
        dict(in_channels=4, out_channels=2, kernel_size=3, stride=2, padding=1, output_padding=1, groups=2),
        (3, 4),
    ),
    (
        nn.ConvTranspose3d,
        dict(in_channels=2, out_channels=2, kernel_size=3, stride=2, padding=1, dilation=2, output_padding=1),
        (2, 3, 2),
    ),
]
IDS = [f"{cls.__name__}-{i}" for i, (cls, _, _) in enumerate(LAYERS)]


def _layer(cls, kwargs, seed=0):
    torch.manual_seed(seed)
    return cls(**kwargs).double()


def module_matrix(module: nn.Module, input_shape) -> np.ndarray:
    """The dense matrix of ``module`` as PyTorch computes it (in eval mode, bias removed), column by column."""
    channels = module.in_channels
    cols = channels * int(np.prod(input_shape))
    with eval_mode(module), torch.no_grad():
        basis = torch.eye(cols, dtype=torch.float64).reshape(cols, channels, *input_shape)
        return (module(basis) - module(torch.zeros_like(basis[:1]))).reshape(cols, -1).T.numpy()


def top_singular_value(matrix: np.ndarray) -> float:
    return float(np.linalg.svd(matrix, compute_uv=False)[0])


@pytest.mark.parametrize(("cls", "kwargs", "size"), LAYERS, ids=IDS)
def test_the_operator_is_the_module_and_its_adjoint_is_exact(cls, kwargs, size):
    module = _layer(cls, kwargs)
    op = LayerOperator.of(module, size)
    matrix = module_matrix(module, size)
    x, y = torch.randn(op.input_shape, dtype=torch.float64), torch.randn(op.output_shape, dtype=torch.float64)
    with torch.no_grad():
        ax, aty = op.apply(x, module.weight), op.adjoint(y, module.weight)
    np.testing.assert_allclose(ax.flatten().numpy(), matrix @ x.flatten().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(aty.flatten().numpy(), matrix.T @ y.flatten().numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("max_norm", [1.0, 0.5])
@pytest.mark.parametrize(("cls", "kwargs", "size"), LAYERS, ids=IDS)
def test_after_convergence_the_true_norm_is_the_target(cls, kwargs, size, max_norm):
    module = spectral_norm(_layer(cls, kwargs), input_shape=size, max_norm=max_norm)
    (result,) = converge_spectral_norm(module, max_iter=20000).values()
    assert result.converged
    module.eval()
    true = top_singular_value(module_matrix(module, size))
    assert abs(true - max_norm) <= 1e-4 * max_norm, (true, result)
    # the estimate of the unnormalised layer is its true norm as well
    original = _layer(cls, kwargs)
    assert abs(result.sigma - top_singular_value(module_matrix(original, size))) <= 1e-4 * result.sigma


@pytest.mark.parametrize(("cls", "kwargs", "size"), LAYERS, ids=IDS)
def test_the_wrap_around_option_normalises_the_papers_operator(cls, kwargs, size):
    module = _layer(cls, kwargs)
    stride = module.stride
    grid = tuple(n * s for n, s in zip(size, stride, strict=True)) if "Transpose" in cls.__name__ else size
    if any(n % s for n, s in zip(grid, stride, strict=True)):
        with pytest.raises(ParameterError, match="multiple of the stride"):
            spectral_norm(module, input_shape=size, padding="circular")
        return
    spectral_norm(module, input_shape=size, padding="circular")
    converge_spectral_norm(module, max_iter=20000)
    module.eval()
    transposed = "Transpose" in cls.__name__
    geometry = dict(stride=stride, dilation=module.dilation, groups=module.groups, transposed=transposed)
    with torch.no_grad():
        matrix = dense_matrix(module.weight.numpy(), size, **geometry)
    assert abs(top_singular_value(matrix) - 1.0) <= 1e-4


def test_a_real_size_layer_reaches_its_target_by_operator_norm():
    torch.manual_seed(1)
    conv = spectral_norm(nn.Conv2d(64, 64, 3, padding=1), input_shape=32)
    converge_spectral_norm(conv)
    conv.eval()
    with torch.no_grad():
        true = float(cs.operator_norm(conv, 32, padding="module"))
        reshaped = float(torch.linalg.matrix_norm(conv.weight.reshape(64, -1), ord=2))
    assert abs(true - 1.0) <= 1e-4
    assert reshaped < 0.9  # what PyTorch's version would have set to 1 is well below 1 here


def test_one_iteration_per_step_tracks_the_norm_during_training():
    torch.manual_seed(0)
    model = nn.Sequential(
        spectral_norm(nn.Conv2d(3, 8, 3, padding=1)),
        nn.ReLU(),
        spectral_norm(nn.Conv2d(8, 8, 3, stride=2, padding=1)),
        nn.ReLU(),
        spectral_norm(nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1)),
        nn.ReLU(),
        spectral_norm(nn.Conv2d(4, 2, 3, padding=1, padding_mode="circular")),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    target = torch.randn(16, 2, 12, 12)
    for _ in range(200):
        optimizer.zero_grad()
        loss = (model(torch.randn(16, 3, 12, 12)) - target).square().mean()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        for name, module, parametrization in spectral_norms(model):
            true = float(cs.operator_norm(module, parametrization.input_shape, padding="module"))
            assert abs(true - 1.0) <= 0.02, (name, true)


def test_clip_leaves_small_layers_alone_and_clips_large_ones():
    torch.manual_seed(0)
    small, large = nn.Conv1d(2, 2, 3, padding=1).double(), nn.Conv1d(2, 2, 3, padding=1).double()
    with torch.no_grad():
        small.weight.mul_(1e-2)
        large.weight.mul_(1e2)
    before = small.weight.detach().clone()
    for module in (small, large):
        spectral_norm(module, input_shape=10, mode="clip", max_norm=0.5)
        assert converge_spectral_norm(module, max_iter=50000)[""].converged
        module.eval()
    torch.testing.assert_close(small.weight, before, rtol=0, atol=0)
    assert abs(top_singular_value(module_matrix(large, (10,))) - 0.5) <= 1e-6


# -- the drop-in claim ---------------------------------------------------------------------------


def _discriminator(norm) -> nn.Sequential:
    return nn.Sequential(
        norm(nn.Conv2d(3, 8, 3, padding=1)),
        nn.LeakyReLU(0.1),
        norm(nn.Conv2d(8, 16, 4, stride=2, padding=1)),
        nn.LeakyReLU(0.1),
        nn.Flatten(),
        norm(nn.Linear(16 * 4 * 4, 1)),
    )


def test_the_call_shape_is_pytorchs():
    for norm in (torch.nn.utils.parametrizations.spectral_norm, spectral_norm):
        conv = norm(nn.Conv2d(3, 4, 3), "weight", 2, 1e-12)
        assert conv.parametrizations.weight[0].n_power_iterations == 2
        conv = norm(nn.Conv2d(3, 4, 3), n_power_iterations=1, eps=1e-12, name="weight")
        assert isinstance(conv, nn.Conv2d) and parametrize.is_parametrized(conv, "weight")
    model = _discriminator(spectral_norm)
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 1)


def test_linear_layers_are_normalised_as_pytorch_does():
    torch.manual_seed(0)
    linear = nn.Linear(6, 4).double()
    theirs = torch.nn.utils.parametrizations.spectral_norm(copy.deepcopy(linear))
    ours = spectral_norm(copy.deepcopy(linear))
    converge_spectral_norm(ours)
    theirs.train()
    for _ in range(300):
        theirs.weight  # noqa: B018 - each access is one power iteration in training mode
    ours.eval(), theirs.eval()
    torch.testing.assert_close(ours.weight, theirs.weight, rtol=1e-7, atol=1e-9)


def test_state_dict_round_trip_into_a_fresh_lazy_model_and_eval_is_deterministic():
    torch.manual_seed(0)
    model = _discriminator(spectral_norm)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(4, 3, 8, 8)).mean().backward()
        optimizer.step()
    model.eval()
    x = torch.randn(5, 3, 8, 8)
    expected = model(x)
    buffers = {k: v.clone() for k, v in model.state_dict().items() if k.endswith(("_u", "_v"))}
    assert buffers["0.parametrizations.weight.0._v"].shape == (1, 3, 8, 8)
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)  # eval: no iteration, same output
    for key, value in model.state_dict().items():
        if key in buffers:
            torch.testing.assert_close(value, buffers[key], rtol=0, atol=0)

    fresh = _discriminator(spectral_norm)  # buffers still empty: no forward pass yet
    assert fresh.state_dict()["0.parametrizations.weight.0._v"].numel() == 0
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    torch.testing.assert_close(fresh(x), expected, rtol=0, atol=0)
    assert fresh[0].parametrizations.weight[0].input_shape == (8, 8)
    assert len(fresh[0]._forward_pre_hooks) == 0  # the recording hook is gone: the size came with the state


def test_loading_empty_vectors_into_a_started_model_is_refused_clearly():
    started = spectral_norm(nn.Conv1d(1, 1, 3), input_shape=8)
    empty = spectral_norm(nn.Conv1d(1, 1, 3))
    with pytest.raises(RuntimeError, match="saved before the first forward pass"):
        started.load_state_dict(empty.state_dict())


def test_remove_parametrizations_leaves_the_normalised_weight_on_a_plain_module():
    conv = spectral_norm(nn.Conv2d(2, 3, 3, padding=1))
    conv(torch.randn(1, 2, 6, 6))
    conv.eval()
    normalised = conv.weight.detach().clone()
    parametrize.remove_parametrizations(conv, "weight")
    assert type(conv) is nn.Conv2d and not parametrize.is_parametrized(conv)
    assert isinstance(conv.weight, nn.Parameter) and not conv._forward_pre_hooks
    torch.testing.assert_close(conv.weight.detach(), normalised, rtol=0, atol=0)


def test_the_gradient_flows_through_sigma_as_autograd_of_an_explicit_sigma():
    torch.manual_seed(0)
    conv = spectral_norm(nn.Conv2d(2, 3, 3, stride=2, padding=1).double(), input_shape=6)
    conv.eval()  # the vectors stay fixed: the explicit sigma below uses the same ones
    x = torch.randn(4, 2, 6, 6, dtype=torch.float64)
    conv(x).square().sum().backward()
    ours = conv.parametrizations.weight.original.grad.clone()

    parametrization = conv.parametrizations.weight[0]
    weight = conv.parametrizations.weight.original.detach().clone().requires_grad_(True)
    sigma = torch.sum(parametrization._u * torch.nn.functional.conv2d(parametrization._v, weight, stride=2, padding=1))
    out = torch.nn.functional.conv2d(x, weight / sigma, conv.bias, stride=2, padding=1)
    (expected,) = torch.autograd.grad(out.square().sum(), weight)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("cls", "kwargs", "size"), [*LAYERS, (nn.Linear, dict(in_features=5, out_features=3), ())], ids=[*IDS, "Linear"]
)
def test_the_gradient_of_sigma_is_autograd_through_the_modules_own_forward(cls, kwargs, size):
    module = _layer(cls, {**kwargs, "bias": False})
    op = LayerOperator.of(module, size)
    u, v = torch.randn(op.output_shape, dtype=torch.float64), torch.randn(op.input_shape, dtype=torch.float64)
    weight = module.weight.detach().clone().requires_grad_(True)
    explicit = torch.sum(u * torch.func.functional_call(module, {"weight": weight}, (v,)))
    (expected,) = torch.autograd.grad(explicit, weight)
    ours = sigma(op, weight, u, v)
    torch.testing.assert_close(ours.detach(), explicit.detach(), rtol=1e-12, atol=1e-12)
    (gradient,) = torch.autograd.grad(ours, weight)
    torch.testing.assert_close(gradient, expected, rtol=1e-12, atol=1e-12)


def test_in_training_mode_the_weight_is_divided_by_sigma_of_the_new_vectors():
    torch.manual_seed(0)
    conv = spectral_norm(nn.Conv2d(2, 3, 3, padding=1).double(), input_shape=6)
    weight = conv.weight  # training mode: one step, then W / sigma
    parametrization = conv.parametrizations.weight[0]
    original = conv.parametrizations.weight.original
    explicit = torch.sum(parametrization._u * torch.nn.functional.conv2d(parametrization._v, original, padding=1))
    torch.testing.assert_close(weight, original / explicit, rtol=1e-12, atol=1e-14)


def test_training_mode_updates_the_vectors_and_eval_does_not():
    conv = spectral_norm(nn.Conv1d(2, 2, 3, padding=1), input_shape=8)
    parametrization = conv.parametrizations.weight[0]
    before = parametrization._v.clone()
    conv(torch.randn(1, 2, 8))
    assert not torch.equal(parametrization._v, before)
    conv.eval()
    after = parametrization._v.clone()
    conv(torch.randn(1, 2, 8))
    assert torch.equal(parametrization._v, after)


def test_a_copy_made_before_the_first_forward_records_into_the_copy():
    conv = spectral_norm(nn.Conv2d(1, 2, 3))
    twin = copy.deepcopy(conv)
    twin(torch.randn(1, 1, 9, 9))
    assert twin.parametrizations.weight[0].input_shape == (9, 9)
    assert conv.parametrizations.weight[0].input_shape is None
    with pytest.raises(ConvSpectraError, match="run one forward pass first"):
        conv.weight  # noqa: B018


def test_autocast_runs_and_the_vectors_keep_the_weights_dtype():
    torch.manual_seed(0)
    conv = spectral_norm(nn.Conv2d(3, 4, 3, padding=1), input_shape=8)
    reference = copy.deepcopy(conv)
    x = torch.randn(2, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(x)
    assert out.dtype == torch.bfloat16
    reference(x)
    parametrization = conv.parametrizations.weight[0]
    assert parametrization._u.dtype == torch.float32
    torch.testing.assert_close(parametrization._v, reference.parametrizations.weight[0]._v, rtol=0, atol=0)


def test_a_compiled_model_gives_the_same_output_and_vectors():
    torch.manual_seed(0)
    model = _discriminator(spectral_norm)
    model(torch.randn(1, 3, 8, 8))  # records the sizes
    twin = copy.deepcopy(model)
    compiled = torch.compile(twin, backend="eager")
    x = torch.randn(4, 3, 8, 8)
    for _ in range(2):  # training mode: every call also runs one power-iteration step
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-6, atol=1e-6)
    for (key, ours), (_, theirs) in zip(model.state_dict().items(), twin.state_dict().items(), strict=True):
        torch.testing.assert_close(theirs, ours, rtol=1e-6, atol=1e-6, msg=key)


# -- certify and the functional estimate -----------------------------------------------------------


def test_certify_brackets_every_normalised_layer():
    torch.manual_seed(0)
    model = _discriminator(spectral_norm)
    model(torch.randn(1, 3, 8, 8))
    assert all(result.converged for result in converge_spectral_norm(model, max_iter=50000).values())
    model.train()
    bounds = certify(model)
    assert list(bounds) == ["0", "2", "5"]
    assert model.training  # the flags are restored
    for name, bracket in bounds.items():
        assert bracket.lower <= 1 + 1e-4 and bracket.upper >= 1 - 1e-4, (name, bracket)
        assert bracket.upper - bracket.lower <= 1e-4, (name, bracket)


def test_operator_norm_estimate_continues_across_calls_and_is_differentiable():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1).double()
    exact = float(cs.operator_norm(conv.weight.detach().numpy(), 8, padding=1, stride=2))
    first = float(operator_norm_estimate(conv, 8).detach())
    for _ in range(300):
        sigma = operator_norm_estimate(conv, 8)
    assert first <= float(sigma.detach()) + 1e-12
    assert abs(float(sigma.detach()) - exact) <= 1e-8 * exact
    sigma.backward()
    assert conv.weight.grad is not None and float(conv.weight.grad.norm()) > 0
    assert not conv.state_dict().keys() - {"weight", "bias"}  # the state is not in the module's checkpoint


def test_the_estimate_restarts_when_the_size_changes():
    torch.manual_seed(0)
    conv = nn.Conv1d(1, 1, 3, padding=1)
    operator_norm_estimate(conv, 8, n_power_iterations=50)
    sigma = operator_norm_estimate(conv, 12, n_power_iterations=5000)  # new vectors of the new size
    with torch.no_grad():
        assert abs(float(sigma.detach()) - float(cs.operator_norm(conv, 12, padding="module"))) <= 1e-6


# -- errors ------------------------------------------------------------------------------------------


def test_bad_input_gets_one_clear_error():
    with pytest.raises(ParameterTypeError, match="module: expected a Conv1d"):
        spectral_norm(nn.ReLU())
    with pytest.raises(ParameterError, match="padding_mode is 'reflect'"):
        spectral_norm(nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect"), input_shape=8)
    with pytest.raises(ParameterError, match="name: expected 'weight'"):
        spectral_norm(nn.Conv2d(1, 1, 3), "bias")
    with pytest.raises(ParameterError, match="mode: expected one of"):
        spectral_norm(nn.Conv2d(1, 1, 3), mode="scale")
    with pytest.raises(ParameterError, match="max_norm"):
        spectral_norm(nn.Conv2d(1, 1, 3), max_norm=0)
    with pytest.raises(ParameterError, match="n_power_iterations"):
        spectral_norm(nn.Conv2d(1, 1, 3), n_power_iterations=0)
    with pytest.raises(ParameterError, match="input_shape"):
        spectral_norm(nn.Conv2d(1, 1, 5), input_shape=3)
    with pytest.raises(ParameterError, match="already has it"):
        spectral_norm(spectral_norm(nn.Conv2d(1, 1, 3), input_shape=8))


def test_an_input_too_small_at_the_first_pass_keeps_the_hook_for_a_later_one():
    conv = spectral_norm(nn.Conv1d(1, 1, 5))
    with pytest.raises(Exception, match="input_shape"):
        conv(torch.randn(1, 1, 3))
    conv(torch.randn(1, 1, 9))
    assert conv.parametrizations.weight[0].input_shape == (9,)


def test_converge_warns_when_the_budget_is_too_small():
    conv = spectral_norm(nn.Conv2d(4, 4, 3, padding=1), input_shape=16)
    with pytest.warns(ConvergenceWarning, match="did not reach"):
        (result,) = converge_spectral_norm(conv, tol=1e-30, max_iter=3).values()
    assert not result.converged and result.iterations == 3


# -- DistributedDataParallel: a real 2-process gloo run ----------------------------------------------


def _ddp_worker(rank: int, port: int, out: str) -> None:
    import os

    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.manual_seed(rank)  # different weights per rank: DDP broadcasts rank 0's at construction
        model = nn.parallel.DistributedDataParallel(_discriminator(spectral_norm))  # vectors still empty (lazy)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        generator = torch.Generator().manual_seed(100 + rank)  # different data per rank
        for step in range(4):
            optimizer.zero_grad()
            model(torch.randn(3, 3, 8, 8, generator=generator)).mean().backward()
            optimizer.step()
            if step == 1 and rank == 1:  # knock rank 1's vectors off: the next forward's broadcast restores them
                with torch.no_grad():
                    for _, _, parametrization in spectral_norms(model.module):
                        parametrization._v.add_(1.0)
        torch.save({k: v.clone() for k, v in model.module.state_dict().items()}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_keep_identical_vectors(tmp_path):
    import socket

    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this torch build")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_ddp_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    zero, one = (torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2))
    vectors = [key for key in zero if key.endswith(("_u", "_v"))]
    assert len(vectors) == 6 and zero["0.parametrizations.weight.0._v"].shape == (1, 3, 8, 8)
    for key in zero:
        assert torch.equal(zero[key], one[key]), key
