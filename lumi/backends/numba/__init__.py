"""The numba backend: decode's products and the rest of a one-token step in one pass (``--kernels numba``).

The NumPy path (``backends.cpu.widened_matmul_t``) widens a cache-sized block
of 16-bit or int8 rows into float32 and hands it to BLAS: the widening is a
pass of its own that NumPy cannot fuse into the product. Here numba compiles a
matrix-vector product that reads each stored row once, widens each element in
a register (bf16: shift into a float's high half; fp16: the CPU's own
half-to-float conversion; int8: times its block's scale), accumulates in
float32, one whole row at a time (int8: four, in LLVM's vector IR). fp32 weights get
the same kernel. A one-token step (each layer's RMSNorm, products,
RoPE, cache store, attention and SwiGLU, then the final norm and the
classifier) is one numba call (``layers``), where NumPy takes dozens a layer;
with its scratch and the other outputs passed in (``ops`` keeps them from step
to step) a decode step allocates no array but its logits.

Only single-token products (decode) take this path; a prompt's products are
matrix-matrix work, where BLAS sgemm on widened blocks is already near the
machine's compute limit. The kernels run on numba's thread pool while BLAS is
held at one thread (``one_pool``): two pools spinning on the same cores slow
each other down. numba is an optional extra (``lumi[fused]``), imported only
by ``kernels`` (on first use); this module is the Python side, importable
without it.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from ...errors import UsageError
from ...storage import QK, BlockQ8, HalfMatrix
from ..cpu import BLAS
from .constants import PARALLEL_MIN_BYTES, PHASES  # noqa: F401 (read by profiles and tests)

KERNELS = ("numpy", "numba")  # "numpy": the pure NumPy path, always present and the reference
# what "auto" picks the fused path for: NumPy casts float16 one element at a time (its product takes several
# times fp32's), where the fused kernel converts in registers; fp32, bf16 and int8 keep NumPy's path, the reference
AUTO_FUSED_DTYPES = ("fp16",)
_BITS = {"bf16": np.uint16, "fp16": np.int16}  # the views that tell the kernels which 16-bit format they read


def missing() -> str | None:
    """Why the fused path cannot run here, or None when it can."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return "numba is not installed (pip install 'lumi[fused]')"
    return None


def resolve(kernels: str, dtype: str) -> str:
    """``kernels`` as given, or for "auto": "numba" where the dtype is in ``AUTO_FUSED_DTYPES`` and numba is
    installed, else "numpy"."""
    if kernels != "auto":
        return kernels
    return "numba" if dtype in AUTO_FUSED_DTYPES and not missing() else "numpy"


def check_kernels(kernels: str) -> None:
    if kernels not in KERNELS:
        raise UsageError("--kernels", f"must be one of {', '.join(KERNELS)}, got {kernels!r}")
    if kernels == "numba" and missing():
        raise UsageError("--kernels", missing())


def kind(w) -> str | None:
    """Which kernel reads this weight ("fp32", "bf16", "fp16", "int8"), or None: it stays on NumPy's path.

    int8 needs blocks of QK (not one block per row), C-contiguous.
    """
    if isinstance(w, BlockQ8):  # the kernel reads rows by address: each row's blocks contiguous
        contiguous = w.q.flags.c_contiguous and w.scales.flags.c_contiguous
        return "int8" if contiguous and w.q.shape[1] == QK * w.scales.shape[1] else None
    if isinstance(w, HalfMatrix):
        return w.storage
    if isinstance(w, np.ndarray) and w.dtype == np.float32 and w.ndim == 2 and w.flags.c_contiguous:
        return "fp32"
    return None


def path(w) -> str | None:
    """The path name a weight takes here ("bf16-numba-fused", ...), or None if it stays on NumPy's."""
    k = kind(w)
    return None if k is None else f"{k}-numba-fused"


NO_SCALES = np.empty((0, 0), dtype=np.float32)  # a float weight's scales, for kernels that take any weight
NO_BIAS = np.empty(0, dtype=np.float32)
NO_CLOCK = np.empty(0, dtype=np.int64)  # ``layer``'s clock off


def operands(w) -> tuple | None:
    """(stored array, scales) as the kernels read w (16-bit as the integer view naming its format; scales empty
    unless int8), or None when no kernel reads it."""
    k = kind(w)
    if k is None:
        return None
    if k == "int8":
        return w.q, w.scales
    return (w.a.view(_BITS[k]) if k in _BITS else w), NO_SCALES


def gemv(x, w, out=None, add: bool = False):
    """x (1, in) @ w.T as float32 (1, out), on numba's threads; None when no kernel reads w.

    ``out`` (1, out): written (``add``: added into) instead of a new array.
    """
    stored = operands(w)
    if stored is None:
        return None
    if out is None:
        out = np.empty((1, w.shape[0]), dtype=np.float32)
    vector = np.ascontiguousarray(x[0], dtype=np.float32)
    fk = _kernels()
    fk.gemv(*stored, vector, out[0], _shares or fk.numba.get_num_threads(), add)
    return out


_shares = None  # numba's thread count inside ``one_pool``, kept: asking numba for it is a call per product
_loaded = None


def _kernels():
    """``lumi.backends.numba.kernels``, imported once, on first use (it needs numba)."""
    global _loaded
    if _loaded is None:
        from . import kernels

        _loaded = kernels
    return _loaded


def provenance(threads: int) -> dict:
    """What ran the fused kernels: numba's version, threading layer and the thread count they got."""
    import numba

    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel region has run (every matrix was small enough for the calling thread)
        layer = None
    return {"numba": numba.__version__, "threading_layer": layer,
            "threads": _numba_threads(threads)}


