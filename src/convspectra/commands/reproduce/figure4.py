"""``convspectra reproduce figure4``: Figure 4 / Section 4.3 on a pretrained CIFAR ResNet, observations checked."""

from __future__ import annotations

import argparse
import json
import sys

from .._common import add_output, step, write_text, writes_to_stdout
from ..report import add_report_options, build_model, write_outputs

__all__ = ["DESCRIPTION", "HELP", "add_options", "run"]

HELP = "singular values of every conv layer of a pretrained CIFAR ResNet, the paper's observations checked"
DESCRIPTION = (
    "Figure 4 / Section 4.3: sorted singular values of every conv layer of a pretrained network "
    "(default: the CIFAR-10 ResNet-32 checkpoint resnet32-*.th in the folder named by $CONVSPECTRA_DATA), coloured "
    "by depth (viridis: dark purple at the input to yellow at the output; --colormap paper for the paper's red to "
    "green), and the paper's two observations checked on them (on the conv layers with kernels larger than 1x1, as "
    "in the paper): which layers have the largest operator norms, and how the number of non-negligible singular "
    "values evolves with depth. A progress bar is drawn on an interactive stderr."
)


def add_options(parser: argparse.ArgumentParser) -> None:
    """The options of the Figure 4 experiment (the report's, with the paper's threshold, and --observations)."""
    parser.add_argument("--model", default="resnet32", help="built-in model (default resnet32)")
    add_report_options(parser, relative_threshold=1e-2, plot="figure4.png")
    add_output(parser, "--observations", help="write the observations as JSON")


def _default_weights(model: str) -> str:
    from ...errors import ParameterError
    from ...models import DATA_ENV, data_directory, find_pretrained

    found = find_pretrained(model)
    if found is None:
        folder = data_directory()
        where = f"${DATA_ENV} = {str(folder)!r}" if folder is not None else f"${DATA_ENV} (not set)"
        raise ParameterError(
            f"--weights: expected a pretrained {model} checkpoint; none found in {where}. Pass --weights FILE, or "
            f"set {DATA_ENV} to the folder holding {model}-*.th (directly or in cifar-resnet-pretrained/), "
            f"e.g. export {DATA_ENV}=/path/to/data"
        )
    return str(found)


def run(args: argparse.Namespace) -> int:
    """Compute the report, check the observations, write the plot."""
    from ...analysis import figure4_observations, spectral_report
    from .._progress import progress_bar

    if args.weights is None:
        args.weights = _default_weights(args.model)
    model, shape = build_model(args)
    with progress_bar("layers") as progress, step(f"computing the report of {args.model!r}"):
        report = spectral_report(
            model,
            shape,
            fold_bn=args.fold_bn,
            full_spectrum=True,
            relative_threshold=args.threshold,
            progress=progress,
        )
    observations = figure4_observations(report)
    log = sys.stderr if writes_to_stdout(args) else sys.stdout  # stdout carries the '-' output alone
    print(
        f"Figure 4 (Sedghi, Gupta & Long 2019, Section 4.3) on {args.model} with weights {args.weights}"
        f"{' (BatchNorm folded)' if args.fold_bn else ''}: {len(observations.layers)} conv layers with kernels "
        f"larger than 1x1 compared, {report.seconds:.1f} s",
        file=log,
    )
    print(observations, file=log)
    if args.observations:
        write_text(args.observations, json.dumps(observations.to_dict(), indent=2) + "\n")
    write_outputs(report, args, include_spectra=True)
    if args.plot:
        print(f"plot: {args.plot}", file=log)
    return 0
