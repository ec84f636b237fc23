"""convspectra.nn: the periodic projector, the parametrization, the penalties and the Lightning callback.

Oracles: ``convspectra.clip_operator_norm`` called directly (the projector must reproduce it
bit for bit), PyTorch's own ``F.conv*`` (the parametrized layer's output), and the SVD of the
dense operator matrix built by feeding the identity basis through PyTorch's convolution
(``convspectra.operator.dense_matrix``) for every operator norm.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import convspectra as cs
from convspectra.errors import ConvSpectraError, ParameterError, ParameterTypeError
from convspectra.nn import (
    OperatorNormProjector,
    capture_input_shapes,
    conv_layers,
    l1_penalty,
    operator_norm_penalty,
    register_operator_norm_constraint,
    remove_operator_norm_constraint,
)
from convspectra.operator import dense_matrix


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models on a shared 2-core box: one torch thread avoids OpenMP contention (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Enough alternating iterations for these small layers to end within c*(1 + 1e-3) (checked by the oracle).
CONVERGED = 60


def geometry(module: nn.Module) -> dict:
    return {
        "stride": tuple(module.stride),
        "dilation": tuple(module.dilation),
        "groups": module.groups,
        "transposed": isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)),
    }


def direct(module: nn.Module, weight: torch.Tensor, size, max_norm: float, **options) -> torch.Tensor:
    """What the projector must produce: the core called by hand on a float64 copy, cast back."""
    out = cs.clip_operator_norm(weight.detach().double(), size, max_norm, **options, **geometry(module))
    return out.to(weight.dtype)


def dense_norm(module: nn.Module, weight: torch.Tensor, size) -> float:
    """Largest singular value of the layer's dense circular operator (the oracle)."""
    matrix = dense_matrix(weight.detach().double().numpy(), size, **geometry(module))
    return float(np.linalg.svd(matrix, compute_uv=False)[0])


def small_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 3, 1),
        nn.Flatten(),
    )


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, size: int = 8) -> None:
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        optimizer.zero_grad()
        model(torch.randn(4, 2, size, size, generator=generator)).square().mean().backward()
        optimizer.step()


# --- the projector ------------------------------------------------------------------------------


def test_projects_exactly_every_n_steps_and_handle_removes_it():
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    projector = OperatorNormProjector(model, 0.5, every=3)
    seen = []
    original = projector.project_now

    def spy() -> None:
        seen.append(projector.steps)
        original()

    projector.project_now = spy
    handle = projector.attach(optimizer)
    train_steps(model, optimizer, 10)
    assert seen == [3, 6, 9]
    assert projector.steps == 10 and projector.projections == 3
    handle.remove()
    train_steps(model, optimizer, 5)
    assert seen == [3, 6, 9] and projector.steps == 10


def test_projection_step_equals_direct_call_and_other_steps_leave_weights():
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    projector = OperatorNormProjector(model, 0.7, every=2, iterations=3)
    projector.attach(optimizer)
    reference = copy.deepcopy(model)
    reference_optimizer = torch.optim.SGD(reference.parameters(), lr=0.5)
    for step in range(1, 5):
        train_steps(model, optimizer, 1)
        train_steps(reference, reference_optimizer, 1)  # same data: same gradient step
        convs = [(m, r) for m, r in zip(model, reference, strict=True) if isinstance(m, nn.Conv2d)]
        for (mine, ref), size in zip(convs, [(8, 8), (8, 8), (4, 4)], strict=True):
            if step % 2 == 0:
                with torch.no_grad():
                    ref.weight.copy_(direct(ref, ref.weight, size, 0.7, iterations=3))
            assert torch.equal(mine.weight, ref.weight), f"step {step}"
    assert projector.input_shapes == {"0": (8, 8), "2": (8, 8), "4": (4, 4)}


