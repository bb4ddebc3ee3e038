"""GGUF checkpoints (llama.cpp's format) for ``general.architecture == "llama"``.

Layout, little-endian (versions 2 and 3)::

    "GGUF"  uint32 version  uint64 tensor_count  uint64 kv_count
    kv_count x (string key, uint32 value_type, value)
        string: uint64 length, UTF-8 bytes
        array:  uint32 element_type, uint64 count, count x element
    tensor_count x (string name, uint32 n_dims, n_dims x uint64 dim,
                    uint32 ggml_type, uint64 offset)
    padding to general.alignment (default 32), then the tensor data; each
    offset is relative to that start and a multiple of the alignment.

Dims are stored innermost first (ne0 = columns), so an (out, in) matrix has
dims [in, out]. llama.cpp's converter permutes Hugging Face's q/k rows back to
Meta's order, so GGUF llama models use interleaved RoPE.

The whole header is parsed and checked here, against the file's size, before
any array is made: counts bounded by what the file could hold, every string
and array inside the file, known value and tensor types, dims >= 1 with no
overflow, aligned offsets, tensors inside the file and not overlapping (the
cases behind the 2024 GGUF parser CVEs). The ``gguf`` package's reader is not
used; this module needs only NumPy.

Tensors come back as stored: F32, F16 and BF16 as zero-copy read-only views of
the mapped file; Q8_0 and Q4_0 as ``BlockQ8`` (see :func:`read_gguf`).
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from ..config import ModelConfig
from ..storage import BF16, BlockQ8
from ._io import MappedFile

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_KEY_BYTES = 1 << 16  # far above any real key; llama.cpp's own keys are < 64 bytes
MAX_TENSOR_NAME_BYTES = 1 << 10  # ggml caps names at 64
MAX_NESTING = 4  # arrays of arrays of ...
MAX_DIMS = 4
_INT64_MAX = (1 << 63) - 1

# Metadata value types: id -> (name, struct format or None, smallest encoded size in bytes)
STRING, ARRAY = 8, 9
VALUE_TYPES: dict[int, tuple[str, str | None, int]] = {
    0: ("uint8", "<B", 1), 1: ("int8", "<b", 1), 2: ("uint16", "<H", 2), 3: ("int16", "<h", 2),
    4: ("uint32", "<I", 4), 5: ("int32", "<i", 4), 6: ("float32", "<f", 4), 7: ("bool", "<B", 1),
    8: ("string", None, 8), 9: ("array", None, 12), 10: ("uint64", "<Q", 8), 11: ("int64", "<q", 8),
    12: ("float64", "<d", 8),
}
_INTEGER_TYPES = {0, 1, 2, 3, 4, 5, 10, 11}
_FLOAT_TYPES = {6, 12}

# ggml tensor types: id -> (name, elements per block, bytes per block), as in ggml.h / gguf-py's GGML_QUANT_SIZES
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40), 10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
}
F32, F16, Q4_0, Q8_0, BF16_TYPE = 0, 1, 2, 8, 30
SUPPORTED_TYPES = (F32, F16, BF16_TYPE, Q8_0, Q4_0)
_FLOAT_DTYPES = {F32: np.dtype("<f4"), F16: np.dtype("<f2"), BF16_TYPE: BF16}
_Q8_0_BLOCK = np.dtype([("d", "<f2"), ("qs", "i1", (32,))])  # 34 bytes
_Q4_0_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])  # 18 bytes: element j low nibble, j+16 high

# config fields: metadata key suffix (after "llama."), ModelConfig field, upper bound (far above any real model)
_CONFIG_KEYS = (
    ("embedding_length", "dim", 1 << 16),
    ("feed_forward_length", "hidden_dim", 1 << 18),
    ("block_count", "n_layers", 1 << 10),
    ("attention.head_count", "n_heads", 1 << 12),
    ("context_length", "max_seq_len", 1 << 24),
)
MAX_VOCAB = 1 << 22

# canonical name -> GGUF tensor name, per layer ("{i}") and global
_LAYER_NAMES = {
    "attention_norm": "attn_norm.weight",
    "attention.wq": "attn_q.weight",
    "attention.wk": "attn_k.weight",
    "attention.wv": "attn_v.weight",
    "attention.bq": "attn_q.bias",
    "attention.bk": "attn_k.bias",
    "attention.bv": "attn_v.bias",
    "attention.wo": "attn_output.weight",
    "ffn_norm": "ffn_norm.weight",
    "feed_forward.w1": "ffn_gate.weight",
    "feed_forward.w2": "ffn_down.weight",
    "feed_forward.w3": "ffn_up.weight",
}
_GLOBAL_NAMES = {"tok_embeddings": "token_embd.weight", "norm": "output_norm.weight", "output": "output.weight"}

# tokenizer.ggml.token_type values (llama.cpp's llama_token_type)
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6
TOKEN_TYPES = {TOKEN_NORMAL: "normal", TOKEN_UNKNOWN: "unknown", TOKEN_CONTROL: "control",
               TOKEN_USER_DEFINED: "user-defined", TOKEN_UNUSED: "unused", TOKEN_BYTE: "byte"}


def gguf_name(canonical: str) -> str:
    """The GGUF tensor name of a canonical weight name ("layers.3.attention.wq" -> "blk.3.attn_q.weight")."""
    if canonical in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[canonical]
    _, layer, suffix = canonical.split(".", 2)
    return f"blk.{layer}.{_LAYER_NAMES[suffix]}"


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # NumPy order, (out, in) for a matrix: the file's dims reversed
    ggml_type: int
    offset: int  # absolute offset in the file
    nbytes: int

    @property
    def type_name(self) -> str:
        return GGML_TYPES[self.ggml_type][0]


@dataclass(frozen=True)
class MetaValue:
    type: int  # GGUF value type; for arrays, ARRAY
    value: Any  # int, float, bool, bytes (strings), or for arrays a list / read-only ndarray
    element_type: int | None = None  # for arrays


@dataclass
class GGUFFile:
    """A GGUF file whose header has been fully checked against the file."""

    file: MappedFile
    version: int
    metadata: dict[str, MetaValue]
    tensors: dict[str, TensorInfo]
    alignment: int
    data_start: int

    @property
    def path(self) -> str:
        return self.file.path

    def error(self, field: str | None, problem: str):
        return self.file.error(field, problem)

    # typed metadata access: each raises a CheckpointError naming the key
    def _meta(self, key: str, default: Any, types, wanted: str):
        """The key's record, checked to be one of ``types``; None when it is absent and ``default`` is given."""
        meta = self.metadata.get(key)
        if meta is None:
            if default is ...:
                raise self.error(key, "missing (required for this model)")
            return None
        if meta.type not in types:
            raise self.error(key, f"must be {wanted}, got a {VALUE_TYPES[meta.type][0]}")
        return meta

    def get_int(self, key: str, default: Any = ..., lo: int | None = None, hi: int | None = None) -> int:
        meta = self._meta(key, default, _INTEGER_TYPES, "an integer")
        if meta is None:
            return default
        value = int(meta.value)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise self.error(key, f"must be in {lo}..{hi}, got {value}")
        return value

    def get_float(self, key: str, default: Any = ...) -> float:
        meta = self._meta(key, default, _FLOAT_TYPES | _INTEGER_TYPES, "a number")
        if meta is None:
            return default
        # a float32 as its shortest decimal (1e-05, not 9.99999974e-06): the value the writer meant
        value = float(str(np.float32(meta.value))) if meta.type == 6 else float(meta.value)
        if not math.isfinite(value):
            raise self.error(key, f"must be finite, got {value}")
        return value

    def get_str(self, key: str, default: Any = ...) -> str:
        meta = self._meta(key, default, {STRING}, "a string")
        if meta is None:
            return default
        try:
            return meta.value.decode("utf-8")
        except UnicodeDecodeError:
            raise self.error(key, "is not valid UTF-8") from None

    def get_bool(self, key: str, default: Any = ...) -> bool:
        meta = self._meta(key, default, {7}, "a bool")
        return default if meta is None else bool(meta.value)

    def get_array(self, key: str, element_types: set[int], default: Any = ...):
        wanted = "an array of " + " or ".join(sorted(VALUE_TYPES[t][0] for t in element_types))
        meta = self._meta(key, default, {ARRAY}, wanted)
        if meta is None:
            return default
        if meta.element_type not in element_types:
            raise self.error(key, f"must be {wanted}, got an array of {VALUE_TYPES[meta.element_type][0]}")
        return meta.value


