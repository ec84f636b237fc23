"""``convspectra bench figure1``: an alias of ``convspectra reproduce figure1`` (same options and behaviour)."""

from __future__ import annotations

import argparse

from .reproduce import add_experiment, figure1

__all__ = ["register"]


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    """Add the ``bench`` subcommand (with its ``figure1`` experiment)."""
    bench = commands.add_parser(
        "bench",
        help="alias of 'convspectra reproduce figure1' (bench figure1: the Figure 1 timings)",
        description="Timing experiments of the paper, measured on this machine: 'bench figure1' is an alias of "
        "'convspectra reproduce figure1'.",
    )
    experiments = bench.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    add_experiment(experiments, "figure1", figure1, alias_of="reproduce figure1")