def test_layers_of_equal_shape_are_batched_and_match_one_by_one_calls(monkeypatch):
    torch.manual_seed(4)
    model = nn.Sequential(*[nn.Conv2d(3, 3, 3, padding=1) for _ in range(3)], nn.Conv2d(3, 3, 3, stride=2))
    before = [m.weight.detach().clone() for m in model]
    calls = []
    many = cs.clip_operator_norm_many
    monkeypatch.setattr(
        cs.projection, "clip_operator_norm_many", lambda k, *a, **kw: calls.append(len(k)) or many(k, *a, **kw)
    )
    projector = OperatorNormProjector(model, {"0": 0.5, "1": 0.5, "2": 0.7, "3": 0.5}, iterations=2)
    model(torch.zeros(1, 3, 6, 6))
    projector.project_now()
    assert calls == [4]  # one batched call for the whole model
    for module, weight, bound, size in zip(model, before, (0.5, 0.5, 0.7, 0.5), (6, 6, 6, 6), strict=True):
        expected = direct(module, weight, size, bound, iterations=2)
        scale = float(expected.abs().max())
        torch.testing.assert_close(module.weight, expected, rtol=0, atol=64 * torch.finfo(torch.float32).eps * scale)


def test_hooks_removed_after_capture_and_sizes_recorded():
    model = small_model()
    projector = OperatorNormProjector(model, 1.0)
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    assert all(len(m._forward_pre_hooks) == 1 for m in convs)
    model(torch.zeros(1, 2, 12, 12))
    assert all(len(m._forward_pre_hooks) == 0 for m in convs)
    assert projector.input_shapes == {"0": (12, 12), "2": (12, 12), "4": (6, 6)}
    model(torch.zeros(1, 2, 16, 16))  # later sizes do not change the recorded ones
    assert projector.input_shapes["0"] == (12, 12)


@pytest.mark.parametrize(
    "module, size",
    [
        (nn.Conv1d(3, 4, 5, dilation=2), (16,)),
        (nn.Conv3d(2, 3, 3, stride=(1, 2, 2), padding=1), (4, 4, 6)),
        (nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1), (4, 5)),
        (nn.ConvTranspose1d(4, 6, 3, groups=2), (7,)),
        (nn.ConvTranspose3d(2, 2, 2, stride=2), (2, 3, 2)),
        (nn.Conv2d(4, 6, 3, groups=2, padding=1, padding_mode="circular"), (5, 5)),
    ],
    ids=["conv1d-dilated", "conv3d-strided", "convT2d-strided", "convT1d-groups", "convT3d", "conv2d-groups"],
)
def test_every_conv_kind_lands_in_the_ball_and_matches_direct_call(module, size):
    torch.manual_seed(3)
    with torch.no_grad():
        module.weight.mul_(4.0)
    model = nn.Sequential(module)
    before = module.weight.detach().clone()
    projector = OperatorNormProjector(model, 0.9, iterations=CONVERGED)
    ndim = len(size)
    channels = module.in_channels
    model(torch.zeros(1, channels, *size))
    assert projector.input_shapes == {"0": size}
    assert dense_norm(module, before, size) > 1.5  # the test starts outside the ball
    projector.project_now()
    assert torch.equal(module.weight, direct(module, before, size, 0.9, iterations=CONVERGED))
    assert dense_norm(module, module.weight, size) <= 0.9 * (1 + 1e-3)
    assert module.weight.shape == before.shape and ndim == module.weight.dim() - 2


