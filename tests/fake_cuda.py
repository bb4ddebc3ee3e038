"""lumi's CUDA kernels emulated in NumPy, behind CuPy's launch interface, on the stand-in device.

Each emulation reads its arguments the way the kernel does (the same order,
the same scalar types, positions from device memory, strides as the kernel
computes them) and writes the same outputs. So ``cuda.Kernels``' host side
(launch plans, argument lists, the fallbacks, ``Position``) runs for real on
the CPU; what only a GPU can check (the CUDA C itself) is gpucheck's.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import types

import ml_dtypes
import numpy as np
from fake_device import COPIES, FAKE, DeviceArray

from lumi.backends.cuda.kernels import Kernels, source
from lumi.backends.cuda.staging import Staging

LAUNCHES: list = []  # (kernel name, grid, block) of every launch


def _ptr(self):
    return types.SimpleNamespace(ptr=self.__array_interface__["data"][0])


DeviceArray.data = property(_ptr)  # CuPy's ndarray.data.ptr: the address the alignment checks read


def _host(a):
    return a.view(np.ndarray) if isinstance(a, np.ndarray) else a


def _gemv(storage):
    def run(W, S, x, y, rows, cols, nblocks, accumulate, vec):
        assert all(type(v) is np.int32 for v in (rows, cols, nblocks, accumulate, vec))
        W, S, x, y = map(_host, (W, S, x, y))
        if storage == "bf16":
            w = (W.astype(np.uint32) << 16).view(np.float32)
        elif storage == "int8":
            w = (W.reshape(rows, nblocks, -1).astype(np.float32) * S[:, :, None]).reshape(rows, cols)
        else:
            w = W.astype(np.float32)
        assert w.shape == (rows, cols) and x.size == cols and y.size == rows
        out = w @ x.reshape(cols)
        y.reshape(rows)[...] = out + y.reshape(rows) if accumulate else out

    return run


def _rmsnorm(x, w, y, d, inv_d, eps):
    x, w, y = map(_host, (x, w, y))
    assert type(inv_d) is np.float32 and type(eps) is np.float32
    s = (x * x).sum(axis=-1, keepdims=True) * inv_d + eps
    y[...] = x * (w / np.sqrt(s))


def _rope(x, cos, sin, pos, n, hd, interleaved):
    x, cos, sin, pos = map(_host, (x, cos, sin, pos))
    p, half = int(pos[0]), hd // 2
    heads = x.reshape(n, hd)
    a = np.arange(half) * 2 if interleaved else np.arange(half)
    b = a + 1 if interleaved else a + half
    x1, x2 = heads[:, a].copy(), heads[:, b].copy()
    c, s = cos[p], sin[p]
    heads[:, a] = x1 * c - x2 * s
    heads[:, b] = x2 * c + x1 * s


def _store_kv(kv, cache, pos, heads, S, hd):
    kv, cache, pos = map(_host, (kv, cache, pos))
    cache.reshape(heads, S, hd)[:, int(pos[0])] = kv.reshape(heads, hd)


def _advance(pos):
    _host(pos)[0] += 1


def _attend(q, k, v, out, pos, hd, g, chunk, head_stride, scale, vec, part, done):
    q, k, v, out, pos, done = map(_host, (q, k, v, out, pos, done))
    assert head_stride == k.strides[0] // 4 and type(head_stride) is np.int64 and type(chunk) is np.int32
    assert done.dtype == np.uint32 and not done.any()  # the counters are zero between launches
    L = int(pos[0]) + 1
    H = q.size // hd
    qh = q.reshape(H, hd)
    for h in range(H):
        scores = k[h // g, :L] @ qh[h] * scale
        p = np.exp(scores - scores.max())
        out.reshape(H, hd)[h] = p @ v[h // g, :L] / p.sum()


EMULATIONS = {"rmsnorm": _rmsnorm, "rope": _rope, "store_kv": _store_kv, "advance": _advance, "attend": _attend,
              **{f"gemv_{s}_r{r}": _gemv(s) for s in ("fp32", "fp16", "bf16", "int8") for r in (1, 2, 4)}}


class _Function:
    def __init__(self, name):
        assert f" {name}(" in source() or f"({name}," in source(), f"no kernel {name} in kernels.cu"
        self.name = name

    def __call__(self, grid, block, args, shared_mem=0):
        LAUNCHES.append((self.name, grid, block))
        EMULATIONS[self.name](*args)


class _RawModule:
    def __init__(self, code, options=()):
        assert code == source()

    def get_function(self, name):
        return _Function(name)


def _swiglu(g, u):
    return (np.tanh(np.float32(0.5) * g) + np.float32(1)) * g * u * np.float32(0.5)


def _to_bf16(x):
    bits = x.view(np.uint32)
    return ((bits + (np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1)))) >> 16).astype(np.uint16)


ELEMENTWISE = {"lumi_swiglu": _swiglu, "lumi_to_bf16": _to_bf16}


def _elementwise(in_params, out_params, operation, name):
    def run(*args):
        LAUNCHES.append((name, None, None))
        return ELEMENTWISE[name](*map(_host, args)).view(DeviceArray)

    return run


# cuBLAS GemmEx, emulated from the raw addresses and leading dimensions it is given (column-major, as cuBLAS
# reads them), so a wrong transpose, dimension or stride in ``Kernels.gemm`` shows here as a wrong product.
CUBLAS = {"mode": 1, "calls": []}  # pointer mode 1 (device) to start with: gemm must set host mode itself
_TYPES = {0: np.float32, 2: np.float16, 14: np.uint16}


def _column_major(ptr, dtype, ld, rows, cols):
    itemsize = np.dtype(dtype).itemsize
    n = ld * (cols - 1) + rows
    memory = (ctypes.c_char * (n * itemsize)).from_address(ptr)
    return np.ndarray((rows, cols), dtype, buffer=memory, strides=(itemsize, ld * itemsize))


def _wide(a, kind):
    return (a.astype(np.uint32) << 16).view(np.float32) if kind == 14 else a.astype(np.float32)


def _gemm_ex(handle, transa, transb, m, n, k, alpha, A, Atype, lda, B, Btype, ldb, beta, C, Ctype, ldc, compute,
             algo):
    assert CUBLAS["mode"] == 0 and Ctype == 0 and compute == 68 and Atype == Btype
    CUBLAS["calls"].append((transa, transb, m, n, k))
    a = _column_major(A, _TYPES[Atype], lda, *((k, m) if transa else (m, k)))
    b = _column_major(B, _TYPES[Btype], ldb, *((n, k) if transb else (k, n)))
    a, b = _wide(a.T if transa else a, Atype), _wide(b.T if transb else b, Btype)
    scalar = lambda p: np.frombuffer((ctypes.c_char * 4).from_address(p), dtype=np.float32)[0]  # noqa: E731
    c = _column_major(C, np.float32, ldc, m, n)
    beta = scalar(beta)
    c[...] = scalar(alpha) * (a @ b) + (beta * c if beta else 0)  # beta 0: C is not read (it may hold NaN)


def _set_mode(handle, mode):
    CUBLAS["mode"] = mode


# Page-locked memory and asynchronous copies (``cuda.Staging``): host memory, and copies counted as the stand-in
# device's ``to_device`` and ``to_host`` count theirs. ``PINNED`` lists the sizes allocated.
PINNED: list = []


def _alloc_pinned(n):
    PINNED.append(n)
    return bytearray(n)


def _set(self, host, stream=None):
    assert type(host) is np.ndarray and host.shape == self.shape and host.dtype == self.dtype
    COPIES["h2d"] += 1
    self.view(np.ndarray)[...] = host


DeviceArray.set = _set


def _memcpy_async(dst, src, n, kind, stream):
    assert kind == 2  # device to host: the only direction lumi enqueues itself
    COPIES["d2h"] += 1
    COPIES["d2h_bytes"] += n
    ctypes.memmove(dst, src, n)


class _Stream:
    """A stream that runs everything at once, and cannot capture a graph (``StepGraph`` falls back)."""

    ptr = 0

    def record(self):
        return types.SimpleNamespace(synchronize=lambda: None)

    def synchronize(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def begin_capture(self):
        pass

    def end_capture(self):
        raise RuntimeError("the stand-in cannot capture a graph")


CUDA = types.SimpleNamespace(
    cublas=types.SimpleNamespace(gemmEx=_gemm_ex, getPointerMode=lambda handle: CUBLAS["mode"],
                                 setPointerMode=_set_mode),
    device=types.SimpleNamespace(get_cublas_handle=lambda: 1),
    runtime=types.SimpleNamespace(memcpyAsync=_memcpy_async, memcpyDeviceToHost=2),
    alloc_pinned_memory=_alloc_pinned, get_current_stream=_Stream, Stream=_Stream,
    MemoryPool=lambda: types.SimpleNamespace(malloc=None), using_allocator=lambda malloc: contextlib.nullcontext())


def _xp():
    xp = types.SimpleNamespace(**vars(FAKE.xp))
    xp.ndarray, xp.RawModule, xp.ElementwiseKernel, xp.cuda = DeviceArray, _RawModule, _elementwise, CUDA
    return xp


XP = _xp()
CUDA_FAKE = dataclasses.replace(FAKE, name="fake-cuda", xp=XP, kernels=Kernels(XP), staging=Staging(XP))
BF16 = np.dtype(ml_dtypes.bfloat16)
