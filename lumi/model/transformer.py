"""The Llama transformer: ``Model`` holds the config, the placed weights and the KV cache, and runs them.

``forward`` / ``prefill`` / ``next_token`` run T tokens from ``start_pos``
through ``_hidden``: the embedding, then each layer's block (norm,
qkv, RoPE, cache, attention, wo, norm, gate/up, SwiGLU, w2, the residual added
in place), then the final norm, and the classifier. Every operation is looked
up in the op table of the layer's device (``_ops``): the reference operations
(``ops.OPS``), or a backend's (``lumi.backends``: numba's for the host with
``--kernels numba``, lumi's CUDA kernels on a GPU), in the same signatures. A
backend may run a run of layers in one call (its ``block``) or the whole
one-token step (its ``step``); the model runs the block op by op where it
declines.

Shapes: T tokens in this call, d = dim, H / Hkv query / key-value heads,
hd = head_dim, V = vocab.
"""

from __future__ import annotations

import logging
import math
import os
from contextlib import contextmanager
from types import SimpleNamespace

import numpy as np

from ..backends import ALL_LAYERS, CPU, Device, cross, placement, ranges
from ..backends import numba as fused
from ..backends.cpu import splits_rows
from ..config import ModelConfig
from ..errors import LumiError, UsageError
from ..sampler import SamplingParams, choose
from ..storage import STORAGE_DTYPES
from .kvcache import KVCache
from .layers import check_weights, matrix, place_layers, vector
from .ops import OPS, rope_tables

log = logging.getLogger("lumi")
F32 = np.float32


