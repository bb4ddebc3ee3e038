"""lumi's own CUDA kernels for a decode step on a GPU (CuPy), one launch per operation.

Composed from CuPy's array functions, one transformer layer of a decode step
is about 50 kernel launches (RMSNorm alone is seven), and at a few
microseconds of Python and driver time each they, not the weights, set the
speed (llama2-7B fp16 on an H200: 49 ms/token). These kernels do each
operation of the step in one launch:

- ``gemv``: y = W x (+ y), 1, 2 or 4 rows per warp, 16-byte loads, float32
  accumulation. fp16 widens with the hardware conversion, bf16 (held as its
  uint16 bits) by a shift, int8 by a byte permute and its block scale; the
  weight is read once in its stored width and never exists in float32. The
  residual add rides along.
- ``rmsnorm``, ``rope`` (q and k together), ``store_kv``, ``swiglu``, and
  ``attend``: attention for one query token, scores, softmax and the weighted
  sum of values, a long context split over several blocks a head and combined
  by the last of them to finish (still one launch).

A layer's decode step is then ten launches: norm, qkv, rope, cache store,
attention, wo (+ residual), norm, w13, swiglu, w2 (+ residual): 6.2 ms/token
on an H200. Positions live in device memory (``Position``), so no launch
depends on one, and ``StepGraph`` replays a whole greedy step as one CUDA
graph: 4.0 ms/token on an H200, 5.2 on an H100 SXM (80% and 86% of each
card's copy bandwidth), launching each step before the host has read the
previous one's token. Prompts (T > 1) take RMSNorm and SwiGLU from here and
the rest from CuPy, with cuBLAS for the products: 16-bit weights through
GemmEx (half-precision inputs, float32 accumulation; ``Kernels.gemm``),
float32 through sgemm. ``Staging`` carries a partial offload's activations
across the boundary in page-locked memory.

``Kernels.ops`` gives the operations in the signatures of ``model.OPS``; each
falls back to the generic operation where its kernel does not apply, so a
model runs the same code on any device. ``python -m lumi.gpucheck`` checks
every kernel against the operation it replaces, on a GPU.
"""

from __future__ import annotations

import math
import weakref
from contextlib import contextmanager, nullcontext

import numpy as np

