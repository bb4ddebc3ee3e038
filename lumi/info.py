"""``lumi info MODEL``: what a checkpoint holds and what running it will take, without running it."""

from __future__ import annotations

import os
from collections import Counter

import numpy as np

from .config import PRESETS
from .formats import load_checkpoint
from .formats.synthetic import is_synthetic, parse_spec
from .storage import QK, STORAGE_DTYPES, BlockQ8

WIDENING = {
    "fp32": "none (float32 products)",
    "fp16": "fp16-bits: sign-extended bit shift and a 2^112 rebias, exact for finite weights "
            "(a tensor holding Inf/NaN keeps NumPy's cast)",
    "bf16": "bf16-ml_dtypes-cast, a block of rows at a time",
    "int8": "int8-blocks: int8 rows widened and scaled per block of 32",
}


def storage_bytes(shape: tuple[int, ...], dtype: str) -> int:
    """Bytes a tensor takes in lumi once stored as ``dtype`` (vectors always stay float32)."""
    n = int(np.prod(shape))
    if len(shape) == 1 or dtype == "fp32":
        return 4 * n
    if dtype in ("fp16", "bf16"):
        return 2 * n
    rows, cols = shape
    return n + 4 * rows * (cols // QK if cols % QK == 0 else 1)


def describe(spec: str, dtype: str = "fp32", max_seq_len: int | None = None) -> dict:
    """Architecture, parameters, stored bytes by dtype, tokenizer, and the memory a run needs."""
    spec = os.fspath(spec)
    if is_synthetic(spec):  # no need to draw the weights to describe them
        config = PRESETS[parse_spec(spec)[0]]
        stored = {name: ("float32", shape) for name, shape in config.tensor_shapes().items()}
    else:
        config, weights = load_checkpoint(spec)
        stored = {name: ("int8+scales" if isinstance(w, BlockQ8) else str(w.dtype), tuple(w.shape))
                  for name, w in weights.items()}
    shapes = config.tensor_shapes()
    by_dtype: Counter = Counter()
    for name, (kind, shape) in stored.items():
        w = None if is_synthetic(spec) else weights[name]
        by_dtype[kind] += w.nbytes if w is not None else 4 * int(np.prod(shape))
    seq = max_seq_len or config.max_seq_len
    weights_bytes = sum(storage_bytes(shape, dtype) for shape in shapes.values())
    kv_bytes = 2 * config.n_layers * config.n_kv_heads * config.head_dim * seq * 4
    tokenizer = None
    if not is_synthetic(spec):
        from .tokenizer import find_tokenizer

        tok, warning = find_tokenizer(spec, config.vocab_size)
        tokenizer = tok.path if tok else warning
    return {
        "model": spec,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(config).items()},
        "parameters": config.n_params(),
        "stored_bytes_by_dtype": dict(by_dtype),
        "storage_dtype": dtype,
        "widening": WIDENING[dtype],
        "weight_bytes": weights_bytes,
        "kv_cache_bytes": kv_bytes,
        "context": seq,
        "memory_needed_bytes": weights_bytes + kv_bytes,
        "tokenizer": tokenizer,
        "fused": _fused(shapes, dtype),
    }


def _fused(shapes: dict, dtype: str) -> str:
    """What ``--kernels numba`` would do with these weights here."""
    from .backends.numba import missing

    if missing():
        return f"unavailable: {missing()}"
    import numba

    narrow = sum(len(shape) == 2 and dtype == "int8" and shape[1] % QK != 0 for shape in shapes.values())
    where = f"; {narrow} int8 matrices not {QK} wide stay on the NumPy path" if narrow else ""
    return f"--kernels numba: {dtype}-numba-fused for decode's products (numba {numba.__version__}){where}"


def _millions(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"


def render(info: dict) -> str:
    c = info["config"]
    gib = lambda n: f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"  # noqa: E731
    lines = [
        f"model         {info['model']}",
        f"architecture  dim {c['dim']}, hidden {c['hidden_dim']}, {c['n_layers']} layers, {c['n_heads']} heads "
        f"({c['n_kv_heads']} kv), vocab {c['vocab_size']}, context {c['max_seq_len']}",
        f"              rope {c['rope_layout']} theta {c['rope_theta']:g}, norm eps {c['norm_eps']:g}, "
        f"{'tied' if c['tie_embeddings'] else 'separate'} classifier{', q/k/v bias' if c['attention_bias'] else ''}",
        f"parameters    {info['parameters']:,} ({_millions(info['parameters'])})",
        "stored        " + ", ".join(f"{k} {gib(v)}" for k, v in info["stored_bytes_by_dtype"].items()),
        f"as {info['storage_dtype']:<10} {gib(info['weight_bytes'])} of weights (widening: {info['widening']})",
        f"KV cache      {gib(info['kv_cache_bytes'])} for {info['context']} tokens (float32)",
        f"a run needs   about {gib(info['memory_needed_bytes'])} plus activations",
        f"tokenizer     {info['tokenizer'] or 'none (synthetic models take --prompt-ids, or --tokenizer)'}",
        f"fused decode  {info['fused']}",
    ]
    return "\n".join(lines) + "\n"


__all__ = ["describe", "render", "storage_bytes", "STORAGE_DTYPES"]
