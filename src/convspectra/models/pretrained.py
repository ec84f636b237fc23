"""Where the pretrained CIFAR-10 ResNet checkpoints live: the folder named by ``$CONVSPECTRA_DATA``.

The checkpoints ``resnet20-12fca82f.th``, ``resnet32-d509ac18.th``, ``resnet44-014dd654.th`` and
``resnet56-4bfd9763.th`` are those published by Yerlan Idelbayev's ``akamaster/pytorch_resnet_cifar10``
repository (BSD-2-Clause licence; reported CIFAR-10 test errors 8.27%, 7.37%, 6.90%, 6.61%).
They are not shipped with convspectra. Put them in a folder (directly, or in a
``cifar-resnet-pretrained`` subfolder) and point ``CONVSPECTRA_DATA`` at it: the command line
(``convspectra reproduce figure4``), the test-suite and the benchmarks all look there.

Example:
    >>> import os, tempfile
    >>> from convspectra.models import find_pretrained
    >>> folder = tempfile.mkdtemp()
    >>> open(os.path.join(folder, "resnet20-12fca82f.th"), "wb").close()
    >>> find_pretrained("resnet20", folder).name
    'resnet20-12fca82f.th'
    >>> find_pretrained("resnet56", folder) is None
    True
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DATA_ENV", "data_directory", "find_pretrained"]

#: The environment variable naming the data folder.
DATA_ENV = "CONVSPECTRA_DATA"


def data_directory() -> Path | None:
    """The folder named by ``$CONVSPECTRA_DATA``, or None when the variable is unset or empty."""
    value = os.environ.get(DATA_ENV, "")
    return Path(value) if value else None


def find_pretrained(model: str, folder: str | os.PathLike[str] | None = None) -> Path | None:
    """The checkpoint ``{model}-*.th`` in ``folder`` (default ``$CONVSPECTRA_DATA``) or its
    ``cifar-resnet-pretrained`` subfolder, or None when there is none."""
    root = Path(folder) if folder is not None else data_directory()
    if root is None:
        return None
    for candidate in (root, root / "cifar-resnet-pretrained"):
        found = sorted(candidate.glob(f"{model}-*.th")) if candidate.is_dir() else []
        if found:
            return found[0]
    return None
