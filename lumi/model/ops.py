"""The transformer's operations, over float32 arrays of any backend: the reference op table.

RMSNorm, RoPE, grouped-query attention, SwiGLU, the products and the
embedding lookup, each written once for NumPy and CuPy alike: the array module
``xp`` of the layer's device is passed explicitly, never swapped globally.
``OPS`` maps each kind (the names a profile reports) to its function; a
backend's op table (``lumi.backends``) has the same keys and signatures and
falls back to these where its kernels do not apply.

Shapes: T tokens in this call, L = start_pos + T live positions, d = dim,
H / Hkv query / key-value heads, hd = head_dim, g = H // Hkv, V = vocab,
h = hidden_dim.
"""

from __future__ import annotations

import math

import numpy as np

from ..backends.cpu import widened_matmul_t
from ..backends.cuda.storage import DeviceMatrix
from ..storage import BlockQ8, HalfMatrix
from .kvcache import KVCache

F32 = np.float32
NEG_INF = np.float32(-np.inf)


def linear(x, w, residual=None):
    """x (T, in) @ w.T -> (T, out), w stored (out, in); added into ``residual`` when given.

    A float32 ``w`` on the host is column-major (``model.layers``), so ``w.T`` is a
    C-contiguous (in, out) matrix and the product BLAS's plain GEMV/GEMM; any
    other layout is C-contiguous rows. A weight that is neither (a strided view,
    the slowdown the seed found) is a bug, and the layout test catches it. 16-bit and int8
    weights are widened a block of rows at a time (``backends.cpu.widened_matmul_t``
    on the host, ``DeviceMatrix.matmul_t`` on a GPU).
    ``residual`` (T, out) is the residual stream: the product is added into it
    in place (a GPU kernel does that in the same launch) and it is returned.
    """
    if isinstance(w, (HalfMatrix, BlockQ8)):
        y = widened_matmul_t(x, w)
    elif isinstance(w, DeviceMatrix):
        y = w.matmul_t(x)
    else:
        y = x @ w.T
    if residual is None:
        return y
    residual += y
    return residual


def rmsnorm(x, w, eps, xp):
    """x (T, d) * w (d,) / rms(x). [Zhang & Sennrich 2019, eq. 4]"""
    s = (x * x).sum(axis=-1, keepdims=True)  # (T, 1); in place below: fewer passes than mean/sqrt/divide
    s *= F32(1 / x.shape[-1])
    s += eps
    return x * (w / xp.sqrt(s))


def rope_tables(head_dim: int, max_seq_len: int, theta: float, xp, scaling=None):
    """cos and sin of pos * theta^(-2i/hd), each (max_seq_len, hd/2), float32. [RoFormer, eq. 15]

    ``scaling`` = (factor, low_freq_factor, high_freq_factor, original_context): Llama 3.1's
    rule: wavelengths longer than original/low are slowed by ``factor``, those shorter
    than original/high kept, and the band between interpolated smoothly.
    """
    inv_freq = F32(theta) ** -(xp.arange(0, head_dim, 2, dtype=F32) / F32(head_dim))  # (hd/2,)
    if scaling is not None:
        factor, low, high, original = (F32(v) for v in scaling)
        wavelen = F32(2 * math.pi) / inv_freq
        smooth = xp.clip((original / wavelen - low) / (high - low), F32(0), F32(1))  # 0: long waves, 1: short
        inv_freq = (F32(1) - smooth) * inv_freq / factor + smooth * inv_freq
    angles = xp.arange(max_seq_len, dtype=F32)[:, None] * inv_freq[None, :]  # (S, hd/2)
    return xp.cos(angles), xp.sin(angles)