SOURCE = r"""
// No headers: NVRTC finds none of its own, and each helper here is one instruction.
__device__ __forceinline__ float half_to_float(unsigned short b) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(b));
    return f;
}

#define NEG_INF __int_as_float(0xff800000)
#define ATTEND_MAX_SPLITS 64  // cuda.MAX_ATTEND_SPLITS: the chunks one head's attention may be split into

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

// Bytes per stored weight: KIND 0 float32, 1 float16, 2 bfloat16 bits, 3 int8 (with a float32 scale per block).
template <int KIND> __host__ __device__ constexpr int weight_bytes() { return KIND == 0 ? 4 : KIND == 3 ? 1 : 2; }

// One weight as float32: element i of a row, with the row's scales s in blocks of `block` (int8 only).
template <int KIND>
__device__ __forceinline__ float widen1(const char* w, int i, const float* s, int block) {
    if constexpr (KIND == 0) return reinterpret_cast<const float*>(w)[i];
    else if constexpr (KIND == 3) return (float)reinterpret_cast<const signed char*>(w)[i] * s[i / block];
    else {
        const unsigned short b = reinterpret_cast<const unsigned short*>(w)[i];
        if constexpr (KIND == 2) return __uint_as_float(((unsigned int)b) << 16);
        else return half_to_float(b);
    }
}

// The x values matching one 16-byte load of weights: 4, 8 or 16 floats.
template <int KIND> struct Chunk { float4 v[4 / weight_bytes<KIND>() > 0 ? 4 / weight_bytes<KIND>() : 1]; };

template <int KIND>
__device__ __forceinline__ Chunk<KIND> load_x(const float* __restrict__ x, int i) {
    constexpr int n = 4 / weight_bytes<KIND>();
    Chunk<KIND> c;
    const float4* x4 = reinterpret_cast<const float4*>(x) + i * n;
#pragma unroll
    for (int k = 0; k < n; ++k) c.v[k] = x4[k];
    return c;
}

// Four int8 weights (one 32-bit word) times x. The integer-to-float conversion runs at a quarter of the FMA rate
// and bound int8's product (49% of copy bandwidth on an H200), so each byte is widened with full-rate
// instructions instead: flipping its sign bit makes it b + 128 as an unsigned byte; a byte permute places that
// as the low mantissa byte of 2^23 (0x4B0000bb is the float 2^23 + b + 128, exactly), and one subtraction
// leaves b, exactly as the conversion would.
__device__ __forceinline__ float i8_at(unsigned int u, unsigned int selector) {
    return __uint_as_float(__byte_perm(u, 0x4B000000u, selector)) - 8388736.0f;  // 2^23 + 128
}

__device__ __forceinline__ float dot4_i8(int v, float4 a) {
    const unsigned int u = (unsigned int)v ^ 0x80808080u;
    return i8_at(u, 0x7440) * a.x + i8_at(u, 0x7441) * a.y + i8_at(u, 0x7442) * a.z + i8_at(u, 0x7443) * a.w;
}

// 16 bytes of weights times the matching x.
template <int KIND>
__device__ __forceinline__ float dot16(uint4 p, const Chunk<KIND>& c) {
    if constexpr (KIND == 0) {
        const float4 a = c.v[0];
        return __uint_as_float(p.x) * a.x + __uint_as_float(p.y) * a.y + __uint_as_float(p.z) * a.z
             + __uint_as_float(p.w) * a.w;
    } else if constexpr (KIND == 3) {
        return dot4_i8(p.x, c.v[0]) + dot4_i8(p.y, c.v[1]) + dot4_i8(p.z, c.v[2]) + dot4_i8(p.w, c.v[3]);
    } else {
        const float4 a = c.v[0], b = c.v[1];
        const float2 w0 = widen2<KIND>(p.x), w1 = widen2<KIND>(p.y), w2 = widen2<KIND>(p.z), w3 = widen2<KIND>(p.w);
        return w0.x * a.x + w0.y * a.y + w1.x * a.z + w1.y * a.w + w2.x * b.x + w2.y * b.y + w3.x * b.z + w3.y * b.w;
    }
}

// y[r] (+)= W[r, :] . x for R rows per warp: each load of x serves R rows. S: int8's scales (rows, nblocks).
// vec: rows and x start on 16-byte boundaries, cols fills whole loads, and int8 blocks are 32 long.
template <int KIND, int R>
__device__ void gemv_rows(const void* __restrict__ W, const float* __restrict__ S, const float* __restrict__ x,
                          float* __restrict__ y, int rows, int cols, int nblocks, int accumulate, int vec) {
    const int lane = threadIdx.x & 31;
    const int row0 = (blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5)) * R;
    if (row0 >= rows) return;
    constexpr int per = 16 / weight_bytes<KIND>();  // weights per 16-byte load
    const long long row_bytes = (long long)cols * weight_bytes<KIND>();
    const char* w[R];
    const float* s[R];
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const int row = min(row0 + r, rows - 1);  // a short last group re-reads its last row, and does not store it
        w[r] = reinterpret_cast<const char*>(W) + row * row_bytes;
        s[r] = KIND == 3 ? S + (long long)row * nblocks : S;
        acc[r] = 0.0f;
    }
    if (vec) {
        const int n = cols / per;
#pragma unroll 2
        for (int i = lane; i < n; i += 32) {
            const Chunk<KIND> c = load_x<KIND>(x, i);
#pragma unroll
            for (int r = 0; r < R; ++r) {
                const float d = dot16<KIND>(__ldg(reinterpret_cast<const uint4*>(w[r]) + i), c);
                if constexpr (KIND == 3) acc[r] += __ldg(s[r] + (i >> 1)) * d;  // a block of 32 is two loads
                else acc[r] += d;
            }
        }
    } else {
        const int block = cols / nblocks;
        for (int i = lane; i < cols; i += 32) {
            const float xi = x[i];
#pragma unroll
            for (int r = 0; r < R; ++r) acc[r] += widen1<KIND>(w[r], i, s[r], block) * xi;
        }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const float t = warp_sum(acc[r]);
        if (lane == 0 && row0 + r < rows) y[row0 + r] = accumulate ? y[row0 + r] + t : t;
    }
}

#define GEMV(NAME, KIND, R)                                                                                 \
    extern "C" __global__ void NAME(const void* W, const float* S, const float* x, float* y, int rows,     \
                                    int cols, int nblocks, int accumulate, int vec) {                       \
        gemv_rows<KIND, R>(W, S, x, y, rows, cols, nblocks, accumulate, vec);                               \
    }
GEMV(gemv_fp32_r1, 0, 1) GEMV(gemv_fp32_r2, 0, 2) GEMV(gemv_fp32_r4, 0, 4)
GEMV(gemv_fp16_r1, 1, 1) GEMV(gemv_fp16_r2, 1, 2) GEMV(gemv_fp16_r4, 1, 4)
GEMV(gemv_bf16_r1, 2, 1) GEMV(gemv_bf16_r2, 2, 2) GEMV(gemv_bf16_r4, 2, 4)
GEMV(gemv_int8_r1, 3, 1) GEMV(gemv_int8_r2, 3, 2) GEMV(gemv_int8_r4, 3, 4)

// y = x * (w / sqrt(mean(x^2) + eps)), one block per row of x (T, d). The first RMS_HELD * blockDim elements of
// x and w are read once, before the reduction, and held in registers: one trip to memory, not two.
#define RMS_HELD 4
extern "C" __global__ void rmsnorm(const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ y,
                                   int d, float inv_d, float eps) {
    const float* xr = x + (long long)blockIdx.x * d;
    float* yr = y + (long long)blockIdx.x * d;
    float xv[RMS_HELD], wv[RMS_HELD];
    float s = 0.0f;
#pragma unroll
    for (int k = 0; k < RMS_HELD; ++k) {
        const int i = threadIdx.x + k * blockDim.x;
        xv[k] = i < d ? xr[i] : 0.0f;
        wv[k] = i < d ? w[i] : 0.0f;
        s += xv[k] * xv[k];
    }
    for (int i = threadIdx.x + RMS_HELD * blockDim.x; i < d; i += blockDim.x) s += xr[i] * xr[i];
    s = block_reduce(s, false);
    const float r = 1.0f / sqrtf(s * inv_d + eps);
#pragma unroll
    for (int k = 0; k < RMS_HELD; ++k) {
        const int i = threadIdx.x + k * blockDim.x;
        if (i < d) yr[i] = xv[k] * (wv[k] * r);
    }
    for (int i = threadIdx.x + RMS_HELD * blockDim.x; i < d; i += blockDim.x) yr[i] = xr[i] * (w[i] * r);
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

__device__ __forceinline__ float dot4(float4 a, float4 b) { return a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w; }

// Attention of one query token at position pos[0] over positions 0..pos[0]. Block (h, c) takes query head h
// against kv head h / g over the chunk of positions c * chunk ..; q (H, hd); k, v (Hkv, S, hd) with `head_stride`
// floats between heads; out (H, hd). Splitting the context over gridDim.y chunks keeps the whole card reading a
// long cache (one block per head would leave most SMs idle). Only the chunks holding live positions work: with
// one, its block writes the output itself; with more, each writes its partial max, sum of exponentials and
// weighted values to `part` (H, chunks, hd + 2), and the last of them to finish (counted in done[h], which it
// resets) combines them, so a step stays one launch. Latency, not bandwidth, bounds a short context, so each
// loop keeps many loads in flight: vec (hd % 4 == 0, 16-byte aligned rows) reads float4s. Shared memory: the
// chunk's scores, then the partial sums of the values (blockDim float4s).
extern "C" __global__ void attend(const float* __restrict__ q, const float* __restrict__ k,
                                  const float* __restrict__ v, float* __restrict__ out,
                                  const int* __restrict__ pos, int hd, int g, int chunk, long long head_stride,
                                  float scale, int vec, float* __restrict__ part, unsigned int* __restrict__ done) {
    extern __shared__ float shared[];
    __shared__ bool last;
    float* p = shared;
    float4* partial = reinterpret_cast<float4*>(shared + ((chunk + 3) & ~3));
    const int L = pos[0] + 1, live = (L + chunk - 1) / chunk;
    const int h = blockIdx.x, c = blockIdx.y;
    if (c >= live) return;  // beyond the context: no work, and not counted
    const int t0 = c * chunk, n = min(chunk, L - t0);  // this block's positions: t0 .. t0 + n - 1
    const float* qh = q + (long long)h * hd;
    const float* kh = k + (h / g) * head_stride + (long long)t0 * hd;
    const float* vh = v + (h / g) * head_stride + (long long)t0 * hd;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    // scores: a warp per position, its lanes across the head's features
    if (vec && hd <= 128) {  // one float4 of q per lane, held; one float4 of k per lane and position
        const int n4 = hd / 4;
        const float4 q4 = lane < n4 ? reinterpret_cast<const float4*>(qh)[lane] : make_float4(0, 0, 0, 0);
#pragma unroll 4
        for (int t = warp; t < n; t += warps) {
            float s = lane < n4 ? dot4(q4, reinterpret_cast<const float4*>(kh + (long long)t * hd)[lane]) : 0.0f;
            s = warp_sum(s);
            if (lane == 0) p[t] = s * scale;
        }
    } else {
        for (int t = warp; t < n; t += warps) {
            float s = 0.0f;
            for (int j = lane; j < hd; j += 32) s += qh[j] * kh[(long long)t * hd + j];
            s = warp_sum(s);
            if (lane == 0) p[t] = s * scale;
        }
    }
    __syncthreads();
    float m = NEG_INF;
    for (int t = threadIdx.x; t < n; t += blockDim.x) m = fmaxf(m, p[t]);
    m = block_reduce(m, true);
    float z = 0.0f;
    for (int t = threadIdx.x; t < n; t += blockDim.x) {
        const float e = expf(p[t] - m);
        p[t] = e;
        z += e;
    }
    z = block_reduce(z, false);  // its barriers also publish p
    // the weighted values: normalized into out when this is the only live chunk, else raw into part
    const float inv = live == 1 ? 1.0f / z : 1.0f;
    float* dest = live == 1 ? out + (long long)h * hd : part + ((long long)h * gridDim.y + c) * (hd + 2) + 2;
    if (vec && hd / 4 <= (int)blockDim.x) {
        // thread (phase, j4) sums positions phase, phase + phases, ... of features 4 j4 .. 4 j4 + 3
        const int n4 = hd / 4, phases = blockDim.x / n4;
        const int phase = threadIdx.x / n4, j4 = threadIdx.x % n4;
        if (phase < phases) {
            float4 acc = make_float4(0, 0, 0, 0);
#pragma unroll 4
            for (int t = phase; t < n; t += phases) {
                const float4 vv = reinterpret_cast<const float4*>(vh + (long long)t * hd)[j4];
                const float pt = p[t];
                acc.x += pt * vv.x, acc.y += pt * vv.y, acc.z += pt * vv.z, acc.w += pt * vv.w;
            }
            partial[threadIdx.x] = acc;
        }
        __syncthreads();
        if (threadIdx.x < n4) {
            float4 acc = make_float4(0, 0, 0, 0);
            for (int f = 0; f < phases; ++f) {
                const float4 piece = partial[f * n4 + threadIdx.x];
                acc.x += piece.x, acc.y += piece.y, acc.z += piece.z, acc.w += piece.w;
            }
            float* d = dest + 4 * threadIdx.x;
            d[0] = acc.x * inv, d[1] = acc.y * inv, d[2] = acc.z * inv, d[3] = acc.w * inv;
        }
    } else {
        for (int j = threadIdx.x; j < hd; j += blockDim.x) {
            float acc = 0.0f;
#pragma unroll 8
            for (int t = 0; t < n; ++t) acc += p[t] * vh[(long long)t * hd + j];
            dest[j] = acc * inv;
        }
    }
    if (live == 1) return;
    float* mine = part + ((long long)h * gridDim.y + c) * (hd + 2);
    if (threadIdx.x == 0) mine[0] = m, mine[1] = z;
    __threadfence();  // this block's partials are visible to the whole card before it is counted
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(done + h, 1u) == (unsigned int)(live - 1);
    __syncthreads();
    if (!last) return;
    // the last live block of head h: each chunk's weight exp(m_c - M) under the common max M, once, in shared
    // memory; then each feature's weighted sum over the chunks (reads of the other blocks' partials skip L1)
    __shared__ float weight[ATTEND_MAX_SPLITS];
    const float* base = part + (long long)h * gridDim.y * (hd + 2);
    float M = NEG_INF;
    for (int cc = threadIdx.x; cc < live; cc += blockDim.x) M = fmaxf(M, __ldcg(base + cc * (hd + 2)));
    M = block_reduce(M, true);
    float Z = 0.0f;
    for (int cc = threadIdx.x; cc < live; cc += blockDim.x) {
        const float w = expf(__ldcg(base + cc * (hd + 2)) - M);
        weight[cc] = w;
        Z += w * __ldcg(base + cc * (hd + 2) + 1);
    }
    Z = block_reduce(Z, false);  // its barriers also publish the weights
    const float inv_z = 1.0f / Z;
    for (int j = threadIdx.x; j < hd; j += blockDim.x) {
        float acc = 0.0f;
#pragma unroll 4
        for (int cc = 0; cc < live; ++cc) acc += weight[cc] * __ldcg(base + cc * (hd + 2) + 2 + j);
        out[(long long)h * hd + j] = acc * inv_z;
    }
    if (threadIdx.x == 0) done[h] = 0;  // ready for the next launch
}
"""

