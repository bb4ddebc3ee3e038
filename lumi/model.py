"""The Llama forward pass: RMSNorm, RoPE, grouped-query attention, SwiGLU.

Functions over float32 arrays, plus one thin ``Model`` holding the config, the
weights in the layout the products want, and the KV cache. The array module
``xp`` of each layer's device (``backends.Device``: NumPy, or CuPy on a GPU) is
passed explicitly, never swapped globally.

Shapes: T tokens in this call, L = start_pos + T live positions, d = dim,
H / Hkv query / key-value heads, hd = head_dim, g = H // Hkv, V = vocab.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from . import fused
from .backends import CPU, Device, cross, placement
from .cuda import Position, ranges
from .config import ModelConfig
from .errors import LumiError, UsageError
from .kvcache import KVCache
from .sampler import SamplingParams, choose
from .weights import (STORAGE_DTYPES, BlockQ8, DeviceMatrix, HalfMatrix, convert_on_device, device_matmul_t,
                      release, resident, splits_rows, stack_on_device, stack_rows, to_float32, to_storage,
                      widened_matmul_t)

log = logging.getLogger("lumi")
F32 = np.float32
NEG_INF = np.float32(-np.inf)


# ----------------------------------------------------------------------------
# the building blocks


def linear(x, w, residual=None):
    """x (T, in) @ w.T -> (T, out), w stored (out, in) C-contiguous; added into ``residual`` when given.

    Rows of ``w`` are the dot products the product streams through; BLAS takes
    the transposed view as a flag, with no copy. A weight that is not
    C-contiguous here (a transposed view of an (in, out) array, the seed's 7x
    slowdown) is a bug, and the layout test catches it. 16-bit and int8
    weights are widened a block of rows at a time (``weights.widened_matmul_t``).
    ``residual`` (T, out) is the residual stream: the product is added into it
    in place (a GPU kernel does that in the same launch) and it is returned.
    """
    if isinstance(w, (HalfMatrix, BlockQ8)):
        y = widened_matmul_t(x, w)
    elif isinstance(w, DeviceMatrix):
        y = device_matmul_t(x, w)
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
    pass and no temporaries, where four real products and their temporaries
    took 7x as long on a 128-token prompt.
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
    overflow as exp(-z) does. So the result is (1 + tanh(g/2)) * (g/2 * u). In
    place, a 128-token prompt's SwiGLU allocates none of the two megabytes of
    temporaries whose fresh pages took 9 ms of stories110M's 270 ms prefill.
    """
    gate, up = gu[:, :hidden_dim], gu[:, hidden_dim:]
    gate *= F32(0.5)
    up *= gate  # g/2 * u
    xp.tanh(gate, out=gate)
    gate += 1
    gate *= up
    return gate


