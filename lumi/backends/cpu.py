"""The CPU backend: NumPy and BLAS, and the threads that share the cores.

A float32 weight's product is BLAS (``x @ w.T``, the weight column-major so
that BLAS streams a C-contiguous (in, out) matrix: ``model.layers``). A
16-bit or int8 weight (``storage.HalfMatrix``, ``storage.BlockQ8``) is
widened to float32 a cache-sized block of rows at a time inside the product
(``widened_matmul_t``); one token's bf16 and int8 rows go through a single
einsum a thread share (``matvec_rows``), whose buffered cast stays in L1 with
the GIL released. Large one-token products split their rows over Python
threads while BLAS is held at one thread: one active pool at a time, since two
pools spinning on the same cores slow each other down. ``BLAS`` reads, sets and
parks the BLAS library's own pool (threadpoolctl); ``thread_limit`` holds it at
a count for a run. Why each threshold is where it is: docs/kernels-cpu.md.
"""

from __future__ import annotations

import ctypes
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext

import numpy as np

from .. import storage
from ..storage import BlockQ8, HalfMatrix, scratch

# A one-token product of a stored matrix smaller than this stays on the calling thread: a block loop hands the
# GIL back and forth every few microseconds, which costs more than a second thread gains. A product that is a
# few einsum calls a thread (bf16 and int8 rows, ``matvec_rows``) splits from SPLIT_ONE_CALL_MIN_BYTES.
SPLIT_MIN_BYTES = 4 << 20
SPLIT_ONE_CALL_MIN_BYTES = 1 << 20

# A T-token product (a prompt) widens min(T, 16) times BLOCK_BYTES per block: sgemm runs well only on wide
# blocks, and a prompt reads each block T times.
PROMPT_BLOCK_SCALE = 16


