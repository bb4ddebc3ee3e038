"""Weight storage dtypes: how a matrix is held in memory, and how it is converted.

A reader returns each tensor as it is stored in its file: a float32, float16 or
bfloat16 (``ml_dtypes.bfloat16``) array, or a ``BlockQ8`` for 8-bit blocks.
``to_storage`` turns it into the dtype a run asked for (``--dtype``); the model
keeps that, and its products widen 16-bit and int8 weights to float32 a block
of rows at a time, never the whole matrix (one token's bf16 and int8 products:
inside einsum's buffered iterator, ``matvec_rows``).
"""

from __future__ import annotations

import mmap
import threading
from dataclasses import dataclass

import ml_dtypes
import numpy as np

BF16 = np.dtype(ml_dtypes.bfloat16)
STORAGE_DTYPES = {"fp32": np.dtype(np.float32), "fp16": np.dtype(np.float16), "bf16": BF16, "int8": np.dtype(np.int8)}
QK = 32  # int8 block length along the input axis (GGUF's Q8_0 uses the same)




@dataclass
class BlockQ8:
    """int8 weights in blocks along the last axis, one float32 scale per block.

    ``w[r, b*n:(b+1)*n] ~= q[r, b*n:(b+1)*n] * scales[r, b]`` with block length
    n = in / scales.shape[1]: ``QK`` normally, the whole row when in % QK != 0.
    """

    q: np.ndarray  # (out, in) int8
    scales: np.ndarray  # (out, in // QK) float32

    def __post_init__(self):
        rows, cols = self.q.shape
        n_blocks = self.scales.shape[-1] if self.scales.ndim == 2 else 0
        if self.q.dtype != np.int8 or self.scales.dtype != np.float32 or self.scales.shape[:1] != (rows,) \
                or not n_blocks or cols % n_blocks:
            raise ValueError(f"BlockQ8 needs int8 q (out, in) and float32 scales (out, in / block); "
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

    storage = "int8"
    path = "int8-blocks"
    one_call = True  # a one-token product goes through ``matvec_rows``, not the block loop

    def dequantize(self) -> np.ndarray:
        """float32 (out, in): for tests and conversion, not for the hot path."""
        return self.rows(slice(None))

    def widen_rows(self, r0: int, r1: int, out: np.ndarray) -> np.ndarray:
        """Rows r0:r1 as float32 into out (r1 - r0, in)."""
        np.copyto(out, self.q[r0:r1])
        blocks = out.reshape(r1 - r0, self.scales.shape[1], -1)  # (rows, n_blocks, block)
        np.multiply(blocks, self.scales[r0:r1, :, None], out=blocks)
        return out

    def matvec_rows(self, x: np.ndarray, r0: int, r1: int, out: np.ndarray) -> None:
        """out (r1 - r0,) = w[r0:r1] @ x for one token x (in,): each block's sum of int8 times x through
        einsum's buffered cast, then the sums times their scales, BLOCK_BYTES of sums at a time (they stay in
        L2): a couple of calls per thousand rows, where widened blocks take three calls every 32 rows, and so
        far fewer GIL hand-offs."""
        n_blocks = self.scales.shape[1]
        xb = x.reshape(n_blocks, -1)
        step = max(1, BLOCK_BYTES // (4 * n_blocks))
        partial = scratch(min(step, r1 - r0) * n_blocks)
        for b0 in range(r0, r1, step):
            b1 = min(b0 + step, r1)
            sums = partial[: (b1 - b0) * n_blocks].reshape(b1 - b0, n_blocks)
            np.einsum("rbj,bj->rb", self.q[b0:b1].reshape(b1 - b0, n_blocks, -1), xb, out=sums, dtype=np.float32,
                      casting="unsafe")
            np.einsum("rb,rb->r", sums, self.scales[b0:b1], out=out[b0 - r0 : b1 - r0])

    def rows(self, index) -> np.ndarray:
        """Rows picked by an index array or slice, as float32 (..., in)."""
        q, scales = self.q[index], self.scales[index]
        w = q.reshape(*q.shape[:-1], scales.shape[-1], -1).astype(np.float32) * scales[..., None]
        return w.reshape(q.shape)


def quantize_q8(w: np.ndarray) -> BlockQ8:
    """Round a float matrix (out, in) to int8 blocks with absmax scales (GGUF Q8_0's rule).

    Blocks of QK along the input axis, or one block per row when in % QK != 0.
    Works through the rows 1 MiB at a time, so no temporary is near the
    matrix's size (freed heap would stay in the process's resident set).
    """
    rows, cols = w.shape
    n_blocks = cols // QK if cols % QK == 0 else 1
    q = np.empty((rows, cols), dtype=np.int8)
    scales = np.empty((rows, n_blocks), dtype=np.float32)
    step = max(1, (1 << 20) // (4 * cols))
    for r0 in range(0, rows, step):
        r1 = min(r0 + step, rows)
        blocks = np.array(w[r0:r1], dtype=np.float32).reshape(r1 - r0, n_blocks, -1)  # a copy: rounded in place
        scale = np.abs(blocks).max(axis=-1) / np.float32(127)  # (rows, n_blocks)
        inverse = np.divide(np.float32(1), scale, out=np.zeros_like(scale), where=scale > 0)
        np.rint(blocks * inverse[:, :, None], out=blocks)
        q[r0:r1] = blocks.reshape(r1 - r0, cols)
        scales[r0:r1] = scale
    return BlockQ8(q, scales)


def to_float32(w) -> np.ndarray:
    """Any stored tensor as float32 (a view when it already is)."""
    if isinstance(w, BlockQ8):
        return w.dequantize()
    return np.asarray(w, dtype=np.float32)


# ----------------------------------------------------------------------------
# 16-bit matrices and the block-wise product

BLOCK_BYTES = 1 << 19  # float32 bytes widened per block for one token: 512 KiB stays in L2 while the product reads it
_F16_MASK = np.uint32(0x8FFFFFFF).view(np.int32)  # keep the sign (bit 31) and bits 0..27
_F16_SCALE = np.float32(2.0**112)  # 2^(127 - 15): rebias a half's exponent to a float's


class HalfMatrix:
    """A float16 or bfloat16 matrix (out, in), widened to float32 a block of rows at a time.

    bf16: ml_dtypes' cast (one token: inside einsum, ``matvec_rows``). fp16:
    NumPy's own cast converts one element at a time (several fp32 products' time), so finite
    tensors take a bit path: sign-extend the half's bits into an int32 shifted
    left by 13, mask off the extension, and multiply by 2^112 (exact for
    normals, subnormals and signed zeros). A tensor holding Inf or NaN keeps
    NumPy's exact cast.
    """

    def __init__(self, a: np.ndarray):
        assert a.ndim == 2 and a.dtype in (np.float16, BF16)
        self.a = np.ascontiguousarray(a)
        if a.dtype == BF16:
            self.storage, self.path = "bf16", "bf16-ml_dtypes-cast"
        else:
            finite = not np.any((self.a.view(np.uint16) & np.uint16(0x7C00)) == np.uint16(0x7C00))
            self.storage, self.path = "fp16", "fp16-bits" if finite else "fp16-numpy-cast"
            self._bits = self.a.view(np.int16)

    shape = property(lambda self: self.a.shape)
    nbytes = property(lambda self: self.a.nbytes)
    one_call = property(lambda self: self.storage == "bf16")  # a one-token product goes through ``matvec_rows``

    def widen_rows(self, r0: int, r1: int, out: np.ndarray) -> np.ndarray:
        """Rows r0:r1 as float32 into out (r1 - r0, in)."""
        if self.path == "fp16-bits":
            bits = out.view(np.int32)
            np.left_shift(self._bits[r0:r1], np.int32(13), out=bits)
            np.bitwise_and(bits, _F16_MASK, out=bits)
            np.multiply(out, _F16_SCALE, out=out)
        else:
            np.copyto(out, self.a[r0:r1])
        return out

    def matvec_rows(self, x: np.ndarray, r0: int, r1: int, out: np.ndarray) -> None:
        """bf16: out (r1 - r0,) = w[r0:r1] @ x for one token x (in,), one einsum call. Its iterator casts 8192
        elements at a time (ml_dtypes' cast) into a buffer that stays in L1 and multiplies them there, with the
        GIL released for the whole range, where a loop of widened blocks makes short calls that hand the GIL
        back and forth (each hand-off costing about as much as a call)."""
        np.einsum("k,rk->r", x, self.a[r0:r1], out=out, dtype=np.float32, casting="unsafe")

    def rows(self, index) -> np.ndarray:
        return self.a[index].astype(np.float32)


_LOCAL = threading.local()  # each thread's reused float32 buffer for widened blocks


def scratch(n: int) -> np.ndarray:
    buffer = getattr(_LOCAL, "buffer", None)
    if buffer is None or buffer.size < n:
        buffer = _LOCAL.buffer = np.empty(n, dtype=np.float32)
    return buffer[:n]


# ----------------------------------------------------------------------------
# conversion at load


def _owner(a):
    """The object that owns a's memory: an array with no base, or a buffer (mmap, bytes)."""
    while isinstance(a, np.ndarray) and a.base is not None:
        a = a.base
    return a


def _adjacent(parts: list[np.ndarray]) -> np.ndarray | None:
    """The parts stacked along axis 0 as one view when they lie back to back in one buffer, else None."""
    owner, dtype, tail = _owner(parts[0]), parts[0].dtype, parts[0].shape[1:]
    if any(_owner(p) is not owner or not p.flags.c_contiguous or p.dtype != dtype or p.shape[1:] != tail
           for p in parts):
        return None
    start = address = parts[0].ctypes.data
    for p in parts:
        if p.ctypes.data != address:
            return None
        address += p.nbytes
    owner_start = (owner if isinstance(owner, np.ndarray) else np.frombuffer(owner, dtype=np.uint8)).ctypes.data
    rows = sum(p.shape[0] for p in parts)
    return np.ndarray((rows, *tail), dtype=dtype, buffer=owner, offset=start - owner_start)


def resident(w):
    """``w`` with its arrays in the process's own memory: a copy of whatever lives in a file map.

    Streaming weights through a file map's 4 KiB page-cache pages decodes
    markedly slower than the same weights in anonymous memory, which NumPy backs
    with transparent huge pages (docs/performance.md).
    """
    if isinstance(w, BlockQ8):
        return BlockQ8(resident(w.q), resident(w.scales))
    if isinstance(w, HalfMatrix):
        return w if isinstance(_owner(w.a), np.ndarray) else HalfMatrix(np.array(w.a))
    return w if isinstance(_owner(w), np.ndarray) else np.array(w)


def release(a) -> None:
    """Drop a file-mapped array's pages from this process's resident set, once it has been copied out.

    They stay in the page cache (touching them again faults them back in without
    a disk read), but they stop counting toward the process's memory: without
    this, converting a memory-mapped fp32 checkpoint leaves the fp32 pages it read
    resident next to the converted copy. A no-op for arrays in the process's own
    memory, or where the platform's mmap has no madvise.
    """
    if isinstance(a, BlockQ8):
        release(a.q)
        release(a.scales)
        return
    a = a.a if isinstance(a, HalfMatrix) else a
    owner = _owner(a)
    if not isinstance(owner, mmap.mmap) or not hasattr(owner, "madvise") or not isinstance(a, np.ndarray) or not a.size:
        return
    start = a.ctypes.data - np.frombuffer(owner, dtype=np.uint8).ctypes.data
    aligned = start - start % mmap.PAGESIZE
    owner.madvise(mmap.MADV_DONTNEED, aligned, start + a.nbytes - aligned)


def stack_rows(parts: list):
    """Stored tensors stacked along the rows: a view when already adjacent, else one copy."""
    if len(parts) == 1:
        return parts[0]
    if all(isinstance(p, BlockQ8) for p in parts):
        return BlockQ8(stack_rows([p.q for p in parts]), stack_rows([p.scales for p in parts]))
    if len({getattr(p, "dtype", None) for p in parts}) != 1 or any(isinstance(p, BlockQ8) for p in parts):
        parts = [to_float32(p) for p in parts]
    view = _adjacent(parts)
    return view if view is not None else np.concatenate(parts, axis=0)


def to_storage(w, dtype: str):
    """A stored matrix in the storage ``dtype`` ("fp32" | "fp16" | "bf16" | "int8") the model multiplies with.

    fp32 gives a C-contiguous float32 ndarray (the original when it already is one),
    fp16/bf16 a HalfMatrix, int8 a BlockQ8 (blocks of QK along the input axis, or
    one block per row when the width is not a multiple of QK).
    """
    if dtype == "fp32":
        return np.ascontiguousarray(to_float32(w))
    if dtype in ("fp16", "bf16"):
        target = STORAGE_DTYPES[dtype]
        a = w if getattr(w, "dtype", None) == target and not isinstance(w, BlockQ8) else to_float32(w).astype(target)
        return HalfMatrix(a)
    if dtype == "int8":
        return w if isinstance(w, BlockQ8) else quantize_q8(to_float32(w))
    raise ValueError(f"unknown storage dtype {dtype!r} (known: {', '.join(STORAGE_DTYPES)})")
