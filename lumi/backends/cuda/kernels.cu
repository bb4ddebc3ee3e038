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
// and bound int8's product (well short of the copy bandwidth), so each byte is widened with full-rate
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
