"""Weight storage dtypes: how a matrix is held in memory, and how it is converted.

A reader returns each tensor as it is stored in its file: a float32, float16 or
bfloat16 (``ml_dtypes.bfloat16``) array, or a ``BlockQ8`` for 8-bit blocks.
``to_storage`` turns it into the dtype a run asked for (``--dtype``); the model
keeps that, and its products widen 16-bit and int8 weights to float32 a block
of rows at a time, never the whole matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

BF16 = np.dtype(ml_dtypes.bfloat16)
STORAGE_DTYPES = {"fp32": np.dtype(np.float32), "fp16": np.dtype(np.float16), "bf16": BF16, "int8": np.dtype(np.int8)}
QK = 32  # int8 block length along the input axis (GGUF's Q8_0 uses the same)


@dataclass
class BlockQ8:
    """int8 weights in blocks of ``QK`` along the last axis, one float32 scale per block.

    ``w[r, b*QK:(b+1)*QK] ~= q[r, b*QK:(b+1)*QK] * scales[r, b]``.
    """

    q: np.ndarray  # (out, in) int8
    scales: np.ndarray  # (out, in // QK) float32

    def __post_init__(self):
        rows, cols = self.q.shape
        if self.q.dtype != np.int8 or self.scales.dtype != np.float32 or cols % QK or \
                self.scales.shape != (rows, cols // QK):
            raise ValueError(f"BlockQ8 needs int8 q (out, in) with in % {QK} == 0 and float32 scales (out, in/{QK}); "
                             f"got {self.q.dtype}{self.q.shape}, {self.scales.dtype}{self.scales.shape}")

    @property
    def shape(self) -> tuple[int, int]:
        return self.q.shape

    @property
    def dtype(self) -> np.dtype:
        return self.q.dtype

    @property
    def nbytes(self) -> int:
        return self.q.nbytes + self.scales.nbytes

    def dequantize(self) -> np.ndarray:
        """float32 (out, in): for tests and conversion, not for the hot path."""
        rows, cols = self.q.shape
        w = self.q.reshape(rows, cols // QK, QK).astype(np.float32) * self.scales[:, :, None]
        return w.reshape(rows, cols)


def quantize_q8(w: np.ndarray) -> BlockQ8:
    """Round a float matrix (out, in) to int8 blocks with absmax scales (GGUF Q8_0's rule)."""
    rows, cols = w.shape
    blocks = np.asarray(w, dtype=np.float32).reshape(rows, cols // QK, QK)
    scales = np.abs(blocks).max(axis=-1) / np.float32(127)  # (out, in/QK)
    inverse = np.divide(np.float32(1), scales, out=np.zeros_like(scales), where=scales > 0)
    q = np.rint(blocks * inverse[:, :, None]).astype(np.int8)
    return BlockQ8(q.reshape(rows, cols), scales.astype(np.float32))


def to_float32(w) -> np.ndarray:
    """Any stored tensor as float32 (a view when it already is)."""
    if isinstance(w, BlockQ8):
        return w.dequantize()
    return np.asarray(w, dtype=np.float32)
