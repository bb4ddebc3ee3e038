"""safetensors files and Hugging Face model directories: the reader against the safetensors
library, conversion round trips, llama2.c == HF through the model, and malformed inputs
refused with one line naming the file and the field (under an address-space cap)."""

import json
import os
import struct
import warnings

import ml_dtypes
import numpy as np
import pytest
from memcap import assert_refused, load_under_cap

from lumi import generate
from lumi.cli import main
from lumi.config import PRESETS, ModelConfig
from lumi.errors import CheckpointError, UsageError
from lumi.formats.hf import NonFiniteWeightWarning, permute_half, read_hf, write_hf_dir
from lumi.formats.llama2c import read_llama2c, write_llama2c
from lumi.formats.safetensors import read_safetensors, write_safetensors
from lumi.formats.synthetic import synthetic_weights
from lumi.model import Model
from lumi.storage import BF16, to_float32

st_numpy = pytest.importorskip("safetensors.numpy")
from safetensors import safe_open  # noqa: E402

SMALL = PRESETS["stories260K"]  # interleaved RoPE, GQA (8 heads, 4 kv heads), tied
QWEN = ModelConfig(64, 160, 3, 8, 2, 300, 128, norm_eps=1e-6, rope_theta=1e6, rope_layout="half",
                   attention_bias=True, tie_embeddings=False, bos_id=5, stop_ids=(7, 9))
ST_LOADER = "lumi.formats.safetensors:read_safetensors"
HF_LOADER = "lumi.formats.hf:read_hf"


def _sample(rng) -> dict[str, np.ndarray]:
    return {
        "f32": rng.standard_normal((5, 7)).astype(np.float32),
        "f16": rng.standard_normal((3, 4, 2)).astype(np.float16),
        "bf16": rng.standard_normal((6, 3)).astype(ml_dtypes.bfloat16),
        "odd": rng.standard_normal(3).astype(np.float16),  # leaves the next tensor 2-byte aligned
        "scalar": np.array(1.5, dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.float32),
    }


def _bits(a: np.ndarray) -> np.ndarray:
    return np.require(a, requirements="C").reshape(-1).view(np.uint8)


@pytest.fixture
def hf_dispatch(monkeypatch):
    """``lumi.formats.load_checkpoint`` reading HF directories, until formats/__init__.py dispatches to read_hf."""
    import lumi.formats

    if not hasattr(lumi.formats, "read_hf"):
        original = lumi.formats.load_checkpoint
        monkeypatch.setattr(lumi.formats, "load_checkpoint",
                            lambda spec: read_hf(spec) if os.path.isdir(spec) else original(spec))


# ----------------------------------------------------------------------------
# the reader and writer against the safetensors library


def test_reader_reads_library_files_bit_for_bit(tmp_path):
    tensors = _sample(np.random.default_rng(0))
    path = tmp_path / "lib.safetensors"
    st_numpy.save_file(tensors, str(path), metadata={"format": "pt", "note": "x"})
    read, metadata = read_safetensors(path, with_metadata=True)
    assert metadata == {"format": "pt", "note": "x"}
    assert set(read) == set(tensors)
    for name, a in tensors.items():
        assert read[name].dtype == a.dtype and read[name].shape == a.shape, name
        assert np.array_equal(_bits(read[name]), _bits(a)), name
        assert not read[name].flags.writeable and read[name].base is not None  # a view of the map


def test_library_reads_writer_files_bit_for_bit(tmp_path):
    tensors = _sample(np.random.default_rng(1))
    path = tmp_path / "mine.safetensors"
    write_safetensors(path, tensors, metadata={"format": "pt"})
    loaded = st_numpy.load_file(str(path))
    for name, a in tensors.items():
        assert loaded[name].dtype == a.dtype and np.array_equal(_bits(loaded[name]), _bits(a)), name
    with safe_open(str(path), framework="numpy") as f:
        assert f.metadata() == {"format": "pt"}
        assert sorted(f.keys()) == sorted(tensors)
        for name in ("f32", "f16"):
            assert np.array_equal(_bits(f.get_tensor(name)), _bits(tensors[name]))
        assert np.array_equal(f.get_tensor("bf16").view(np.uint16), tensors["bf16"].view(np.uint16))
    # sorted order, data 8-aligned after the header, no temporary left behind
    (n,) = struct.unpack("<Q", path.read_bytes()[:8])
    header = json.loads(path.read_bytes()[8 : 8 + n])
    assert n % 8 == 0 and [k for k in header if k != "__metadata__"] == sorted(tensors)
    assert os.listdir(tmp_path) == ["mine.safetensors"]


