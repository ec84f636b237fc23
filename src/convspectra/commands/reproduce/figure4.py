"""``convspectra reproduce EXPERIMENT``: re-run an experiment of the paper (here: ``figure4``)."""

from __future__ import annotations

import argparse
import glob
import json
import os

from . import writable_file
from .report import add_report_options, write_outputs

__all__ = ["find_pretrained", "register"]

#: Where ``reproduce figure4`` looks for the pretrained checkpoint when --weights is not given
#: (relative to the working directory; ``$CONVSPECTRA_DATA`` first when set).
SEARCH_DIRS = ("shared/data/cifar-resnet-pretrained", "../shared/data/cifar-resnet-pretrained")


def find_pretrained(model: str) -> str | None:
    """The pretrained CIFAR checkpoint ``{model}-*.th`` in ``$CONVSPECTRA_DATA`` or :data:`SEARCH_DIRS`, if any."""
    roots = [os.environ["CONVSPECTRA_DATA"]] if os.environ.get("CONVSPECTRA_DATA") else []
    for root in (*roots, *SEARCH_DIRS):
        for folder in (root, os.path.join(root, "cifar-resnet-pretrained")):
            found = sorted(glob.glob(os.path.join(folder, f"{model}-*.th")))
            if found:
                return found[0]
    return None


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    """Add the ``reproduce`` subcommand and its experiments."""
    reproduce = commands.add_parser(
        "reproduce",
        help="re-run an experiment of Sedghi, Gupta & Long (2019)",
        description="Re-run an experiment of the paper and check its claims on the result.",
    )
    experiments = reproduce.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    figure4 = experiments.add_parser(
        "figure4",
        help="singular values of every conv layer of a pretrained CIFAR ResNet, the paper's observations checked",
        description="Figure 4 / Section 4.3: sorted singular values of every conv layer of a pretrained network "
        "(default: the CIFAR-10 ResNet-32 checkpoint in shared/data/cifar-resnet-pretrained), coloured red (input) to "
        "green (output), and the paper's two observations checked on them: which layers have the largest operator "
        "norms, and how the number of non-negligible singular values evolves with depth.",
    )
    figure4.add_argument("--model", default="resnet32", help="built-in model (default resnet32)")
    add_report_options(figure4, threshold=1e-2, plot="figure4.png")
    figure4.set_defaults(handler=run_figure4)
    figure4.add_argument(
        "--observations", metavar="FILE", type=writable_file, help="write the observations as JSON ('-': stdout)"
    )


def run_figure4(args: argparse.Namespace) -> int:
    """Compute the report, check the observations, write the plot."""
    from ..analysis import figure4_observations, spectral_report
    from ..errors import ParameterError
    from ._progress import layer_progress
    from .report import build_model

    if args.weights is None:
        args.weights = find_pretrained(args.model)
        if args.weights is None:
            raise ParameterError(
                f"--weights: expected a pretrained {args.model} checkpoint; none found in $CONVSPECTRA_DATA or "
                f"{', '.join(SEARCH_DIRS)} (pass --weights FILE)"
            )
    model, shape = build_model(args)
    with layer_progress("layers") as progress:
        report = spectral_report(
            model,
            shape,
            fold_bn=args.fold_bn,
            full_spectrum=True,
            relative_threshold=args.threshold,
            progress=progress,
        )
    observations = figure4_observations(report)
    if args.observations == "-":
        print(json.dumps(observations.to_dict(), indent=2))
    else:
        print(
            f"Figure 4 (Sedghi, Gupta & Long 2019, Section 4.3) on {args.model} with weights {args.weights}"
            f"{' (BatchNorm folded)' if args.fold_bn else ''}: {len(observations.layers)} conv layers, "
            f"{report.seconds:.1f} s"
        )
        print(observations)
        if args.observations:
            with open(args.observations, "w", encoding="utf-8") as handle:
                json.dump(observations.to_dict(), handle, indent=2)
    write_outputs(report, args, include_spectra=True)
    if args.plot and args.observations != "-":
        print(f"plot: {args.plot}")
    return 0