def test_subset_and_per_layer_bounds():
    model = small_model()
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    bounds = {"0": 0.3, model[4]: 0.2}
    projector = OperatorNormProjector(model, bounds)
    assert [layer.name for layer in projector.layers] == ["0", "4"]
    model(torch.zeros(1, 2, 8, 8))
    projector.project_now()
    assert torch.equal(model[2].weight, weights["2.weight"])  # not selected: untouched
    assert torch.equal(model[0].weight, direct(model[0], weights["0.weight"], (8, 8), 0.3))
    assert torch.equal(model[4].weight, direct(model[4], weights["4.weight"], (4, 4), 0.2))
    for name in ("0.bias", "2.bias", "4.bias"):
        assert torch.equal(dict(model.named_parameters())[name], weights[name])

    by_predicate = OperatorNormProjector(model, 1.0, layers=lambda name, m: m.stride == (2, 2))
    assert [layer.name for layer in by_predicate.layers] == ["2"]
    by_names = OperatorNormProjector(model, {"0": 1.0, "2": 2.0}, layers=["0", model[2]])
    assert [(layer.name, layer.max_norm) for layer in by_names.layers] == [("0", 1.0), ("2", 2.0)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtype_and_device_kept(dtype):
    model = small_model().to(dtype)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    projector = OperatorNormProjector(model, 0.5, input_shapes={"0": 8, "2": 8, "4": 4})
    projector.project_now()
    for (name, param), size in zip(
        [(n, p) for n, p in model.named_parameters() if n.endswith("weight")], [8, 8, 4], strict=True
    ):
        assert param.dtype == dtype and param.device.type == "cpu" and isinstance(param, nn.Parameter)
        module = model[int(name.split(".")[0])]
        expected = direct(module, before[name], size, 0.5)
        assert torch.equal(param, expected), name


def test_capture_helper_leaves_batchnorm_statistics_and_mode():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.Conv2d(2, 2, 3, stride=2))
    model.train()
    stats = model[1].running_mean.clone()
    assert capture_input_shapes(model, torch.randn(2, 1, 6, 6)) == {"0": (6, 6), "2": (6, 6)}
    assert torch.equal(model[1].running_mean, stats) and model.training and model[1].training


def test_stride_not_dividing_the_input_is_refused_at_capture():
    model = nn.Sequential(nn.Conv2d(1, 1, 3, stride=2))
    OperatorNormProjector(model, 1.0)
    with pytest.raises(ParameterError, match=r"input_shape: layer '0' has stride \(2, 2\).*\(7, 7\)"):
        model(torch.zeros(1, 1, 7, 7))
    with pytest.raises(ParameterError, match="stride"):
        OperatorNormProjector(nn.Sequential(nn.Conv1d(1, 1, 3, stride=3)), 1.0, input_shapes=8)


def test_a_refused_size_leaves_the_layer_to_be_recorded_by_a_later_valid_pass():
    model = nn.Sequential(nn.Conv2d(1, 1, 3, stride=2))
    projector = OperatorNormProjector(model, 1.0)
    with pytest.raises(ParameterError, match=r"input_shape: layer '0' has stride \(2, 2\).*\(7, 7\)"):
        model(torch.zeros(1, 1, 7, 7))
    assert projector.input_shapes == {"0": None} and len(model[0]._forward_pre_hooks) == 1
    model(torch.zeros(1, 1, 8, 8))
    assert projector.input_shapes == {"0": (8, 8)} and len(model[0]._forward_pre_hooks) == 0
    # the parametrization likewise: the failing pass raises, the next valid one defines the weight
    conv = register_operator_norm_constraint(nn.Conv2d(1, 2, 3, stride=2), 0.5, iterations=2)
    with pytest.raises(ParameterError, match=r"input_shape: layer 'module' has stride \(2, 2\).*\(7, 7\)"):
        conv(torch.zeros(1, 1, 7, 7))
    conv(torch.zeros(1, 1, 8, 8))
    assert conv.parametrizations.weight[0].input_shape == (8, 8) and len(conv._forward_pre_hooks) == 0
    original = conv.parametrizations.weight.original
    assert torch.equal(conv.weight, direct(conv, original, (8, 8), 0.5, iterations=2))


