"""lumi's own CUDA kernels for a decode step on a GPU (CuPy), one launch per operation.

Composed from CuPy's array functions, one transformer layer of a decode step
is about 50 kernel launches (RMSNorm alone is seven), and at a few
microseconds of Python and driver time each they, not the weights, set the
speed. These kernels do each operation of the step in one launch:

- ``gemv``: y = W x (+ y), a warp per row, 16-byte loads, float32
  accumulation. fp16 widens with the hardware conversion, bf16 (held as its
  uint16 bits) by a shift, int8 by its block scale; the weight is read once in
  its stored width and never exists in float32. The residual add rides along.
- ``rmsnorm``, ``rope`` (q and k together), ``swiglu``, and ``attend``:
  decode attention for one query token, scores, softmax and the weighted sum
  of values in one block per head.

A layer's decode step is then ten launches: norm, qkv, rope, cache store,
attention, wo (+ residual), norm, w13, swiglu, w2 (+ residual). Prompts
(T > 1) keep the array-function path and cuBLAS matrix products.

``Kernels.ops`` gives the operations in the signatures of ``model.OPS``; each
falls back to the generic operation where its kernel does not apply, so a
model runs the same code on any device.
"""

from __future__ import annotations

import math

import numpy as np

SOURCE = r"""
// No headers: NVRTC finds none of its own, and each helper here is one instruction.
__device__ __forceinline__ float half_to_float(unsigned short b) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(b));
    return f;
}

#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum (or max) over the block, returned to every thread. Starts with a barrier, so it may be called repeatedly.
__device__ float block_reduce(float v, bool is_max) {
    __shared__ float part[32];
    __shared__ float total;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    __syncthreads();
    v = is_max ? warp_max(v) : warp_sum(v);
    if (lane == 0) part[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float w = lane < warps ? part[lane] : (is_max ? NEG_INF : 0.0f);
        w = is_max ? warp_max(w) : warp_sum(w);
        if (lane == 0) total = w;
    }
    __syncthreads();
    return total;
}

// Two 16-bit weights in one 32-bit word, widened: KIND 1 float16, KIND 2 bfloat16 bits.
template <int KIND>
__device__ __forceinline__ float2 widen2(unsigned int p) {
    if (KIND == 2) return make_float2(__uint_as_float(p << 16), __uint_as_float(p & 0xffff0000u));
    return make_float2(half_to_float((unsigned short)(p & 0xffffu)), half_to_float((unsigned short)(p >> 16)));
}

template <int KIND>
__device__ __forceinline__ float widen1(const void* w, long long i) {
    if (KIND == 0) return reinterpret_cast<const float*>(w)[i];
    unsigned short b = reinterpret_cast<const unsigned short*>(w)[i];
    if (KIND == 2) return __uint_as_float(((unsigned int)b) << 16);
    return half_to_float(b);
}

// 16 bytes of weights times the matching x: 4 float32 or 8 16-bit values.
template <int KIND>
__device__ __forceinline__ float dot16(uint4 p, const float* __restrict__ x) {
    const float4 a = reinterpret_cast<const float4*>(x)[0];
    if (KIND == 0)
        return __uint_as_float(p.x) * a.x + __uint_as_float(p.y) * a.y + __uint_as_float(p.z) * a.z
             + __uint_as_float(p.w) * a.w;
    const float4 b = reinterpret_cast<const float4*>(x)[1];
    const float2 w0 = widen2<KIND>(p.x), w1 = widen2<KIND>(p.y), w2 = widen2<KIND>(p.z), w3 = widen2<KIND>(p.w);
    return w0.x * a.x + w0.y * a.y + w1.x * a.z + w1.y * a.w + w2.x * b.x + w2.y * b.y + w3.x * b.z + w3.y * b.w;
}

// y[r] (+)= W[r, :] . x, one warp per row. vec: rows and x start on 16-byte boundaries and cols fills whole loads.
template <int KIND>
__device__ void gemv_rows(const void* __restrict__ W, const float* __restrict__ x, float* __restrict__ y,
                          int rows, int cols, int accumulate, int vec) {
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) return;
    const int per = KIND == 0 ? 4 : 8;  // weights per 16 bytes
    const char* w = reinterpret_cast<const char*>(W) + (long long)row * cols * (KIND == 0 ? 4 : 2);
    float acc = 0.0f;
    if (vec) {
        const uint4* w4 = reinterpret_cast<const uint4*>(w);
        const int n = cols / per;
#pragma unroll 4
        for (int i = lane; i < n; i += 32) acc += dot16<KIND>(__ldg(w4 + i), x + i * per);
    } else {
        for (int i = lane; i < cols; i += 32) acc += widen1<KIND>(w, i) * x[i];
    }
    acc = warp_sum(acc);
    if (lane == 0) y[row] = accumulate ? y[row] + acc : acc;
}

extern "C" __global__ void gemv_f32(const float* W, const float* x, float* y, int rows, int cols, int acc, int vec) {
    gemv_rows<0>(W, x, y, rows, cols, acc, vec);
}
extern "C" __global__ void gemv_f16(const unsigned short* W, const float* x, float* y, int rows, int cols, int acc,
                                    int vec) {
    gemv_rows<1>(W, x, y, rows, cols, acc, vec);
}
extern "C" __global__ void gemv_bf16(const unsigned short* W, const float* x, float* y, int rows, int cols, int acc,
                                     int vec) {
    gemv_rows<2>(W, x, y, rows, cols, acc, vec);
}

__device__ __forceinline__ float dot4_i8(int v, const float* __restrict__ x) {
    const char4 c = *reinterpret_cast<const char4*>(&v);
    const float4 a = *reinterpret_cast<const float4*>(x);
    return (float)c.x * a.x + (float)c.y * a.y + (float)c.z * a.z + (float)c.w * a.w;
}

// int8 rows in blocks of cols / nblocks, one float32 scale each. vec: blocks of 32 (two 16-byte loads each).
extern "C" __global__ void gemv_q8(const signed char* __restrict__ Q, const float* __restrict__ S,
                                   const float* __restrict__ x, float* __restrict__ y, int rows, int cols,
                                   int nblocks, int accumulate, int vec) {
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) return;
    const signed char* q = Q + (long long)row * cols;
    const float* s = S + (long long)row * nblocks;
    float acc = 0.0f;
    if (vec) {
        const int4* q4 = reinterpret_cast<const int4*>(q);
        const int n = cols / 16;
#pragma unroll 4
        for (int i = lane; i < n; i += 32) {
            const int4 p = __ldg(q4 + i);
            const float* xx = x + i * 16;
            acc += __ldg(s + (i >> 1)) * (dot4_i8(p.x, xx) + dot4_i8(p.y, xx + 4) + dot4_i8(p.z, xx + 8)
                                         + dot4_i8(p.w, xx + 12));
        }
    } else {
        const int block = cols / nblocks;
        for (int i = lane; i < cols; i += 32) acc += (float)q[i] * s[i / block] * x[i];
    }
    acc = warp_sum(acc);
    if (lane == 0) y[row] = accumulate ? y[row] + acc : acc;
}

// y = x * (w / sqrt(mean(x^2) + eps)), one block per row of x (T, d).
extern "C" __global__ void rmsnorm(const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ y,
                                   int d, float inv_d, float eps) {
    const float* xr = x + (long long)blockIdx.x * d;
    float* yr = y + (long long)blockIdx.x * d;
    float s = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) s += xr[i] * xr[i];
    s = block_reduce(s, false);
    const float r = 1.0f / sqrtf(s * inv_d + eps);
    for (int i = threadIdx.x; i < d; i += blockDim.x) yr[i] = xr[i] * (w[i] * r);
}

// Positions live in device memory (pos[0]), so a captured step replays at any position.

// Rotate one token's heads in place: x (n, hd); cos, sin the whole tables (S, hd/2), row pos[0].
extern "C" __global__ void rope(float* x, const float* __restrict__ cos, const float* __restrict__ sin,
                                const int* __restrict__ pos, int n, int hd, int interleaved) {
    const int half = hd / 2;
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= n * half) return;
    const int i = idx % half;
    float* h = x + (idx / half) * hd;
    const int a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + half;
    const long long row = (long long)pos[0] * half;
    const float c = cos[row + i], s = sin[row + i];
    const float x1 = h[a], x2 = h[b];
    h[a] = x1 * c - x2 * s;
    h[b] = x2 * c + x1 * s;
}

// One token's keys and values kv (2, Hkv, hd) into the cache (2, Hkv, S, hd) at position pos[0].
extern "C" __global__ void store_kv(const float* __restrict__ kv, float* __restrict__ cache,
                                    const int* __restrict__ pos, int heads, int S, int hd) {
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;  // heads = 2 Hkv: keys' heads, then values'
    if (idx >= heads * hd) return;
    cache[((long long)(idx / hd) * S + pos[0]) * hd + idx % hd] = kv[idx];
}

extern "C" __global__ void advance(int* pos) { pos[0] += 1; }

// Attention of one query token at position pos[0] over positions 0..pos[0]: block h takes query head h
// against kv head h / g. q (H, hd); k, v (Hkv, S, hd) with `head_stride` floats between heads; out (H, hd).
// Scores in shared memory (S floats).
extern "C" __global__ void attend(const float* __restrict__ q, const float* __restrict__ k,
                                  const float* __restrict__ v, float* __restrict__ out,
                                  const int* __restrict__ pos, int hd, int g, long long head_stride, float scale) {
    extern __shared__ float p[];
    const int L = pos[0] + 1;
    const int h = blockIdx.x;
    const float* qh = q + (long long)h * hd;
    const float* kh = k + (h / g) * head_stride;
    const float* vh = v + (h / g) * head_stride;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int t = warp; t < L; t += warps) {
        float s = 0.0f;
        for (int j = lane; j < hd; j += 32) s += qh[j] * kh[(long long)t * hd + j];
        s = warp_sum(s);
        if (lane == 0) p[t] = s * scale;
    }
    __syncthreads();
    float m = NEG_INF;
    for (int t = threadIdx.x; t < L; t += blockDim.x) m = fmaxf(m, p[t]);
    m = block_reduce(m, true);
    float z = 0.0f;
    for (int t = threadIdx.x; t < L; t += blockDim.x) {
        const float e = expf(p[t] - m);
        p[t] = e;
        z += e;
    }
    z = block_reduce(z, false);  // its barriers also publish p
    for (int j = threadIdx.x; j < hd; j += blockDim.x) {
        float acc = 0.0f;
        for (int t = 0; t < L; ++t) acc += p[t] * vh[(long long)t * hd + j];
        out[(long long)h * hd + j] = acc / z;
    }
}
"""

