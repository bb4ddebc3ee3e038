"""Hugging Face model directories: ``config.json`` plus safetensors weights.

Read: ``config.json`` and either ``model.safetensors`` or shards listed by
``model.safetensors.index.json`` (``weight_map``: tensor name -> shard file).
Architectures ``LlamaForCausalLM`` (Llama 2/3, TinyLlama) and
``Qwen2ForCausalLM`` (q/k/v biases). Hugging Face stores q/k rows in
rotate-half order, so the config says ``rope_layout="half"`` and no rows are
permuted on read; every tensor stays a zero-copy view of its shard's memory map,
in its stored dtype. ``auto_map`` / custom code in a config is never acted on,
and ``pytorch_model.bin`` (a pickle) is never opened.

Write: :func:`write_hf_dir` makes such a directory (single file or shards)
from any ``(config, weights)``, permuting an interleaved-RoPE model's q/k rows
into half order exactly as transformers' ``convert_llama_weights_to_hf.py``
does.

Non-finite weights: the small 1-D tensors (norms, biases) are scanned for
NaN/Inf on load and each bad one is reported with a :class:`NonFiniteWeightWarning`
naming the tensor and file; the matrices are not scanned (that would read the
whole checkpoint at load time).
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np

from ..config import ModelConfig
from ..errors import CheckpointError, UsageError
from ..storage import BF16, STORAGE_DTYPES, BlockQ8, to_float32
from ._io import NonFiniteWeightWarning, MappedFile, warn_non_finite  # noqa: F401 (re-exported)
from .safetensors import read_header, write_tensors

CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
JSON_LIMIT = 64 << 20  # config.json and the index are small; refuse to read a huge one
ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}
_LIMITS = dict(hidden_size=1 << 16, intermediate_size=1 << 18, num_hidden_layers=1 << 10,
               num_attention_heads=1 << 12, num_key_value_heads=1 << 12, vocab_size=1 << 22,
               max_position_embeddings=1 << 24)
# tensors a directory may hold that lumi has no use for (old Llama exports saved the RoPE frequencies)
_IGNORED_SUFFIXES = (".self_attn.rotary_emb.inv_freq",)
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.bin", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json")



# canonical suffix (within a layer) -> Hugging Face name (within model.layers.N.)
_LAYER_NAMES = {
    "attention_norm": "input_layernorm.weight",
    "attention.wq": "self_attn.q_proj.weight",
    "attention.wk": "self_attn.k_proj.weight",
    "attention.wv": "self_attn.v_proj.weight",
    "attention.bq": "self_attn.q_proj.bias",
    "attention.bk": "self_attn.k_proj.bias",
    "attention.bv": "self_attn.v_proj.bias",
    "attention.wo": "self_attn.o_proj.weight",
    "ffn_norm": "post_attention_layernorm.weight",
    "feed_forward.w1": "mlp.gate_proj.weight",
    "feed_forward.w2": "mlp.down_proj.weight",
    "feed_forward.w3": "mlp.up_proj.weight",
}
_TOP_NAMES = {"tok_embeddings": "model.embed_tokens.weight", "norm": "model.norm.weight", "output": "lm_head.weight"}


def hf_name(canonical: str) -> str:
    """'layers.3.attention.wq' -> 'model.layers.3.self_attn.q_proj.weight'."""
    if canonical.startswith("layers."):
        _, index, suffix = canonical.split(".", 2)
        return f"model.layers.{index}.{_LAYER_NAMES[suffix]}"
    return _TOP_NAMES[canonical]


def is_hf(spec: str | os.PathLike) -> bool:
    """A directory (a Hugging Face model folder), or a ``.safetensors`` file inside one."""
    spec = os.fspath(spec)
    return os.path.isdir(spec) or spec.endswith(".safetensors")


# ----------------------------------------------------------------------------
# config.json


def _read_json(path: str, what: str) -> dict:
    f = MappedFile(path)
    if f.size > JSON_LIMIT:
        raise CheckpointError(path, None, f"{f.size} bytes is too large for a {what} (limit {JSON_LIMIT})")
    try:
        value = json.loads(bytes(f.buffer[: f.size]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(path, None, f"not valid JSON: {str(e).splitlines()[0]}") from None
    if not isinstance(value, dict):
        raise CheckpointError(path, None, f"must be a JSON object, got {type(value).__name__}")
    return value


def _int(path, cfg: dict, key: str, default=None) -> int:
    value = cfg.get(key, default)
    if value is None:
        raise CheckpointError(path, key, "missing (required)")
    if not isinstance(value, int) or isinstance(value, bool):
        raise CheckpointError(path, key, f"must be an integer, got {value!r}")
    limit = _LIMITS.get(key)
    if limit is not None and not 0 < value <= limit:
        raise CheckpointError(path, key, f"must be in 1..{limit}, got {value}")
    return value


def _float(path, cfg: dict, key: str, default: float) -> float:
    value = cfg.get(key, default)
    if value is None:
        value = default
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not np.isfinite(value) or value <= 0:
        raise CheckpointError(path, key, f"must be a positive number, got {value!r}")
    return float(value)


def _token_ids(path, key: str, value, vocab: int) -> list[int]:
    values = value if isinstance(value, list) else [value]
    for v in values:
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < vocab:
            raise CheckpointError(path, key, f"must be a token id in 0..{vocab - 1} (or a list of them), got {value!r}")
    return values


def _check_rope(path, key: str, value) -> tuple[float, float, float, int] | None:
    """rope_scaling / rope_parameters: plain RoPE (None) or Llama 3's scaling; anything else is refused by name."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise CheckpointError(path, key, f"must be an object or null, got {value!r}")
    kind = value.get("rope_type", value.get("type", "default"))
    if kind == "default":
        return None
    if kind != "llama3":
        raise CheckpointError(path, key, f"rope_type {kind!r} is not supported yet "
                                         f"(lumi computes plain and llama3 RoPE only, and would give wrong answers)")
    fields = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    values = []
    for field in fields:
        v = value.get(field)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not np.isfinite(v) or v <= 0:
            raise CheckpointError(path, f"{key}.{field}", f"must be a positive number, got {v!r}")
        values.append(v)
    if not (values[0] >= 1 and values[1] < values[2]) or values[3] != int(values[3]):
        raise CheckpointError(path, key, f"needs factor >= 1, low_freq_factor < high_freq_factor and an integer "
                                         f"original_max_position_embeddings, got {value!r}")
    return (float(values[0]), float(values[1]), float(values[2]), int(values[3]))