def test_a_deep_copy_made_before_the_first_forward_pass_records_into_the_copy_only():
    convs = [0, 2, 4]
    unknown = {"0": None, "2": None, "4": None}
    model = small_model()
    projector = OperatorNormProjector(model, 1.0)
    twin = copy.deepcopy(model)
    twin(torch.zeros(1, 2, 12, 12))
    assert projector.input_shapes == unknown  # the copy's hooks wrote into copies of the records
    assert all(len(model[i]._forward_pre_hooks) == 1 and len(twin[i]._forward_pre_hooks) == 0 for i in convs)
    model(torch.zeros(1, 2, 8, 8))
    assert projector.input_shapes == {"0": (8, 8), "2": (8, 8), "4": (4, 4)}

    # the model copied together with its projector: the copy's projector learns the copy's sizes
    model = small_model()
    projector = OperatorNormProjector(model, 1.0)
    twin_model, twin_projector = copy.deepcopy((model, projector))
    assert [layer.module for layer in twin_projector.layers] == [twin_model[i] for i in convs]
    twin_model(torch.zeros(1, 2, 12, 12))
    assert twin_projector.input_shapes == {"0": (12, 12), "2": (12, 12), "4": (6, 6)}
    assert projector.input_shapes == unknown
    lone = copy.deepcopy(projector)  # a projector alone: its (copied) layers record when they run
    lone.layers[0].module(torch.zeros(1, 2, 6, 6))
    assert lone.input_shapes["0"] == (6, 6) and projector.input_shapes == unknown
    model(torch.zeros(1, 2, 16, 16))
    assert projector.input_shapes == {"0": (16, 16), "2": (16, 16), "4": (8, 8)}

    # a constrained module copied before its first forward pass
    torch.manual_seed(9)
    conv = register_operator_norm_constraint(nn.Conv2d(2, 3, 3), 0.5, iterations=2)
    twin_conv = copy.deepcopy(conv)
    twin_conv(torch.zeros(1, 2, 6, 6))
    assert twin_conv.parametrizations.weight[0].input_shape == (6, 6)
    assert conv.parametrizations.weight[0].input_shape is None and len(conv._forward_pre_hooks) == 1
    with pytest.raises(ConvSpectraError, match="input size of this Conv2d is not known yet"):
        _ = conv.weight
    conv(torch.zeros(1, 2, 9, 9))
    assert conv.parametrizations.weight[0].input_shape == (9, 9)
    for module, size in ((twin_conv, (6, 6)), (conv, (9, 9))):
        original = module.parametrizations.weight.original
        assert torch.equal(module.weight, direct(module, original, size, 0.5, iterations=2))


def test_projection_before_any_forward_is_a_clear_error():
    projector = OperatorNormProjector(small_model(), 1.0)
    with pytest.raises(ConvSpectraError, match="input size of layer '0' is not known yet"):
        projector.project_now()


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"max_norm": 0.0}, ParameterError, "max_norm: expected a positive finite number, got 0.0"),
        ({"max_norm": "1"}, ParameterTypeError, "max_norm: expected a positive finite number"),
        ({"max_norm": {"9": 1.0}}, ParameterError, "max_norm: expected names of conv layers"),
        ({"max_norm": {"0": 1.0}, "layers": ["0", "2"]}, ParameterError, "no bound for|none for '2'"),
        ({"max_norm": {"0": 1.0, "2": 1.0}, "layers": ["0"]}, ParameterError, "bounds only for selected"),
        ({"layers": ["1"]}, ParameterError, "layers: expected names of conv layers"),
        ({"layers": [nn.ReLU()]}, ParameterError, "layers: expected conv modules"),
        ({"layers": "0"}, ParameterTypeError, "layers: expected None, an iterable"),
        ({"layers": lambda n, m: False}, ParameterError, "at least one conv layer"),
        ({"every": 0}, ParameterError, "every: expected a positive int, got 0"),
        ({"every": 2.5}, ParameterTypeError, "every: expected a positive int"),
        ({"iterations": 0}, ParameterError, "iterations: expected a positive int"),
        ({"method": "svd"}, ParameterError, "method: expected one of"),
        ({"rescale": "yes"}, ParameterTypeError, "rescale: expected True or False"),
        ({"min_norm": 2.0}, ParameterError, r"min_norm: expected a number in \[0, max_norm\]"),
        ({"distributed": "yes"}, ParameterTypeError, "distributed: expected None, True or False"),
        ({"input_shapes": {"0": (8,)}}, ParameterError, "input_shape: expected 2 spatial sizes"),
    ],
)
def test_projector_errors(kwargs, error, message):
    options = {"max_norm": 1.0, **kwargs}
    with pytest.raises(error, match=message):
        OperatorNormProjector(small_model(), **options)


