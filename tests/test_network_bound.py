"""The network bound (issue 12): constants of activations and pooling, folding, linear blocks, rules per node."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convspectra.analysis import spectral_report, validate_report
from convspectra.analysis.lipschitz_rules import activation_constant, avg_pool_norm, max_pool_factor

# ---------------------------------------------------------------- constants vs finite differences

_GRID = torch.linspace(-12.0, 12.0, 2_400_001, dtype=torch.float64)  # step 1e-5


def _max_slope(f):
    with torch.no_grad():
        y = f(_GRID)
    return float(((y[1:] - y[:-1]) / (_GRID[1:] - _GRID[:-1])).abs().max())


_PRELU = nn.PReLU(3).double()
with torch.no_grad():
    _PRELU.weight.copy_(torch.tensor([0.2, -1.7, 0.5]))

_ACTIVATIONS = [
    nn.ReLU(),
    nn.ReLU6(),
    nn.LeakyReLU(0.1),
    nn.LeakyReLU(2.5),
    nn.ELU(),
    nn.ELU(alpha=1.8),
    nn.CELU(alpha=0.5),
    nn.SELU(),
    nn.SiLU(),
    nn.GELU(),
    nn.GELU(approximate="tanh"),
    nn.Mish(),
    nn.Hardswish(),
    nn.Hardsigmoid(),
    nn.Sigmoid(),
    nn.Tanh(),
    nn.Hardtanh(),
    nn.Softplus(),
    nn.Softplus(beta=3.0),
    nn.Softsign(),
    nn.Tanhshrink(),
    nn.LogSigmoid(),
    nn.Softshrink(),
]


@pytest.mark.parametrize("module", _ACTIVATIONS, ids=lambda m: repr(m))
def test_activation_constant_is_the_largest_slope_on_a_fine_grid(module):
    constant, rule = activation_constant(module)
    slope = _max_slope(module)
    # the grid's slopes are secants: never above the constant, and within the grid's resolution of it
    assert slope <= constant * (1 + 1e-9), rule
    assert slope == pytest.approx(constant, rel=2e-5), rule


def test_prelu_constant_is_its_steepest_learned_slope():
    constant, _ = activation_constant(_PRELU)
    x = _GRID.reshape(1, 1, -1).expand(1, 3, -1).contiguous()
    with torch.no_grad():
        y = _PRELU(x)
    slopes = ((y[..., 1:] - y[..., :-1]) / (x[..., 1:] - x[..., :-1])).abs().max()
    assert constant == pytest.approx(float(slopes), rel=1e-9) and constant == pytest.approx(1.7)


def test_softmax_constant_bounds_random_jacobians():
    constant, _ = activation_constant(nn.Softmax(dim=-1))
    torch.manual_seed(0)
    for _ in range(20):
        z = 4 * torch.randn(7, dtype=torch.float64)
        jacobian = torch.autograd.functional.jacobian(lambda v: torch.softmax(v, -1), z)
        assert float(torch.linalg.matrix_norm(jacobian, ord=2)) <= constant


# ---------------------------------------------------------------- pooling


def _dense(pool, shape):
    size = math.prod(shape)
    basis = torch.eye(size, dtype=torch.float64).reshape(size, 1, *shape)
    return pool(basis).reshape(size, -1).T


@pytest.mark.parametrize(
    ("shape", "kwargs"),
    [
        ((8, 8), {"kernel_size": 2}),
        ((7, 6), {"kernel_size": 3, "stride": 2, "padding": 1}),
        ((7, 6), {"kernel_size": 3, "stride": 2, "padding": 1, "count_include_pad": False}),
        ((7, 9), {"kernel_size": (3, 2), "stride": (2, 3), "padding": (1, 1), "ceil_mode": True}),
        ((7, 9), {"kernel_size": 3, "stride": 2, "ceil_mode": True, "count_include_pad": False, "padding": 1}),
        ((5, 5), {"kernel_size": 2, "stride": 2, "ceil_mode": True, "divisor_override": 3}),
        ((6, 6), {"kernel_size": 3, "stride": 1, "padding": 1}),
        ((9,), {"kernel_size": 4, "stride": 3, "padding": 2, "count_include_pad": False}),
        ((4, 5, 3), {"kernel_size": 2, "stride": 1, "padding": 1, "ceil_mode": True}),
    ],
)
def test_avg_pool_norm_matches_the_dense_operator_of_torch(shape, kwargs):
    pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[len(shape)]
    dense = _dense(lambda x: pool(x, **kwargs), shape)
    exact = float(torch.linalg.matrix_norm(dense, ord=2))
    ours = avg_pool_norm(
        shape,
        kernel=kwargs["kernel_size"],
        stride=kwargs.get("stride"),
        padding=kwargs.get("padding", 0),
        ceil_mode=kwargs.get("ceil_mode", False),
        count_include_pad=kwargs.get("count_include_pad", True),
        divisor_override=kwargs.get("divisor_override"),
    )
    assert ours == pytest.approx(exact, rel=1e-12)


@pytest.mark.parametrize(
    ("shape", "kwargs"),
    [
        ((8, 8), {"kernel_size": 2}),
        ((9, 9), {"kernel_size": 3, "stride": 2, "padding": 1}),
        ((7, 8), {"kernel_size": 3, "stride": 1, "padding": 1}),
        ((7, 7), {"kernel_size": 3, "stride": 2, "ceil_mode": True}),
        ((9, 6), {"kernel_size": (3, 2), "stride": (1, 2), "dilation": (2, 1)}),
        ((10,), {"kernel_size": 5, "stride": 2, "padding": 2}),
    ],
)
def test_max_pool_factor_is_the_brute_force_ratio(shape, kwargs):
    pool = {1: F.max_pool1d, 2: F.max_pool2d}[len(shape)]
    out = pool(torch.zeros(1, 1, *shape), **kwargs).shape[2:]
    factor = max_pool_factor(
        shape,
        out,
        kernel=kwargs["kernel_size"],
        stride=kwargs.get("stride"),
        padding=kwargs.get("padding", 0),
        dilation=kwargs.get("dilation", 1),
    )
    size = math.prod(shape)
    spikes = torch.eye(size, dtype=torch.float64).reshape(size, 1, *shape)  # x = spike, y = 0
    with torch.no_grad():
        best = float(pool(spikes, **kwargs).flatten(1).norm(dim=1).max())  # attains the constant
    assert best == pytest.approx(factor, rel=1e-12)
    torch.manual_seed(1)  # and no pair of inputs exceeds it
    x = torch.randn(4000, 1, *shape, dtype=torch.float64)
    y = x + torch.randn_like(x) * torch.rand(4000, 1, *([1] * len(shape)), dtype=torch.float64)
    with torch.no_grad():
        ratios = (pool(x, **kwargs) - pool(y, **kwargs)).flatten(1).norm(dim=1) / (x - y).flatten(1).norm(dim=1)
    assert float(ratios.max()) <= factor * (1 + 1e-12)


# ---------------------------------------------------------------- whole-model rules


def _product(report, *factors):
    value = 1.0
    for layer in report.layers:
        value *= layer.sigma_max
    return value * math.prod(factors)


def test_functional_activations_use_their_constants():
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular")
            self.b = nn.Conv2d(3, 3, 3, padding=1, padding_mode="circular")
            self.c = nn.Conv2d(3, 2, 1)

        def forward(self, x):
            x = F.silu(self.a(torch.relu(x)))
            x = F.gelu(self.b(x.relu()), approximate="tanh")
            return torch.sigmoid(F.hardswish(self.c(F.gelu(x))))

    report = spectral_report(Functional(), (2, 6, 6))
    from convspectra.analysis.lipschitz_rules import GELU, GELU_TANH, SILU

    expected = _product(report, SILU, GELU_TANH, GELU, 1.5, 0.25)
    assert report.network_bound.value == pytest.approx(expected, rel=1e-12)
    rules = [rule.rule for rule in report.network_bound.rules]
    assert any(r.startswith("silu: max slope") for r in rules) and any(r.startswith("hardswish") for r in rules)


def test_every_node_has_a_rule_in_json_and_table():
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Hardswish(), nn.AvgPool2d(2)).eval()
    report = spectral_report(model, (2, 8, 8), fold_bn=True)
    from torch import fx

    nodes = [node.name for node in fx.symbolic_trace(model).graph.nodes]
    bound = report.network_bound
    assert [rule.node for rule in bound.rules] == nodes
    by_node = {rule.node: rule for rule in bound.rules}
    assert "folded" in by_node["_1"].rule and by_node["_1"].factor == 1.0
    assert by_node["_2"].factor == 1.5 and by_node["_3"].factor == pytest.approx(0.5, rel=1e-12)
    assert bound.value == pytest.approx(report.layers[0].sigma_max * 1.5 * 0.5, rel=1e-12)
    document = json.loads(report.to_json())
    validate_report(document)
    assert [rule["node"] for rule in document["network_bound"]["rules"]] == nodes
    table = bound.to_table()
    assert "Hardswish" in table and "AvgPool2d" in table and "UPPER bound" in table


def test_batchnorm_is_folded_for_the_bound_even_when_the_report_does_not_fold():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1))
    with torch.no_grad():
        model[1].weight.uniform_(0.2, 3.0)
        model[1].running_var.uniform_(0.5, 2.0)
    model.eval()
    for padding in ("circular", "model"):
        plain = spectral_report(model, (3, 6, 6), padding=padding)
        folded = spectral_report(model, (3, 6, 6), padding=padding, fold_bn=True)
        if padding == "circular":  # exact folded norms both ways
            assert plain.network_bound.value == pytest.approx(folded.network_bound.value, rel=1e-9)
        else:  # the bound folds with the cheap certified bracket, the report with the refined one: the tightest
            assert folded.network_bound.value <= plain.network_bound.value * (1 + 1e-9)
        assert "folded with 0 for the bound" in plain.network_bound.rules[2].rule
        unfolded = plain.layers[0].norm(padding) * float(
            (model[1].weight.detach() / torch.sqrt(model[1].running_var + model[1].eps)).abs().max()
        )
        assert plain.network_bound.value < unfolded * plain.layers[1].norm(padding)


def test_batchnorm_with_one_scale_for_every_channel_is_not_folded():
    # ||diag(s) A|| = max|s| ||A|| when |s_c| is the same for every channel (signs alike): nothing to fold
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([2.0, -2.0, 2.0, -2.0]))
        model[1].running_var.fill_(3.0)
    scale = 2.0 / math.sqrt(3.0 + model[1].eps)
    for padding in ("circular", "model"):
        report = spectral_report(model, (3, 6, 6), padding=padding)
        rule = report.network_bound.rules[2]
        assert rule.rule.endswith("the same for every channel") and rule.factor == pytest.approx(scale, rel=1e-7)
        folded = spectral_report(model, (3, 6, 6), padding=padding, fold_bn=True)
        assert report.network_bound.value == pytest.approx(folded.network_bound.value, rel=1e-6)


def test_linear_residual_block_gets_its_exact_norm():
    torch.manual_seed(3)

    class Block(nn.Module):
        def __init__(self, mode: str) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1, padding_mode=mode, bias=True)
            self.bn = nn.BatchNorm2d(3)
            self.down = nn.Conv2d(3, 3, 1, bias=False)

        def forward(self, x):
            y = F.relu(x)
            return 0.5 * y - self.bn(self.conv(y)) + self.down(y)

    for mode, padding in (("circular", "circular"), ("zeros", "model")):
        model = Block(mode).double()
        with torch.no_grad():
            model.bn.weight.uniform_(0.5, 1.5)
            model.bn.running_var.uniform_(0.5, 2.0)
        model.eval()
        report = spectral_report(model, torch.zeros(1, 3, 5, 5, dtype=torch.float64), padding=padding)
        with torch.no_grad():  # the independent reference: the block's matrix from PyTorch on an identity basis
            basis = torch.eye(75, dtype=torch.float64).reshape(75, 3, 5, 5)
            zero = torch.zeros_like(basis)
            dense = (0.5 * basis - model.bn(model.conv(basis)) + model.down(basis)) - (
                -model.bn(model.conv(zero)) + model.down(zero)
            )
            dense = dense.reshape(75, -1)
        exact = float(torch.linalg.matrix_norm(dense, ord=2))
        bound = report.network_bound
        assert bound.value == pytest.approx(exact, rel=1e-10), padding
        sum_rule = next(rule.bound for rule in bound.rules if rule.node == "bn")  # ||bn o conv||, folded or not
        sum_rule += 0.5 + report.layers[1].norm(padding)  # what the sum rule would give
        assert bound.value < sum_rule
        assert any(rule.rule.startswith("linear block from relu") for rule in bound.rules)


def test_block_with_a_zero_padded_conv_keeps_the_sum_rule_in_the_circular_bound():
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1, bias=False)

        def forward(self, x):
            return x + self.conv(x)

    report = spectral_report(Block(), (2, 6, 6))
    assert report.network_bound.value == pytest.approx(1 + report.layers[0].sigma_max, rel=1e-14)


def test_layernorm_and_gating_have_no_global_constant():
    class Norm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 4, 3, padding=1, padding_mode="circular")
            self.norm = nn.LayerNorm([4, 6, 6])

        def forward(self, x):
            return F.gelu(self.norm(self.conv(x)))

    class Gate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1, padding_mode="circular")
            self.fc = nn.Conv2d(2, 2, 1)

        def forward(self, x):
            y = self.conv(x)
            return y * torch.sigmoid(self.fc(F.adaptive_avg_pool2d(y, 1)))

    norm = spectral_report(Norm(), (2, 6, 6))
    bound = norm.network_bound
    assert bound.value is None and "no global Lipschitz constant" in bound.description
    assert "LayerNorm" in bound.description and f"{norm.layers[0].sigma_max:.6g}" in bound.description
    assert bound.rules[-1].bound is None and bound.rules[-2].factor == pytest.approx(1.1289041451851548)
    gate = spectral_report(Gate(), (2, 6, 6)).network_bound
    assert gate.value is None and "product of two input-dependent tensors" in gate.description
    validate_report(json.loads(spectral_report(Gate(), (2, 6, 6)).to_json()))


def test_constant_scaling_by_a_parameter_uses_its_largest_entry():
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1, padding_mode="circular")
            self.gamma = nn.Parameter(torch.tensor([0.5, -3.0]).reshape(2, 1, 1))

        def forward(self, x):
            y = F.relu(x)  # not a linear block: the sum rule, with the scaling rule in one branch
            return y + self.gamma * F.relu(self.conv(y)).mean(dim=(2, 3), keepdim=True)

    report = spectral_report(Scaled(), (2, 4, 4))
    assert report.network_bound.value == pytest.approx(1 + 3.0 * report.layers[0].sigma_max / 4, rel=1e-12)


# ---------------------------------------------------------------- the bound holds (property test)


class _Random(nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        acts = [nn.SiLU(), nn.GELU(), nn.Hardswish(), nn.LeakyReLU(0.3), nn.ELU(1.5), nn.Mish(), nn.Tanh()]
        self.stem = nn.Conv2d(2, 4, 3, padding=1, padding_mode="circular")
        self.bn = nn.BatchNorm2d(4)
        self.act1 = acts[seed % len(acts)]
        self.conv = nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular")
        self.act2 = acts[(seed + 3) % len(acts)]
        self.pool = nn.MaxPool2d(3, 2, 1) if seed % 2 else nn.AvgPool2d(3, 2, 1, count_include_pad=False)
        self.head = nn.Linear(4 * 4 * 4, 3)
        with torch.no_grad():
            self.bn.weight.uniform_(0.5, 2.0)
            self.bn.running_var.uniform_(0.3, 2.0)
            self.bn.running_mean.normal_()

    def forward(self, x):
        x = self.act1(self.bn(self.stem(x)))
        x = x + self.act2(self.conv(x))
        return self.head(torch.flatten(self.pool(x), 1))


@pytest.mark.parametrize("seed", range(6))
def test_bound_is_above_every_observed_ratio_on_random_models(seed):
    model = _Random(seed).double().eval()
    report = spectral_report(model, torch.zeros(1, 2, 8, 8, dtype=torch.float64))  # circular convs: exact norms
    bound = report.network_bound.value
    assert bound is not None
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 2, 8, 8, dtype=torch.float64, generator=generator, requires_grad=True)
    y = (x.detach() + 0.1 * torch.randn(x.shape, dtype=torch.float64, generator=generator)).requires_grad_(True)
    optimiser = torch.optim.Adam([x, y], lr=0.05)
    best = 0.0
    for _ in range(60):  # gradient ascent on the ratio: the strongest lower bound we can cheaply find
        ratio = (model(x) - model(y)).flatten(1).norm(dim=1) / (x - y).flatten(1).norm(dim=1)
        best = max(best, float(ratio.detach().max()))
        optimiser.zero_grad()
        (-ratio.sum()).backward()
        optimiser.step()
    assert 0 < best <= bound


def stochastic_depth(x: torch.Tensor, p: float, mode: str, training: bool) -> torch.Tensor:
    """torchvision.ops.stochastic_depth's signature: identity unless training (a leaf of torch.fx)."""
    return x if not training or p == 0 else x * (torch.rand(x.shape[0], 1, 1, 1) > p) / (1 - p)


torch.fx.wrap("stochastic_depth")


def test_stochastic_depth_of_a_model_built_in_training_mode_is_the_identity():
    class Block(nn.Module):  # torchvision's StochasticDepth passes self.training, baked in when traced
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1, padding_mode="circular")

        def forward(self, x):
            return x + stochastic_depth(self.conv(x), 0.2, "row", self.training)

    model = Block()
    assert model.training  # as torchvision builds its models
    report = spectral_report(model, (2, 6, 6))
    assert model.training  # left as it was
    rule = next(r for r in report.network_bound.rules if "stochastic" in r.node)
    assert rule.factor == 1.0 and "identity" in rule.rule
    assert report.network_bound.value == pytest.approx(1 + report.layers[0].sigma_max, rel=1e-12)
