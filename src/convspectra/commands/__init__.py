"""Subcommands of the ``convspectra`` command line, one module each.

Each module defines ``register(commands)``, which adds its parser to the ``argparse`` sub-parsers
object and sets ``handler`` (a function ``args -> exit status``) as a default. ``COMMANDS`` lists the
modules in the order ``--help`` shows them; add a new subcommand by writing its module and naming
it here. Modules import only light things at import and registration time (argparse, the standard
library); NumPy, torch and the library are imported by the handlers, so that ``convspectra spectrum
KERNEL.npy`` never imports torch.

- ``demo``, ``report``, ``spectrum``: one module each;
- ``reproduce``: the paper's experiments, one module each in :mod:`convspectra.commands.reproduce`
  (``figure1``, ``figures2-3``, ``figure4``);
- ``bench`` (``bench figure1``) and ``train``: aliases of ``reproduce figure1`` and
  ``reproduce figures2-3``, with the same options and handlers;
- shared helpers: :mod:`~convspectra.commands._common` (argparse types, output files, ``-`` as
  stdout), :mod:`~convspectra.commands._progress` (the progress bar),
  :mod:`~convspectra.commands._models` (the MODEL argument).
"""

from __future__ import annotations

__all__ = ["COMMANDS"]

COMMANDS: tuple[str, ...] = ("demo", "report", "spectrum", "reproduce", "bench", "train")
