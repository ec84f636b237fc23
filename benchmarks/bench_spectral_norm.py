"""Benchmark: convspectra.nn.spectral_norm against PyTorch's spectral_norm (training overhead, norms reached).

Two models at 32x32 input, every conv and Linear layer normalised:

* ``sngan``: the SN-GAN CNN discriminator (Miyato et al. 2018, Table 3: seven convolutions
  3->64->64->128->128->256->256->512, 3x3 and 4x4 stride 2, LeakyReLU 0.1, a Linear to 1);
* ``resnet20``: the CIFAR ResNet-20 of :mod:`convspectra.models.cifar_resnet` (BatchNorm kept).

Per model and device, in one run:

* ``step``: one SGD step (forward, backward, update) on a random batch, for the plain model,
  PyTorch's ``torch.nn.utils.parametrizations.spectral_norm`` and ours (one power-iteration step
  per forward pass for both); the three are timed interleaved, step after step, and the medians
  of ``--steps`` steps after two warm-up steps are reported;
* ``overhead = step(normalised) - step(plain)`` for each, and ``ratio = ours / PyTorch's``;
* the true operator norm (``convspectra.operator_norm`` with the module's padding, at each
  layer's input size) of every normalised conv after both versions' power iterations have
  converged from the same initial weights (PyTorch's: ``--converge`` training-mode weight reads;
  ours: :func:`convspectra.nn.converge_spectral_norm`), and the product over the layers.

Also the four single layers quoted in the issue (PyTorch's default initialisation, seed 0, 32x32
input; the 4x4 one with stride 2 and padding 1): the true norm after PyTorch's converged
``spectral_norm``, zero-padded and wrap-around.

The machine is printed and stored in the JSON (default ``benchmarks/results/spectral_norm.json``).
``--quick`` is a smoke run (batch 2, one step) whose timings mean nothing.

Example (the figures in docs/spectral-norm.md)::

    python benchmarks/bench_spectral_norm.py --threads 2
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm as torch_spectral_norm

import convspectra as cs
from convspectra._threads import limit_threads
from convspectra.experiments.machine import machine_description
from convspectra.models import resnet20
from convspectra.nn import capture_input_shapes, converge_spectral_norm, spectral_norm

RESULTS = Path(__file__).resolve().parent / "results" / "spectral_norm.json"
ISSUE_LAYERS = [
    (3, 64, 3, 1),
    (64, 64, 3, 1),
    (64, 128, 4, 1),
    (64, 128, 4, 2),
    (128, 128, 3, 1),
]  # in, out, kernel, stride


def sngan_discriminator() -> nn.Sequential:
    """The SN-GAN CNN discriminator for 32x32 images (Miyato et al. 2018, Table 3(b))."""
    layers: list[nn.Module] = []
    for c_in, c_out, k, s in [(3, 64, 3, 1), (64, 64, 4, 2), (64, 128, 3, 1), (128, 128, 4, 2), (128, 256, 3, 1)]:
        layers += [nn.Conv2d(c_in, c_out, k, s, padding=1), nn.LeakyReLU(0.1)]
    layers += [nn.Conv2d(256, 256, 4, 2, padding=1), nn.LeakyReLU(0.1), nn.Conv2d(256, 512, 3, 1, padding=1)]
    return nn.Sequential(*layers, nn.LeakyReLU(0.1), nn.Flatten(), nn.Linear(512 * 4 * 4, 1))


MODELS: dict[str, Callable[[], nn.Module]] = {"sngan": sngan_discriminator, "resnet20": resnet20}


def normalised(model: nn.Module, norm: Callable[[nn.Module], nn.Module]) -> nn.Module:
    for module in list(model.modules()):
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            norm(module)
    return model


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_step(model: nn.Module, batch: int, device: torch.device) -> Callable[[], float]:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)  # small: the plain model must not blow up
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, 32, 32, generator=generator).to(device)
    targets = torch.randn(batch, generator=generator).to(device)

    def step() -> float:
        synchronize(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        out = model(images)
        loss = F.mse_loss(out.reshape(batch, -1).mean(1), targets)
        loss.backward()
        optimizer.step()
        synchronize(device)
        return time.perf_counter() - start

    return step


def time_steps(name: str, batch: int, steps: int, device: torch.device) -> dict[str, float]:
    torch.manual_seed(0)
    plain = MODELS[name]().to(device)
    arms = {"plain": plain, "pytorch": normalised(copy.deepcopy(plain), torch_spectral_norm)}
    ours = normalised(copy.deepcopy(plain), spectral_norm)
    ours(torch.zeros(1, 3, 32, 32, device=device))  # records the input sizes
    arms["ours"] = ours
    runs = {key: training_step(model, batch, device) for key, model in arms.items()}
    times: dict[str, list[float]] = {key: [] for key in arms}
    for index in range(steps + 2):
        for key, run in runs.items():
            elapsed = run()
            if index >= 2:
                times[key].append(elapsed)
    medians = {key: statistics.median(values) for key, values in times.items()}
    result = {f"step_{key}_ms": 1e3 * value for key, value in medians.items()}
    result["overhead_pytorch_ms"] = 1e3 * (medians["pytorch"] - medians["plain"])
    result["overhead_ours_ms"] = 1e3 * (medians["ours"] - medians["plain"])
    result["ratio"] = result["overhead_ours_ms"] / result["overhead_pytorch_ms"]
    return result


def true_norms(model: nn.Module, sizes: dict[str, tuple[int, ...]]) -> dict[str, float]:
    """Every conv's operator norm with its own padding at its input size (eval mode: no iteration)."""
    model.eval()
    with torch.no_grad():
        return {
            name: float(cs.operator_norm(module, sizes[name], padding="module"))
            for name, module in model.named_modules()
            if isinstance(module, nn.Conv2d)
        }