def test_writer_refuses_other_dtypes(tmp_path):
    with pytest.raises(ValueError, match="int8"):
        write_safetensors(tmp_path / "x.safetensors", {"q": np.zeros(4, np.int8)})
    assert not os.listdir(tmp_path)


# ----------------------------------------------------------------------------
# Hugging Face directories


def _expected_hf(config, weights, name, dtype=None):
    """What a HF directory written from interleaved ``weights`` holds for canonical ``name``."""
    a = weights[name] if dtype is None else to_float32(weights[name]).astype(dtype)
    kind = name.split(".", 2)[-1]
    heads = {"attention.wq": config.n_heads, "attention.wk": config.n_kv_heads}.get(kind)
    return permute_half(a, heads) if heads and config.rope_layout == "interleaved" else a


def test_permute_matches_transformers_formula():
    # convert_llama_weights_to_hf.py: w.view(n_heads, dim1 // n_heads // 2, 2, dim2).transpose(1, 2).reshape(dim1, dim2)
    n_heads, hd, dim2 = 3, 8, 5
    w = np.arange(n_heads * hd * dim2, dtype=np.float32).reshape(n_heads * hd, dim2)
    out = permute_half(w, n_heads)
    for h in range(n_heads):
        for i in range(hd // 2):
            assert np.array_equal(out[h * hd + i], w[h * hd + 2 * i])  # first half: the even rows
            assert np.array_equal(out[h * hd + hd // 2 + i], w[h * hd + 2 * i + 1])  # second half: the odd rows


@pytest.mark.parametrize("dtype", [None, "bf16"])
@pytest.mark.parametrize("tied", [True, False])
def test_convert_round_trip_bit_for_bit(tmp_path, hf_dispatch, dtype, tied):
    config = SMALL.replace(tie_embeddings=tied)
    weights = synthetic_weights(config, seed=3)
    src = tmp_path / "m.bin"
    write_llama2c(src, config, weights)
    _write_tokenizer_bin(tmp_path / "tokenizer.bin", config.vocab_size)  # fits the model: copied
    (tmp_path / "tokenizer.model").write_bytes(b"not a sentencepiece model")  # unreadable: warned about, not copied
    dst = tmp_path / "hf"
    assert main(["convert", str(src), str(dst)] + (["--dtype", dtype] if dtype else [])) == 0
    assert (dst / "tokenizer.bin").read_bytes() == (tmp_path / "tokenizer.bin").read_bytes()
    assert not (dst / "tokenizer.model").exists()
    cfg = json.loads((dst / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["torch_dtype"] == ("bfloat16" if dtype else "float32")
    read_config, read = read_hf(dst)
    assert read_config == config.replace(rope_layout="half")
    assert set(read) == set(weights)
    target = BF16 if dtype == "bf16" else None
    for name in weights:
        expected = _expected_hf(config, weights, name, target)
        assert read[name].dtype == (BF16 if dtype else np.float32), name
        assert np.array_equal(_bits(read[name]), _bits(expected)), name
        assert not read[name].flags.writeable
    # HF -> HF keeps the stored dtype and layout: bit for bit again
    again = tmp_path / "hf2"
    (again).mkdir()  # an empty directory is a fine destination
    assert main(["convert", str(dst), str(again)]) == 0
    _, read2 = read_hf(again)
    for name in weights:
        assert np.array_equal(_bits(read2[name]), _bits(read[name])), name
    assert (again / "tokenizer.bin").exists()


def _write_tokenizer_bin(path, n):
    """A llama2.c tokenizer.bin of n pieces: <unk> <s> </s>, the 256 byte pieces, then text."""
    pieces = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{b:02X}>".encode() for b in range(256)]
    pieces += [f"p{i}".encode() for i in range(n - len(pieces))]
    with open(path, "wb") as f:
        f.write(struct.pack("<i", max(map(len, pieces))))
        for i, piece in enumerate(pieces):
            f.write(struct.pack("<fi", -float(i), len(piece)) + piece)


def test_convert_never_copies_a_tokenizer_that_does_not_fit(tmp_path, capsys):
    src = tmp_path / "m.bin"
    write_llama2c(src, SMALL, synthetic_weights(SMALL))
    _write_tokenizer_bin(tmp_path / "tokenizer.bin", 300)  # 300 pieces, the model has 512
    assert main(["convert", str(src), str(tmp_path / "hf")]) == 0
    assert "300 pieces, the model 512" in capsys.readouterr().err
    assert not (tmp_path / "hf" / "tokenizer.bin").exists()


def _greedy(model, prompt, n):
    gen = generate(model, prompt, n, ignore_eos=True)
    gen.run()
    return gen.generated_ids


def test_llama2c_and_hf_give_identical_greedy_ids_and_logits(tmp_path):
    config = SMALL.replace(tie_embeddings=False)
    weights = synthetic_weights(config, seed=11)
    write_llama2c(tmp_path / "m.bin", config, weights)
    assert main(["convert", str(tmp_path / "m.bin"), str(tmp_path / "hf")]) == 0
    a = Model(*read_llama2c(tmp_path / "m.bin"))
    hf_config, hf_weights = read_hf(tmp_path / "hf")
    b = Model(hf_config, {k: to_float32(v) for k, v in hf_weights.items()})
    prompt = [1, 17, 99, 300, 5]
    np.testing.assert_allclose(a.forward(np.array(prompt), 0), b.forward(np.array(prompt), 0), atol=1e-4, rtol=0)
    a.reset(), b.reset()
    ids = _greedy(a, prompt, 48)
    a.reset(), b.reset()
    assert _greedy(b, prompt, 48) == ids
    a.reset(), b.reset()
    full = np.array(prompt + ids)
    np.testing.assert_allclose(a.forward(full, 0), b.forward(full, 0), atol=1e-4, rtol=0)


def test_sharded_equals_unsharded(tmp_path):
    weights = synthetic_weights(SMALL, seed=2)
    write_hf_dir(tmp_path / "one", SMALL, weights, dtype="fp16")
    write_hf_dir(tmp_path / "many", SMALL, weights, dtype="fp16", shard_bytes=40_000)
    shards = sorted(p.name for p in (tmp_path / "many").glob("*.safetensors"))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((tmp_path / "many" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    assert index["metadata"]["total_size"] == sum(2 * a.size for a in weights.values())
    c1, w1 = read_hf(tmp_path / "one")
    c2, w2 = read_hf(tmp_path / "many")
    assert c1 == c2 and set(w1) == set(w2)
    for name in w1:
        assert w2[name].dtype == np.float16 and np.array_equal(_bits(w1[name]), _bits(w2[name])), name
    # the library reads every shard
    for shard in shards:
        for name, a in st_numpy.load_file(str(tmp_path / "many" / shard)).items():
            assert index["weight_map"][name] == shard


def test_qwen2_with_biases_loads_and_matches(tmp_path):
    weights = synthetic_weights(QWEN, seed=4)
    write_hf_dir(tmp_path / "qwen", QWEN, weights)
    cfg = json.loads((tmp_path / "qwen" / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen2ForCausalLM"] and cfg["eos_token_id"] == [7, 9]
    config, read = read_hf(tmp_path / "qwen")
    assert config == QWEN
    assert "model.layers.2.self_attn.k_proj.bias" in st_numpy.load_file(str(tmp_path / "qwen" / "model.safetensors"))
    for name, a in weights.items():
        assert np.array_equal(read[name], a), name  # half layout already: nothing permuted
    tokens = np.array([5, 1, 2, 299])
    np.testing.assert_array_equal(Model(QWEN, weights).forward(tokens, 0), Model(config, read).forward(tokens, 0))


def test_hf_config_mapping(tmp_path):
    weights = synthetic_weights(QWEN, seed=0)
    write_hf_dir(tmp_path / "q", QWEN, weights)
    path = tmp_path / "q" / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(eos_token_id=7, rope_scaling={"rope_type": "default"}, auto_map={"AutoModel": "x.Y"})
    del cfg["rope_theta"], cfg["num_key_value_heads"]  # defaults: 10000, n_heads
    path.write_text(json.dumps(cfg))
    (tmp_path / "q" / "generation_config.json").write_text(json.dumps({"eos_token_id": [9, 7, 11]}))
    # num_key_value_heads defaults to n_heads, so the k/v tensors now disagree with the config
    with pytest.raises(CheckpointError, match=r"model\.layers\.0\.self_attn\.k_proj\.(weight|bias).*disagrees"):
        read_hf(tmp_path / "q")
    cfg["num_key_value_heads"] = 2
    path.write_text(json.dumps(cfg))
    config, _ = read_hf(tmp_path / "q")
    assert config.rope_theta == 10000.0 and config.stop_ids == (7, 9, 11) and config.n_kv_heads == 2


def test_non_finite_norm_warns(tmp_path):
    weights = dict(synthetic_weights(QWEN, seed=0))
    weights["layers.1.ffn_norm"] = weights["layers.1.ffn_norm"].copy()
    weights["layers.1.ffn_norm"][3] = np.nan
    write_hf_dir(tmp_path / "q", QWEN, weights)
    with pytest.warns(NonFiniteWeightWarning, match=r"model\.layers\.1\.post_attention_layernorm\.weight"):
        read_hf(tmp_path / "q")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_hf_dir(tmp_path / "ok", QWEN, synthetic_weights(QWEN, seed=0))
        read_hf(tmp_path / "ok")


def test_convert_errors(tmp_path, capsys):
    write_llama2c(tmp_path / "m.bin", SMALL, synthetic_weights(SMALL))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert main(["convert", str(tmp_path / "m.bin"), str(tmp_path / "full")]) == 2
    err = capsys.readouterr().err.strip()
    assert "DST" in err and "not an empty directory" in err and "\n" not in err
    assert main(["convert", str(tmp_path / "absent.bin"), str(tmp_path / "out")]) == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["convert", str(tmp_path / "m.bin"), str(tmp_path / "out"), "--dtype", "int8"])
    assert info.value.code == 2
    with pytest.raises(UsageError, match="int8"):
        write_hf_dir(tmp_path / "out", SMALL, synthetic_weights(SMALL), dtype="int8")
    assert not (tmp_path / "out").exists()
    # synthetic input works too (no tokenizer to copy)
    assert main(["convert", "synthetic:stories260K?seed=1", str(tmp_path / "syn"), "--shard-size", "1"]) == 0
    assert read_hf(tmp_path / "syn")[0] == SMALL.replace(rope_layout="half")
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


# ----------------------------------------------------------------------------
# malformed inputs: each refused with one line naming the file and the field, under a memory cap


def _st_bytes(header, data: bytes = b"", length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def _entry(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


F32x4 = _entry("F32", [2, 2], 0, 16)
ST_MALFORMED = {
    "empty file": (b"", "header length"),
    "header length huge": (_st_bytes({"a": F32x4}, bytes(16), length=1 << 62), "header length: "),
    "header length beyond file": (_st_bytes({"a": F32x4}, bytes(16), length=4000), "header length: "),
    "header not JSON": (_st_bytes(b"{not json at all}"), "header: not valid JSON"),
    "header not an object": (_st_bytes(b"[1, 2, 3]"), "header: must be a JSON object"),
    "header JSON array after brace check": (_st_bytes(b"{} []"), "header: not valid JSON"),
    "duplicate tensor name": (_st_bytes(b'{"a": %s, "a": %s}' % (json.dumps(F32x4).encode(), json.dumps(F32x4).encode()),
                                        bytes(16)), "duplicate key"),
    "metadata not strings": (_st_bytes({"__metadata__": {"n": 1}, "a": F32x4}, bytes(16)), "header.__metadata__"),
    "entry not an object": (_st_bytes({"a": [1]}), "header['a']: must be an object"),
    "entry extra field": (_st_bytes({"a": {**F32x4, "x": 1}}, bytes(16)), "header['a']: must have exactly"),
    "unknown dtype": (_st_bytes({"a": _entry("Q7", [4], 0, 4)}, bytes(4)), "header['a'].dtype: unknown dtype 'Q7'"),
    "unsupported dtype": (_st_bytes({"a": _entry("I8", [4], 0, 4)}, bytes(4)), "header['a'].dtype: unsupported dtype 'I8'"),
    "negative dimension": (_st_bytes({"a": _entry("F32", [-1, 4], 0, 16)}, bytes(16)), "header['a'].shape"),
    "shape product overflow": (_st_bytes({"a": _entry("F32", [1 << 40, 1 << 40, 1 << 40], 0, 16)}, bytes(16)),
                               "header['a'].shape"),
    "byte size != shape * itemsize": (_st_bytes({"a": _entry("F32", [2, 2], 0, 12)}, bytes(12)),
                                      "header['a'].data_offsets: [0, 12] holds 12 bytes"),
    "offsets beyond file": (_st_bytes({"a": _entry("F32", [1 << 30], 0, 1 << 32)}, bytes(16)),
                            "header['a'].data_offsets: [0, 4294967296] runs past"),
    "begin after end": (_st_bytes({"a": _entry("F32", [2, 2], 16, 0)}, bytes(16)), "header['a'].data_offsets"),
    "gap between tensors": (_st_bytes({"a": F32x4, "b": _entry("F32", [4], 20, 36)}, bytes(36)),
                            "header['b'].data_offsets: [20, 36] leaves a gap"),
    "overlapping tensors": (_st_bytes({"a": F32x4, "b": _entry("F32", [4], 8, 24)}, bytes(24)),
                            "header['b'].data_offsets: [8, 24] overlaps"),
    "data not starting at 0": (_st_bytes({"a": _entry("F32", [2, 2], 4, 20)}, bytes(20)), "leaves a gap after the start"),
    "data not ending at EOF": (_st_bytes({"a": F32x4}, bytes(24)), "data_offsets: the tensors end at data byte 16"),
}


@pytest.mark.parametrize("case", sorted(ST_MALFORMED))
def test_malformed_safetensors_refused_under_cap(tmp_path, case):
    data, expected = ST_MALFORMED[case]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)
    assert_refused(str(path), str(path), expected, loader=ST_LOADER)


def test_good_files_load_under_cap(tmp_path):
    write_safetensors(tmp_path / "ok.safetensors", _sample(np.random.default_rng(0)))
    assert load_under_cap(str(tmp_path / "ok.safetensors"), loader=ST_LOADER) == (0, "")
    write_hf_dir(tmp_path / "hf", SMALL, synthetic_weights(SMALL), shard_bytes=100_000)
    assert load_under_cap(str(tmp_path / "hf"), loader=HF_LOADER) == (0, "")


def _edit_json(path, **changes):
    value = json.loads(path.read_text())
    for key, v in changes.items():
        if v is None:
            value.pop(key, None)
        else:
            value[key] = v
    path.write_text(json.dumps(value))


def _index(d):
    return d / "model.safetensors.index.json"


def _first_shard_tensor(d):
    weight_map = json.loads(_index(d).read_text())["weight_map"]
    return next(iter(sorted(weight_map.items(), key=lambda kv: kv[1])))


def _drop_tensor(d, shard, name):
    tensors = dict(read_safetensors(d / shard))
    del tensors[name]
    write_safetensors(d / shard, {k: np.array(v) for k, v in tensors.items()})


def _dup_tensor(d):
    weight_map = json.loads(_index(d).read_text())["weight_map"]
    name, shard = _first_shard_tensor(d)
    other = next(s for s in sorted(set(weight_map.values())) if s != shard)
    tensors = {k: np.array(v) for k, v in read_safetensors(d / other).items()}
    tensors[name] = np.array(read_safetensors(d / shard)[name])
    write_safetensors(d / other, tensors)


def _auto_map(d):
    (d / "modeling_evil.py").write_text(f"open({str(d / 'EXECUTED')!r}, 'w').write('x')\n")
    _edit_json(d / "config.json", architectures=["EvilForCausalLM"], auto_map={"AutoModelForCausalLM": "modeling_evil.Evil"},
               trust_remote_code=True)


HF_MALFORMED = {
    "config.json missing": (lambda d: (d / "config.json").unlink(), "", "config.json: not found"),
    "config.json not JSON": (lambda d: (d / "config.json").write_text("{'python': True}"), "config.json",
                             "not valid JSON"),
    "config.json not an object": (lambda d: (d / "config.json").write_text("[1]"), "config.json",
                                  "must be a JSON object"),
    "unknown architecture": (lambda d: _edit_json(d / "config.json", architectures=["MambaForCausalLM"]),
                             "config.json", "architectures: ['MambaForCausalLM'] is not supported"),
    "auto_map present, unknown arch: no execution": (_auto_map, "config.json", "auto_map / custom code is never run"),
    "yarn rope_scaling": (lambda d: _edit_json(d / "config.json", rope_scaling={"rope_type": "yarn", "factor": 4.0}),
                          "config.json", "rope_scaling: rope_type 'yarn' is not supported yet"),
    "llama3 rope_scaling without its factor": (lambda d: _edit_json(d / "config.json", rope_scaling={
        "rope_type": "llama3", "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192}), "config.json", "rope_scaling.factor: must be a positive number"),
    "required key missing": (lambda d: _edit_json(d / "config.json", hidden_size=None), "config.json",
                             "hidden_size: missing"),
    "huge layer count": (lambda d: _edit_json(d / "config.json", num_hidden_layers=1 << 40), "config.json",
                         "num_hidden_layers: must be in"),
    "shape disagrees with tensors": (lambda d: _edit_json(d / "config.json", intermediate_size=180), "model-0000",
                                     "model.layers.0.mlp.gate_proj.weight: has shape [172, 64], but config.json needs "
                                     "[180, 64]"),
    "more layers than tensors": (lambda d: _edit_json(d / "config.json", num_hidden_layers=6), "",
                                 "model.layers.5.input_layernorm.weight: tensor missing"),
    "untied config, no lm_head": (lambda d: _edit_json(d / "config.json", tie_word_embeddings=False), "",
                                  "lm_head.weight: tensor missing"),
    "index points at a missing shard": (lambda d: (d / _first_shard_tensor(d)[1]).unlink(),
                                        "model.safetensors.index.json", "does not exist"),
    "tensor missing from its shard": (lambda d: _drop_tensor(d, _first_shard_tensor(d)[1], _first_shard_tensor(d)[0]),
                                      "model.safetensors.index.json", "tensor not found in shard"),
    "tensor in two shards": (_dup_tensor, "model-0000", "appears twice"),
    "index escapes the directory": (lambda d: _edit_json(_index(d), weight_map={
        **json.loads(_index(d).read_text())["weight_map"], "model.norm.weight": "../outside.safetensors"}),
        "model.safetensors.index.json", "weight_map['model.norm.weight']: must name a .safetensors file"),
    "index not JSON": (lambda d: _index(d).write_text("nope"), "model.safetensors.index.json", "not valid JSON"),
    "no weights, only a pickle": (lambda d: [p.unlink() for p in d.glob("model*")] and
                                  (d / "pytorch_model.bin").write_bytes(b"\x80\x04pickle"), "",
                                  "model.safetensors: not found, nor model.safetensors.index.json "
                                  "(pytorch_model.bin is a pickle"),
    "corrupt shard": (lambda d: (d / _first_shard_tensor(d)[1]).write_bytes(_st_bytes(b"{oops", bytes(8))),
                      "model-0000", "header: not valid JSON"),
    "extra tensor (o_proj bias)": (lambda d: write_safetensors(d / "model-extra.safetensors", {
        "model.layers.0.self_attn.o_proj.bias": np.zeros(64, np.float32)}) or _edit_json(_index(d), weight_map={
            **json.loads(_index(d).read_text())["weight_map"],
            "model.layers.0.self_attn.o_proj.bias": "model-extra.safetensors"}),
        "model-extra.safetensors", "model.layers.0.self_attn.o_proj.bias: unexpected tensor"),
}


@pytest.fixture(scope="module")
def sharded_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf") / "good"
    write_hf_dir(path, SMALL, synthetic_weights(SMALL), shard_bytes=100_000)
    return path


@pytest.mark.parametrize("case", sorted(HF_MALFORMED))
def test_malformed_hf_dirs_refused_under_cap(tmp_path, sharded_dir, case):
    import shutil

    d = tmp_path / "model"
    shutil.copytree(sharded_dir, d)
    make, file, expected = HF_MALFORMED[case]
    make(d)
    assert_refused(str(d), str(d / file), expected, loader=HF_LOADER)
    assert not (d / "EXECUTED").exists()


# ----------------------------------------------------------------------------
# against transformers itself (optional: skipped when transformers/torch are absent)


def _torch_greedy(model, prompt, n):
    import torch

    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
        logits = model(torch.tensor([ids])).logits[0].numpy()
    return ids[len(prompt):], logits


@pytest.mark.parametrize("arch", ["llama", "qwen2", "llama3-scaled"])
def test_matches_transformers(tmp_path, arch):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    kwargs = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=8,
                  num_key_value_heads=2, vocab_size=320, max_position_embeddings=128, rope_theta=50000.0,
                  rms_norm_eps=1e-5, tie_word_embeddings=arch == "qwen2", bos_token_id=1, eos_token_id=2)
    if arch == "llama3-scaled":  # Llama 3.1's RoPE scaling, with a short original context so it bites
        kwargs["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
    if arch != "qwen2":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kwargs))
    else:
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**kwargs))
    model.eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.25)
    model.save_pretrained(tmp_path / "hf", safe_serialization=True)
    config, weights = read_hf(tmp_path / "hf")
    assert config.attention_bias == (arch == "qwen2") and config.n_kv_heads == 2 and config.rope_theta == 50000.0
    assert (config.rope_scaling is not None) == (arch == "llama3-scaled")
    prompt = [1, 7, 99, 250, 31]
    expected_ids, expected_logits = _torch_greedy(model, prompt, 24)
    lumi_model = Model(config, {k: to_float32(v) for k, v in weights.items()})
    assert _greedy(lumi_model, prompt, 24) == expected_ids
    lumi_model.reset()
    np.testing.assert_allclose(lumi_model.forward(np.array(prompt + expected_ids), 0), expected_logits, atol=1e-3, rtol=0)


def test_transformers_reads_converted_llama2c(tmp_path):
    """write_hf_dir's q/k permutation is the one transformers expects: same logits as the interleaved original."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    config = SMALL.replace(tie_embeddings=False)
    weights = synthetic_weights(config, seed=8)
    write_hf_dir(tmp_path / "hf", config, weights)
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    prompt = [1, 45, 300, 2, 77]
    ids, logits = _torch_greedy(model, prompt, 16)
    original = Model(config, weights)
    assert _greedy(original, prompt, 16) == ids
    original.reset()
    np.testing.assert_allclose(original.forward(np.array(prompt + ids), 0), logits, atol=1e-3, rtol=0)


def test_real_checkpoint_converts_to_identical_greedy_ids(tmp_path, assets, hf_dispatch):
    from conftest import asset

    src = asset(assets, "models/stories260K.bin")
    assert main(["convert", str(src), str(tmp_path / "hf")]) == 0
    a = Model(*read_llama2c(src))
    b = Model(*read_hf(tmp_path / "hf"))
    prompt = [1, 403, 407]
    ids = _greedy(a, prompt, 64)
    assert _greedy(b, prompt, 64) == ids
    a.reset(), b.reset()
    full = np.array(prompt + ids)
    np.testing.assert_allclose(a.forward(full, 0), b.forward(full, 0), atol=1e-4, rtol=0)