def config_from_hf(cfg: dict, path: str, generation: dict | None = None) -> ModelConfig:
    """ModelConfig from a parsed config.json (``path`` names it in errors). Never runs code."""
    archs = cfg.get("architectures")
    if archs is None and cfg.get("model_type") in ARCHITECTURES.values():
        archs = [a for a, t in ARCHITECTURES.items() if t == cfg["model_type"]]
    if not isinstance(archs, list) or len(archs) != 1 or archs[0] not in ARCHITECTURES:
        note = " (auto_map / custom code is never run)" if "auto_map" in cfg else ""
        raise CheckpointError(path, "architectures", f"{archs!r} is not supported (lumi reads "
                                                      f"{', '.join(ARCHITECTURES)}){note}")
    arch = archs[0]
    if cfg.get("hidden_act", "silu") != "silu":
        raise CheckpointError(path, "hidden_act", f"{cfg['hidden_act']!r} is not supported (lumi computes SwiGLU with silu)")
    rope_parameters = cfg.get("rope_parameters")  # transformers >= 5 moves rope_theta (and the scaling) here
    rope_scaling = _check_rope(path, "rope_scaling", cfg.get("rope_scaling")) or \
        _check_rope(path, "rope_parameters", rope_parameters)
    if arch == "LlamaForCausalLM":
        if cfg.get("attention_bias", False) is not False:
            raise CheckpointError(path, "attention_bias", "Llama's attention_bias also biases o_proj, "
                                                          "which lumi does not model (not supported)")
        if cfg.get("mlp_bias", False) is not False:
            raise CheckpointError(path, "mlp_bias", "MLP biases are not supported")
        bias = False
    else:
        if cfg.get("use_sliding_window", False) is not False:
            raise CheckpointError(path, "use_sliding_window", "sliding-window attention is not supported")
        bias = True
    layer_types = cfg.get("layer_types")
    if layer_types is not None and (not isinstance(layer_types, list) or set(layer_types) - {"full_attention"}):
        raise CheckpointError(path, "layer_types", "only full_attention layers are supported")

    dim = _int(path, cfg, "hidden_size")
    n_heads = _int(path, cfg, "num_attention_heads")
    n_kv = _int(path, cfg, "num_key_value_heads", n_heads)
    head_dim = cfg.get("head_dim")
    if head_dim is not None and head_dim != dim // n_heads:
        raise CheckpointError(path, "head_dim", f"{head_dim!r} differs from hidden_size / num_attention_heads = "
                                                f"{dim // n_heads} (not supported)")
    vocab = _int(path, cfg, "vocab_size")
    theta = cfg.get("rope_theta")
    if theta is None and isinstance(rope_parameters, dict):
        theta = rope_parameters.get("rope_theta")
    rope_theta = _float(path, {"rope_theta": theta}, "rope_theta", 10000.0)
    tie = cfg.get("tie_word_embeddings", False)
    if not isinstance(tie, bool):
        raise CheckpointError(path, "tie_word_embeddings", f"must be true or false, got {tie!r}")

    bos = cfg.get("bos_token_id")
    bos_id = 1 if bos is None else _token_ids(path, "bos_token_id", bos, vocab)[0]
    stop: list[int] = []
    for source, where in ((cfg, path), (generation or {}, os.path.join(os.path.dirname(path), GENERATION_CONFIG))):
        eos = source.get("eos_token_id")
        if eos is not None:
            stop += [i for i in _token_ids(where, "eos_token_id", eos, vocab) if i not in stop]
    try:
        return ModelConfig(
            dim=dim, hidden_dim=_int(path, cfg, "intermediate_size"), n_layers=_int(path, cfg, "num_hidden_layers"),
            n_heads=n_heads, n_kv_heads=n_kv, vocab_size=vocab, max_seq_len=_int(path, cfg, "max_position_embeddings"),
            norm_eps=_float(path, cfg, "rms_norm_eps", 1e-6), rope_theta=rope_theta, rope_layout="half",
            rope_scaling=rope_scaling,
            attention_bias=bias, tie_embeddings=tie, bos_id=bos_id, stop_ids=tuple(stop) if stop else (2,))
    except ValueError as e:
        raise CheckpointError(path, None, str(e)) from None