WARPS = 8  # rows per block of the products: a warp each
ATTEND_THREADS = 128
MAX_SHARED_BYTES = 48 << 10  # the attention kernel keeps a context's scores in shared memory; longer ones fall back
GEMV_KINDS = {"fp32": "gemv_f32", "fp16": "gemv_f16", "bf16": "gemv_bf16"}
I32 = np.int32


def _one_row(x) -> bool:
    """x is (1, n) float32 with unit-stride elements: what the kernels index as a plain vector."""
    return x.ndim == 2 and x.shape[0] == 1 and x.dtype == np.float32 and x.strides[1] == 4


class Position:
    """A model's position on one device: an int32 in device memory, which the kernels read, and the host's copy.

    A decode step advances it on the device, so steady decoding sends no
    position up, and a captured step replays at whatever position it holds.
    """

    def __init__(self, device, kernels):
        self.device, self.kernels = device, kernels
        self.buffer = device.to_device(np.zeros(1, dtype=np.int32))
        self.host = 0

    def at(self, pos: int) -> None:
        """Make the device's copy ``pos``: a copy up only when it holds something else (after a prompt, a jump)."""
        if pos != self.host:
            self.buffer[...] = self.device.to_device(np.array([pos], dtype=np.int32))
            self.host = pos

    def advance(self) -> None:
        self.kernels.advance(self.buffer)
        self.host += 1


