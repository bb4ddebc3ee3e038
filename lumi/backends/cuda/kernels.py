"""lumi's CUDA kernels for a decode step on a GPU (CuPy): one launch per operation.

Composed from CuPy's array functions, one layer of a decode step is about 50
launches (RMSNorm alone is seven), and at a few microseconds of Python and
driver time each, launches, not weight bytes, would set the speed. The kernels
(``kernels.cu``, compiled once by NVRTC on first use) do each operation of the
step in one launch:

- ``gemv``: y = W x (+ y), 1, 2 or 4 rows per warp, 16-byte loads, float32
  accumulation. fp16 widens by the hardware conversion, bf16 (held as its
  uint16 bits) by a shift, int8 by a byte permute and its block scale: the
  weight is read once in its stored width and never exists in float32. The
  residual add rides along.
- ``rmsnorm``, ``rope`` (q and k together), ``store_kv``, ``swiglu`` and
  ``attend``: attention for one query token (scores, softmax, weighted sum of
  values), a long context split over several blocks a head and combined by the
  last of them to finish (still one launch).

A layer's decode step is ten launches: norm, qkv, rope, cache store,
attention, wo (+ residual), norm, w13, swiglu, w2 (+ residual). Positions live
in device memory (``Position``), so no launch depends on a host value, and
``graph.StepGraph`` replays a whole greedy step as one CUDA graph. Prompts
(T > 1) take RMSNorm and SwiGLU from here and the rest from CuPy, with cuBLAS
for the products: 16-bit weights through GemmEx (half-precision inputs,
float32 accumulation; ``Kernels.gemm``), float32 through sgemm.

``Kernels.ops`` and ``Kernels.prompt_ops`` give the model's op table
(``lumi.model.ops.OPS``'s signatures) for this device; each operation falls
back to the generic one where its kernel does not apply, so a model runs the
same code on any device. ``python -m lumi.bench.gpucheck`` checks every kernel
against the operation it replaces, on a GPU. Measurements: docs/performance.md.
"""

from __future__ import annotations

import math
from importlib import resources

import numpy as np

def source() -> str:
    """The CUDA C of every kernel here (``kernels.cu``, package data), read once."""
    global _source
    if _source is None:
        _source = (resources.files(__package__) / "kernels.cu").read_text(encoding="utf-8")
    return _source


_source = None

WARPS = 4  # warps per block of the products


WIDE_MEMORY = 4e12  # bytes/s: an H200's HBM3e (4.9 TB/s) is above, an H100 SXM's HBM3 (3.35 TB/s) below


def rows_per_warp(storage: str, rows: int, memory_bytes_per_s: float = 0.0) -> int:
    """Rows each warp of a product takes (each load of x then serves them all): 1, 2 or 4.

    Chosen from ``lumi.bench.gpucheck``'s gemv section on Llama-2-7B's shapes
    (docs/performance.md). int8 is bound by its arithmetic and gains from two
    rows everywhere. 16-bit weights gain from two rows only where the memory is
    fast enough to need more loads in flight per warp (``WIDE_MEMORY``) and the
    product has the rows to fill the card twice over; elsewhere, and for w2's
    4096 rows, one row is better. float32 keeps one.
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

    graphs = True  # a step made of these kernels can be captured into a CUDA graph (``step_graph``)

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

    def position(self, device) -> Position:
        """A model's position on ``device``, in device memory, as these kernels read it."""
        return Position(device, self)

    def step_graph(self, model):
        """A greedy decode step of ``model`` (held wholly on this GPU) as a replayable CUDA graph."""
        from .graph import StepGraph

        return StepGraph(model)

    @property
    def memory_bytes_per_s(self) -> float:
        if self._memory is None:
            self._memory = memory_bandwidth(self.cp)
        return self._memory

    def _fn(self, name: str):
        fn = self._functions.get(name)
        if fn is None:
            if self._module is None:
                self._module = self.cp.RawModule(code=source(), options=("--std=c++17",))
            fn = self._functions[name] = self._module.get_function(name)
        return fn

    # -- the kernels -----------------------------------------------------------

    def _plan(self, w):
        """The GEMV launch for weight w: (kernel, grid, block, arguments before x, after y, vec, rows), or None."""
        from .storage import DeviceMatrix

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
        from .storage import DeviceMatrix

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
        the live context return at once. ATTEND_CHUNK is the shortest chunk
        measured and the fastest at short and long contexts alike; one block a
        head is several times slower on a long context (docs/performance.md).
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

    # -- the op table, in lumi.model.ops.OPS's signatures ---------------------

    def ops(self, generic: dict, position: Position) -> dict:
        """The op table for one-token steps: each operation its kernel where it applies, else the generic one.

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
        """The op table for prompts (T > 1): 16-bit products through cuBLAS GemmEx (float32: sgemm), RMSNorm and
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
