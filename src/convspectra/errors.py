"""Errors raised by convspectra.

Every error the library raises on purpose derives from :class:`ConvSpectraError`, and also
from the built-in exception a caller would expect (``ValueError`` for a bad value,
``TypeError`` for a bad type), so ``except ValueError`` keeps working. Messages name the
parameter, what was expected and what was received.

Example:
    >>> import numpy as np, convspectra as cs
    >>> try:
    ...     cs.singular_values(np.ones((2, 2, 3, 3)), (15, 15), stride=2)
    ... except cs.ParameterError as err:
    ...     print(type(err).__name__, "|", str(err).split(";")[0])
    ParameterError | stride: expected a stride that divides every input side, got stride (2, 2) for input_shape (15, 15)
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "CheckpointWarning",
    "ConvSpectraError",
    "ConvergenceWarning",
    "LayoutWarning",
    "MemoryBudgetError",
    "ParameterError",
    "ParameterTypeError",
]


class ConvSpectraError(Exception):
    """Base class of every error convspectra raises on purpose."""


class ParameterError(ConvSpectraError, ValueError):
    """A parameter has the right type but a value the operation cannot accept."""


class ParameterTypeError(ConvSpectraError, TypeError):
    """A parameter has a type (or dtype) the operation cannot accept."""


class MemoryBudgetError(ParameterError):
    """The request would need more memory than the allowed budget; the message gives the estimate."""


class ConvergenceWarning(UserWarning):
    """An iterative solver stopped at its budget; the message gives the bracket it reached."""


class LayoutWarning(UserWarning):
    """A kernel read in the default layout (``"OIHW"``) has a shape that looks like the other one (``"HWIO"``).

    Passing ``layout=`` explicitly (``"OIHW"`` to confirm, ``"HWIO"`` if it is channels-last) silences
    it, as does ``warnings.filterwarnings("ignore", category=convspectra.LayoutWarning)``.
    """


class CheckpointError(ParameterError):
    """A training checkpoint cannot be used: unreadable, not a checkpoint, corrupted, or of another run.

    The message names the file and the problem.
    """


class CheckpointWarning(UserWarning):
    """A training checkpoint has no checksum (an older version wrote it): it is resumed unverified."""
