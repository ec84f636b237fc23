"""The IDX file format of MNIST and Fashion-MNIST: read and write, gzip-compressed or raw.

The format: two zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
0x0D float32, 0x0E float64), a byte giving the number of dimensions ``d``, ``d`` big-endian
uint32 sizes, then the data in C order. :mod:`convspectra.experiments.datasets` reads the four
files of a dataset with these functions (and re-exports them).

Example:
    >>> import tempfile, os, numpy as np
    >>> from convspectra.experiments.idx import read_idx, write_idx
    >>> path = os.path.join(tempfile.mkdtemp(), "x-idx1-ubyte")
    >>> write_idx(path, np.arange(5, dtype=np.uint8))
    >>> read_idx(path)
    array([0, 1, 2, 3, 4], dtype=uint8)
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ParameterError

__all__ = ["read_idx", "write_idx"]

_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _open_maybe_gzip(path: Path) -> bytes:
    with open(path, "rb") as handle:
        head = handle.read(2)
    opener = gzip.open if head == b"\x1f\x8b" else open
    with opener(path, "rb") as handle:
        return handle.read()


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (the MNIST / Fashion-MNIST format), gzip-compressed or raw.

    The format: two zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), a byte giving the number of dimensions ``d``, ``d`` big-endian
    uint32 sizes, then the data in C order.

    Args:
        path: the file; compression is detected from its first bytes, not its name.

    Returns:
        The array, in native byte order.

    Raises:
        ParameterError: if the file is not a well-formed IDX file (bad magic, type or length).

    Example:
        >>> import tempfile, os, numpy as np
        >>> path = os.path.join(tempfile.mkdtemp(), "x-idx1-ubyte")
        >>> write_idx(path, np.arange(5, dtype=np.uint8))
        >>> read_idx(path)
        array([0, 1, 2, 3, 4], dtype=uint8)
    """
    path = Path(path)
    try:
        data = _open_maybe_gzip(path)
    except (OSError, EOFError) as err:
        raise ParameterError(f"path: expected a readable IDX file, got {str(path)!r} ({err})") from err
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise ParameterError(
            f"path: expected an IDX file (magic 0x0000, type byte in {sorted(_DTYPES)}), got {str(path)!r} "
            f"starting with {data[:4].hex() or 'nothing'}"
        )
    dtype, ndim = _DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ParameterError(f"path: expected an IDX header of {header} bytes, got {len(data)} bytes in {str(path)!r}")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise ParameterError(
            f"path: expected {expected} data bytes for shape {shape} in {str(path)!r}, got {len(data) - header}"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike[str], array: np.ndarray, *, gzip_file: bool = False) -> None:
    """Write ``array`` as an IDX file (uint8, int8, int16, int32, float32 or float64), optionally gzipped.

    Example:
        >>> import tempfile, os, numpy as np
        >>> path = os.path.join(tempfile.mkdtemp(), "y.gz")
        >>> write_idx(path, np.ones((2, 3), np.uint8), gzip_file=True)
        >>> read_idx(path).shape
        (2, 3)
    """
    array = np.asarray(array)
    codes = {dtype.newbyteorder("=").str: code for code, dtype in _DTYPES.items()}
    code = codes.get(array.dtype.newbyteorder("=").str)
    if code is None:
        raise ParameterError(f"array: expected one of the IDX dtypes, got {array.dtype}")
    big = array.astype(_DTYPES[code], copy=False)
    payload = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + big.tobytes()
    opener = gzip.open if gzip_file else open
    with opener(path, "wb") as handle:
        handle.write(payload)
