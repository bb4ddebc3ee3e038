"""Bounds-checked, read-only views into a memory-mapped file.

Every offset and size read from a header is checked against the file's length
before an array is made, so a lying header gives a ``CheckpointError`` naming
the file and the field instead of a crash or an allocation driven by the header.
"""

from __future__ import annotations

import mmap
import os
import struct

import numpy as np

from ..errors import CheckpointError


class NonFiniteWeightWarning(UserWarning):
    """A norm or bias in a checkpoint holds NaN or Inf."""


def warn_non_finite(weights: dict, where, display=lambda name: name) -> None:
    """Warn, naming the file and tensor, for each 1-D weight (norm, bias) holding NaN or Inf.

    Only the vectors: scanning every matrix would read the whole checkpoint at load.
    ``where(name)`` gives the file a tensor came from, ``display(name)`` its name there.
    """
    import warnings

    for name, a in weights.items():
        if getattr(a, "ndim", 2) == 1 and not np.isfinite(np.asarray(a, dtype=np.float32)).all():
            warnings.warn(f"{where(name)}: {display(name)}: holds NaN or Inf", NonFiniteWeightWarning, stacklevel=4)


class MappedFile:
    """A file mapped read-only; ``array`` and ``unpack`` hand out checked views."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise CheckpointError(self.path, None, "no such file")
        if os.path.isdir(self.path):
            raise CheckpointError(self.path, None, "is a directory, expected a file")
        with open(self.path, "rb") as f:
            self.size = os.fstat(f.fileno()).st_size
            # mmap cannot map an empty file; an empty buffer fails every bounds check below
            self.buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if self.size else b""

    def error(self, field: str | None, problem: str) -> CheckpointError:
        return CheckpointError(self.path, field, problem)

    def check_range(self, offset: int, nbytes: int, field: str) -> None:
        if offset < 0 or nbytes < 0 or offset + nbytes > self.size:
            raise self.error(
                field,
                f"needs bytes {offset}..{offset + nbytes} but the file has {self.size} (truncated or corrupt)",
            )

    def unpack(self, fmt: str, offset: int, field: str) -> tuple:
        """struct.unpack_from with a bounds check; fmt should fix byte order ('<')."""
        self.check_range(offset, struct.calcsize(fmt), field)
        return struct.unpack_from(fmt, self.buffer, offset)

    def array(self, offset: int, dtype, shape: tuple[int, ...], field: str) -> np.ndarray:
        """A read-only, zero-copy view of shape ``shape`` at ``offset``."""
        dtype = np.dtype(dtype)
        count = 1
        for s in shape:
            if s < 0:
                raise self.error(field, f"negative dimension in shape {shape}")
            count *= s
        self.check_range(offset, count * dtype.itemsize, field)
        return np.frombuffer(self.buffer, dtype=dtype, count=count, offset=offset).reshape(shape)