def test_projector_refuses_models_without_convs_and_bad_optimizers():
    with pytest.raises(ParameterError, match="model: expected a model with Conv1d/2d/3d"):
        OperatorNormProjector(nn.Linear(2, 2), 1.0)
    with pytest.raises(ParameterTypeError, match=r"model: expected a torch\.nn\.Module"):
        OperatorNormProjector("model", 1.0)
    projector = OperatorNormProjector(small_model(), 1.0)
    with pytest.raises(ParameterTypeError, match=r"optimizer: expected a torch\.optim\.Optimizer"):
        projector.attach(object())
    with pytest.raises(ConvSpectraError, match=r"distributed: expected an initialised torch\.distributed"):
        OperatorNormProjector(small_model(), 1.0, input_shapes=8, distributed=True).project_now()


def test_projector_refuses_a_parametrized_layer():
    conv = register_operator_norm_constraint(nn.Conv2d(1, 1, 3), 1.0, input_shape=6)
    with pytest.raises(ParameterError, match="has a parametrization on its weight"):
        OperatorNormProjector(nn.Sequential(conv), 1.0)


def test_rescale_guarantees_the_bound_after_a_single_iteration():
    model = small_model()
    with torch.no_grad():
        for module in model:
            if isinstance(module, nn.Conv2d):
                module.weight.mul_(5.0)
    model = model.double()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    projector = OperatorNormProjector(model, 0.5, input_shapes={"0": 8, "2": 8, "4": 4}, rescale=True)
    projector.project_now()
    for index, size in ((0, 8), (2, 8), (4, 4)):
        module = model[index]
        once = direct(module, before[f"{index}.weight"], size, 0.5)
        sigma = dense_norm(module, once, size)
        if module.kernel_size == (3, 3):  # one iteration alone does not reach the ball here ...
            assert sigma > 0.5 * (1 + 1e-3)
        else:  # ... while a 1x1 kernel is clipped exactly (its transfer matrix is the same at every frequency)
            assert sigma <= 0.5 * (1 + 1e-12)
        torch.testing.assert_close(module.weight, once * (0.5 / sigma), rtol=1e-12, atol=0)
        assert dense_norm(module, module.weight, size) <= 0.5 * (1 + 1e-12)  # ... the rescale does


def test_min_norm_band_is_passed_through():
    model = small_model()
    before = model[0].weight.detach().clone()
    projector = OperatorNormProjector(model, 1.0, layers=["0"], input_shapes=8, min_norm=0.5, iterations=2)
    projector.project_now()
    expected = direct(model[0], before, 8, 1.0, min_norm=0.5, iterations=2)
    assert torch.equal(model[0].weight, expected)


# --- the parametrization ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "module, size, conv",
    [
        (nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular"), (6, 6), None),
        (nn.Conv1d(2, 4, 3, stride=2, groups=2), (8,), F.conv1d),
        (nn.ConvTranspose2d(3, 2, 3, stride=2), (3, 4), F.conv_transpose2d),
    ],
    ids=["conv2d-circular", "conv1d-strided-groups", "convT2d"],
)
def test_parametrized_forward_equals_conv_with_projected_weight(module, size, conv):
    torch.manual_seed(5)
    with torch.no_grad():
        module.weight.mul_(3.0)
    original = module.weight.detach().clone()
    register_operator_norm_constraint(module, 0.8, input_shape=size, iterations=4)
    projected = direct(module, original, size, 0.8, iterations=4)
    assert torch.equal(module.weight, projected)
    x = torch.randn(2, module.in_channels, *size, requires_grad=True)
    out = module(x)
    if conv is None:  # circular padding: the module's own functional path
        expected = module._conv_forward(x, projected, module.bias)
    else:
        kwargs = {"stride": module.stride, "padding": module.padding, "dilation": module.dilation}
        if conv is F.conv_transpose2d:
            kwargs["output_padding"] = module.output_padding
        expected = conv(x, projected, module.bias, groups=module.groups, **kwargs)
    assert torch.equal(out, expected)
    # straight-through gradient: d loss / d original = d loss / d (projected weight)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    leaf = projected.clone().requires_grad_(True)
    if conv is None:
        module._conv_forward(x.detach(), leaf, module.bias).backward(grad_out)
    else:
        conv(x.detach(), leaf, module.bias, groups=module.groups, **kwargs).backward(grad_out)
    assert torch.equal(module.parametrizations.weight.original.grad, leaf.grad)