def config_to_hf(config: ModelConfig, torch_dtype: str) -> dict:
    """config.json for ``config`` (Qwen2 when it has attention biases, else Llama); half-layout RoPE."""
    qwen = config.attention_bias
    eos = list(config.stop_ids)
    cfg = {
        "architectures": ["Qwen2ForCausalLM" if qwen else "LlamaForCausalLM"],
        "model_type": "qwen2" if qwen else "llama",
        "hidden_size": config.dim,
        "intermediate_size": config.hidden_dim,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "rope_scaling": None if config.rope_scaling is None else dict(
            zip(("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
                config.rope_scaling), rope_type="llama3"),
        "hidden_act": "silu",
        "tie_word_embeddings": config.tie_embeddings,
        "bos_token_id": config.bos_id,
        "eos_token_id": eos[0] if len(eos) == 1 else eos,
        "torch_dtype": torch_dtype,
    }
    if qwen:
        cfg["use_sliding_window"] = False
    else:
        cfg["attention_bias"] = False
        cfg["mlp_bias"] = False
    return cfg


# ----------------------------------------------------------------------------
# reading


def _shard_name(index_path: str, name: str, value) -> str:
    if not isinstance(value, str) or not value.endswith(".safetensors") or os.path.basename(value) != value \
            or value.startswith("."):
        raise CheckpointError(index_path, f"weight_map[{name!r}]",
                              f"must name a .safetensors file in the same directory, got {value!r}")
    return value


def read_hf(spec: str | os.PathLike) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """(config, weights by canonical name) from a Hugging Face model directory (or a .safetensors file in one).

    Weights are read-only zero-copy views of the shards' memory maps, in their stored dtype.
    """
    spec = os.fspath(spec)
    folder = spec if os.path.isdir(spec) else os.path.dirname(spec) or "."
    if not os.path.exists(spec):
        raise CheckpointError(spec, None, "no such file or directory")
    config_path = os.path.join(folder, CONFIG)
    if not os.path.isfile(config_path):
        raise CheckpointError(folder, CONFIG, "not found: a Hugging Face model directory needs config.json")
    cfg = _read_json(config_path, "config.json")
    generation_path = os.path.join(folder, GENERATION_CONFIG)
    generation = _read_json(generation_path, GENERATION_CONFIG) if os.path.isfile(generation_path) else None
    config = config_from_hf(cfg, config_path, generation)

    # which files hold which tensors
    single, index_path = os.path.join(folder, SINGLE), os.path.join(folder, INDEX)
    if os.path.isfile(single):
        shards, weight_map = [SINGLE], None
    elif os.path.isfile(index_path):
        index = _read_json(index_path, "safetensors index")
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(index_path, "weight_map", "must be a non-empty object of tensor name -> shard file")
        weight_map = {n: _shard_name(index_path, n, s) for n, s in weight_map.items()}
        shards = sorted(set(weight_map.values()))
        for shard in shards:
            if not os.path.isfile(os.path.join(folder, shard)):
                name = next(n for n, s in weight_map.items() if s == shard)
                raise CheckpointError(index_path, f"weight_map[{name!r}]", f"shard {shard} does not exist")
    else:
        pickled = [n for n in ("pytorch_model.bin", "pytorch_model.bin.index.json") if os.path.exists(os.path.join(folder, n))]
        why = f" ({pickled[0]} is a pickle, which lumi never loads: convert it to safetensors)" if pickled else ""
        raise CheckpointError(folder, SINGLE, f"not found, nor {INDEX}{why}")

    tensors: dict[str, np.ndarray] = {}
    where: dict[str, str] = {}
    for shard in shards:
        f = MappedFile(os.path.join(folder, shard))
        entries, _, start = read_header(f)
        for name, (dtype, shape, begin, _) in entries.items():
            if name in where:
                raise CheckpointError(f.path, f"header[{name!r}]", f"tensor also in {where[name]} (appears twice)")
            if weight_map is not None and weight_map.get(name) != shard:
                listed = f"maps it to {weight_map[name]}" if name in weight_map else "does not list it"
                raise CheckpointError(index_path, f"weight_map[{name!r}]", f"the tensor is in {shard}, but the index {listed}")
            tensors[name] = f.array(start + begin, dtype, shape, f"header[{name!r}]")
            where[name] = f.path
    if weight_map is not None:
        for name, shard in weight_map.items():
            if name not in tensors:
                raise CheckpointError(index_path, f"weight_map[{name!r}]", f"tensor not found in shard {shard}")

    # canonical names; shapes must agree with config.json
    weights: dict[str, np.ndarray] = {}
    wanted = {}
    missing = []
    for canonical, shape in config.tensor_shapes().items():
        name = hf_name(canonical)
        wanted[name] = canonical
        if name not in tensors:
            missing.append(name)
            continue
        a = tensors[name]
        if a.shape != shape:
            raise CheckpointError(where[name], name, f"has shape {list(a.shape)}, but config.json needs {list(shape)} "
                                                     f"(the config disagrees with the weights)")
        weights[canonical] = a
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise CheckpointError(folder, missing[0], f"tensor missing from the checkpoint: {', '.join(missing[:3])}{more}")
    for name in tensors:
        if name in wanted or name.endswith(_IGNORED_SUFFIXES) or (name == "lm_head.weight" and config.tie_embeddings):
            continue
        raise CheckpointError(where[name], name, "unexpected tensor for this architecture (a variant lumi does not "
                                                 "model, or a config that disagrees with the weights)")
    warn_non_finite(weights, lambda c: where[hf_name(c)], hf_name)
    return config, weights


# ----------------------------------------------------------------------------
# writing


def permute_half(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Rows of q or k (or their bias) from interleaved-RoPE order to rotate-half order, per head.

    transformers' convert_llama_weights_to_hf.py ``permute``:
    ``w.view(n_heads, dim1 // n_heads // 2, 2, dim2).transpose(1, 2).reshape(dim1, dim2)``.
    """
    dim1 = w.shape[0]
    rest = w.shape[1:]
    return np.ascontiguousarray(w.reshape(n_heads, dim1 // n_heads // 2, 2, *rest).swapaxes(1, 2).reshape(w.shape))


def _target(a, dtype: str | None) -> np.dtype:
    if dtype is not None:
        return STORAGE_DTYPES[dtype]
    stored = getattr(a, "dtype", None)
    if isinstance(a, BlockQ8) or stored not in (np.dtype(np.float32), np.dtype(np.float16), BF16):
        return np.dtype(np.float32)  # int8 blocks and anything else: written dequantized
    return np.dtype(stored)


def write_hf_dir(path: str | os.PathLike, config: ModelConfig, weights: dict, dtype: str | None = None,
                 shard_bytes: int | None = None) -> None:
    """Write a Hugging Face model directory: config.json + model.safetensors, or shards + index.

    ``path`` must not exist or be an empty directory; the directory is built beside it and renamed
    into place, so it appears whole or not at all. ``dtype`` ("fp32" | "fp16" | "bf16") converts every
    tensor; None keeps each tensor's stored dtype (int8 blocks are written as float32). An
    interleaved-RoPE model's q/k rows are permuted into half order, and the config says so.
    """
    if dtype is not None and dtype not in ("fp32", "fp16", "bf16"):
        why = "int8 blocks have no safetensors form that transformers reads" if dtype == "int8" else "unknown dtype"
        raise UsageError("--dtype", f"{dtype!r}: {why}; choose fp32, fp16 or bf16")
    if shard_bytes is not None and shard_bytes <= 0:
        raise ValueError(f"shard_bytes must be positive, got {shard_bytes}")
    path = os.fspath(path).rstrip(os.sep) or os.sep
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise FileExistsError(f"{path} exists and is not an empty directory")
    shapes = config.tensor_shapes()
    missing = [n for n in shapes if n not in weights]
    if missing:
        raise ValueError(f"weights missing: {', '.join(missing[:5])}")
    permute = config.rope_layout == "interleaved"

    entries = []  # (hf name, dtype, shape, make)
    for canonical, shape in shapes.items():
        a = weights[canonical]
        if tuple(a.shape) != shape:
            raise ValueError(f"weight {canonical} has shape {tuple(a.shape)}, config needs {shape}")
        target = _target(a, dtype)
        heads = {"attention.wq": config.n_heads, "attention.bq": config.n_heads,
                 "attention.wk": config.n_kv_heads, "attention.bk": config.n_kv_heads}.get(canonical.split(".", 2)[-1])

        def make(a=a, target=target, heads=heads):
            w = a if getattr(a, "dtype", None) == target and not isinstance(a, BlockQ8) else to_float32(a).astype(target)
            return permute_half(w, heads) if permute and heads else w

        entries.append((hf_name(canonical), target, shape, make))

    counts: dict[np.dtype, int] = {}
    for _, target, shape, _ in entries:
        counts[target] = counts.get(target, 0) + int(np.prod(shape)) * target.itemsize
    torch_dtype = {np.dtype(np.float32): "float32", np.dtype(np.float16): "float16", BF16: "bfloat16"}[
        max(counts, key=counts.get)]

    groups = [entries]
    if shard_bytes is not None:
        groups, size = [[]], 0
        for e in entries:
            n = int(np.prod(e[2])) * e[1].itemsize
            if groups[-1] and size + n > shard_bytes:
                groups.append([])
                size = 0
            groups[-1].append(e)
            size += n

    parent = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(parent, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    os.makedirs(tmp)
    try:
        with open(os.path.join(tmp, CONFIG), "w") as out:
            json.dump(config_to_hf(config.replace(rope_layout="half"), torch_dtype), out, indent=2)
            out.write("\n")
        metadata = {"format": "pt"}  # what transformers checks before loading with safetensors
        if shard_bytes is None:
            write_tensors(os.path.join(tmp, SINGLE), entries, metadata)
        else:
            weight_map = {}
            for i, group in enumerate(groups, 1):
                name = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
                write_tensors(os.path.join(tmp, name), group, metadata)
                weight_map.update({e[0]: name for e in group})
            total = sum(int(np.prod(e[2])) * e[1].itemsize for e in entries)
            with open(os.path.join(tmp, INDEX), "w") as out:
                json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, out,
                          indent=2)
                out.write("\n")
        if os.path.isdir(path):
            os.rmdir(path)  # empty (checked above); rename cannot replace a directory on every platform
        os.rename(tmp, path)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)


def copy_tokenizer_files(src_folder: str, dst_folder: str, names=TOKENIZER_FILES) -> list[str]:
    """Copy those of ``names`` found in ``src_folder`` (tokenizer files and their configs); their names."""
    copied = []
    for name in names:
        source = os.path.join(src_folder, name)
        if os.path.isfile(source):
            shutil.copyfile(source, os.path.join(dst_folder, name))
            copied.append(name)
    return copied