def fused_ops(model) -> dict:
    """``--kernels numba``: a one-token step on the host through lumi's numba kernels: its layers, final norm and
    classifier in one call (``step``; after a product streams megabytes, each return to the interpreter costs
    tens of microseconds here). A model with layers elsewhere or of mixed kinds runs each run of like host layers
    in one call (``block``), then the head.

    Outputs go to buffers kept from step to step, one per role and shape (each
    output is consumed before its role comes round again in a step), and
    products with a residual add into it in the kernel. So a decode step on the
    host allocates no array but the logits it returns (``output``'s product is a
    new array: a caller may keep it). Anything these kernels decline (a prompt,
    a layer with a weight no kernel reads) runs NumPy's operations, its products
    still through the kernels that read them.
    """
    buffers: dict = {}
    output = model.output
    runs: dict = {}  # first layer index -> (the fused layers' operands from it on, their constants), or None

    def buffer(role: str, shape: tuple):
        b = buffers.get((role, shape))
        if b is None:
            b = buffers[role, shape] = np.empty(shape, dtype=F32)
        return b

    def matmul(x, w, residual=None):
        if x.shape[0] == 1 and isinstance(x, np.ndarray):
            if residual is not None:
                if fused.gemv(x, w, residual, add=True) is not None:
                    return residual
            else:
                y = fused.gemv(x, w, None if w is output else buffer("product", (1, w.shape[0])))
                if y is not None:
                    return y
        return linear(x, w, residual)

    def norm(x, w, eps, xp):
        y = fused.rmsnorm(x, w, eps, buffer("norm", x.shape)) if xp is np else None
        return y if y is not None else rmsnorm(x, w, eps, xp)

    def embed_token(table, tokens):
        if len(tokens) == 1 and isinstance(tokens, np.ndarray) and isinstance(table, (np.ndarray, HalfMatrix, BlockQ8)):
            x = buffer("x", (1, table.shape[1]))  # the residual stream, which the step then adds into
            t = int(tokens[0])
            if isinstance(table, np.ndarray):
                x[...] = table[t]
            else:
                table.widen_rows(t, t + 1, x)
            return x
        return embed(table, tokens)

    def run_from(i: int):
        """The operands of layer i and the layers after it on the same device that a fused kernel takes, and their
        constants, as ``fused.layers`` takes them; None when layer i runs op by op."""
        device = model.layers[i].device
        stack = fused.layer_run(itertools.takewhile(lambda layer: layer.device is device, model.layers[i:]))
        if not stack:
            return None
        c = model.config
        return stack, fused.model_constants(*model.rope[device], c.rope_layout, c.n_heads, model.eps)

    def block(x, i: int, start_pos: int, clock=fused.NO_CLOCK, head=fused.NO_HEAD, logits=fused.NO_BIAS) -> int:
        if x.shape[0] != 1:
            return 0
        if i not in runs:
            runs[i] = run_from(i)
        if runs[i] is None:
            return 0
        stack, constants = runs[i]
        kvs = tuple(model.cache.kv[i : i + len(stack)])
        scratch = buffer("layer", (fused.layer_scratch(model.config, model.max_seq_len),))
        return len(stack) if fused.layers(x, kvs, start_pos, stack, constants, scratch, clock, head, logits) else 0

    head = None  # on the first step: the head's operands if one call runs the whole model, else False

    def step(tokens, start_pos: int, clock=fused.NO_CLOCK):
        nonlocal head
        if head is None:
            runs[0] = runs.get(0) or run_from(0)
            whole = (model.head is CPU and all(layer.device is CPU for layer in model.layers)
                     and runs[0] is not None and len(runs[0][0]) == len(model.layers))
            head = whole and fused.head_operands(model.norm, output) or False
        if not head or len(tokens) != 1 or not isinstance(tokens, np.ndarray):
            return None
        x = model.ops.embed(model.tok_embeddings, tokens)  # looked up on ops: a profile times it
        logits = np.empty(output.shape[0], dtype=F32)  # a new array: a caller may keep it
        return logits if block(x, 0, start_pos, clock, head, logits) else None

    return dict(matmul=matmul, norm=norm, embed=embed_token, block=block, step=step)


def embed(table, tokens):
    """Rows of the token-embedding table (V, d) as float32 (T, d), a copy the forward pass owns."""
    if isinstance(table, (HalfMatrix, BlockQ8, DeviceMatrix)):
        return table.rows(tokens)
    return table[tokens]


def update_cache(cache: KVCache, layer: int, start_pos: int, kv):
    return cache.update(layer, start_pos, kv)


def no_block(x, layer: int, start_pos: int) -> int:
    """How many layers from ``layer`` on ran in one call, where a fused kernel takes them (``fused_ops``); none
    here: the model runs each layer's operations one by one."""
    return 0


def no_step(tokens, start_pos: int):
    """The logits (V,) of one token run through the whole model in one call, where a fused kernel takes it
    (``fused_ops``: its layers, final norm and classifier); None here: the model runs it layer by layer."""


# The operations the forward pass calls, by the kind a profile reports them under.
# A model looks them up in its own ``ops``, so a profiler can time one model's
# operations without touching anything global (and costs nothing when off).
OPS = dict(embed=embed, norm=rmsnorm, matmul=linear, rope=apply_rope, cache=update_cache, attention=attention,
           activation=swiglu, block=no_block, step=no_step)


# ----------------------------------------------------------------------------
# the model


@dataclass
class Layer:
    """One transformer block's weights, each in the layout its product wants."""

    attention_norm: object  # (d,)
    wqkv: object  # (d + 2 kv_dim, d): wq, wk, wv stacked, one product per token
    bqkv: object | None  # (d + 2 kv_dim,) or None
    wo: object  # (d, d)
    ffn_norm: object  # (d,)
    w13: object  # (2h, d): gate w1 and up w3 stacked
    w2: object  # (d, h)
    device: Device = CPU  # where this layer's weights and KV cache live