WARPS = 4  # warps per block of the products


WIDE_MEMORY = 4e12  # bytes/s: an H200's HBM3e (4.9 TB/s) is above, an H100 SXM's HBM3 (3.35 TB/s) below


def rows_per_warp(storage: str, rows: int, memory_bytes_per_s: float = 0.0) -> int:
    """Rows each warp of a product takes (each load of x then serves them all): 1, 2 or 4.

    Measured with ``gpucheck``'s gemv section on Llama-2-7B's shapes. int8 is
    bound by its arithmetic and gains from two rows everywhere (H100: 61-87%
    of copy bandwidth against 57-63%). 16-bit weights gain from two rows only
    where the memory is fast enough to need more loads in flight per warp, and
    the product has the rows to fill the card twice over: on an H200, w13 and
    wqkv reach 89-96% against 86-90%; on an H100, one row is better everywhere
    (w13 97% against 95%), as it is for w2 (4096 rows) on both. float32 keeps one.
    """
    if storage == "int8":
        return 2
    if storage in ("fp16", "bf16") and rows >= 8192 and memory_bytes_per_s >= WIDE_MEMORY:
        return 2
    return 1


def memory_bandwidth(cupy) -> float:
    """The current GPU's theoretical memory bandwidth in bytes/s (two transfers a clock), or 0.0 where unknown."""
    try:
        runtime = cupy.cuda.runtime
        device = runtime.getDevice()
        clock_khz = runtime.deviceGetAttribute(36, device)  # cudaDevAttrMemoryClockRate
        bus_bits = runtime.deviceGetAttribute(37, device)  # cudaDevAttrGlobalMemoryBusWidth
    except Exception:  # an attribute this CUDA no longer reports, or a stand-in without a runtime
        return 0.0
    return 2.0 * clock_khz * 1e3 * bus_bits / 8