def test_parametrization_follows_optimizer_updates_and_remove_bakes_it_in():
    torch.manual_seed(6)
    conv = nn.Conv2d(2, 3, 3, padding=1)
    with torch.no_grad():
        conv.weight.mul_(3.0)
    register_operator_norm_constraint(conv, 0.6, iterations=CONVERGED)
    with pytest.raises(ConvSpectraError, match="input size of this Conv2d is not known yet"):
        _ = conv.weight
    optimizer = torch.optim.SGD(conv.parameters(), lr=0.3)
    parameter = conv.parametrizations.weight.original
    for _ in range(3):
        optimizer.zero_grad()
        conv(torch.randn(2, 2, 6, 6)).square().sum().backward()
        optimizer.step()
        expected = direct(conv, parameter, (6, 6), 0.6, iterations=CONVERGED)
        assert torch.equal(conv.weight, expected)  # recomputed after each in-place update
    with torch.no_grad():
        parameter.data.mul_(2.0)  # a .data write is seen too
    assert torch.equal(conv.weight, direct(conv, parameter, (6, 6), 0.6, iterations=CONVERGED))
    baked = conv.weight.detach().clone()
    remove_operator_norm_constraint(conv)
    assert type(conv.weight) is nn.Parameter and conv.weight is parameter
    assert torch.equal(conv.weight, baked)
    assert dense_norm(conv, conv.weight, (6, 6)) <= 0.6 * (1 + 1e-3)
    assert len(conv._forward_pre_hooks) == 0


def test_parametrization_errors():
    with pytest.raises(ParameterTypeError, match="module: expected a Conv1d/2d/3d"):
        register_operator_norm_constraint(nn.Linear(2, 2), 1.0)
    with pytest.raises(ParameterError, match="input_shape: layer 'module' has stride"):
        register_operator_norm_constraint(nn.Conv2d(1, 1, 3, stride=2), 1.0, input_shape=5)
    with pytest.raises(ParameterError, match="max_norm: expected a positive finite number"):
        register_operator_norm_constraint(nn.Conv2d(1, 1, 3), -1.0, input_shape=5)
    conv = register_operator_norm_constraint(nn.Conv2d(1, 1, 3), 1.0, input_shape=5)
    with pytest.raises(ParameterError, match="has a parametrization on its weight"):
        register_operator_norm_constraint(conv, 1.0, input_shape=5)
    with pytest.raises(ParameterError, match="module: expected a Conv1d with an operator-norm constraint"):
        remove_operator_norm_constraint(nn.Conv1d(1, 1, 3))
    pending = register_operator_norm_constraint(nn.Conv2d(1, 1, 3), 1.0)
    with pytest.raises(ConvSpectraError, match="run one forward pass before removing"):
        remove_operator_norm_constraint(pending)


# --- the penalties ------------------------------------------------------------------------------


def penalty_model() -> nn.Sequential:
    torch.manual_seed(7)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 4, 3, stride=2), nn.ConvTranspose1d(2, 3, 3, groups=1)
    )
    with torch.no_grad():
        model[1].weight.mul_(0.05)  # under its bound: a zero hinge term
    return model.double()


SIZES = {"0": (6, 6), "1": (6, 6), "2": (5,)}