class _Reader:
    """A cursor over the mapped file; every read is bounds-checked and names its field."""

    def __init__(self, f: MappedFile):
        self.f = f
        self.pos = 0

    def scalar(self, fmt: str, field: str):
        (value,) = self.f.unpack(fmt, self.pos, field)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self, field: str, limit: int | None = None) -> bytes:
        n = self.scalar("<Q", field + ".length")
        left = self.f.size - self.pos
        if limit is not None and n > limit:
            raise self.f.error(field, f"string length {n} exceeds the limit of {limit} bytes")
        if n > left:
            raise self.f.error(field, f"string length {n} runs past the end of the file ({left} bytes left)")
        value = bytes(self.f.buffer[self.pos : self.pos + n])
        self.pos += n
        return value

    def text(self, field: str, limit: int) -> str:
        """A string that must be UTF-8 (keys, tensor names)."""
        raw = self.string(field, limit)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.f.error(field, f"is not valid UTF-8: {raw[:40]!r}") from None

    def value(self, vtype: int, field: str, depth: int = 0) -> MetaValue:
        if vtype not in VALUE_TYPES:
            raise self.f.error(field, f"unknown value type {vtype} (known: 0..12)")
        name, fmt, _ = VALUE_TYPES[vtype]
        if fmt is not None:
            value = self.scalar(fmt, field)
            return MetaValue(vtype, bool(value) if vtype == 7 else value)
        if vtype == STRING:
            return MetaValue(vtype, self.string(field))
        # an array
        etype = self.scalar("<I", field + ".element_type")
        if etype not in VALUE_TYPES:
            raise self.f.error(field, f"unknown array element type {etype} (known: 0..12)")
        count = self.scalar("<Q", field + ".count")
        left = self.f.size - self.pos
        min_size = VALUE_TYPES[etype][2]
        if count > left // min_size:
            raise self.f.error(field, f"array of {count} {VALUE_TYPES[etype][0]} needs at least "
                                      f"{count * min_size} bytes, the file has {left} left")
        efmt = VALUE_TYPES[etype][1]
        if efmt is not None:  # numbers: one read-only view, no per-element Python objects
            dtype = np.dtype(efmt)
            values = self.f.array(self.pos, dtype, (count,), field)
            self.pos += count * dtype.itemsize
            if etype == 7:
                values = values != 0
            return MetaValue(ARRAY, values, etype)
        if etype == ARRAY and depth + 1 >= MAX_NESTING:
            raise self.f.error(field, f"arrays nested more than {MAX_NESTING} deep")
        items = [self.value(etype, f"{field}[{i}]", depth + 1).value if etype == STRING
                 else self.value(etype, f"{field}[{i}]", depth + 1) for i in range(count)]
        return MetaValue(ARRAY, items, etype)


