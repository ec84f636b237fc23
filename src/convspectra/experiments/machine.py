"""What a measurement ran on: CPU, cores, BLAS, versions, GPU and load, for every benchmark and log.

Example:
    >>> from convspectra.experiments.machine import machine_description
    >>> sorted(machine_description())[:3]
    ['blas', 'convspectra', 'cores']
"""

from __future__ import annotations

import contextlib
import os
import platform
from typing import Any

import numpy as np

from .. import __version__
from .._threads import available_cores

__all__ = ["machine_description"]


def machine_description() -> dict[str, Any]:
    """CPU model, cores, GPU, torch/numpy versions and BLAS: what a number was measured on.

    Example:
        >>> sorted(machine_description())[:3]
        ['blas', 'convspectra', 'cores']
    """

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": available_cores(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "convspectra": __version__,
    }
    try:
        import threadpoolctl

        info["blas"] = sorted({f"{p['internal_api']} {p['version']}" for p in threadpoolctl.threadpool_info()})
    except ImportError:
        info["blas"] = "unknown (threadpoolctl not installed)"
    try:
        import torch

        info["torch"] = str(torch.__version__)
        info["torch_threads"] = torch.get_num_threads()
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        info["torch"] = None
        info["gpu"] = None
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info
