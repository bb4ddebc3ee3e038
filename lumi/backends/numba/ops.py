"""The numba backend's op table: a host decode step through the fused kernels (``--kernels numba``)."""

from __future__ import annotations

import itertools

import numpy as np

from ...storage import BlockQ8, HalfMatrix
from ..device import CPU
from .. import numba as fused  # this backend's Python side (not the numba library)

F32 = np.float32


def ops(model, generic: dict) -> dict:
    """The host's op table with ``--kernels numba``: ``generic`` (``lumi.model.ops.OPS``) with a one-token step
    through lumi's numba kernels: its layers, final norm and classifier in one call (``step``: after a product
    has streamed megabytes, each return to the interpreter is a cold start). A model with layers elsewhere or
    of mixed kinds runs each run of like host layers in one call (``block``), then the head.

    Outputs go to buffers kept from step to step, one per role and shape (each
    output is consumed before its role comes round again in a step), and
    products with a residual add into it in the kernel. So a decode step on the
    host allocates no array but the logits it returns (``output``'s product is a
    new array: a caller may keep it). Anything these kernels decline (a prompt,
    a layer with a weight no kernel reads) runs the generic operations, its
    products still through the kernels that read them.

    ``model`` is read, never changed: its config, max_seq_len, layers and their
    devices, cache, rope tables, eps, head device, norm, tok_embeddings, output.
    """
    linear, rmsnorm, embed = generic["matmul"], generic["norm"], generic["embed"]
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
        x = model.ops.embed(model.tok_embeddings, tokens)  # looked up on the model's table: a profile times it
        logits = np.empty(output.shape[0], dtype=F32)  # a new array: a caller may keep it
        return logits if block(x, 0, start_pos, clock, head, logits) else None

    return {**generic, "matmul": matmul, "norm": norm, "embed": embed_token, "block": block, "step": step}