def converge_pytorch(model: nn.Module, reads: int) -> None:
    """PyTorch's power iteration runs once per training-mode read of a normalised weight."""
    model.train()
    with torch.no_grad():
        for module in model.modules():
            if parametrize.is_parametrized(module, "weight"):
                for _ in range(reads):
                    module.weight  # noqa: B018


def norms_reached(name: str, reads: int) -> dict[str, Any]:
    torch.manual_seed(0)
    plain = MODELS[name]()
    sizes = capture_input_shapes(plain, torch.zeros(1, 3, 32, 32))
    theirs = normalised(copy.deepcopy(plain), torch_spectral_norm)
    converge_pytorch(theirs, reads)
    ours = normalised(copy.deepcopy(plain), spectral_norm)
    ours(torch.zeros(1, 3, 32, 32))
    converge_spectral_norm(ours)
    rows = {"pytorch": true_norms(theirs, sizes), "ours": true_norms(ours, sizes)}
    return {
        "layers": [
            {
                "layer": layer,
                "input": list(sizes[layer]),
                "pytorch": rows["pytorch"][layer],
                "ours": rows["ours"][layer],
            }
            for layer in rows["ours"]
        ],
        "product_pytorch": math.prod(rows["pytorch"].values()),
        "product_ours": math.prod(rows["ours"].values()),
    }


def issue_layers(reads: int) -> list[dict[str, Any]]:
    rows = []
    for c_in, c_out, k, s in ISSUE_LAYERS:
        torch.manual_seed(0)
        conv = torch_spectral_norm(nn.Conv2d(c_in, c_out, k, s, padding=1))
        converge_pytorch(conv, reads)
        conv.eval()
        with torch.no_grad():
            zero = float(cs.operator_norm(conv, 32, padding="module"))
            wrap = float(cs.operator_norm(conv.weight, 32, stride=s))
        rows.append({"layer": f"{c_in}->{c_out} {k}x{k} stride {s}", "zero_padded": zero, "wrap_around": wrap})
    return rows


def report(results: dict[str, Any]) -> None:
    info = results["machine"]
    print(f"machine: {info['cpu']}, {info['cores']} cores, torch {info.get('torch')}, threads {results['threads']}")
    print("\nper-step training overhead (median ms; one power-iteration step per forward for both)")
    columns = ("plain", "pytorch", "ours", "ovh pt", "ovh ours")
    print(f"{'model':10} {'device':6} {'batch':>5} " + " ".join(f"{c:>9}" for c in columns) + f" {'ratio':>6}")
    for row in results["timings"]:
        print(
            f"{row['model']:10} {row['device']:6} {row['batch']:5d} {row['step_plain_ms']:9.2f} "
            f"{row['step_pytorch_ms']:9.2f} {row['step_ours_ms']:9.2f} {row['overhead_pytorch_ms']:9.2f} "
            f"{row['overhead_ours_ms']:9.2f} {row['ratio']:6.2f}"
        )
    for name, table in results["norms"].items():
        print(f"\n{name}: true operator norm of each normalised conv after convergence (module padding)")
        print(f"{'layer':28} {'input':>8} {'pytorch':>8} {'ours':>8}")
        for row in table["layers"]:
            size = "x".join(map(str, row["input"]))
            print(f"{row['layer']:28} {size:>8} {row['pytorch']:8.4f} {row['ours']:8.4f}")
        print(f"{'product':28} {'':>8} {table['product_pytorch']:8.3g} {table['product_ours']:8.4f}")
    print("\nsingle layers (PyTorch's spectral_norm converged, 32x32 input): true norm")
    for row in results["issue_layers"]:
        print(f"  {row['layer']:26} zero-padded {row['zero_padded']:.4f}   wrap-around {row['wrap_around']:.4f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="batch 2, one step: a smoke run")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=15, help="timed steps per arm (median reported)")
    parser.add_argument("--converge", type=int, default=500, help="PyTorch power-iteration steps for the norm table")
    parser.add_argument("--threads", type=int, default=None, help="torch and BLAS threads (default: their own)")
    parser.add_argument("--no-gpu", action="store_true", help="skip CUDA even when it is available")
    parser.add_argument("--json", metavar="FILE", default=str(RESULTS), help=f"JSON output (default {RESULTS})")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.steps, args.converge = 2, 1, 20
    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and not args.no_gpu:
        devices.append(torch.device("cuda"))
    torch.set_flush_denormal(True)  # tiny activations must not slow one arm down
    with limit_threads(args.threads):
        results: dict[str, Any] = {
            "machine": machine_description(),
            "argv": sys.argv[1:] if argv is None else argv,
            "threads": torch.get_num_threads(),
            "timings": [
                {
                    "model": name,
                    "device": device.type,
                    "batch": args.batch,
                    **time_steps(name, args.batch, args.steps, device),
                }
                for device in devices
                for name in MODELS
            ],
            "norms": {name: norms_reached(name, args.converge) for name in MODELS},
            "issue_layers": issue_layers(args.converge),
        }
    report(results)
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
