"""``convspectra reproduce EXPERIMENT``: re-run an experiment of Sedghi, Gupta & Long (2019).

One module per experiment, each with ``HELP``, ``DESCRIPTION``, ``add_options(parser)`` and
``run(args)``: :mod:`~.figure1` (Figure 1 timings), :mod:`~.figures2_3` (the Section 4.2 training
runs, their summary and Figures 2-3) and :mod:`~.figure4` (Figure 4 / Section 4.3 on a pretrained
ResNet). :func:`add_experiment` adds one to a sub-parsers object; the aliases ``convspectra bench
figure1`` and ``convspectra train`` use it too, so they have the same options and behaviour.

Example:
    >>> from convspectra.cli import main
    >>> main(["reproduce", "figure1", "--plot", "figure1.jpg"])  # refused before any work
    2
"""

from __future__ import annotations

import argparse
from types import ModuleType

from . import figure1, figure4, figures2_3

__all__ = ["EXPERIMENTS", "add_experiment", "register"]

#: The experiments, by the name ``reproduce`` gives them.
EXPERIMENTS: dict[str, ModuleType] = {"figure1": figure1, "figures2-3": figures2_3, "figure4": figure4}


def add_experiment(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg,unused-ignore]
    name: str,
    experiment: ModuleType,
    *,
    alias_of: str | None = None,
) -> argparse.ArgumentParser:
    """Add the parser ``name`` for ``experiment`` (one of :data:`EXPERIMENTS`'s modules) and return it.

    Args:
        commands: the sub-parsers object to add it to.
        name: the command word.
        experiment: the experiment's module.
        alias_of: for an alias, the command it stands for (e.g. ``"reproduce figure1"``); its help says so.
    """
    alias = f"alias of 'convspectra {alias_of}': " if alias_of else ""
    parser = commands.add_parser(
        name,
        help=alias + experiment.HELP,
        description=(f"Alias of 'convspectra {alias_of}' (same options, same behaviour). " if alias_of else "")
        + experiment.DESCRIPTION,
    )
    experiment.add_options(parser)
    parser.set_defaults(handler=experiment.run)
    return parser


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    """Add the ``reproduce`` subcommand and its experiments."""
    reproduce = commands.add_parser(
        "reproduce",
        help="re-run an experiment of Sedghi, Gupta & Long (2019): figure1, figures2-3, figure4",
        description="Re-run an experiment of the paper on this machine and check its claims on the result.",
    )
    experiments = reproduce.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    for name, experiment in EXPERIMENTS.items():
        add_experiment(experiments, name, experiment)