def is_gguf(path: str | os.PathLike) -> bool:
    """A ``.gguf`` name, or a file that starts with the GGUF magic."""
    path = os.fspath(path)
    if path.lower().endswith(".gguf"):
        return True
    try:
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False


def read_gguf_header(path: str | os.PathLike) -> GGUFFile:
    """Parse and check the header (metadata and tensor infos) of a GGUF file; no tensor data is touched."""
    f = MappedFile(path)
    r = _Reader(f)
    f.check_range(0, 4, "header.magic")
    magic = bytes(f.buffer[0:4])
    if magic != MAGIC:
        raise f.error("header.magic", f"expected {MAGIC!r}, got {magic!r} (not a GGUF file)")
    r.pos = 4
    version = r.scalar("<I", "header.version")
    if version not in VERSIONS:
        hint = " (a big-endian file?)" if int.from_bytes(version.to_bytes(4, "little"), "big") in VERSIONS else ""
        raise f.error("header.version", f"version {version} is not supported (lumi reads GGUF 2 and 3){hint}")
    n_tensors = r.scalar("<Q", "header.tensor_count")
    n_kv = r.scalar("<Q", "header.metadata_kv_count")
    left = f.size - r.pos
    # smallest encodings: a KV is key length + type + 1 byte; a tensor info name length + n_dims + 1 dim + type + offset
    if n_kv > left // 13:
        raise f.error("header.metadata_kv_count", f"{n_kv} entries cannot fit in the {left} bytes after the header")
    if n_tensors > (left - 13 * n_kv) // 32:
        raise f.error("header.tensor_count", f"{n_tensors} tensors cannot fit in the {left} bytes after the header")

    metadata: dict[str, MetaValue] = {}
    for i in range(n_kv):
        key = r.text(f"metadata[{i}].key", MAX_KEY_BYTES)
        if key in metadata:
            raise f.error(key, "duplicate metadata key")
        vtype = r.scalar("<I", f"{key}.type")
        metadata[key] = r.value(vtype, key)

    alignment = DEFAULT_ALIGNMENT
    if "general.alignment" in metadata:
        meta = metadata["general.alignment"]
        if meta.type not in _INTEGER_TYPES:
            raise f.error("general.alignment", f"must be an integer, got a {VALUE_TYPES[meta.type][0]}")
        alignment = int(meta.value)
        if alignment <= 0 or alignment & (alignment - 1) or alignment > 1 << 20:
            raise f.error("general.alignment", f"must be a power of two up to 2^20, got {alignment}")

    infos: list[tuple[str, tuple[int, ...], int, int, int]] = []
    names: set[str] = set()
    for i in range(n_tensors):
        name = r.text(f"tensor[{i}].name", MAX_TENSOR_NAME_BYTES)
        if name in names:
            raise f.error(name, "duplicate tensor name")
        names.add(name)
        n_dims = r.scalar("<I", f"{name}.n_dims")
        if not 1 <= n_dims <= MAX_DIMS:
            raise f.error(f"{name}.n_dims", f"must be in 1..{MAX_DIMS}, got {n_dims}")
        dims = [r.scalar("<Q", f"{name}.dims[{d}]") for d in range(n_dims)]
        count = 1
        for d, n in enumerate(dims):
            if n < 1:
                raise f.error(f"{name}.dims[{d}]", f"must be >= 1, got {n}")
            count *= n  # Python ints: no wrap-around; checked below
        if count > _INT64_MAX:
            raise f.error(f"{name}.dims", f"element count {' x '.join(map(str, dims))} overflows int64")
        ggml_type = r.scalar("<I", f"{name}.type")
        if ggml_type not in GGML_TYPES:
            raise f.error(f"{name}.type", f"unknown ggml type {ggml_type}")
        type_name, block, block_bytes = GGML_TYPES[ggml_type]
        if dims[0] % block:
            raise f.error(f"{name}.dims[0]", f"{type_name} needs rows of a multiple of {block} elements, got {dims[0]}")
        nbytes = count // block * block_bytes
        if nbytes > f.size:
            raise f.error(f"{name}.dims", f"{' x '.join(map(str, dims))} {type_name} is {nbytes} bytes, "
                                          f"more than the whole file ({f.size})")
        offset = r.scalar("<Q", f"{name}.offset")
        if offset % alignment:
            raise f.error(f"{name}.offset", f"{offset} is not a multiple of the alignment {alignment}")
        infos.append((name, tuple(reversed(dims)), ggml_type, offset, nbytes))

    data_start = -(-r.pos // alignment) * alignment
    tensors: dict[str, TensorInfo] = {}
    for name, shape, ggml_type, offset, nbytes in infos:
        start = data_start + offset
        if start + nbytes > f.size:
            raise f.error(f"{name}.offset", f"data at bytes {start}..{start + nbytes} runs past the end of the file "
                                            f"({f.size} bytes; truncated or corrupt)")
        tensors[name] = TensorInfo(name, shape, ggml_type, start, nbytes)
    previous = None
    for info in sorted(tensors.values(), key=lambda t: t.offset):
        if previous is not None and info.offset < previous.offset + previous.nbytes:
            end, previous_end = info.offset + info.nbytes, previous.offset + previous.nbytes
            raise f.error(f"{info.name}.offset", f"data at bytes {info.offset}..{end} overlaps "
                                                 f"{previous.name} ({previous.offset}..{previous_end})")
        previous = info
    return GGUFFile(f, version, metadata, tensors, alignment, data_start)


def _config(g: GGUFFile) -> ModelConfig:
    arch = g.get_str("general.architecture")
    if arch != "llama":
        raise g.error("general.architecture", f"{arch!r} is not supported (lumi reads GGUF 'llama' models)")
    values = {field: g.get_int("llama." + key, lo=1, hi=limit) for key, field, limit in _CONFIG_KEYS}
    values["n_kv_heads"] = g.get_int("llama.attention.head_count_kv", values["n_heads"], lo=1, hi=1 << 12)
    embd = g.tensors.get("token_embd.weight")
    if embd is None:
        raise g.error("token_embd.weight", "missing (required for this model)")
    if len(embd.shape) != 2 or not 1 <= embd.shape[0] <= MAX_VOCAB:
        raise g.error("token_embd.weight", f"must be (vocab <= {MAX_VOCAB}, dim), got shape {embd.shape}")
    vocab = embd.shape[0]
    declared = g.get_int("llama.vocab_size", vocab)
    if declared != vocab:
        raise g.error("llama.vocab_size", f"is {declared} but token_embd.weight has {vocab} rows")
    eps = g.get_float("llama.attention.layer_norm_rms_epsilon")
    theta = g.get_float("llama.rope.freq_base", 10000.0)
    scaling = g.get_str("llama.rope.scaling.type", "none")
    if scaling != "none" and g.get_float("llama.rope.scaling.factor", 1.0) != 1.0:
        raise g.error("llama.rope.scaling.type", f"RoPE scaling {scaling!r} is not supported")
    if "rope_freqs.weight" in g.tensors:
        raise g.error("rope_freqs.weight", "per-dimension RoPE frequency factors (Llama 3.1 scaling) are not supported")
    bos = g.get_int("tokenizer.ggml.bos_token_id", 1, lo=0, hi=vocab - 1)
    stops = [g.get_int("tokenizer.ggml.eos_token_id", 2, lo=0, hi=vocab - 1)]
    eot = g.get_int("tokenizer.ggml.eot_token_id", None, lo=0, hi=vocab - 1)
    if eot is not None and eot not in stops:
        stops.append(eot)
    try:
        config = ModelConfig(
            vocab_size=vocab, norm_eps=eps, rope_theta=theta, rope_layout="interleaved",
            attention_bias="blk.0.attn_q.bias" in g.tensors, tie_embeddings="output.weight" not in g.tensors,
            bos_id=bos, stop_ids=tuple(stops), **values,
        )
    except ValueError as e:
        raise g.error("llama", str(e)) from None
    rope_dims = g.get_int("llama.rope.dimension_count", config.head_dim)
    if rope_dims != config.head_dim:
        raise g.error("llama.rope.dimension_count", f"partial RoPE ({rope_dims} of {config.head_dim}) is not supported")
    return config


def _tensor(g: GGUFFile, info: TensorInfo):
    """One tensor as stored: a read-only view for float types, a BlockQ8 for Q8_0 / Q4_0."""
    if info.ggml_type in _FLOAT_DTYPES:
        return g.file.array(info.offset, _FLOAT_DTYPES[info.ggml_type], info.shape, info.name)
    if len(info.shape) != 2:
        raise g.error(f"{info.name}.type", f"{info.type_name} is supported for matrices only, got shape {info.shape}")
    rows, cols = info.shape
    n_blocks = cols // 32
    if info.ggml_type == Q8_0:
        blocks = g.file.array(info.offset, _Q8_0_BLOCK, (rows, n_blocks), info.name)
        q = np.ascontiguousarray(blocks["qs"]).reshape(rows, cols)
    else:
        blocks = g.file.array(info.offset, _Q4_0_BLOCK, (rows, n_blocks), info.name)
        q = np.empty((rows, n_blocks, 32), dtype=np.int8)
        step = max(1, (1 << 20) // cols)  # unpack a few MB at a time: temporaries stay small
        for r0 in range(0, rows, step):
            qs, out = blocks["qs"][r0 : r0 + step], q[r0 : r0 + step]
            np.bitwise_and(qs, np.uint8(0x0F), out=out[..., :16], casting="unsafe")
            np.right_shift(qs, np.uint8(4), out=out[..., 16:], casting="unsafe")
            out -= np.int8(8)
        q = q.reshape(rows, cols)
    scales = blocks["d"].astype(np.float32)
    q.flags.writeable = scales.flags.writeable = False
    return BlockQ8(q, scales)


def read_gguf(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, Any]]:
    """(config, weights by canonical name) from a GGUF llama model.

    F32 / F16 / BF16 tensors are zero-copy read-only views of the mapped file
    (float32, float16, ``lumi.storage.BF16``). Q8_0 and Q4_0 matrices become
    ``BlockQ8`` (int8 q (out, in), float32 scales (out, in/32)), exactly:
    Q8_0's q are the file's quants and its scales each block's fp16 d widened;
    Q4_0's nibbles are unpacked to q - 8 in -8..7 with the same d. Both are
    copies, and Q4_0 costs 1 byte per weight in lumi (twice its file size).
    Nothing is dequantised to float32.
    """
    g = read_gguf_header(path)
    config = _config(g)
    weights: dict[str, Any] = {}
    for canonical, shape in config.tensor_shapes().items():
        name = gguf_name(canonical)
        info = g.tensors.get(name)
        if info is None:
            raise g.error(name, f"missing (needed as {canonical})")
        if info.shape != shape:
            raise g.error(name, f"has shape {info.shape} (GGUF dims {list(reversed(info.shape))}), "
                                f"this config needs {shape}")
        if info.ggml_type not in SUPPORTED_TYPES:
            supported = ", ".join(GGML_TYPES[t][0] for t in SUPPORTED_TYPES)
            raise g.error(f"{name}.type", f"unsupported tensor type {info.type_name} (lumi reads {supported})")
        weights[canonical] = _tensor(g, info)
    return config, weights


class GGUFVocab(NamedTuple):
    """A GGUF file's sentencepiece-style vocabulary, every field checked (``read_gguf_vocab``)."""

    path: str
    tokens: list[bytes]  # UTF-8 pieces as stored, sentencepiece's '▁' included
    scores: list[float]  # merge priority, higher merges first
    types: list[int] | None  # each token's TOKEN_TYPES key, or None when the file records none
    bos_id: int
    eos_id: int


def read_gguf_vocab(path: str | os.PathLike, required: bool = True) -> GGUFVocab | None:
    """The sentencepiece-style vocabulary in a GGUF file's metadata (``tokenizer.ggml.model == "llama"``).

    With ``required=False`` a file with no tokenizer metadata gives None
    instead of an error. ``lumi.tokenizer.gguf_tokenizer`` encodes with it.
    """
    g = read_gguf_header(path)
    if not required and "tokenizer.ggml.model" not in g.metadata:
        return None
    model = g.get_str("tokenizer.ggml.model")
    if model != "llama":
        raise g.error("tokenizer.ggml.model", f"{model!r} is not supported (lumi reads 'llama' sentencepiece "
                                              f"vocabularies)")
    if not g.get_bool("tokenizer.ggml.add_space_prefix", True):
        raise g.error("tokenizer.ggml.add_space_prefix", "false is not supported (Llama's vocabulary adds one)")
    tokens = g.get_array("tokenizer.ggml.tokens", {STRING})
    n = len(tokens)
    if not 1 <= n <= MAX_VOCAB:
        raise g.error("tokenizer.ggml.tokens", f"must hold 1..{MAX_VOCAB} pieces, got {n}")
    scores = g.get_array("tokenizer.ggml.scores", _FLOAT_TYPES)
    if len(scores) != n:
        raise g.error("tokenizer.ggml.scores", f"has {len(scores)} entries for {n} tokens")
    if not np.all(np.isfinite(scores)):
        raise g.error("tokenizer.ggml.scores", "must be finite")
    types = g.get_array("tokenizer.ggml.token_type", _INTEGER_TYPES, None)
    if types is not None:
        if len(types) != n:
            raise g.error("tokenizer.ggml.token_type", f"has {len(types)} entries for {n} tokens")
        types = types.tolist()
        for i, t in enumerate(types):
            if t not in TOKEN_TYPES:
                raise g.error(f"tokenizer.ggml.token_type[{i}]", f"unknown token type {t} (known: 1..6)")
    bos = g.get_int("tokenizer.ggml.bos_token_id", 1, lo=0, hi=n - 1)
    eos = g.get_int("tokenizer.ggml.eos_token_id", 2, lo=0, hi=n - 1)
    return GGUFVocab(g.path, list(tokens), scores.tolist(), types, bos, eos)