# cuBLAS's C enums (library_types.h, cublas_api.h): stable parts of its ABI
OP_N, OP_T = 0, 1
CUDA_R_32F, CUDA_R_16F, CUDA_R_16BF = 0, 2, 14
COMPUTE_32F = 68  # float32 accumulation, whatever the inputs
GEMM_DEFAULT = -1
POINTER_MODE_HOST = 0

ATTEND_THREADS = 256
ATTEND_CHUNK = 64  # positions per block of attention: a context is split over ceil(S / chunk) blocks a head
MAX_ATTEND_SPLITS = 64  # beyond 64 x 64 positions the chunks grow instead (the kernel's ATTEND_MAX_SPLITS)
MAX_HEADS = 4096  # attention's completion counters, one per query head, made once
MAX_SHARED_BYTES = 48 << 10  # a block keeps its chunk's scores in shared memory; longer chunks fall back
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

    def forget(self) -> None:
        """The device's copy is no longer known (a capture that failed part way): the next step sends it up."""
        self.host = None


class Kernels:
    """The kernels for one array module (CuPy), compiled once, on first use."""

    graphs = True  # a step made of these kernels can be captured into a CUDA graph (``StepGraph``)

    def __init__(self, cupy, rows_per_warp: int | None = None, gemm: bool = True):
        self.cp = cupy
        self.rows_per_warp = rows_per_warp  # None: ``rows_per_warp``'s choice per product; 1, 2 or 4 forces one
        self.use_gemm = gemm  # prompts' 16-bit products through cuBLAS GemmEx (False: widened blocks and sgemm)
        self._module = None
        self._functions = {}
        self._swiglu = self._to_bf16 = None
        self._scalars = {v: np.array([v], dtype=np.float32) for v in (0.0, 1.0)}  # GemmEx's alpha and beta
        self._memory = None  # the GPU's memory bandwidth, which the rows per warp depend on
        self._done = None  # attention's per-head counters of finished chunks (zero between launches)

    @property
    def memory_bytes_per_s(self) -> float:
        if self._memory is None:
            self._memory = memory_bandwidth(self.cp)
        return self._memory

    def _fn(self, name: str):
        fn = self._functions.get(name)
        if fn is None:
            if self._module is None:
                self._module = self.cp.RawModule(code=SOURCE, options=("--std=c++17",))
            fn = self._functions[name] = self._module.get_function(name)
        return fn

    # -- the kernels -----------------------------------------------------------

    def _plan(self, w):
        """The GEMV launch for weight w: (kernel, grid, block, arguments before x, after y, vec, rows), or None."""
        from .weights import DeviceMatrix

        if isinstance(w, DeviceMatrix):
            storage, (rows, cols) = w.storage, w.shape
        elif isinstance(w, self.cp.ndarray) and w.ndim == 2 and w.dtype == np.float32 and w.flags.c_contiguous:
            storage, (rows, cols) = "fp32", w.shape
        else:
            return None
        R = self.rows_per_warp or rows_per_warp(storage, rows, self.memory_bytes_per_s)
        grid, block = ((rows + WARPS * R - 1) // (WARPS * R),), (32 * WARPS,)
        if storage == "int8":
            a, scales = w.blocks.q, w.blocks.scales
            nblocks = scales.shape[1]
            vec = cols == 32 * nblocks
        else:
            a, scales, nblocks = (w if storage == "fp32" else w.a), None, 1
            vec = cols % (4 if storage == "fp32" else 8) == 0
        vec = vec and a.data.ptr % 16 == 0 and cols * a.itemsize % 16 == 0
        return (self._fn(f"gemv_{storage}_r{R}"), grid, block, (a, scales), (I32(rows), I32(cols), I32(nblocks)),
                vec, rows)

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
        fn, grid, block, (a, scales), after, vec, rows = plan
        if residual is None:
            y = self.cp.empty((1, rows), dtype=np.float32)
        elif _one_row(residual) and residual.shape[1] == rows:
            y = residual
        else:
            return None
        vec = I32(vec and x.data.ptr % 16 == 0)
        fn(grid, block, (a, x if scales is None else scales, x, y, *after, I32(residual is not None), vec))
        return y

    def gemm(self, x, w, residual=None):
        """x (T, in) @ w.T (+ residual, in place) for a 16-bit ``DeviceMatrix``: cuBLAS GemmEx; None if unsupported.

        x is rounded to w's 16-bit type (as a half-precision layer in PyTorch
        does), the product runs on the tensor cores with float32 accumulation,
        and the result is float32, added into ``residual`` by GemmEx's beta.
        The weight is read once in its stored width: no widened block exists.
        """
        from .weights import DeviceMatrix

        if not (self.use_gemm and isinstance(w, DeviceMatrix) and w.storage in ("fp16", "bf16")):
            return None
        if not (x.ndim == 2 and x.dtype == np.float32 and x.flags.c_contiguous and x.shape[1] == w.shape[1]):
            return None
        cp, (T, cols), rows = self.cp, x.shape, w.shape[0]
        if residual is None:
            y, beta = cp.empty((T, rows), dtype=np.float32), self._scalars[0.0]
        elif residual.shape == (T, rows) and residual.dtype == np.float32 and residual.flags.c_contiguous:
            y, beta = residual, self._scalars[1.0]
        else:
            return None
        if w.storage == "fp16":
            kind, xh = CUDA_R_16F, x.astype(cp.float16)
        else:
            if self._to_bf16 is None:  # round to nearest even, as weights.convert_on_device and ml_dtypes do
                self._to_bf16 = cp.ElementwiseKernel(
                    "float32 x", "uint16 y",
                    "unsigned int b = __float_as_uint(x); y = (unsigned short)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16)",
                    "lumi_to_bf16")
            kind, xh = CUDA_R_16BF, self._to_bf16(x)
        # Row-major y (T, rows) = x W^T is column-major y^T (rows, T) = op(A) B, with A the row-major W read
        # column-major (W^T, so op = transpose, lda = cols) and B the row-major x read column-major (x^T).
        cublas = cp.cuda.cublas
        handle = cp.cuda.device.get_cublas_handle()
        mode = cublas.getPointerMode(handle)
        cublas.setPointerMode(handle, POINTER_MODE_HOST)  # alpha and beta are host floats
        try:
            cublas.gemmEx(handle, OP_T, OP_N, rows, T, cols, self._scalars[1.0].ctypes.data, w.a.data.ptr, kind,
                          cols, xh.data.ptr, kind, cols, beta.ctypes.data, y.data.ptr, CUDA_R_32F, rows,
                          COMPUTE_32F, GEMM_DEFAULT)
        finally:
            cublas.setPointerMode(handle, mode)
        return y

    def rmsnorm(self, x, w, eps):
        """x (T, d) normed by w, one block per token; None unless x is C-contiguous float32."""
        if not (x.ndim == 2 and x.dtype == np.float32 and x.flags.c_contiguous and w.strides == (4,)):
            return None
        T, d = x.shape
        y = self.cp.empty_like(x)
        self._fn("rmsnorm")((T,), (min(1024, 32 * ((d + 31) // 32)),), (x, w, y, I32(d), np.float32(1 / d),
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

    def counters(self):
        """Attention's completion counters, made on first use (``ops`` makes them before any graph is captured)."""
        if self._done is None:
            self._done = self.cp.zeros(MAX_HEADS, dtype=np.uint32)
        return self._done

    def attend(self, q, k, v, pos, splits: int | None = None):
        """One query token at the position in ``pos``: q (1, H, hd), k and v (Hkv, S >= pos + 1, hd) cache views.

        The cache's length S (not the live context, which only the device
        knows) sets the split: ceil(S / ATTEND_CHUNK) blocks a head, at most
        MAX_ATTEND_SPLITS; ``splits`` forces a number (up to that). Chunks past
        the live context return at once. Measured on an H100 (7B fp16, CUDA
        graph, a 4096-position cache), chunks of 256 / 128 / 64 positions gave
        5.93 / 5.83 / 5.58 ms a token at context 160 and 6.37 / 5.98 / 5.90 at
        1024, and one block a head took 480 us a layer at 4096, split 60 us.
        """
        _, H, hd = q.shape
        n_kv, S, _ = k.shape
        splits = min(MAX_ATTEND_SPLITS, splits or -(-S // ATTEND_CHUNK))
        chunk = -(-S // splits)
        shared = 4 * ((chunk + 3) // 4 * 4) + 16 * ATTEND_THREADS
        if (shared > MAX_SHARED_BYTES or H > MAX_HEADS or q.shape[0] != 1 or q.strides[1:] != (4 * hd, 4)
                or k.strides[1:] != (4 * hd, 4) or v.strides != k.strides):
            return None
        vec = hd % 4 == 0 and all(a.data.ptr % 16 == 0 for a in (q, k, v)) and k.strides[0] % 16 == 0
        out = self.cp.empty((1, H * hd), dtype=np.float32)
        part = self.cp.empty((H, splits, hd + 2), dtype=np.float32) if splits > 1 else out  # chunks' partials
        self._fn("attend")((H, splits), (ATTEND_THREADS,), (q, k, v, out, pos, I32(hd), I32(H // n_kv), I32(chunk),
                                                              np.int64(k.strides[0] // 4),
                                                              np.float32(1 / math.sqrt(hd)), I32(vec), part,
                                                              self.counters()), shared_mem=shared)
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
        linear, rope, update, attention = (generic[k] for k in ("matmul", "rope", "cache", "attention"))

        plans = {}
        self.counters()

        def fused_matmul(x, w, residual=None):
            y = self.gemv(x, w, residual, plans)
            return y if y is not None else linear(x, w, residual)

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

        return {**self._any_length(generic), "matmul": fused_matmul, "rope": fused_rope, "cache": fused_cache,
                "attention": fused_attention}

    def prompt_ops(self, generic: dict) -> dict:
        """``model.OPS`` for prompts (T > 1): 16-bit products through cuBLAS GemmEx (float32: sgemm), RMSNorm and
        SwiGLU as for a step; RoPE, the cache and attention the generic operations."""
        linear = generic["matmul"]

        def gemm_matmul(x, w, residual=None):
            y = self.gemm(x, w, residual)
            return y if y is not None else linear(x, w, residual)

        return {**self._any_length(generic), "matmul": gemm_matmul}

    def _any_length(self, generic: dict) -> dict:
        """The kernels that take any number of tokens: RMSNorm (a block per token) and SwiGLU."""
        norm = generic["norm"]

        def fused_norm(x, w, eps, xp):
            y = self.rmsnorm(x, w, eps)
            return y if y is not None else norm(x, w, eps, xp)

        def fused_activation(gu, hidden_dim, xp):
            return self.swiglu(gu, hidden_dim)

        return {**generic, "norm": fused_norm, "activation": fused_activation}


class Staging:
    """Page-locked host buffers for the activations that cross a GPU's boundary (partial offload), one each way.

    A copy from pageable memory goes through the driver's own bounce buffer
    and blocks the host; from page-locked memory it is one DMA. So an
    activation going up is copied into the up buffer and sent asynchronously
    on the current stream: the host goes on to launch the layer's kernels
    while it travels. One coming down lands in the down buffer, which the
    caller may use (and modify) until the next copy down. Each buffer grows
    to the largest activation seen (a prompt's) and is reused after that.
    """

    def __init__(self, cupy):
        self.cp = cupy
        self._up = self._down = None  # page-locked bytes, grown to the largest activation each way
        self._sent = None  # event after the last copy up: its buffer is not rewritten before that copy is done

    def _buffer(self, held, shape, dtype):
        """(the bytes held, grown if need be; an array of shape and dtype at their start)."""
        n = math.prod(shape) * np.dtype(dtype).itemsize
        if held is None or held.size < n:
            held = self.pinned((n,), np.uint8)
        return held, held[:n].view(dtype).reshape(shape)

    def up(self, host: np.ndarray):
        """A host activation on the device, sent asynchronously from the up buffer."""
        if self._sent is not None:
            self._sent.synchronize()  # normally long done: a step's copy down waited for everything before it
        self._up, staged = self._buffer(self._up, host.shape, host.dtype)
        np.copyto(staged, host)
        stream = self.cp.cuda.get_current_stream()
        device = self.cp.empty(host.shape, dtype=host.dtype)
        device.set(staged, stream=stream)
        self._sent = stream.record()
        return device

    def pinned(self, shape, dtype) -> np.ndarray:
        """A page-locked host array of its own (for ``copy_down``)."""
        n = math.prod(shape) * np.dtype(dtype).itemsize  # the array keeps the memory alive (its base)
        return np.frombuffer(self.cp.cuda.alloc_pinned_memory(max(n, 1)), dtype=np.uint8, count=n).view(
            dtype).reshape(shape)

    def copy_down(self, x, out: np.ndarray, stream):
        """Enqueue a device array's copy into the page-locked ``out`` on ``stream``, without waiting: the event
        after it (``out`` holds x once it has happened)."""
        if not x.flags.c_contiguous:
            x = self.cp.ascontiguousarray(x)
        runtime = self.cp.cuda.runtime
        runtime.memcpyAsync(out.ctypes.data, x.data.ptr, x.nbytes, runtime.memcpyDeviceToHost, stream.ptr)
        return stream.record()

    def down(self, x) -> np.ndarray:
        """A device activation in the down buffer (valid until the next copy down), once its stream has made it."""
        self._down, staged = self._buffer(self._down, x.shape, x.dtype)
        self.copy_down(x, staged, self.cp.cuda.get_current_stream()).synchronize()
        return staged


class Ranges:
    """NVTX ranges (``cupy.cuda.nvtx``) around each step and layer, for Nsight Systems and other profilers.

    On with ``LUMI_NVTX=1`` (or ``Model(nvtx=True)``): each costs a few
    microseconds of host time, so it stays off when not profiling. A step
    replayed as a CUDA graph shows one range per replay, not per layer.
    """

    def __init__(self, nvtx):
        self.nvtx = nvtx

    @contextmanager
    def __call__(self, label: str, value):
        self.nvtx.RangePush(f"{label} {value}")
        try:
            yield
        finally:
            self.nvtx.RangePop()


NO_RANGE = nullcontext()


def ranges(device, enabled: bool):
    """A ``(label, value) -> context manager`` marking NVTX ranges on ``device``'s profiler timeline; a no-op
    elsewhere. The name is formatted only when ranges are on: nothing is built per layer and token otherwise."""
    nvtx = getattr(getattr(device.xp, "cuda", None), "nvtx", None)
    return Ranges(nvtx) if enabled and nvtx is not None else lambda label, value: NO_RANGE


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

    One step ahead: since the next step's input is already on the device,
    each call also launches the step after it before waiting for its own
    token, so the GPU works through the host's turnaround (the token's trip
    down, the caller's bookkeeping, the next launch) instead of idling. The
    next call takes that step's token if it asks for exactly that step (the
    token just returned, the next position, and no other forward pass of the
    model in between); otherwise the step ahead is discarded: it wrote only
    the cache entry of a position no live context reads yet, and the
    position and token are sent up again as after any jump.
    """

    lookahead = True  # launch the next step before waiting (False: one step at a time, for comparison)

    def __init__(self, model):
        self._model = weakref.ref(model)  # the model owns this graph: no cycle keeps its device memory alive
        self.device = model.head
        cp = self.device.xp
        self.stream = cp.cuda.Stream()  # a blocking stream: ordered after the default stream's work (prompts)
        self.pool = cp.cuda.MemoryPool()
        self.token = self.device.to_device(np.zeros(1, dtype=np.int32))
        self.token_host = None  # what self.token holds, as far as the host knows (None: a step ahead changed it)
        self.graph = None
        self.warm = False
        self.ahead = None  # the step launched ahead: (position, its input token, the model's passes then, slot, event)
        # page-locked, so each token's copy down is asynchronous (``cupy_device`` gives a GPU its ``Staging``)
        self._slots = [self.device.staging.pinned((1,), np.int32) for _ in range(2)]
        self._slot = 0
        self.hits = 0  # calls answered by the step launched ahead

    @property
    def model(self):
        return self._model()

    def _step(self, pos: int) -> None:
        logits = self.model._last_logits(self.token, pos, tokens_on_device=True)
        self.token[...] = self.device.xp.argmax(logits)

    def _capture(self, pos: int):
        self.stream.begin_capture()
        try:
            self._step(pos)
        finally:
            graph = self.stream.end_capture()
        return graph

    def _replay(self) -> None:
        self.graph.launch(self.stream)

    def _token_down(self):
        """Enqueue the chosen token's copy down (no wait): (its host slot, the event after it)."""
        slot = self._slots[self._slot]
        self._slot ^= 1
        return slot, self.device.staging.copy_down(self.token, slot, self.stream)

    def drain(self) -> None:
        """Wait for whatever this graph's stream still runs (a step ahead), before its memory goes."""
        self.stream.synchronize()
        self.ahead = None

    def run(self, token: int, pos: int) -> int:
        cp, model = self.device.xp, self.model
        position = model.positions[self.device]
        with cp.cuda.using_allocator(self.pool.malloc), self.stream, model._range("graph step at", pos):
            ahead, self.ahead = self.ahead, None
            if ahead is not None and ahead[:3] == (pos, token, model.passes):
                slot, event = ahead[3:]
                self.hits += 1
            else:
                if token != self.token_host:
                    self.token[...] = self.device.to_device(np.array([token], dtype=np.int32))
                position.at(pos)
                if self.graph is None and self.warm:
                    try:
                        self.graph = self._capture(pos)
                    finally:
                        position.host = pos  # the capture ran nothing: the step happens at the launch below
                if self.graph is not None:
                    self._replay()
                    position.host += 1
                else:
                    self._step(pos)
                    self.warm = True
                slot, event = self._token_down()
            if self.lookahead and self.graph is not None and pos + 1 < model.max_seq_len:  # launched before waiting
                self._replay()
                position.host += 1
                self.ahead = (pos + 1, None, model.passes, *self._token_down())
            event.synchronize()
            chosen = int(slot[0])
            if self.ahead is not None:
                self.ahead = (pos + 1, chosen, *self.ahead[2:])  # its input: the token chosen here
            self.token_host = None if self.ahead is not None else chosen
        return chosen
