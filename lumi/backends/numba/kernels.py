"""The numba kernels behind ``lumi.backends.numba`` (imported only when numba is installed).

``product(w, x, out, shares)``: out = w @ x for one token, w's rows split into
``shares`` contiguous parts over numba's threads (``matvec`` picks it, the int8
kernel or the calling thread alone). Each element is widened in a register by
``widen``, chosen at compile time by the stored dtype:

    float32  as is
    uint16   bf16 bits: shifted into a float32's high half
    int16    fp16 bits: LLVM's half-to-float extension (F16C's vcvtph2ps on x86), exact
    int8     as an integer; ``q8_product`` applies the per-block scales

``layer`` runs a whole transformer block for one token: the same kernels, with
no Python between them; ``layers`` runs a model's consecutive blocks in one call, and
then its final norm and classifier when given them: a whole decode step.

Every function lives at module level so numba's on-disk cache (``cache=True``)
finds it again: closures would be compiled afresh in every process.
"""

from __future__ import annotations

import math
import warnings

import numba  # noqa: F401  (the package's Python side reads numba.get_num_threads through this module)
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.core.errors import NumbaPerformanceWarning
from numba.extending import intrinsic, overload

from ...storage import QK  # the int8 block length: a compile-time constant here, so LLVM unrolls the block loop
from .constants import PARALLEL_MIN_BYTES, PHASES

Q8_PREFETCH = 768  # bytes ahead of the int8 kernel's rows (the best of those measured: docs/kernels-cpu.md)
ATTEND_AHEAD = 8  # cache rows (positions) ahead of attention's loops


@intrinsic
def _f32_from_bits(typingctx, bits):
    """The float32 whose bit pattern is the uint32 ``bits``: a register move, no memory."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.uint32), codegen


@intrinsic
def _prefetch(typingctx, address):
    """Ask the CPU to start loading the cache line at ``address`` (an integer) into all cache levels.

    A hint only: it never faults, so addresses past the end of an array are harmless.
    """

    def codegen(context, builder, signature, args):
        _emit_prefetch(builder, args[0])
        return context.get_dummy_value()

    return types.void(types.intp), codegen


_F32, _I8, _I32 = ir.FloatType(), ir.IntType(8), ir.IntType(32)


def _emit_prefetch(builder, address):
    """LLVM's prefetch of the cache line at the integer ``address``: read (0), keep in all levels (3), data (1)."""
    byte_ptr = _I8.as_pointer()
    fnty = ir.FunctionType(ir.VoidType(), [byte_ptr, _I32, _I32, _I32])
    fn = builder.module.declare_intrinsic("llvm.prefetch", [byte_ptr], fnty)
    builder.call(fn, [builder.inttoptr(address, byte_ptr), ir.Constant(_I32, 0), ir.Constant(_I32, 3),
                      ir.Constant(_I32, 1)])
_LANES = 16  # float32 lanes of the int8 kernel's vectors (one AVX-512 register; LLVM splits them where narrower)
assert QK == 2 * _LANES, "the int8 kernel reads a block as two vectors"


def _vector_at(builder, address, vector_type):
    return builder.load(builder.inttoptr(address, vector_type.as_pointer()), align=1)


def _lanes_sum(builder, v):
    """The sum of a vector's lanes: halves added until one is left."""
    n = v.type.count
    while n > 1:
        n //= 2
        lo = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, n), list(range(n))))
        hi = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, n), list(range(n, 2 * n))))
        v = builder.fadd(lo, hi, flags=("fast",))
    return builder.extract_element(v, ir.Constant(_I32, 0))