def block_rows(tokens: int, cols: int) -> int:
    """Rows of a (rows, cols) matrix widened per block in a product with ``tokens`` rows of x."""
    return max(1, storage.BLOCK_BYTES * min(tokens, PROMPT_BLOCK_SCALE) // (4 * cols))


def _widened_rows(x: np.ndarray, w, r0: int, r1: int, out: np.ndarray) -> None:
    """out[:, r0:r1] = x @ w[r0:r1].T, widening a cache-sized block of rows at a time (one token's bf16 or int8
    rows: ``w.matvec_rows``)."""
    if x.shape[0] == 1 and w.one_call:
        w.matvec_rows(x[0], r0, r1, out[0, r0:r1])
        return
    cols = w.shape[1]
    block = min(r1 - r0, block_rows(x.shape[0], cols))
    buffer = scratch(block * cols)
    for b0 in range(r0, r1, block):
        b1 = min(b0 + block, r1)
        wide = w.widen_rows(b0, b1, buffer[: (b1 - b0) * cols].reshape(b1 - b0, cols))
        np.matmul(x, wide.T, out=out[:, b0:b1])


class _Blas:
    """The BLAS library's thread count, read and set through threadpoolctl's handles (a C call each)."""

    def __init__(self):
        self.libs = None
        self._parkers = None
        self._omatcopy = None

    def _handles(self):
        if self.libs is None:
            from threadpoolctl import ThreadpoolController

            self.libs = ThreadpoolController().select(user_api="blas").lib_controllers
        return self.libs

    def threads(self) -> int:
        """NumPy's BLAS's thread count: the one the products run on, and what ``thread_limit`` holds. A library
        loaded after a limit was applied (SciPy's OpenBLAS, which numba loads once its kernels run) starts at its
        own default, the machine's cores; lumi never calls it, but counting it turned one thread into two."""
        lib = self._numpy_lib()
        return lib.get_num_threads() if lib is not None else 1

    def _numpy_lib(self):
        """The BLAS NumPy itself loaded (the first library where none is NumPy's), or None without BLAS."""
        libs = self._handles()
        return next((lib for lib in libs if "numpy" in str(getattr(lib, "filepath", ""))), libs[0] if libs else None)

    def set(self, n: int) -> None:
        for lib in self._handles():
            lib.set_num_threads(n)

    def park(self) -> bool:
        """Put the BLAS pool's idle threads to rest now; False where the library offers no way to.

        OpenBLAS's threads spin for a while after each threaded call. Another pool
        starting in that window (numba's, ``backends.numba.one_pool``) loses whole
        time slices to them, a microsecond product taking milliseconds. OpenBLAS
        (pthreads builds) exports ``blas_thread_shutdown_``, which its own fork
        handler calls: the threads exit and are started again by its next threaded
        call (once, a fraction of a millisecond). A
        no-op when they are already gone. Not for use while another thread is in BLAS.
        """
        if self._parkers is None:
            self._parkers = [lib.dynlib.blas_thread_shutdown_ for lib in self._handles()
                             if lib.internal_api == "openblas" and lib.threading_layer == "pthreads"
                             and hasattr(lib.dynlib, "blas_thread_shutdown_")]
        for shutdown in self._parkers:
            shutdown()
        return bool(self._parkers)

    def omatcopy(self):
        """NumPy's OpenBLAS's out-of-place transpose (``cblas_somatcopy``, a ctypes function), or None where its
        BLAS has none (or is not OpenBLAS). ILP64 builds name it with a ``64_`` suffix (NumPy's own wheels: with a ``scipy_``
        prefix too) and take 64-bit sizes; the others take C ints."""
        if self._omatcopy is None:
            self._omatcopy = False
            lib = self._numpy_lib()
            names = (("scipy_cblas_somatcopy64_", ctypes.c_int64), ("cblas_somatcopy64_", ctypes.c_int64),
                     ("scipy_cblas_somatcopy", ctypes.c_int), ("cblas_somatcopy", ctypes.c_int))
            if lib is not None and lib.internal_api == "openblas":
                for name, index in names:
                    fn = getattr(lib.dynlib, name, None)
                    if fn is not None:
                        fn.argtypes = [ctypes.c_int, ctypes.c_int, index, index, ctypes.c_float, ctypes.c_void_p,
                                       index, ctypes.c_void_p, index]
                        fn.restype = None
                        self._omatcopy = fn
                        break
        return self._omatcopy or None


BLAS = _Blas()
_POOLS: dict[int, ThreadPoolExecutor] = {}
_ROW_MAJOR, _TRANS = 101, 112  # CBLAS_ORDER.CblasRowMajor, CBLAS_TRANSPOSE.CblasTrans


def column_major(parts: list) -> np.ndarray:
    """float32 matrices (rows_i, cols) stacked along the rows, as one column-major matrix (F-contiguous,
    (sum rows_i, cols)): each part transposed straight into its place, with no stacked copy between.

    OpenBLAS's omatcopy transposes in cache-sized tiles with vector loads; NumPy's
    own copy walks one side element by element, several times slower (a 4.4 GB
    model's load took seconds more: docs/performance.md). Any other BLAS gets NumPy's.
    """
    parts = [np.ascontiguousarray(p, dtype=np.float32) for p in parts]
    rows, cols = sum(p.shape[0] for p in parts), parts[0].shape[1]
    transpose = BLAS.omatcopy()
    if transpose is None:
        return np.asfortranarray(parts[0] if len(parts) == 1 else np.concatenate(parts))
    out = np.empty((cols, rows), dtype=np.float32)  # the transpose, C-contiguous; returned viewed back
    r0 = 0
    for p in parts:
        if p.size:
            transpose(_ROW_MAJOR, _TRANS, p.shape[0], cols, 1.0, p.ctypes.data, cols,
                      out.ctypes.data + 4 * r0, rows)  # into columns r0.. of the (cols, rows) array
        r0 += p.shape[0]
    return out.T


def splits_rows(w) -> bool:
    """Whether a one-token product with the stored matrix w splits its rows over Python threads (where BLAS
    may use more than one)."""
    if not isinstance(w, (HalfMatrix, BlockQ8)):
        return False
    return w.nbytes >= (SPLIT_ONE_CALL_MIN_BYTES if w.one_call else SPLIT_MIN_BYTES)


def widened_matmul_t(x: np.ndarray, w) -> np.ndarray:
    """x (T, in) @ w.T for a HalfMatrix or BlockQ8 w (out, in): float32 (T, out).

    Rows of w are widened into a cache-sized float32 block, which BLAS then
    multiplies (one token's bf16 or int8 rows: einsum, ``matvec_rows``); the
    full matrix never exists in float32. With BLAS allowed n > 1 threads and a
    big matrix (``splits_rows``), n Python threads each take a share of the rows
    (every widening path releases the GIL) while BLAS is held at one thread: one
    active pool at a time, since two pools spinning on the same cores slow each
    other down. A prompt's product (T > 1) is sgemm on wide blocks, where BLAS's
    own threads do better than a split. Figures: docs/performance.md.
    """
    rows = w.shape[0]
    out = np.empty((x.shape[0], rows), dtype=np.float32)
    threads = min(BLAS.threads(), rows) if x.shape[0] == 1 and splits_rows(w) else 1
    if threads <= 1:
        _widened_rows(x, w, 0, rows, out)
        return out
    pool = _POOLS.get(threads) or _POOLS.setdefault(threads, ThreadPoolExecutor(threads, "lumi-widen"))
    bounds = [rows * i // threads for i in range(threads + 1)]
    BLAS.set(1)
    try:
        for job in [pool.submit(_widened_rows, x, w, bounds[i], bounds[i + 1], out) for i in range(threads)]:
            job.result()
    finally:
        BLAS.set(threads)
    return out


def thread_limit(threads: int | None):
    """BLAS threads held at ``threads`` for the duration (threadpoolctl), or no change."""
    if threads is None:
        return nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=threads, user_api="blas")


def applied_threads() -> int:
    """The BLAS thread count in force right now (what the products actually use)."""
    return BLAS.threads()