class Model:
    """Config, weights and KV cache; ``forward`` runs T tokens from ``start_pos``.

    ``weights`` maps the canonical names of ``ModelConfig.tensor_shapes()`` to
    arrays; memory maps are copied into the process's own memory, where they stream faster.
    A mapping with a ``device`` attribute holds arrays on that device (weights
    drawn on a GPU), converted there.
    """

    def __init__(self, config: ModelConfig, weights: dict, *, max_seq_len: int | None = None, dtype: str = "fp32",
                 device: Device = CPU, gpu_layers: int = ALL_LAYERS, kernels: str = "numpy", cuda_graphs: bool = True,
                 nvtx: bool | None = None):
        if max_seq_len is None:
            max_seq_len = config.max_seq_len
        if not 0 < max_seq_len <= config.max_seq_len:
            raise UsageError("--max-seq-len", f"must be in 1..{config.max_seq_len} (the model's context), got {max_seq_len}")
        check_weights(config, weights)
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
        w, source = weights, getattr(weights, "device", CPU)
        # the host's float32 products under the NumPy kernels read column-major matrices (``layers``' module doc)
        order = "F" if kernels == "numpy" else "C"
        # the head first: its big tables are converted while the device's memory is emptiest. A tied table is the
        # classifier's matrix (the lookup reads one row of it a token); an untied one only serves row lookups.
        self.tok_embeddings = matrix(self.head, source, dtype, w["tok_embeddings"],
                                     order=order if config.tie_embeddings else "C")  # (V, d)
        self.norm = vector(self.head, source, w["norm"])  # (d,)
        self.output = self.tok_embeddings if config.tie_embeddings else matrix(self.head, source, dtype, w["output"],
                                                                               order=order)
        self.layers = place_layers(config, weights, dtype, self.placement, order)
        self.eps = F32(config.norm_eps)
        self.devices = {self.head, *self.placement}  # every device the model uses
        self.rope = {}  # device -> (cos, sin), each (max_seq_len, hd/2), on every device a layer uses
        for dev in self.devices:
            self.rope[dev] = rope_tables(config.head_dim, max_seq_len, config.rope_theta, dev.xp, config.rope_scaling)
        self._op_tables()
        # a greedy step of a model wholly on one GPU replays as a CUDA graph (``Kernels.step_graph``)
        self.cuda_graphs = (cuda_graphs and self.head in self.positions and set(self.placement) == {self.head}
                            and getattr(self.head.kernels, "graphs", False))
        self._graph = None
        self.graph_error = None
        self.passes = 0  # forward passes run through _hidden (a replayed graph's steps are not among them)
        # NVTX ranges per step and per layer for GPU profilers (``LUMI_NVTX=1``); free when off
        self._range = ranges(device, os.environ.get("LUMI_NVTX") == "1" if nvtx is None else nvtx)
        self.reset()

    def _op_tables(self):
        """The op table each device's layers run, for one-token steps and for prompts.

        The host: ``ops`` (the reference operations, or numba's with
        ``--kernels numba``), one namespace for both, which a profiler wraps. A
        GPU with lumi's kernels: their tables (a step reads its position from the
        device: ``positions``). Any other device: the reference operations.
        """
        self.ops = SimpleNamespace(**OPS)
        if self.kernels == "numba":
            from ..backends.numba.ops import ops as numba_ops

            vars(self.ops).update(numba_ops(self, OPS))
        self.positions = {dev: dev.kernels.position(dev) for dev in self.devices if dev.kernels}
        self.step_ops, self.prompt_ops = {}, {}
        for dev in self.devices:
            if dev in self.positions:
                self.step_ops[dev] = SimpleNamespace(**dev.kernels.ops(OPS, self.positions[dev]))
                self.prompt_ops[dev] = SimpleNamespace(**dev.kernels.prompt_ops(OPS))
            elif dev.host_memory:
                self.step_ops[dev] = self.prompt_ops[dev] = self.ops
            else:
                self.step_ops[dev] = self.prompt_ops[dev] = SimpleNamespace(**OPS)

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
        BLAS threads (``backends.cpu.widened_matmul_t``, ``backends.cpu.splits_rows``). None with
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
        if all(d.host_memory for d in self.devices):
            return None
        if self._graph is not None and self._graph.graph is not None:
            return "cuda-graph"
        return "lumi-kernels" if self.positions else "array-functions"

    def decode_path(self) -> str:
        """What runs this model's one-token steps: on the host "numpy" (the NumPy path) or "numba" (the fused
        kernels), on a GPU ``gpu_step()``'s answer; both, joined by " + ", for a partial offload."""
        host = any(d.host_memory for d in self.placement) or self.head.host_memory
        return " + ".join(p for p in (self.kernels if host else None, self.gpu_step()) if p)

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
                self._graph = self.head.kernels.step_graph(self)
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
        active pool at a time. Handing the cores over is not free, so a
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
        return self.step_ops[device] if T == 1 else self.prompt_ops[device]

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
        ``tokens_on_device``): the embedding, each layer's block, the final norm.

        The blocks are written out in this loop, not in a method per block: a prompt's temporaries then live
        until the next block replaces them one by one. Freed together at a block's end, glibc trims the
        heap's top back to the kernel and every layer faults the same pages in again (twice the page faults
        of a prompt, docs/performance.md).
        """
        c = self.config
        T, H, Hkv, hd = len(tokens), c.n_heads, c.n_kv_heads, c.head_dim
        if T == 1:
            for position in self.positions.values():
                position.at(start_pos)
        here = self.head  # where x lives: activations cross a device boundary once per boundary per step
        x = self.ops.embed(self.tok_embeddings, tokens if tokens_on_device else here.to_device(tokens))  # (T, d)
        fused_to = 0  # the layers before this one ran in one call of their backend
        for i, layer in enumerate(self.layers):
            if i < fused_to:
                continue
            with self._range("layer", i):
                dev, xp = layer.device, layer.device.xp
                ops = self._ops(dev, T)
                if dev is not here:
                    x, here = cross(x, here, dev), dev
                ran = ops.block(x, i, start_pos)  # x += layers i .. i + ran - 1 in one call (0: declined)
                if ran:
                    fused_to = i + ran
                    continue
                # the transformer block: x += attention(norm(x)); x += ffn(norm(x)), the residual added in place
                h = ops.norm(x, layer.attention_norm, self.eps, xp)
                qkv = ops.matmul(h, layer.wqkv)  # (T, (H + 2 Hkv) hd)
                if layer.bqkv is not None:
                    qkv += layer.bqkv
                qk = qkv[:, : (H + Hkv) * hd].reshape(T, H + Hkv, hd)
                ops.rope(qk, *self.rope[dev], start_pos, c.rope_layout)  # q and k at once, in place
                kv = qkv[:, H * hd :].reshape(T, 2, Hkv, hd)
                keys, values = ops.cache(self.cache, i, start_pos, kv)  # (Hkv, L, hd) each
                q = qkv[:, : H * hd].reshape(T, H, hd)
                x = ops.matmul(ops.attention(q, keys, values, start_pos, xp), layer.wo, x)  # x += attention @ wo.T
                h = ops.norm(x, layer.ffn_norm, self.eps, xp)
                x = ops.matmul(ops.activation(ops.matmul(h, layer.w13), c.hidden_dim, xp), layer.w2, x)  # x += ffn
        for position in self.positions.values():  # the device copies move on with the step (a prompt: set once)
            position.advance() if T == 1 else position.at(start_pos + T)
        if here is not self.head:
            x = cross(x, here, self.head)
        return self._ops(self.head, T).norm(x, self.norm, self.eps, self.head.xp)
