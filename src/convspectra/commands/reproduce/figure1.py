"""``convspectra reproduce figure1`` (alias ``bench figure1``): the paper's Figure 1 timings on this machine."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from .._common import add_output, positive_float, positive_int, write_text, writes_to_stdout

__all__ = ["DESCRIPTION", "HELP", "add_options", "channel_count", "run"]

HELP = "Figure 1: seconds to compute all singular values, by method and channel count"
DESCRIPTION = (
    "Figure 1 of Sedghi, Gupta & Long (2019): time to compute all singular values of a "
    "convolution (c input and c output channels, standard normal kernel) with the full-matrix SVD, the "
    "paper's NumPy method and convspectra on the CPU (and on CUDA when a GPU is available), for 3x3 kernels "
    "on 16x16 inputs and 11x11 kernels on 64x64 inputs. Medians after a warm-up; each point's accuracy is "
    "checked against the full-matrix SVD (or the paper's method where the dense one is skipped). Points "
    "whose estimated time exceeds --budget are skipped and reported as such. Each point is printed as it is "
    "measured."
)


def channel_count(kernel_size: int, input_size: int) -> Callable[[str], int]:
    """``argparse`` type for a channel count of the ``kernel_size``x``kernel_size``@``input_size`` panel.

    Refused at once, before any work, when one point would need more memory than the library's
    default budget: the ``c x c x k x k`` kernel and the ``input_size**2`` complex ``c x c``
    transfer matrices the paper's method builds (with its float64 singular values).

    Example:
        >>> from convspectra.commands.reproduce.figure1 import channel_count
        >>> channel_count(3, 16)("64")
        64
        >>> channel_count(3, 16)("100000")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: expected a channel count whose 3x3@16x16 point fits in 4.0 GiB, got 100000 (...)
    """

    def parse(text: str) -> int:
        from ..._memory import DEFAULT_MEMORY_BUDGET, format_bytes

        channels = positive_int(text)
        points = input_size * input_size
        need = 8 * channels * channels * kernel_size**2 + 16 * points * channels * channels + 8 * points * channels
        if need > DEFAULT_MEMORY_BUDGET:
            raise argparse.ArgumentTypeError(
                f"expected a channel count whose {kernel_size}x{kernel_size}@{input_size}x{input_size} point fits in "
                f"{format_bytes(DEFAULT_MEMORY_BUDGET)}, got {channels} (its kernel and {points} transfer matrices "
                f"of {channels} x {channels} need about {format_bytes(need)})"
            )
        return channels

    return parse


def add_options(parser: argparse.ArgumentParser) -> None:
    """The options of the Figure 1 experiment."""
    parser.add_argument("--quick", action="store_true", help="a few small points (seconds; for CI)")
    add_output(parser, "--csv", help="write the rows as CSV")
    add_output(parser, "--json", help="write rows, settings and machine as JSON")
    add_output(
        parser,
        "--plot",
        help="write the log-log plot (.svg always works; .png needs matplotlib)",
        suffixes=(".svg", ".png"),
        stdout=False,
        matplotlib_for=(".png",),
    )
    parser.add_argument(
        "--budget",
        type=positive_float("a positive number of seconds"),
        default=None,
        help="seconds one call may take (default 60; 2 with --quick)",
    )
    parser.add_argument("--repeats", type=positive_int, default=None, help="timed calls per point (default 5)")
    parser.add_argument(
        "--channels-3x3",
        type=channel_count(3, 16),
        nargs="+",
        metavar="C",
        help="channel counts of the 3x3@16x16 panel",
    )
    parser.add_argument(
        "--channels-11x11",
        type=channel_count(11, 64),
        nargs="+",
        metavar="C",
        help="channel counts of the 11x11@64x64 panel",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: CUDA if present")


def run(args: argparse.Namespace) -> int:
    """Run Figure 1 and print the table (and write CSV / JSON / plot)."""
    from ...experiments.figure1 import FULL_PANELS, QUICK_PANELS, Panel, plot_figure1, run_figure1

    panels = list(QUICK_PANELS if args.quick else FULL_PANELS)
    if args.channels_3x3:
        panels[0] = Panel(panels[0].name, 3, 16, tuple(args.channels_3x3))
    if args.channels_11x11:
        panels[1] = Panel(panels[1].name, 11, 64, tuple(args.channels_11x11))
    budget = args.budget if args.budget is not None else (2.0 if args.quick else 60.0)
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 5)
    log = sys.stderr if writes_to_stdout(args) else sys.stdout

    def report(row: Any) -> None:
        print(f"  {row.panel} c={row.channels:<4} {row.method:<28} {row.status}", file=log, flush=True)

    result = run_figure1(panels, repeats=repeats, budget=budget, device=args.device, report=report)
    machine = result.machine
    print(
        f"\nmachine: {machine['cpu']}, {machine['cores']} cores, torch {machine.get('torch')} "
        f"({machine.get('torch_threads')} threads), numpy {machine['numpy']}, BLAS {machine['blas']}, "
        f"GPU {machine.get('gpu')}, load average {machine.get('load_average')}\n",
        file=log,
    )
    print(result.table(), file=log)
    if args.csv:
        write_text(args.csv, result.to_csv())
    if args.json:
        write_text(args.json, json.dumps(result.to_dict(), indent=1) + "\n")
    if args.plot:
        plot_figure1(result, args.plot)
        print(f"wrote {args.plot}", file=log)
    return 0
