"""llama2.c checkpoints: the legacy v0 format and the version-1 fp32 export.

v0 (``export.py --version 0``, the format of Karpathy's stories*.bin):
    7 int32: dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
    (a negative vocab_size means the classifier is stored separately), then
    float32 tok_embeddings, per-kind stacks over layers (attention_norm, wq, wk,
    wv, wo, ffn_norm, w1, w2, w3), norm, the RoPE tables (seq_len x hd/2, cos
    then sin; unused), and the classifier when not shared.
v1 (``--version 1``): a 256-byte header (uint32 magic "ak42", int32 version 1,
    the same 7 int32 with a positive vocab_size, uint8 shared_classifier, zero
    padding), then float32 norms first (attention_norm, ffn_norm, norm),
    tok_embeddings, the stacks wq, wk, wv, wo, w1, w2, w3, and the classifier
    when not shared.

Both store weights (out, in) row-major and use interleaved RoPE.
"""

from __future__ import annotations

import os
import struct

import numpy as np

from ..config import ModelConfig
from ._io import MappedFile

MAGIC = 0x616B3432  # "ak42" read as a little-endian uint32
V1_HEADER_BYTES = 256
HEADER_FIELDS = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len")
_LIMITS = dict(dim=1 << 16, hidden_dim=1 << 18, n_layers=1 << 10, n_heads=1 << 12, n_kv_heads=1 << 12,
               vocab_size=1 << 22, seq_len=1 << 20)  # far above any real model; below them sizes cannot overflow

# Stacked per-layer weights in file order, by layout: (canonical suffix, shape from config)
_V0_LAYER_ORDER = ("attention_norm", "attention.wq", "attention.wk", "attention.wv", "attention.wo",
                   "ffn_norm", "feed_forward.w1", "feed_forward.w2", "feed_forward.w3")
_V1_NORMS = ("attention_norm", "ffn_norm")
_V1_MATRICES = ("attention.wq", "attention.wk", "attention.wv", "attention.wo",
                "feed_forward.w1", "feed_forward.w2", "feed_forward.w3")


def is_llama2c(path: str) -> bool:
    return str(path).endswith(".bin")


def _layer_shape(config: ModelConfig, suffix: str) -> tuple[int, ...]:
    return config.tensor_shapes()["layers.0." + suffix]