class Kernels:
    """The kernels for one array module (CuPy), compiled once, on first use."""

    graphs = True  # a step made of these kernels can be captured into a CUDA graph (``StepGraph``)

    def __init__(self, cupy):
        self.cp = cupy
        self._module = None
        self._functions = {}
        self._swiglu = None

    def _fn(self, name: str):
        fn = self._functions.get(name)
        if fn is None:
            if self._module is None:
                self._module = self.cp.RawModule(code=SOURCE, options=("--std=c++14",))
            fn = self._functions[name] = self._module.get_function(name)
        return fn

    # -- the kernels -----------------------------------------------------------

    def _plan(self, w):
        """The GEMV launch for weight w: (kernel, grid, block, arguments before x, arguments after y), or None."""
        from .weights import DeviceMatrix

        if isinstance(w, DeviceMatrix):
            storage, (rows, cols) = w.storage, w.shape
        elif isinstance(w, self.cp.ndarray) and w.ndim == 2 and w.dtype == np.float32 and w.flags.c_contiguous:
            storage, (rows, cols) = "fp32", w.shape
        else:
            return None
        grid, block = ((rows + WARPS - 1) // WARPS,), (32 * WARPS,)
        if storage == "int8":
            q, scales = w.blocks.q, w.blocks.scales
            nblocks = scales.shape[1]
            vec = cols == 32 * nblocks and q.data.ptr % 16 == 0
            return self._fn("gemv_q8"), grid, block, (q, scales), (I32(rows), I32(cols), I32(nblocks)), I32(vec), rows
        a = w if storage == "fp32" else w.a
        vec = cols % (4 if storage == "fp32" else 8) == 0 and a.data.ptr % 16 == 0
        return self._fn(GEMV_KINDS[storage]), grid, block, (a,), (I32(rows), I32(cols)), I32(vec), rows

    def gemv(self, x, w, residual=None, plans: dict | None = None):
        """x (1, in) @ w.T (+ residual, in place) for a float32 CuPy matrix or a ``DeviceMatrix``; None if unsupported.

        ``plans``: id(weight) -> (weight, launch), a model's products worked out once (``ops`` keeps one per model).
        """
        if plans is None:
            plan = self._plan(w)
        else:
            entry = plans.get(id(w))
            if entry is None or entry[0] is not w:
                entry = plans[id(w)] = (w, self._plan(w))
            plan = entry[1]
        if plan is None or not _one_row(x):
            return None
        fn, grid, block, before, after, vec, rows = plan
        if residual is None:
            y = self.cp.empty((1, rows), dtype=np.float32)
        elif _one_row(residual) and residual.shape[1] == rows:
            y = residual
        else:
            return None
        vec = I32(vec and x.data.ptr % 16 == 0)
        fn(grid, block, (*before, x, y, *after, I32(residual is not None), vec))
        return y

    def rmsnorm(self, x, w, eps):
        if not (_one_row(x) and w.strides == (4,)):
            return None
        d = x.shape[1]
        y = self.cp.empty_like(x)
        self._fn("rmsnorm")((1,), (min(1024, 32 * ((d + 31) // 32)),), (x, w, y, I32(d), np.float32(1 / d),
                                                                          np.float32(eps)))
        return y

    def rope(self, x, cos, sin, pos, layout: str) -> bool:
        """Rotate one token's heads x (1, n, hd) in place at the position in ``pos``; False when x does not suit."""
        T, n, hd = x.shape
        if T != 1 or x.strides[1:] != (4 * hd, 4) or not (cos.flags.c_contiguous and sin.flags.c_contiguous):
            return False
        total = n * (hd // 2)
        self._fn("rope")(((total + 255) // 256,), (256,), (x, cos, sin, pos, I32(n), I32(hd),
                                                           I32(layout == "interleaved")))
        return True

    def store(self, kv, cache, pos) -> bool:
        """One token's kv (1, 2, Hkv, hd) into cache (2, Hkv, S, hd) at the position in ``pos``."""
        _, two, heads, hd = kv.shape
        if kv.shape[0] != 1 or kv.strides[1:] != (4 * heads * hd, 4 * hd, 4) or not cache.flags.c_contiguous:
            return False
        n = two * heads * hd
        self._fn("store_kv")(((n + 255) // 256,), (256,), (kv, cache, pos, I32(two * heads), I32(cache.shape[2]),
                                                           I32(hd)))
        return True

    def attend(self, q, k, v, pos):
        """One query token at the position in ``pos``: q (1, H, hd), k and v (Hkv, >= pos + 1, hd) cache views."""
        _, H, hd = q.shape
        n_kv, S, _ = k.shape
        if (4 * S > MAX_SHARED_BYTES or q.shape[0] != 1 or q.strides[1:] != (4 * hd, 4)
                or k.strides[1:] != (4 * hd, 4) or v.strides != k.strides):
            return None
        out = self.cp.empty((1, H * hd), dtype=np.float32)
        self._fn("attend")((H,), (ATTEND_THREADS,), (q, k, v, out, pos, I32(hd), I32(H // n_kv),
                                                      np.int64(k.strides[0] // 4), np.float32(1 / math.sqrt(hd))),
                           shared_mem=4 * S)
        return out

    def swiglu(self, gu, hidden_dim: int):
        if self._swiglu is None:  # silu(g) * u as the generic op computes it: (tanh(g/2) + 1) * g * u / 2
            self._swiglu = self.cp.ElementwiseKernel(
                "float32 g, float32 u", "float32 y", "y = (tanhf(0.5f * g) + 1.0f) * g * u * 0.5f", "lumi_swiglu")
        return self._swiglu(gu[:, :hidden_dim], gu[:, hidden_dim:])

    def advance(self, pos) -> None:
        self._fn("advance")((1,), (1,), (pos,))

    # -- the operations, in model.OPS's signatures ----------------------------

    def ops(self, generic: dict, position: Position) -> dict:
        """``model.OPS`` for one-token steps: each operation its kernel where it applies, else the generic one.

        Positions come from ``position``'s device copy, not from the host's
        ``start_pos``: the cache keeps its full length and attention reads how much
        of it is live, so no launch depends on the position.
        """
        linear, norm, rope, update, attention, activation = (
            generic[k] for k in ("matmul", "norm", "rope", "cache", "attention", "activation"))

        plans = {}

        def fused_matmul(x, w, residual=None):
            y = self.gemv(x, w, residual, plans)
            return y if y is not None else linear(x, w, residual)

        def fused_norm(x, w, eps, xp):
            y = self.rmsnorm(x, w, eps)
            return y if y is not None else norm(x, w, eps, xp)

        def fused_rope(x, cos, sin, start_pos, layout):
            if not self.rope(x, cos, sin, position.buffer, layout):
                rope(x, cos, sin, start_pos, layout)

        def fused_cache(cache, layer, start_pos, kv):
            full = cache.kv[layer]
            if self.store(kv, full, position.buffer):
                return full[0], full[1]
            return update(cache, layer, start_pos, kv)

        def fused_attention(q, k, v, start_pos, xp):
            out = self.attend(q, k, v, position.buffer)
            return out if out is not None else attention(q, k[:, : start_pos + 1], v[:, : start_pos + 1], start_pos, xp)

        def fused_activation(gu, hidden_dim, xp):
            return self.swiglu(gu, hidden_dim)

        return {**generic, "matmul": fused_matmul, "norm": fused_norm, "rope": fused_rope, "cache": fused_cache,
                "attention": fused_attention, "activation": fused_activation}


class StepGraph:
    """A greedy decode step of a model held wholly on one GPU, captured into a CUDA graph once and replayed.

    Eagerly, a 7B step is about 350 launches, each paying Python's and the
    driver's time; replayed, it is one. The step reads its token and position
    from device memory and leaves the chosen token (argmax, int32) where the
    next step reads it, so steady greedy decoding sends nothing up and brings
    4 bytes down. The first call runs eagerly (compiling every kernel and
    filling this graph's own memory pool); the second is captured and replayed.
    The step's temporaries come from that pool, which only this graph uses,
    so no other array ever lands in memory the graph writes.
    """

    def __init__(self, model):
        self.model, self.device = model, model.head
        cp = self.device.xp
        self.stream = cp.cuda.Stream()  # a blocking stream: ordered after the default stream's work (prompts)
        self.pool = cp.cuda.MemoryPool()
        self.token = self.device.to_device(np.zeros(1, dtype=np.int32))
        self.token_host = None  # what self.token holds, as far as the host knows
        self.graph = None
        self.warm = False

    def _step(self, pos: int) -> None:
        logits = self.model._last_logits(self.token, pos, tokens_on_device=True)
        self.token[...] = self.device.xp.argmax(logits)

    def run(self, token: int, pos: int) -> int:
        cp, position = self.device.xp, self.model.positions[self.device]
        with cp.cuda.using_allocator(self.pool.malloc), self.stream:
            if token != self.token_host:
                self.token[...] = self.device.to_device(np.array([token], dtype=np.int32))
            position.at(pos)
            if self.graph is None and self.warm:
                self.stream.begin_capture()
                try:
                    self._step(pos)
                finally:
                    position.host = pos  # the capture ran nothing: the step happens at the launch below
                    graph = self.stream.end_capture()
                self.graph = graph
            if self.graph is not None:
                self.graph.launch(self.stream)
                position.host += 1
            else:
                self._step(pos)
                self.warm = True
            self.token_host = int(self.device.to_host(self.token)[0])
        return self.token_host