def apply_rope(x, cos, sin, start_pos: int, layout: str):
    """Rotate x (T, heads, hd) in place by the angles of positions start_pos.. in the tables cos, sin (S, hd/2).

    "interleaved" pairs (x[2i], x[2i+1]) (Meta, llama2.c); "half" pairs
    (x[i], x[i + hd/2]) (Hugging Face's rotate_half). Same rotation, different
    order of the head's features. An interleaved pair on the host is a complex64
    number, and the rotation one in-place complex product by cos + i sin: one
    pass and no temporaries (four real products would need four).
    """
    T, n, hd = x.shape
    c, s = cos[start_pos : start_pos + T, None, :], sin[start_pos : start_pos + T, None, :]  # (T, 1, hd/2)
    if layout == "interleaved" and isinstance(x, np.ndarray):  # a CuPy array keeps the real form below
        turn = c.astype(np.complex64)
        turn.imag = s
        z = x.view(np.complex64)  # (T, n, hd/2): the last axis is contiguous, so a view of the same memory
        z *= turn
        return
    if layout == "interleaved":
        pairs = x.reshape(T, n, hd // 2, 2)
        x1, x2 = pairs[..., 0], pairs[..., 1]  # (T, n, hd/2) views
    else:
        pairs = x.reshape(T, n, 2, hd // 2)
        x1, x2 = pairs[..., 0, :], pairs[..., 1, :]
    r1 = x1 * c - x2 * s
    r2 = x2 * c + x1 * s
    x1[...] = r1
    x2[...] = r2


def softmax(x, xp):
    """Softmax over the last axis, in place."""
    x -= x.max(axis=-1, keepdims=True)
    xp.exp(x, out=x)
    x *= F32(1) / x.sum(axis=-1, keepdims=True)  # a reciprocal per row, then one product: no division per element
    return x


def attention(q, k, v, start_pos: int, xp):
    """Causal grouped-query attention.

    q (T, H, hd) at positions start_pos.., k and v (Hkv, L, hd) the live cache.
    Query head h reads kv head h // g. Returns (T, H * hd).
    """
    T, H, hd = q.shape
    n_kv, L, _ = k.shape
    g = H // n_kv
    q = q.reshape(T, n_kv, g, hd).transpose(1, 2, 0, 3).reshape(n_kv, g * T, hd)  # (Hkv, g*T, hd)
    scores = q @ k.transpose(0, 2, 1)  # (Hkv, g*T, L)
    scores *= F32(1 / math.sqrt(hd))
    if T > 1:  # query t sits at start_pos + t and sees keys 0 .. start_pos + t: -inf added to the others
        hidden = xp.arange(L, dtype=np.int32)[None, :] > xp.arange(start_pos, start_pos + T, dtype=np.int32)[:, None]
        per_query = scores.reshape(n_kv, g, T, L)  # a view: scores is contiguous
        per_query += xp.where(hidden, NEG_INF, F32(0))  # (T, L), broadcast, in place
    out = softmax(scores, xp) @ v  # (Hkv, g*T, hd)
    return out.reshape(n_kv, g, T, hd).transpose(2, 0, 1, 3).reshape(T, H * hd)


def swiglu(gu, hidden_dim: int, xp):
    """silu(gate) * up from gu = x @ [w1; w3].T (T, 2h): the SwiGLU activation, (T, h), computed in place
    over gu, whose gate half it returns (a view). [arxiv 2002.05202, eq. 6]

    silu(z) = z * sigmoid(z) and sigmoid(z) = (1 + tanh(z/2)) / 2, which cannot
    overflow as exp(-z) does. So the result is (1 + tanh(g/2)) * (g/2 * u),
    computed in place: a prompt's SwiGLU makes no temporaries, whose fresh
    pages would each be faulted in.
    """
    gate, up = gu[:, :hidden_dim], gu[:, hidden_dim:]
    gate *= F32(0.5)
    up *= gate  # g/2 * u
    xp.tanh(gate, out=gate)
    gate += 1
    gate *= up
    return gate


def embed(table, tokens):
    """Rows of the token-embedding table (V, d) as float32 (T, d), a copy the forward pass owns."""
    if isinstance(table, (HalfMatrix, BlockQ8, DeviceMatrix)):
        return table.rows(tokens)
    return table[tokens]


def update_cache(cache: KVCache, layer: int, start_pos: int, kv):
    return cache.update(layer, start_pos, kv)


def no_block(x, layer: int, start_pos: int) -> int:
    """How many layers from ``layer`` on this call ran, x updated in place, where a backend runs a run of
    layers in one call (``backends.numba.ops``); none here: the model runs each layer's operations."""
    return 0


def no_step(tokens, start_pos: int):
    """The logits (V,) of one token run through the whole model in one call, where a fused kernel takes it
    (``backends.numba.ops``: its layers, final norm and classifier); None here: the model runs it layer by
    layer."""


# The operations the forward pass calls, by the kind a profile reports them under. A model looks them up in
# its own op tables, so a profiler can time one model's operations without touching anything global (and
# costs nothing when off).
OPS = dict(embed=embed, norm=rmsnorm, matmul=linear, rope=apply_rope, cache=update_cache, attention=attention,
           activation=swiglu, block=no_block, step=no_step)
