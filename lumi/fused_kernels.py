"""The numba kernels behind ``lumi.fused`` (imported only when numba is installed).

``product(w, x, out, shares)``: out = w @ x for one token, w's rows split into
``shares`` contiguous parts over numba's threads. Each element is widened in a
register by ``widen``, chosen at compile time by the stored dtype:

    float32  as is
    uint16   bf16 bits: shifted into a float32's high half
    int16    fp16 bits: LLVM's half-to-float extension (F16C's vcvtph2ps on x86), exact
    int8     as an integer; ``q8_product`` applies the per-block scales

Every function lives at module level so numba's on-disk cache (``cache=True``)
finds it again: closures were compiled afresh in every process (about 1 s each).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

QK = 32  # int8 block length (weights.QK); a constant here, so LLVM unrolls the block loop


@intrinsic
def _f32_from_bits(typingctx, bits):
    """The float32 whose bit pattern is the uint32 ``bits``: a register move, no memory."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.uint32), codegen


@intrinsic
def _f32_from_f16_bits(typingctx, bits):
    """The float32 value of the fp16 whose bit pattern is the int16 ``bits``: exact for every value.

    LLVM's half-to-float extension, which x86 with F16C does in hardware
    (vcvtph2ps) and vectorizes. A bit trick (shift by 13, times 2^112) went
    through a float32 subnormal for every fp16 subnormal, each a microcode
    assist: 3x slower on small weights.
    """

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(types.int16), codegen


def widen(w, r, c):
    """w[r, c] as float32 (the stored dtype picks how; see the module's table)."""
    raise NotImplementedError  # only called from compiled code, through the overload below


@overload(widen, inline="always", fastmath=True)
def _widen(w, r, c):
    dtype = w.dtype
    if dtype == types.float32:
        return lambda w, r, c: w[r, c]
    if dtype == types.uint16:
        return lambda w, r, c: _f32_from_bits(np.uint32(w[r, c]) << np.uint32(16))
    if dtype == types.int16:
        return lambda w, r, c: _f32_from_f16_bits(w[r, c])
    if dtype == types.int8:
        return lambda w, r, c: np.float32(w[r, c])
    return None


@njit(nogil=True, fastmath=True, cache=True)
def rows(w, x, out, r0, r1):
    """out[r] = sum_c widen(w, r, c) * x[c] for r0 <= r < r1, four rows per pass over x (kept in L1).

    Plain loops over whole rows: fastmath lets LLVM vectorize the sums (a loop
    over scale blocks instead fell back to gathers, 2-3x slower).
    """
    cols = w.shape[1]
    r = r0
    while r + 4 <= r1:
        s0 = s1 = s2 = s3 = np.float32(0)
        for c in range(cols):
            xc = x[c]
            s0 += widen(w, r, c) * xc
            s1 += widen(w, r + 1, c) * xc
            s2 += widen(w, r + 2, c) * xc
            s3 += widen(w, r + 3, c) * xc
        out[r], out[r + 1], out[r + 2], out[r + 3] = s0, s1, s2, s3
        r += 4
    for r in range(r, r1):  # the last rows of this share
        s0 = np.float32(0)
        for c in range(cols):
            s0 += widen(w, r, c) * x[c]
        out[r] = s0


@njit(nogil=True, fastmath=True, parallel=True, cache=True)
def product(w, x, out, shares):
    n = w.shape[0]
    for i in prange(shares):
        rows(w, x, out, n * i // shares, n * (i + 1) // shares)


@njit(nogil=True, fastmath=True, cache=True)
def q8_rows(q, scales, x, out, r0, r1):
    """out[r] = sum_b scales[r, b] * sum_j q[r, b*QK + j] * x[b*QK + j], four rows at a time."""
    n_blocks = scales.shape[1]
    r = r0
    while r + 4 <= r1:
        a0 = a1 = a2 = a3 = np.float32(0)
        for b in range(n_blocks):
            s0 = s1 = s2 = s3 = np.float32(0)
            for j in range(QK):  # a constant trip count from 0: unrolled and vectorized (a range from b * QK was not)
                c = b * QK + j
                xc = x[c]
                s0 += widen(q, r, c) * xc
                s1 += widen(q, r + 1, c) * xc
                s2 += widen(q, r + 2, c) * xc
                s3 += widen(q, r + 3, c) * xc
            a0 += s0 * scales[r, b]
            a1 += s1 * scales[r + 1, b]
            a2 += s2 * scales[r + 2, b]
            a3 += s3 * scales[r + 3, b]
        out[r], out[r + 1], out[r + 2], out[r + 3] = a0, a1, a2, a3
        r += 4
    for r in range(r, r1):
        a0 = np.float32(0)
        for b in range(n_blocks):
            s0 = np.float32(0)
            for j in range(QK):
                s0 += widen(q, r, b * QK + j) * x[b * QK + j]
            a0 += s0 * scales[r, b]
        out[r] = a0


@njit(nogil=True, fastmath=True, parallel=True, cache=True)
def q8_product(q, scales, x, out, shares):
    n = q.shape[0]
    for i in prange(shares):
        q8_rows(q, scales, x, out, n * i // shares, n * (i + 1) // shares)