def test_operator_norm_penalty_matches_the_dense_oracle_and_has_finite_gradients():
    model = penalty_model()
    bounds = {"0": 0.5, "1": 2.0, "2": 0.4}
    value = operator_norm_penalty(model, bounds, SIZES)
    norms = {name: dense_norm(model[int(name)], model[int(name)].weight, SIZES[name]) for name in SIZES}
    assert norms["1"] < bounds["1"] and norms["0"] > bounds["0"] and norms["2"] > bounds["2"]
    expected = sum(max(norms[n] - bounds[n], 0.0) for n in SIZES)
    assert value.dtype == torch.float64 and value.dim() == 0
    assert abs(value.item() - expected) <= 1e-12 * max(norms.values()) * 10
    value.backward()
    for name, module in zip(SIZES, model, strict=True):
        grad = module.weight.grad
        assert torch.isfinite(grad).all()
        if name == "1":
            assert torch.equal(grad, torch.zeros_like(grad))  # under its bound
    # the gradient is that of sigma_max: check it against central finite differences
    layer, size = model[0], SIZES["0"]
    direction = torch.randn_like(layer.weight)
    step = 1e-6
    with torch.no_grad():
        plus = dense_norm(layer, layer.weight + step * direction, size)
        minus = dense_norm(layer, layer.weight - step * direction, size)
    numeric = (plus - minus) / (2 * step)
    assert abs(float((layer.weight.grad * direction).sum()) - numeric) <= 1e-5 * max(1.0, abs(numeric))


