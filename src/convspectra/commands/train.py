"""``convspectra train``: an alias of ``convspectra reproduce figures2-3`` (same options and behaviour)."""

from __future__ import annotations

import argparse

from .reproduce import add_experiment, figures2_3

__all__ = ["register"]


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    """Add the ``train`` subcommand."""
    add_experiment(commands, "train", figures2_3, alias_of="reproduce figures2-3")
