"""``convspectra bench figure1``: reproduce the paper's Figure 1 timings on this machine."""

from __future__ import annotations

import argparse
import json
import sys

from . import positive_int, writable_file

__all__ = ["register"]


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def register(commands: argparse._SubParsersAction) -> None:
    """Add the ``bench`` subcommand (with its ``figure1`` experiment)."""
    bench = commands.add_parser(
        "bench",
        help="reproduce the paper's timing experiments (bench figure1)",
        description="Timing experiments of the paper, measured on this machine.",
    )
    experiments = bench.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    figure1 = experiments.add_parser(
        "figure1",
        help="Figure 1: seconds to compute all singular values, by method and channel count",
        description="Figure 1 of Sedghi, Gupta & Long (2019): time to compute all singular values of a "
        "convolution (c input and c output channels, standard normal kernel) with the full-matrix SVD, the "
        "paper's NumPy method and convspectra on the CPU (and on CUDA when a GPU is available), for 3x3 kernels "
        "on 16x16 inputs and 11x11 kernels on 64x64 inputs. Medians after a warm-up; each point's accuracy is "
        "checked against the full-matrix SVD (or the paper's method where the dense one is skipped). Points "
        "whose estimated time exceeds --budget are skipped and reported as such.",
    )
    figure1.add_argument("--quick", action="store_true", help="a few small points (seconds; for CI)")
    figure1.add_argument("--csv", type=writable_file, help="write the rows as CSV to FILE ('-' for stdout)")
    figure1.add_argument("--json", type=writable_file, help="write rows, settings and machine as JSON to FILE")
    figure1.add_argument(
        "--plot", type=writable_file, help="write the log-log plot to FILE (.svg always works; .png needs matplotlib)"
    )
    figure1.add_argument(
        "--budget", type=_positive_float, default=None, help="seconds one call may take (default 60; 2 with --quick)"
    )
    figure1.add_argument("--repeats", type=positive_int, default=None, help="timed calls per point (default 5)")
    figure1.add_argument(
        "--channels-3x3", type=positive_int, nargs="+", metavar="C", help="channel counts of the 3x3@16x16 panel"
    )
    figure1.add_argument(
        "--channels-11x11", type=positive_int, nargs="+", metavar="C", help="channel counts of the 11x11@64x64 panel"
    )
    figure1.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: CUDA if present")
    figure1.set_defaults(handler=run_figure1_command)


def run_figure1_command(args: argparse.Namespace) -> int:
    """Run Figure 1 and print the table (and write CSV / JSON / plot)."""
    from ..errors import ParameterError
    from ..experiments.figure1 import FULL_PANELS, QUICK_PANELS, Panel, plot_figure1, run_figure1

    if args.plot and not args.plot.endswith((".svg", ".png")):
        raise ParameterError(f"--plot: expected a file name ending in .svg or .png, got {args.plot!r}")
    panels = list(QUICK_PANELS if args.quick else FULL_PANELS)
    if args.channels_3x3:
        panels[0] = Panel(panels[0].name, 3, 16, tuple(args.channels_3x3))
    if args.channels_11x11:
        panels[1] = Panel(panels[1].name, 11, 64, tuple(args.channels_11x11))
    budget = args.budget if args.budget is not None else (2.0 if args.quick else 60.0)
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 5)
    to_stdout = args.csv == "-" or args.json == "-"
    log = sys.stderr if to_stdout else sys.stdout

    def report(row: object) -> None:
        print(f"  {row.panel} c={row.channels:<4} {row.method:<28} {row.status}", file=log, flush=True)  # type: ignore[attr-defined]

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
        _write(args.csv, result.to_csv())
    if args.json:
        _write(args.json, json.dumps(result.to_dict(), indent=1) + "\n")
    if args.plot:
        plot_figure1(result, args.plot)
        print(f"wrote {args.plot}", file=log)
    return 0


def _write(path: str, text: str) -> None:
    if path == "-":
        sys.stdout.write(text)
    else:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