# Weights whose rows the model stacks into one product (q, k, v; gate, up). A
# reader that already holds them adjacent in one buffer saves the copy.
STACKED_ROWS = (("attention.wq", "attention.wk", "attention.wv"), ("feed_forward.w1", "feed_forward.w3"))


def _vector(device: Device, source: Device, *arrays):
    """Norm weights and biases: one float32 vector on the device (several concatenated)."""
    if not source.host_memory:  # weights made on a device (``synthetic.DeviceWeights``)
        v = source.xp.concatenate(arrays)
        return v if device is source else device.to_device(source.to_host(v))
    return device.to_device(np.ascontiguousarray(np.concatenate([to_float32(a) for a in arrays])))


def _matrix(device: Device, source: Device, dtype: str, *arrays):
    """A matrix in its storage dtype, the rows of several stacked, on the device (on the host: in the process's memory).

    ``source``: where ``arrays`` are; weights made on a GPU are converted there,
    and only their stored bytes come to the host for layers placed there.
    """
    if not source.host_memory:
        w = stack_on_device([convert_on_device(a, dtype, source.xp) for a in arrays], source.xp)
        if device is source:
            return w
        if dtype == "fp32":
            return device.to_device(source.to_host(w))
        host = w.to_host(source)  # a HalfMatrix or BlockQ8 of the stored bytes
        return host if device.host_memory else DeviceMatrix.upload(host, device)
    w = resident(to_storage(stack_rows(list(arrays)), dtype))
    for a in arrays:  # copied out: the file's pages need not stay in this process's resident set
        release(a)
    if isinstance(w, np.ndarray):
        return device.to_device(w)
    return w if device.host_memory else DeviceMatrix.upload(w, device)


