"""The projector under torch.distributed: a real 2-process gloo run on CPU.

Every rank must end with bitwise-identical weights. The projector shares the layers out among
the ranks and broadcasts each projected weight from the rank that computed it; the second test
starts the ranks from *different* weights, so identity can only come from that broadcast, and
checks that each layer holds the projection of its owner's weights.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import convspectra as cs

WORLD = 2
BOUND = 0.4


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _model() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.ConvTranspose2d(4, 2, 2, stride=2),
        nn.Conv2d(2, 3, 3, padding=1),
    )


def _worker(rank: int, port: int, out: str) -> None:
    from convspectra.nn import OperatorNormProjector

    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        # 1. DistributedDataParallel training with projection every 2 steps (different data per rank).
        torch.manual_seed(0)
        model = nn.parallel.DistributedDataParallel(_model())
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
        projector = OperatorNormProjector(model, BOUND, every=2, iterations=2)
        projector.attach(optimizer)
        generator = torch.Generator().manual_seed(100 + rank)
        for _ in range(4):
            optimizer.zero_grad()
            model(torch.randn(3, 2, 8, 8, generator=generator)).square().mean().backward()
            optimizer.step()
        trained = {name: p.detach().clone() for name, p in model.module.named_parameters()}

        # 2. Different weights on each rank: only the broadcast can make them equal.
        torch.manual_seed(10 + rank)
        plain = _model()
        before = {name: p.detach().clone() for name, p in plain.named_parameters()}
        shared = OperatorNormProjector(plain, BOUND, input_shapes={"0": 8, "2": 8, "4": 4, "5": 8})
        shared.project_now()
        projected = {name: p.detach().clone() for name, p in plain.named_parameters()}
        torch.save(
            {"trained": trained, "projections": projector.projections, "before": before, "projected": projected},
            Path(out) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available in this torch build")
def test_two_gloo_ranks_end_with_bitwise_identical_projected_weights(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    results = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD)]
    zero, one = results
    assert zero["projections"] == one["projections"] == 2
    for name, tensor in zero["trained"].items():
        assert torch.equal(tensor, one["trained"][name]), name

    model = _model()
    sizes = {"0": 8, "2": 8, "4": 4, "5": 8}
    owners = {}
    for name, tensor in zero["projected"].items():
        layer = name.split(".")[0]
        if name.endswith("bias"):  # not projected: each rank keeps its own
            assert torch.equal(tensor, zero["before"][name])
            assert torch.equal(one["projected"][name], one["before"][name])
            continue
        assert torch.equal(tensor, one["projected"][name]), name
        module = model[int(layer)]
        # each layer holds the projection of exactly one rank's weights: that rank computed and broadcast it
        candidates = [
            cs.clip_operator_norm(
                result["before"][name].double(),
                sizes[layer],
                BOUND,
                stride=module.stride,
                dilation=module.dilation,
                groups=module.groups,
                transposed=isinstance(module, nn.ConvTranspose2d),
            ).float()
            for result in results
        ]
        matches = [rank for rank, expected in enumerate(candidates) if torch.equal(tensor, expected)]
        assert len(matches) == 1, name
        owners[layer] = matches[0]
    assert sorted(owners) == sorted(sizes) and sorted(set(owners.values())) == [0, 1]  # the work was shared out