def _numba_threads(threads: int) -> int:
    """BLAS's thread count as numba's: numba's pool cannot grow past the size it started with."""
    import numba

    return max(1, min(threads, numba.config.NUMBA_NUM_THREADS))


@contextmanager
def one_pool():
    """numba's pool gets BLAS's thread count; BLAS drops to one thread and parks its pool, for the duration."""
    global _shares
    import numba

    threads = BLAS.threads()
    _shares = _numba_threads(threads)
    numba.set_num_threads(_shares)
    BLAS.set(1)
    BLAS.park()
    try:
        yield threads
    finally:
        _shares = None
        BLAS.set(threads)


# -- the rest of a decode step: None where it does not apply (the caller then runs NumPy's operation) -------


def threads() -> int:
    """The threads a kernel splits its work over now: numba's inside ``one_pool``, else one."""
    return _shares or 1


def _one_token(x) -> bool:
    return isinstance(x, np.ndarray) and x.dtype == np.float32 and x.shape[0] == 1


def rmsnorm(x, w, eps, out=None):
    """x (1, d) normed by w (d,), float32 (1, d) (into ``out`` when given)."""
    if not (_one_token(x) and x.ndim == 2):
        return None
    out = np.empty_like(x) if out is None else out
    _kernels().rmsnorm_row(x[0], w, np.float32(eps), out[0])
    return out


# -- a whole layer for one token, in one call ---------------------------------------------------------------


def layer_operands(layer) -> tuple | None:
    """A ``model.layers.Layer``'s weights as ``kernels.layer`` takes them (attention_norm to s2); None when a weight
    has no kernel or is not in the host's memory (the layer then runs op by op)."""
    products = [operands(w) for w in (layer.wqkv, layer.wo, layer.w13, layer.w2)]
    vectors = (layer.attention_norm, layer.ffn_norm) + (() if layer.bqkv is None else (layer.bqkv,))
    if None in products or not all(isinstance(a, np.ndarray) and a.dtype == np.float32 and a.flags.c_contiguous
                                   for a in vectors):
        return None
    bias = NO_BIAS if layer.bqkv is None else layer.bqkv
    (wqkv, sqkv), (wo, so), (w13, s13), (w2, s2) = products
    return (layer.attention_norm, layer.ffn_norm, wqkv, sqkv, bias, wo, so, w13, s13, w2, s2)


def layer_run(layers) -> tuple:
    """The ``layer_operands`` of the leading layers a fused kernel takes whose weights are all of one kind, as
    ``layers`` takes them (a numba tuple indexed at run time holds one type); empty when the first layer runs op
    by op."""
    typeof = _kernels().numba.typeof
    stack = []
    for layer in layers:
        operands = layer_operands(layer)
        if operands is None or (stack and typeof(operands) != typeof(stack[0])):
            break
        stack.append(operands)
    return tuple(stack)


def model_constants(cos, sin, layout: str, n_heads: int, eps) -> tuple:
    """The arguments every layer's call shares, after the weights: the RoPE tables, their layout, the head count and
    the norms' epsilon."""
    return cos, sin, layout == "interleaved", n_heads, np.float32(eps)


def layer_scratch(config, max_seq_len: int) -> int:
    """Floats of scratch the layer kernel needs for this model at the present thread count: the normed input, q k
    v, attention's output, gate and up, the activation, and each attention thread's scores."""
    c = config
    return (c.dim + (2 * c.n_heads + 2 * c.n_kv_heads) * c.head_dim + 3 * c.hidden_dim
            + min(threads(), c.n_heads) * max_seq_len)


def cycle_counter():
    """The counter the layer kernel's clock reads, as a function (CPU cycles; x86: rdtsc), loaded: its first call
    compiles it or reads numba's cache, which must not fall inside a measured interval."""
    counter = _kernels().cycles
    counter()
    return counter


def head_operands(norm, output) -> tuple | None:
    """The final norm's weights and the classifier's ``operands``, as ``layers`` takes them to end a step with the
    logits; None when no kernel reads them."""
    stored = operands(output)
    if stored is None or not (isinstance(norm, np.ndarray) and norm.dtype == np.float32 and norm.flags.c_contiguous):
        return None
    return (norm, *stored)


NO_HEAD = (NO_BIAS, NO_SCALES, NO_SCALES)  # ``layers`` without the head: the residual stream is its output


def layers(x, kvs: tuple, pos: int, stack: tuple, constants: tuple, scratch, clock=NO_CLOCK, head=NO_HEAD,
           logits=NO_BIAS) -> bool:
    """Consecutive transformer blocks for one token x (1, d), the residual stream, updated in place, in one call:
    ``stack`` each block's ``layer_operands``, ``kvs`` its cache (2, Hkv, S, hd), written at ``pos``;
    ``constants`` from ``model_constants``. One call a step, not one a layer: each return to the interpreter
    after products have streamed megabytes is slow (its code and data come back from memory).
    ``stack`` from ``layer_run``. With ``head`` (``head_operands``) and ``logits``
    (V,) the same call ends with the final norm and the classifier into ``logits``: the whole step.
    False (nothing run) when x or a cache is not a host float32 array the kernel reads. ``clock`` (2 x
    len(PHASES) int64): each kind's cycles, then its calls, added to (``lumi.bench.profile``)."""
    if not (_one_token(x) and x.ndim == 2 and x.flags.c_contiguous and len(kvs) == len(stack) > 0
            and all(isinstance(kv, np.ndarray) and kv.dtype == np.float32 and kv.flags.c_contiguous for kv in kvs)):
        return False
    _kernels().layers(x[0], kvs, pos, threads(), scratch, clock, stack, *constants, *head, logits)
    return True