def test_operator_norm_penalty_gradient_finite_at_a_zero_kernel_and_float32():
    conv = nn.Conv2d(2, 2, 3, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
    penalty = operator_norm_penalty(conv, 1.0, 4)
    penalty.backward()
    assert penalty.item() == 0.0 and torch.isfinite(conv.weight.grad).all()
    conv32 = nn.Conv2d(2, 2, 3)
    penalty32 = operator_norm_penalty(conv32, 1e-3, 5)
    penalty32.backward()
    assert penalty32.dtype == torch.float32 and torch.isfinite(conv32.weight.grad).all()
    assert abs(penalty32.item() - (dense_norm(conv32, conv32.weight, 5) - 1e-3)) <= 1e-5


def test_operator_norm_penalty_with_the_modules_own_zero_padding_matches_the_padded_layer():
    torch.manual_seed(8)
    conv = nn.Conv2d(2, 3, 3, padding=1).double()
    size = (5, 6)
    # oracle: the dense matrix of the layer as PyTorch computes it (zero padding, no bias)
    basis = torch.eye(2 * size[0] * size[1], dtype=torch.float64).reshape(-1, 2, *size)
    with torch.no_grad():
        matrix = F.conv2d(basis, conv.weight, padding=1).reshape(len(basis), -1).T
    padded = float(torch.linalg.matrix_norm(matrix, ord=2))
    value = operator_norm_penalty(conv, 0.1, size, padding="module")
    assert abs(value.item() - (padded - 0.1)) <= 1e-6 * padded  # the iterative solver's accuracy (rtol 1e-8)
    assert padded < dense_norm(conv, conv.weight, size)  # differs from the circular operator's
    value.backward()
    assert torch.isfinite(conv.weight.grad).all() and conv.weight.grad.abs().sum() > 0


def test_l1_penalty_is_the_sum_of_absolute_kernels_and_bounds_each_norm():
    model = penalty_model()
    value = l1_penalty(model)
    expected = sum(float(m.weight.detach().abs().sum()) for m in model)
    assert abs(value.item() - expected) <= 1e-12 * expected
    for name, module in zip(SIZES, model, strict=True):
        bound = float(module.weight.detach().abs().sum())
        assert dense_norm(module, module.weight, SIZES[name]) <= bound
        assert bound == float(cs.bounds.l1_bound(module.weight.detach()))  # the library's Proposition 11 bound
    value.backward()
    for module in model:
        assert torch.equal(module.weight.grad, torch.sign(module.weight.detach()))
    assert l1_penalty([model[0]]).item() == model[0].weight.detach().abs().sum().item()
    assert l1_penalty(model, layers=["1"]).item() == model[1].weight.detach().abs().sum().item()


def test_penalty_errors():
    with pytest.raises(ParameterTypeError, match="model: expected Conv1d/2d/3d"):
        l1_penalty([nn.Linear(2, 2)])
    with pytest.raises(ParameterError, match="model: expected at least one conv module"):
        l1_penalty([])
    with pytest.raises(ParameterError, match="input_shapes: expected a size for every selected layer"):
        operator_norm_penalty(penalty_model(), 1.0, {"0": 6})
    with pytest.raises(ParameterError, match="stride"):
        operator_norm_penalty(penalty_model(), 1.0, {"0": 6, "1": 5, "2": 5})


def test_conv_layers_reports_model_itself_and_shared_modules_once():
    conv = nn.Conv2d(1, 1, 3)
    assert [layer.name for layer in conv_layers(conv, 1.0)] == [""]
    shared = nn.Sequential(conv, conv)
    assert [layer.name for layer in conv_layers(shared, 1.0)] == ["0"]
    assert math.isclose(conv_layers(shared, 2)[0].max_norm, 2.0)


# --- the Lightning callback ---------------------------------------------------------------------


def test_lightning_callback_projects_after_every_nth_optimizer_step(monkeypatch):
    reason = 'lightning is not installed (pip install "convspectra[lightning]")'
    lightning = pytest.importorskip("lightning", reason=reason)
    from torch.utils.data import DataLoader, TensorDataset

    from convspectra.nn.lightning import OperatorNormCallback

    class Module(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = small_model()

        def training_step(self, batch, batch_idx):
            return self.net(batch[0]).square().mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.5)

    rounds = []
    original = OperatorNormProjector.project_now

    def spy(self) -> None:
        before = [layer.module.weight.detach().clone() for layer in self.layers]
        original(self)
        rounds.append((before, [layer.module.weight.detach().clone() for layer in self.layers]))

    monkeypatch.setattr(OperatorNormProjector, "project_now", spy)
    module = Module()
    callback = OperatorNormCallback({"net.0": 0.5, "net.2": 0.6}, every=2, iterations=2)
    trainer = lightning.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
    )
    data = DataLoader(TensorDataset(torch.randn(16, 2, 8, 8, generator=torch.Generator().manual_seed(0))), batch_size=4)
    trainer.fit(module, data)  # 4 optimizer steps: projections after steps 2 and 4
    assert trainer.global_step == 4 and len(rounds) == 2
    assert callback.projector.input_shapes == {"net.0": (8, 8), "net.2": (8, 8)}
    for before, after in rounds:
        for layer, old, new in zip(callback.projector.layers, before, after, strict=True):
            assert torch.equal(new, direct(layer.module, old, (8, 8), layer.max_norm, iterations=2))
    assert [layer.name for layer in callback.projector.layers] == ["net.0", "net.2"]


def test_module_weights_that_look_channels_last_do_not_warn_inside_the_library():
    # Conv2d(3, 3, (16, 32)) stores a (3, 3, 16, 32) weight: the library knows it is OIHW
    import warnings

    from convspectra.analysis import spectral_report
    from convspectra.nn import OperatorNormProjector, operator_norm_penalty

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 3, (16, 32), bias=False))
    with warnings.catch_warnings():
        warnings.simplefilter("error", cs.LayoutWarning)
        projector = OperatorNormProjector(model, 1.0, every=1, rescale=True)
        model(torch.randn(1, 3, 32, 32))
        projector.project_now()
        penalty = operator_norm_penalty(model, 0.5, (32, 32))
        report = spectral_report(model, (3, 32, 32))
    assert float(penalty.detach()) >= 0 and report.layers[0].error is None
    assert cs.operator_norm(model[0].weight.detach(), (32, 32), layout="OIHW") <= 1.0 + 1e-9