def _plan(config: ModelConfig, version: int) -> list[tuple[str, tuple[int, ...]]]:
    """The file's float32 sections in order: (name, shape), stacked over layers for per-layer ones.

    Stacked names have no layer index ("stack:attention.wq"); ``rope:cos``/``rope:sin``
    are v0's unused tables.
    """
    L, V = config.n_layers, config.vocab_size
    stack = lambda suffix: ("stack:" + suffix, (L, *_layer_shape(config, suffix)))  # noqa: E731
    if version == 0:
        plan = [("tok_embeddings", (V, config.dim))]
        plan += [stack(s) for s in _V0_LAYER_ORDER]
        plan += [("norm", (config.dim,)),
                 ("rope:cos", (config.max_seq_len, config.head_dim // 2)),
                 ("rope:sin", (config.max_seq_len, config.head_dim // 2))]
    else:
        plan = [stack(s) for s in _V1_NORMS] + [("norm", (config.dim,)), ("tok_embeddings", (V, config.dim))]
        plan += [stack(s) for s in _V1_MATRICES]
    if not config.tie_embeddings:
        plan.append(("output", (V, config.dim)))
    return plan


def _config_from_header(f: MappedFile, values: tuple[int, ...], shared: bool, field_prefix: str) -> ModelConfig:
    for name, value in zip(HEADER_FIELDS, values):
        limit = _LIMITS[name]
        v = abs(value) if name == "vocab_size" else value
        if not 0 < v <= limit:
            raise f.error(f"{field_prefix}.{name}", f"must be in 1..{limit}, got {value}")
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = values
    try:
        return ModelConfig(dim, hidden, n_layers, n_heads, n_kv, abs(vocab), seq_len, rope_layout="interleaved",
                           tie_embeddings=shared, stop_ids=(1, 2))  # run.c stops on BOS too
    except ValueError as e:
        raise f.error(field_prefix, str(e)) from None


def read_llama2c(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """(config, weights by canonical name) as zero-copy float32 views of the mapped file."""
    f = MappedFile(path)
    (first,) = f.unpack("<I", 0, "header.magic")
    if first == MAGIC:
        (version,) = f.unpack("<i", 4, "header.version")
        if version != 1:
            raise f.error("header.version", f"version {version} is not supported (lumi reads llama2.c v0 and v1 fp32)")
        values = f.unpack("<7i", 8, "header")
        (shared,) = f.unpack("<B", 36, "header.shared_classifier")
        if shared not in (0, 1):
            raise f.error("header.shared_classifier", f"must be 0 or 1, got {shared}")
        if values[5] < 0:
            raise f.error("header.vocab_size", f"must be positive in a v1 file, got {values[5]}")
        config = _config_from_header(f, values, bool(shared), "header")
        offset = V1_HEADER_BYTES
    else:
        values = f.unpack("<7i", 0, "header")
        config = _config_from_header(f, values, values[5] > 0, "header")
        offset, version = 4 * len(HEADER_FIELDS), 0

    plan = _plan(config, version)
    expected = offset + 4 * sum(int(np.prod(shape, dtype=np.int64)) for _, shape in plan)
    if expected != f.size:
        kind = "v0" if version == 0 else "v1"
        raise f.error(None, f"a {kind} checkpoint with this header ({', '.join(f'{n}={v}' for n, v in zip(HEADER_FIELDS, values))}) "
                            f"is {expected} bytes, the file has {f.size} (truncated, or not a llama2.c checkpoint)")
    weights: dict[str, np.ndarray] = {}
    for name, shape in plan:
        a = f.array(offset, "<f4", shape, name)
        offset += a.nbytes
        if name.startswith("stack:"):
            for i in range(config.n_layers):
                weights[f"layers.{i}.{name[6:]}"] = a[i]
        elif not name.startswith("rope:"):
            weights[name] = a
    return config, weights


def write_llama2c(path: str | os.PathLike, config: ModelConfig, weights: dict, version: int = 0) -> None:
    """Write weights as a llama2.c v0 or v1 checkpoint (atomically: a temporary file, then a rename)."""
    if config.rope_layout != "interleaved":
        raise ValueError("llama2.c checkpoints use interleaved RoPE; this config uses " + config.rope_layout)
    if config.attention_bias:
        raise ValueError("llama2.c checkpoints have no attention biases")
    if version not in (0, 1):
        raise ValueError(f"version must be 0 or 1, got {version}")
    path = os.fspath(path)
    values = (config.dim, config.hidden_dim, config.n_layers, config.n_heads, config.n_kv_heads,
              config.vocab_size if (config.tie_embeddings or version == 1) else -config.vocab_size,
              config.max_seq_len)
    tmp = path + ".tmp"
    with open(tmp, "wb") as out:
        if version == 1:
            header = struct.pack("<Ii7iB", MAGIC, 1, *values, int(config.tie_embeddings))
            out.write(header + b"\0" * (V1_HEADER_BYTES - len(header)))
        else:
            out.write(struct.pack("<7i", *values))
        cos = sin = None
        for name, shape in _plan(config, version):
            if name.startswith("stack:"):
                parts = [weights[f"layers.{i}.{name[6:]}"] for i in range(config.n_layers)]
            elif name.startswith("rope:"):
                if cos is None:  # what export.py stores; run.c never reads it
                    cos, sin = _rope_tables(config)
                parts = [cos if name == "rope:cos" else sin]
            else:
                parts = [weights[name]]
            for a in parts:
                out.write(memoryview(np.ascontiguousarray(a, dtype="<f4")).cast("B"))
    os.replace(tmp, path)


def _rope_tables(config: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """export.py's freq_cis_real and freq_cis_imag: cos and sin of pos * theta^(-2i/hd), (max_seq_len, hd/2)."""
    hd = config.head_dim
    inv_freq = np.float32(config.rope_theta) ** -(np.arange(0, hd, 2, dtype=np.float32) / np.float32(hd))
    angles = np.arange(config.max_seq_len, dtype=np.float32)[:, None] * inv_freq[None, :]
    return np.cos(angles), np.sin(angles)