@intrinsic
def _q8_dot4(typingctx, q_address, q_stride, scales_address, scales_stride, x_address, n_blocks):
    """Four rows' products with x of int8 blocks (``BlockQ8``): sum_b scales[r, b] * (q[r, block b] . x[block b])
    for the rows at ``q_address`` and the next three (``q_stride`` bytes apart; their scales likewise), as four
    float32.

    Written in LLVM's vector IR because numba's loops cannot say it: each row keeps a vector of partial sums,
    adds each block's products times that block's scale (a broadcast), and sums across its lanes once, at the
    end. Written as loops, every block of QK ended in a sum across the vector before its scale could apply
    (``q8_rows`` gives the speed-up). Each block prefetches its rows Q8_PREFETCH bytes ahead: the sums leave
    the core too few loads in flight to stream from memory on its own.
    """
    sig = types.UniTuple(types.float32, 4)(types.intp, types.intp, types.intp, types.intp, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        q, q_stride, scales, scales_stride, x, n_blocks = args
        index = q.type  # intp
        vf, vq = ir.VectorType(_F32, _LANES), ir.VectorType(_I8, _LANES)
        sums = [cgutils.alloca_once_value(builder, ir.Constant(vf, [0.0] * _LANES)) for _ in range(4)]
        rows = [builder.mul(q_stride, ir.Constant(index, i)) for i in range(4)]
        scale_rows = [builder.mul(scales_stride, ir.Constant(index, i)) for i in range(4)]
        broadcast = ir.Constant(ir.VectorType(_I32, _LANES), [0] * _LANES)
        with cgutils.for_range(builder, n_blocks) as loop:
            b = loop.index
            xb = builder.add(x, builder.mul(b, ir.Constant(index, 4 * QK)))
            x0, x1 = _vector_at(builder, xb, vf), _vector_at(builder, builder.add(xb, ir.Constant(index, 4 * _LANES)), vf)
            qb = builder.add(q, builder.mul(b, ir.Constant(index, QK)))
            sb = builder.add(scales, builder.mul(b, ir.Constant(index, 4)))
            for i in range(4):
                row = builder.add(qb, rows[i])
                _emit_prefetch(builder, builder.add(row, ir.Constant(index, Q8_PREFETCH)))
                w0 = builder.sitofp(_vector_at(builder, row, vq), vf)
                w1 = builder.sitofp(_vector_at(builder, builder.add(row, ir.Constant(index, _LANES)), vq), vf)
                block = builder.fadd(builder.fmul(w0, x0, flags=("fast",)), builder.fmul(w1, x1, flags=("fast",)),
                                     flags=("fast",))
                scale = builder.load(builder.inttoptr(builder.add(sb, scale_rows[i]), _F32.as_pointer()), align=4)
                scale = builder.insert_element(ir.Constant(vf, ir.Undefined), scale, ir.Constant(_I32, 0))
                scale = builder.shuffle_vector(scale, scale, broadcast)
                total = builder.fadd(builder.load(sums[i]), builder.fmul(block, scale, flags=("fast",)),
                                     flags=("fast",))
                builder.store(total, sums[i])
        return context.make_tuple(builder, signature.return_type, [_lanes_sum(builder, builder.load(v)) for v in sums])

    return sig, codegen


@intrinsic
def _cycles(typingctx):
    """The CPU's cycle counter (x86: rdtsc), for ``layer``'s per-operation profile."""

    def codegen(context, builder, signature, args):
        fn = builder.module.declare_intrinsic("llvm.readcyclecounter", fnty=ir.FunctionType(ir.IntType(64), []))
        return builder.call(fn, [])

    return types.int64(), codegen


@njit(nogil=True, cache=True)
def cycles():
    """The cycle counter ``layer`` reads, from Python: its rate is measured against a clock."""
    return _cycles()


@intrinsic
def _f32_from_f16_bits(typingctx, bits):
    """The float32 value of the fp16 whose bit pattern is the int16 ``bits``: exact for every value.

    LLVM's half-to-float extension, which x86 with F16C does in hardware
    (vcvtph2ps) and vectorizes. A bit trick (shift by 13, times 2^112) went
    through a float32 subnormal for every fp16 subnormal, each a microcode
    assist, which made small weights several times slower.
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
def rows(w, x, out, r0, r1, add):
    """out[r] = sum_c widen(w, r, c) * x[c] for r0 <= r < r1 (``add``: out[r] += ...), one whole row at a time.

    A plain loop over each row: fastmath lets LLVM vectorize its sum over several accumulators, and one
    stream of rows is what the hardware prefetcher follows. Four rows per pass over x (x read once per four
    rows) streamed about half as fast, for every stored dtype (docs/performance.md).
    """
    cols = w.shape[1]
    for r in range(r0, r1):
        s = np.float32(0)
        for c in range(cols):
            s += widen(w, r, c) * x[c]
        out[r] = s + out[r] if add else s


@njit(nogil=True, fastmath=True, parallel=True, cache=True)
def product(w, x, out, shares, add):
    n = w.shape[0]
    for i in prange(shares):
        rows(w, x, out, n * i // shares, n * (i + 1) // shares, add)


@njit(nogil=True, fastmath=True, cache=True)
def q8_rows(q, scales, x, out, r0, r1, add):
    """out[r] = sum_b scales[r, b] * sum_j q[r, b*QK + j] * x[b*QK + j] for r0 <= r < r1, four rows at a time
    (``_q8_dot4``, faster than numba's loops, which sum across the vector every block), the last rows of the
    share with plain loops."""
    n_blocks = scales.shape[1]
    q_base, q_stride = q.ctypes.data, q.strides[0]
    s_base, s_stride = scales.ctypes.data, scales.strides[0]
    x_base = x.ctypes.data
    r = r0
    while r + 4 <= r1:
        a0, a1, a2, a3 = _q8_dot4(q_base + r * q_stride, q_stride, s_base + r * s_stride, s_stride, x_base, n_blocks)
        if add:
            a0, a1, a2, a3 = a0 + out[r], a1 + out[r + 1], a2 + out[r + 2], a3 + out[r + 3]
        out[r], out[r + 1], out[r + 2], out[r + 3] = a0, a1, a2, a3
        r += 4
    for r in range(r, r1):
        a0 = np.float32(0)
        for b in range(n_blocks):
            s0 = np.float32(0)
            for j in range(QK):
                s0 += widen(q, r, b * QK + j) * x[b * QK + j]
            a0 += s0 * scales[r, b]
        out[r] = a0 + out[r] if add else a0


@njit(nogil=True, fastmath=True, parallel=True, cache=True)
def q8_product(q, scales, x, out, shares, add):
    n = q.shape[0]
    for i in prange(shares):
        q8_rows(q, scales, x, out, n * i // shares, n * (i + 1) // shares, add)


def matvec(w, scales, x, out, shares, add):
    """out = w @ x (``add``: out += w @ x) for one token: int8 weights (``scales``: their blocks') through
    ``q8_rows``, the others through ``rows``; over ``shares`` of numba's threads when w is big enough to be worth
    starting the pool (a few microseconds), else on the calling thread."""
    raise NotImplementedError  # only called from compiled code, through the overload below


@overload(matvec)
def _matvec(w, scales, x, out, shares, add):
    if w.dtype == types.int8:
        def q8(w, scales, x, out, shares, add):
            if shares > 1 and w.size >= PARALLEL_MIN_BYTES:
                q8_product(w, scales, x, out, shares, add)
            else:
                q8_rows(w, scales, x, out, 0, w.shape[0], add)

        return q8

    def widened(w, scales, x, out, shares, add):
        if shares > 1 and w.size * w.itemsize >= PARALLEL_MIN_BYTES:
            product(w, x, out, shares, add)
        else:
            rows(w, x, out, 0, w.shape[0], add)

    return widened


@njit(nogil=True, cache=True)
def gemv(w, scales, x, out, shares, add):
    """``matvec`` from Python."""
    matvec(w, scales, x, out, shares, add)


# -- the rest of a decode step: one call each where NumPy takes five to ten ----------------------------------
# For one token these are microseconds of work behind tens of microseconds of NumPy calls on a small model. Each
# matches its operation in ``lumi.model.ops`` up to float32 summation order and the last bit of exp.


@njit(nogil=True, fastmath=True, cache=True)
def rmsnorm_row(x, w, eps, out):
    """out = x * (w / sqrt(mean(x^2) + eps)) for one token x (d,)."""
    d = x.shape[0]
    s = np.float32(0)
    for i in range(d):
        s += x[i] * x[i]
    r = np.float32(1) / np.sqrt(s * (np.float32(1) / np.float32(d)) + eps)
    for i in range(d):
        out[i] = x[i] * (w[i] * r)


@njit(nogil=True, fastmath=True, cache=True)
def rope_row(x, cos, sin, pos, interleaved):
    """Rotate one token's heads x (n, hd) in place by the angles of row ``pos`` of cos, sin (S, hd/2)."""
    n, hd = x.shape
    half = hd // 2
    for h in range(n):
        for i in range(half):
            a = 2 * i if interleaved else i
            b = a + 1 if interleaved else i + half
            c, s = cos[pos, i], sin[pos, i]
            x1, x2 = x[h, a], x[h, b]
            x[h, a] = x1 * c - x2 * s
            x[h, b] = x2 * c + x1 * s


@njit(nogil=True, fastmath=True, cache=True, inline="always")
def _exp_nonpositive(x):
    """exp(x) for float32 x <= 0 (scores less their maximum) in plain arithmetic that LLVM vectorizes: libm's
    expf is a scalar call per element, which took most of a one-token attention. x = n ln2 + r with |r| <= ln2/2;
    exp(r) by its Taylor series to r^6 (error below 1.2e-7 relative, about an ulp); 2^n built in the exponent
    bits. Below -87.3 (exp < 2^-126) it returns 0, as a float32 softmax weight rounds to anyway."""
    if x < np.float32(-87.3):
        return np.float32(0)
    n = np.floor(x * np.float32(1.4426950408889634) + np.float32(0.5))
    r = x - n * np.float32(0.693359375) + n * np.float32(2.12194440e-4)  # ln 2 in two parts: r exact enough
    e = np.float32(1) + r * (np.float32(1) + r * (np.float32(0.5) + r * (np.float32(1 / 6) + r * (
        np.float32(1 / 24) + r * (np.float32(1 / 120) + r * np.float32(1 / 720))))))
    return e * _f32_from_bits(np.uint32((np.int32(n) + np.int32(127)) << np.int32(23)))


@njit(nogil=True, fastmath=True, cache=True)
def swiglu_row(gu, hidden, out):
    """silu(gate) * up for one token, gu = [gate, up] (2 hidden,): silu(g) = g sigmoid(g), the sigmoid from
    e = exp(-|g|) (never overflows): 1 / (1 + e) for g >= 0, e / (1 + e) below."""
    for i in range(hidden):
        g = gu[i]
        e = _exp_nonpositive(-abs(g))
        sigmoid = (np.float32(1) if g >= 0 else e) / (np.float32(1) + e)
        out[i] = g * sigmoid * gu[hidden + i]


@njit(nogil=True, fastmath=True, cache=True, inline="always")
def _prefetch_rows(base, first, count, row_bytes):
    """Prefetch ``count`` rows of ``row_bytes`` from row ``first`` of the array at address ``base``, a cache line at
    a time (hints only: rows past the end are harmless)."""
    for r in range(first, first + count):
        for offset in range(0, row_bytes, 64):
            _prefetch(base + r * row_bytes + offset)


@njit(nogil=True, fastmath=True, cache=True)
def attend_heads(q, k, v, L, scale, out, p, h0, h1):
    """Attention of one query token for heads h0..h1-1: q (H, hd) against positions 0..L-1 of k, v (Hkv, S, hd),
    head h reading kv head h // (H / Hkv); out (H, hd); p a scratch of at least L floats for one head's scores.

    Scores go four positions at a time: four independent sums across the head's features hide the latency of
    each one's final horizontal add (one at a time ran at a third of the speed). A decode step streams the
    weights between a layer's visits to its cache, so the cache comes from memory: the loops prefetch the rows
    ATTEND_AHEAD positions ahead of them, and the values' first rows while the scores run.
    """
    hd = q.shape[1]
    g = q.shape[0] // k.shape[0]
    row = hd * 4
    for h in range(h0, h1):
        kh, vh, qh = k[h // g], v[h // g], q[h]
        kb, vb = kh.ctypes.data, vh.ctypes.data
        _prefetch_rows(vb, 0, min(L, ATTEND_AHEAD), row)
        t = 0
        while t + 4 <= L:
            _prefetch_rows(kb, t + ATTEND_AHEAD, 4, row)
            s0 = s1 = s2 = s3 = np.float32(0)
            for j in range(hd):
                qj = qh[j]
                s0 += qj * kh[t, j]
                s1 += qj * kh[t + 1, j]
                s2 += qj * kh[t + 2, j]
                s3 += qj * kh[t + 3, j]
            p[t], p[t + 1], p[t + 2], p[t + 3] = s0 * scale, s1 * scale, s2 * scale, s3 * scale
            t += 4
        for t in range(t, L):
            s0 = np.float32(0)
            for j in range(hd):
                s0 += qh[j] * kh[t, j]
            p[t] = s0 * scale
        m = np.float32(-np.inf)
        for t in range(L):
            m = max(m, p[t])
        z = np.float32(0)
        for t in range(L):
            e = _exp_nonpositive(p[t] - m)
            p[t] = e
            z += e
        o = out[h]
        for j in range(hd):
            o[j] = np.float32(0)
        for t in range(L):
            _prefetch_rows(vb, t + ATTEND_AHEAD, 1, row)
            pt = p[t]
            for j in range(hd):
                o[j] += pt * vh[t, j]
        inv = np.float32(1) / z
        for j in range(hd):
            o[j] *= inv


@njit(nogil=True, fastmath=True, parallel=True, cache=True)
def attend_parallel(q, k, v, L, scale, out, p, shares):
    """``attend_heads`` with the heads split into ``shares`` parts over numba's threads; p (shares, >= L)."""
    H = q.shape[0]
    for i in prange(shares):
        attend_heads(q, k, v, L, scale, out, p[i], H * i // shares, H * (i + 1) // shares)


@njit(nogil=True, fastmath=True, cache=True)
def attend(q, k, v, L, out, p, shares):
    """One query token q (H, hd) against positions 0..L-1 of k, v (Hkv, S, hd) into out (H, hd): the heads split
    over ``shares`` threads when the live cache is big enough to come from memory rather than L1. p: scratch of at
    least shares x L floats."""
    H, hd = q.shape
    scale = np.float32(1 / math.sqrt(hd))
    shares = min(shares, H)
    if shares > 1 and 2 * H * L * hd * 4 >= PARALLEL_MIN_BYTES:
        attend_parallel(q, k, v, L, scale, out, p[: shares * L].reshape(shares, L), shares)
    else:
        attend_heads(q, k, v, L, scale, out, p, 0, H)


# -- a whole transformer block for one token ---------------------------------------------------------------

NORM, MATMUL, ROPE, CACHE, ATTENTION, ACTIVATION = (PHASES.index(k) for k in
                                                    ("norm", "matmul", "rope", "cache", "attention", "activation"))


@njit(nogil=True, inline="always")
def _tick(clock, phase, t0):
    """Charge the cycles since t0 and one call to ``phase``, and restart the count; nothing when the clock is off
    (empty)."""
    if clock.shape[0] == 0:
        return t0
    t1 = _cycles()
    clock[phase] += t1 - t0
    clock[len(PHASES) + phase] += 1
    return t1


@njit(nogil=True, fastmath=True, cache=True)
def layer(x, kv, pos, shares, scratch, clock, attention_norm, ffn_norm, wqkv, sqkv, bqkv, wo, so, w13, s13, w2, s2,
          cos, sin, interleaved, n_heads, eps):
    """One transformer block for one token at ``pos``, x (d,) the residual stream, updated in place; kv (2, Hkv, S,
    hd) the layer's cache, written at ``pos``. The operations and order of the block in
    ``lumi.model.transformer.Model._hidden``, each a kernel above, in one call with no Python between them (after a
    product streams megabytes, each return to the interpreter is a cold start). ``scratch``: ``layer_scratch`` floats, checked.

    Weights as ``matvec`` reads them (w, scales: an empty scales for a float weight); bqkv empty when the model has
    no bias. ``clock`` (2 x len(PHASES) int64, added to) gets each kind of operation's cycles, then its calls;
    empty: off.
    """
    d = x.shape[0]
    n_kv, hd = kv.shape[1], kv.shape[3]
    q_dim, n_qkv, hidden = n_heads * hd, wqkv.shape[0], w2.shape[1]
    at = d + n_qkv + q_dim
    if scratch.shape[0] < at + 3 * hidden + min(shares, n_heads) * kv.shape[2]:  # no bounds checks below
        raise ValueError("fused layer: scratch too small (see fused.layer_scratch)")
    h = scratch[:d]
    qkv = scratch[d : d + n_qkv]
    att = scratch[d + n_qkv : at]
    gu = scratch[at : at + 2 * hidden]
    act = scratch[at + 2 * hidden : at + 3 * hidden]
    p = scratch[at + 3 * hidden :]
    t = _cycles() if clock.shape[0] else 0

    rmsnorm_row(x, attention_norm, eps, h)
    t = _tick(clock, NORM, t)
    matvec(wqkv, sqkv, h, qkv, shares, False)
    for i in range(bqkv.shape[0]):
        qkv[i] += bqkv[i]
    t = _tick(clock, MATMUL, t)
    rope_row(qkv[: q_dim + n_kv * hd].reshape(n_heads + n_kv, hd), cos, sin, pos, interleaved)  # q and k
    t = _tick(clock, ROPE, t)
    kv[0, :, pos, :] = qkv[q_dim : q_dim + n_kv * hd].reshape(n_kv, hd)
    kv[1, :, pos, :] = qkv[q_dim + n_kv * hd :].reshape(n_kv, hd)
    t = _tick(clock, CACHE, t)
    attend(qkv[:q_dim].reshape(n_heads, hd), kv[0], kv[1], pos + 1, att.reshape(n_heads, hd), p, shares)
    t = _tick(clock, ATTENTION, t)
    matvec(wo, so, att, x, shares, True)  # x += attention's projection
    t = _tick(clock, MATMUL, t)
    rmsnorm_row(x, ffn_norm, eps, h)
    t = _tick(clock, NORM, t)
    matvec(w13, s13, h, gu, shares, False)
    t = _tick(clock, MATMUL, t)
    swiglu_row(gu, hidden, act)
    t = _tick(clock, ACTIVATION, t)
    matvec(w2, s2, act, x, shares, True)  # x += the feed-forward's output
    _tick(clock, MATMUL, t)


# ``layers`` has no parallel loop of its own but is compiled with parallel=True: loaded from numba's on-disk cache,
# the same function compiled without it segfaulted on its first call (its callees run parallel regions; numba issue
# 4807). numba then warns that it found nothing to parallelize, which is expected here.
warnings.filterwarnings("ignore", message=r"(?s).*parallel=True' was specified but no transformation for parallel",
                        category=NumbaPerformanceWarning)


@njit(nogil=True, fastmath=True, parallel=True, cache=True)
def layers(x, kvs, pos, shares, scratch, clock, stack, cos, sin, interleaved, n_heads, eps, norm, w_out, s_out, logits):
    """``layer`` for each of ``stack``'s entries in order (a tuple of each layer's weight arguments, attention_norm
    to s2) with the matching entry of ``kvs`` (the layers' caches): a model's consecutive blocks in one call, so the
    interpreter is not come back to between them. Then, unless ``logits`` is empty, the head: logits = w_out @
    rmsnorm(x, norm) (w_out, s_out as ``matvec`` reads them), so that a whole decode step is one call."""
    for i in range(len(stack)):
        attention_norm, ffn_norm, wqkv, sqkv, bqkv, wo, so, w13, s13, w2, s2 = stack[i]
        layer(x, kvs[i], pos, shares, scratch, clock, attention_norm, ffn_norm, wqkv, sqkv, bqkv, wo, so, w13, s13,
              w2, s2, cos, sin, interleaved, n_heads, eps)
    if logits.shape[0] == 0:
        return
    if w_out.shape[0] != logits.shape[0] or w_out.shape[1] != x.shape[0] or norm.shape[0] != x.shape[0]:
        raise ValueError("fused layers: the head's shapes disagree with x and logits")
    t = _cycles() if clock.shape[0] else 0
    h = scratch[: x.shape[0]]
    rmsnorm_row(x, norm, eps, h)
    t = _tick(clock, NORM, t)
    matvec(w_out, s_out, h, logits, shares, False)
    _tick(clock, MATMUL, t)
