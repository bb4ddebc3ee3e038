"""16-bit and int8 weights held on a GPU in their stored width (the device side of ``lumi.storage``).

The same rule as on the host: a full float32 copy of a matrix never exists.
Converted there (``convert_on_device``) or uploaded as stored
(``DeviceMatrix.upload``); widened a block of rows at a time only where no
kernel reads the stored width (``DeviceMatrix.matmul_t``). Uses only the array
module it is given: nothing here imports CuPy.
"""

from __future__ import annotations

import numpy as np

from ...storage import BF16, QK, STORAGE_DTYPES, BlockQ8, HalfMatrix

DEVICE_BLOCK_BYTES = 64 << 20  # float32 bytes widened or converted per block on a device: a bounded temporary


class DeviceMatrix:
    """A 16-bit or int8 matrix held on a device in its stored width, widened there a block of rows at a time.

    The same rule as on the host (a full float32 copy never exists), with the
    device's array module: bf16 travels as its uint16 bits (CuPy has no bfloat16
    dtype) and widens by a shift into a float's high half; fp16 by the device's
    own half-to-float conversion; int8 as int8 times its block scales. A decode
    step's product is one kernel that reads the stored width (``cuda.kernels.Kernels.gemv``);
    a prompt's 16-bit product is cuBLAS GemmEx on the stored width (``Kernels.gemm``),
    and otherwise (int8, or a device without lumi's kernels) widens a block at a
    time into one float32 matrix product (``matmul_t``).
    ``a``: the fp16 values or bf16 bits (out, in); ``blocks``: a BlockQ8 of device arrays.
    """

    def __init__(self, storage: str, xp, a=None, blocks: BlockQ8 | None = None):
        self.xp, self.storage, self.a, self.blocks = xp, storage, a, blocks
        held = blocks.q if blocks is not None else a
        self.shape, self.nbytes = tuple(held.shape), (blocks.nbytes if blocks is not None else a.nbytes)
        self.path = f"{storage}-device"  # decode: lumi's GEMV kernel; prompts: GemmEx (16-bit) or widened blocks

    @classmethod
    def upload(cls, w, device) -> DeviceMatrix:
        """A host HalfMatrix or BlockQ8, copied to the device as it is stored."""
        if isinstance(w, BlockQ8):  # BlockQ8.rows uses only array methods: the same arithmetic runs on the device
            return cls("int8", device.xp, blocks=BlockQ8(device.to_device(w.q), device.to_device(w.scales)))
        return cls(w.storage, device.xp, a=device.to_device(w.a.view(np.uint16) if w.storage == "bf16" else w.a))

    def to_host(self, device):
        """The host HalfMatrix or BlockQ8 holding the same stored values."""
        if self.blocks is not None:
            return BlockQ8(device.to_host(self.blocks.q), device.to_host(self.blocks.scales))
        a = device.to_host(self.a)
        return HalfMatrix(a.view(BF16) if self.storage == "bf16" else a)

    def matmul_t(self, x):
        """x (T, in) @ self.T on the device, widening DEVICE_BLOCK_BYTES of rows at a time: float32 (T, out)."""
        rows, cols = self.shape
        out = self.xp.empty((x.shape[0], rows), dtype=self.xp.float32)
        block = max(1, min(rows, DEVICE_BLOCK_BYTES // (4 * cols)))
        for b0 in range(0, rows, block):
            b1 = min(b0 + block, rows)
            out[:, b0:b1] = x @ self.rows(slice(b0, b1)).T
        return out

    def rows(self, index):
        """Rows picked by an index array or slice, as float32 (..., in) on the device."""
        xp = self.xp
        if self.storage == "int8":
            return self.blocks.rows(index)
        if self.storage == "bf16":
            return (self.a[index].astype(xp.uint32) << 16).view(xp.float32)
        return self.a[index].astype(xp.float32)


def convert_on_device(w, dtype: str, xp):
    """A float32 matrix on a device in the storage ``dtype``, converted there: an array (fp32) or a DeviceMatrix.

    bf16 rounds to nearest even, as ml_dtypes does on the host (finite values);
    int8 takes ``quantize_q8``'s blocks and absmax scales. Rows go a block at a
    time, so the temporaries stay small next to the matrix.
    """
    if dtype == "fp32":
        return w
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"unknown storage dtype {dtype!r} (known: {', '.join(STORAGE_DTYPES)})")
    rows, cols = w.shape
    n_blocks = cols // QK if cols % QK == 0 else 1
    out = xp.empty((rows, cols), dtype={"fp16": xp.float16, "bf16": xp.uint16, "int8": xp.int8}[dtype])
    scales = xp.empty((rows, n_blocks), dtype=xp.float32) if dtype == "int8" else None
    step = max(1, DEVICE_BLOCK_BYTES // (4 * cols))
    for r0 in range(0, rows, step):
        part = w[r0 : r0 + step]
        if dtype == "fp16":
            out[r0 : r0 + step] = part
        elif dtype == "bf16":
            bits = part.view(xp.uint32)
            out[r0 : r0 + step] = (bits + (xp.uint32(0x7FFF) + ((bits >> 16) & xp.uint32(1)))) >> 16
        else:
            blocks = part.reshape(part.shape[0], n_blocks, -1)
            scale = xp.abs(blocks).max(axis=-1) / np.float32(127)
            inverse = xp.where(scale > 0, np.float32(1) / xp.where(scale > 0, scale, np.float32(1)), np.float32(0))
            out[r0 : r0 + step] = xp.rint(blocks * inverse[:, :, None]).reshape(part.shape)
            scales[r0 : r0 + step] = scale
    if dtype == "int8":
        return DeviceMatrix("int8", xp, blocks=BlockQ8(out, scales))
    return DeviceMatrix(dtype, xp, a=out)


def stack_on_device(parts: list, xp):
    """Converted matrices on a device (arrays or DeviceMatrix of one storage) stacked along the rows."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    if not isinstance(first, DeviceMatrix):
        return xp.concatenate(parts)
    if first.blocks is not None:
        return DeviceMatrix("int8", xp, blocks=BlockQ8(xp.concatenate([p.blocks.q for p in parts]),
                                                       xp.concatenate([p.blocks.scales for p in parts])))
    return DeviceMatrix(first.storage, xp, a=xp.concatenate([p.a for p in parts]))


# ----------------------------------------------------------------------------