class Model:
    """Config, weights and KV cache; ``forward`` runs T tokens from ``start_pos``.

    ``weights`` maps the canonical names of ``ModelConfig.tensor_shapes()`` to
    arrays; memory maps are copied into the process's own memory, where they stream faster.
    A mapping with a ``device`` attribute holds arrays on that device (weights
    drawn on a GPU), converted there.
    """

    def __init__(self, config: ModelConfig, weights: dict, *, max_seq_len: int | None = None, dtype: str = "fp32",
                 device: Device = CPU, gpu_layers: int = 0, kernels: str = "numpy", cuda_graphs: bool = True,
                 nvtx: bool | None = None):
        if max_seq_len is None:
            max_seq_len = config.max_seq_len
        if not 0 < max_seq_len <= config.max_seq_len:
            raise UsageError("--max-seq-len", f"must be in 1..{config.max_seq_len} (the model's context), got {max_seq_len}")
        expected = config.tensor_shapes()
        missing = sorted(set(expected) - set(weights))
        if missing:
            raise LumiError(f"weights missing: {', '.join(missing[:5])}")
        # a mapping that draws its tensors when asked (``synthetic.DeviceWeights``) gives their shapes undrawn
        shapes = getattr(weights, "shapes", None) or {name: tuple(weights[name].shape) for name in expected}
        for name, shape in expected.items():
            if tuple(shapes[name]) != shape:
                raise LumiError(f"weight {name} has shape {tuple(shapes[name])}, config needs {shape}")
        if dtype not in STORAGE_DTYPES:
            raise UsageError("--dtype", f"must be one of {', '.join(STORAGE_DTYPES)}, got {dtype!r}")
        fused.check_kernels(kernels)
        on_device, head_on_device = placement(config.n_layers, gpu_layers)  # checks the count for every backend
        if device is CPU:
            on_device, head_on_device = [False] * config.n_layers, False
        self.config = config
        self.max_seq_len = max_seq_len
        self.dtype = dtype
        self.kernels = kernels  # for the layers on the CPU; a GPU's layers run its own (``Device.kernels``)
        self._decoding = False
        self.head = device if head_on_device else CPU  # embedding, final norm, classifier
        self.placement = [device if d else CPU for d in on_device]
        c, w = config, weights
        source = getattr(weights, "device", CPU)
        # the head first: its big tables are converted while the device's memory is emptiest
        self.tok_embeddings = _matrix(self.head, source, dtype, w["tok_embeddings"])  # (V, d)
        self.norm = _vector(self.head, source, w["norm"])  # (d,)
        self.output = self.tok_embeddings if c.tie_embeddings else _matrix(self.head, source, dtype, w["output"])  # (V, d)
        self.layers = []
        for i, dev in enumerate(self.placement):
            p = f"layers.{i}."
            bias = None
            if c.attention_bias:
                bias = _vector(dev, source, w[p + "attention.bq"], w[p + "attention.bk"], w[p + "attention.bv"])
            self.layers.append(
                Layer(
                    attention_norm=_vector(dev, source, w[p + "attention_norm"]),
                    wqkv=_matrix(dev, source, dtype, *(w[p + n] for n in STACKED_ROWS[0])),
                    bqkv=bias,
                    wo=_matrix(dev, source, dtype, w[p + "attention.wo"]),
                    ffn_norm=_vector(dev, source, w[p + "ffn_norm"]),
                    w13=_matrix(dev, source, dtype, *(w[p + n] for n in STACKED_ROWS[1])),
                    w2=_matrix(dev, source, dtype, w[p + "feed_forward.w2"]),
                    device=dev,
                )
            )
        self.eps = F32(c.norm_eps)
        self.ops = SimpleNamespace(**OPS)  # the host layers' operations (and prompts' without a GPU's kernels)
        if kernels == "numba":
            vars(self.ops).update(fused_ops(self))
        # the operations of one-token steps on each device: a GPU's fused kernels, which read the position
        # from the device (``cuda.Position``); the host's own; the generic ones elsewhere
        self.positions = {dev: Position(dev, dev.kernels) for dev in set(self.placement) if dev.kernels}
        self.step_ops, self.prompt_ops = {}, {}  # prompts: a GPU's cuBLAS GemmEx for 16-bit products
        for dev in {self.head, *self.placement}:
            if dev in self.positions:
                self.step_ops[dev] = SimpleNamespace(**dev.kernels.ops(OPS, self.positions[dev]))
                self.prompt_ops[dev] = SimpleNamespace(**dev.kernels.prompt_ops(OPS))
            else:
                self.step_ops[dev] = self.ops if dev.host_memory else SimpleNamespace(**OPS)
        # a greedy step of a model wholly on one GPU replays as a CUDA graph (``cuda.StepGraph``)
        self.cuda_graphs = (cuda_graphs and self.head in self.positions and set(self.placement) == {self.head}
                            and getattr(self.head.kernels, "graphs", False))
        self._graph = None
        self.graph_error = None
        self.passes = 0  # forward passes run through _hidden (a replayed graph's steps are not among them)
        # NVTX ranges per step and per layer for GPU profilers (``LUMI_NVTX=1``); free when off
        self._range = ranges(device, os.environ.get("LUMI_NVTX") == "1" if nvtx is None else nvtx)
        self.rope = {}  # device -> (cos, sin), each (max_seq_len, hd/2), on every device a layer uses
        for dev in {self.head, *self.placement}:
            self.rope[dev] = rope_tables(c.head_dim, max_seq_len, c.rope_theta, dev.xp, c.rope_scaling)
        self.reset()

    def reset(self):
        """Forget the context: a fresh, empty KV cache."""
        if self._graph is not None:
            self._graph.drain()  # a step it launched ahead still writes the old cache
        self._graph = None  # it holds the old cache's addresses
        c = self.config
        self.cache = KVCache(c.n_layers, c.n_kv_heads, self.max_seq_len, c.head_dim, [d.xp for d in self.placement])

    def weight_arrays(self) -> dict[str, object]:
        """Every weight the products read, by name (shared arrays listed once)."""
        arrays = {"tok_embeddings": self.tok_embeddings, "norm": self.norm}
        if self.output is not self.tok_embeddings:
            arrays["output"] = self.output
        for i, layer in enumerate(self.layers):
            for field, a in vars(layer).items():
                if a is not None and field != "device":
                    arrays[f"layers.{i}.{field}"] = a
        return arrays

    def widening_paths(self) -> dict[str, str]:
        """How each kind of weight reaches the product: "fp32" (as stored) or its widening path."""
        paths = {}
        for name, a in self.weight_arrays().items():
            kind = name.rsplit(".", 1)[-1]
            product = len(a.shape) == 2 and (kind != "tok_embeddings" or a is self.output)  # not just a row lookup
            fused_path = fused.path(a) if self.kernels == "numba" and product else None
            paths.setdefault(kind, fused_path or getattr(a, "path", "fp32"))
        return paths

    def split_products(self, threads: int) -> list[str]:
        """The kinds of weight whose one-token products split their rows over Python threads at ``threads``
        BLAS threads (``weights.widened_matmul_t``, ``weights.splits_rows``). None with
        numba kernels, whose own threads split the products."""
        if threads < 2 or self.kernels == "numba":
            return []
        return sorted({name.rsplit(".", 1)[-1] for name, a in self.weight_arrays().items()
                       if splits_rows(a) and (a is not self.tok_embeddings or a is self.output)})  # the table: lookups

    def weight_bytes(self) -> int:
        return sum(a.nbytes for a in self.weight_arrays().values())

    def decode_weight_bytes(self) -> int:
        """Weight bytes one decode step reads: every layer, the final norm and the classifier.

        Of the embedding table only one row is read (all of it when it is the tied classifier).
        """
        arrays = self.weight_arrays()
        arrays.pop("tok_embeddings")
        return sum(a.nbytes for a in arrays.values()) + self.output.nbytes * (self.output is self.tok_embeddings)

    def prefill_flops(self, T: int) -> float:
        """Floating-point operations of a T-token prompt at position 0: two per weight of every layer's
        products per token, the classifier's for the last position only, and attention's scores and weighted
        sums (causal: token t sees t + 1 positions)."""
        c = self.config
        layer = self.layers[0]
        weights = sum(math.prod(w.shape) for w in (layer.wqkv, layer.wo, layer.w13, layer.w2))
        seen = T * (T + 1) / 2  # positions attended to, summed over the prompt's tokens
        return (2 * T * weights + 4 * c.n_heads * c.head_dim * seen) * c.n_layers + 2 * math.prod(self.output.shape)

    def gpu_step(self) -> str | None:
        """What this model's one-token steps ran on a GPU: "cuda-graph", "lumi-kernels" (launched one by one),
        "array-functions" (a device without lumi's kernels), or None when no layer is on one."""
        if all(d.host_memory for d in (self.head, *self.placement)):
            return None
        if self._graph is not None and self._graph.graph is not None:
            return "cuda-graph"
        return "lumi-kernels" if self.positions else "array-functions"

    # -- entry points --------------------------------------------------------

    def forward(self, tokens, start_pos: int):
        """Logits (T, V) float32 for every position of tokens (T,) placed at start_pos.."""
        x = self._hidden(self._enter(tokens, start_pos), start_pos)
        return self.head.to_host(self._ops(self.head, len(x)).matmul(x, self.output))

    def prefill(self, tokens, start_pos: int = 0):
        """Run a prompt at once (matrix-matrix products); logits (V,) of its last position only."""
        return self.head.to_host(self._last_logits(tokens, start_pos))

    def next_token(self, tokens, start_pos: int, sampling: SamplingParams, rng: np.random.Generator) -> int:
        """Run tokens (a prompt, or one token) from start_pos and choose the next one.

        The choice is made where the logits are (``sampler.choose``): from a GPU,
        only the chosen id crosses to the host, 4 bytes a step.
        """
        tokens = np.asarray(tokens, dtype=np.int32)
        if self.cuda_graphs and len(tokens) == 1 and sampling.temperature == 0:
            self._check(tokens, start_pos)
            if self._graph is None:
                from .cuda import StepGraph

                self._graph = StepGraph(self)
            try:
                return self._graph.run(int(tokens[0]), start_pos)
            except Exception as error:
                if not self._graph.warm or self._graph.graph is not None:
                    raise
                # the capture failed: carry on without graphs, and say so. It ran nothing on the device, but
                # the position is sent up again rather than trusted.
                log.warning("CUDA graph capture failed, decoding without graphs: %s", error)
                self.cuda_graphs, self._graph, self.graph_error = False, None, f"{type(error).__name__}: {error}"
                for position in self.positions.values():
                    position.forget()
        logits = self._last_logits(tokens, start_pos)
        return int(self.head.to_host(choose(logits, sampling, rng, self.head.xp)))

    def decode(self, token: int, pos: int):
        """One token at ``pos``; its logits (V,). Run many inside ``decoding()``."""
        with self.decoding():
            return self.prefill(np.array([token], dtype=np.int32), pos)

    @contextmanager
    def decoding(self):
        """The scope of a run of decode steps (re-entrant; free with NumPy kernels).

        With numba kernels the products run on numba's threads while BLAS, left with
        attention's small products, is held at one thread and its pool parked: one
        active pool at a time. Handing the cores over costs about 60 us, so a
        generation does it once for all its steps, not per step.
        """
        if self.kernels != "numba" or self._decoding:
            yield
            return
        self._decoding = True
        try:
            with fused.one_pool():
                yield
        finally:
            self._decoding = False

    # -- the transformer -----------------------------------------------------

    def _enter(self, tokens, start_pos: int, tokens_on_device: bool = False):
        """A forward pass begins: tokens as an array, checked (tokens on the head's device: checked already)."""
        self.passes += 1  # a CUDA graph's step launched ahead is stale after any other forward pass
        if not tokens_on_device:
            tokens = np.asarray(tokens)
            self._check(tokens, start_pos)
        return tokens

    def _check(self, tokens, start_pos: int):
        T = len(tokens)
        if T == 0:
            raise LumiError("no tokens to run")
        if start_pos < 0 or start_pos + T > self.max_seq_len:
            raise LumiError(
                f"positions {start_pos}..{start_pos + T - 1} exceed the context of {self.max_seq_len} tokens"
            )
        lo, hi = (int(tokens[0]),) * 2 if T == 1 else (int(tokens.min()), int(tokens.max()))
        if lo < 0 or hi >= self.config.vocab_size:
            bad = lo if lo < 0 else hi
            raise LumiError(f"token id {bad} is out of range for a vocabulary of {self.config.vocab_size}")

    def _ops(self, device: Device, T: int) -> SimpleNamespace:
        return self.step_ops[device] if T == 1 else self.prompt_ops.get(device, self.ops)

    def _last_logits(self, tokens, start_pos: int, tokens_on_device: bool = False):
        """Logits (V,) of the last of tokens, on the head's device: the classifier runs on that position only."""
        with self._range("step at" if len(tokens) == 1 else "prompt at", start_pos):
            tokens = self._enter(tokens, start_pos, tokens_on_device)
            logits = self.ops.step(tokens, start_pos) if len(tokens) == 1 else None  # one fused call
            if logits is None:
                x = self._hidden(tokens, start_pos, tokens_on_device)
                logits = self._ops(self.head, 1).matmul(x[-1:], self.output)[0]
            return logits

    def _hidden(self, tokens, start_pos: int, tokens_on_device: bool = False):
        """Final-normed hidden states (T, d) for tokens (``_enter``'s) at start_pos.. (on the head's device when
        ``tokens_on_device``)."""
        c = self.config
        T, H, Hkv, hd = len(tokens), c.n_heads, c.n_kv_heads, c.head_dim
        if T == 1:
            for position in self.positions.values():
                position.at(start_pos)
        here = self.head  # where x lives: activations cross a device boundary once per boundary per step
        x = self.ops.embed(self.tok_embeddings, tokens if tokens_on_device else here.to_device(tokens))  # (T, d)
        fused_to = 0  # the layers before this one ran in a fused call
        for i, layer in enumerate(self.layers):
            if i < fused_to:
                continue
            with self._range("layer", i):
                dev, xp = layer.device, layer.device.xp
                ops = self._ops(dev, T)
                if dev is not here:
                    x, here = cross(x, here, dev), dev
                fused_to = i + ops.block(x, i, start_pos)  # x += this layer and those after it, in one fused call
                if fused_to > i:
                    continue
                h = ops.norm(x, layer.attention_norm, self.eps, xp)
                qkv = ops.matmul(h, layer.wqkv)  # (T, d + 2 kv_dim)
                if layer.bqkv is not None:
                    qkv += layer.bqkv
                qk = qkv[:, : (H + Hkv) * hd].reshape(T, H + Hkv, hd)
                ops.rope(qk, *self.rope[dev], start_pos, c.rope_layout)  # q and k at once, in place
                kv = qkv[:, H * hd :].reshape(T, 2, Hkv, hd)
                keys, values = ops.cache(self.cache, i, start_pos, kv)  # (Hkv, L, hd) each
                q = qkv[:, : H * hd].reshape(T, H, hd)
                x = ops.matmul(ops.attention(q, keys, values, start_pos, xp), layer.wo, x)  # x += ...
                h = ops.norm(x, layer.ffn_norm, self.eps, xp)
                x = ops.matmul(ops.activation(ops.matmul(h, layer.w13), c.hidden_dim, xp), layer.w2, x)
        for position in self.positions.values():  # the device copies move on with the step (a prompt: set once)
            position.advance() if T == 1 else position.at(start_pos + T)
        if here is not self.head:
            x = cross(x, here, self.head)
        return self._ops(self.head, T).norm(x, self.norm, self.eps, self.head.xp)
