"""GGUF checkpoints: written by the ``gguf`` package (the reference writer), read by lumi.

F32 files give the same model as llama2.c files of the same weights; 16-bit tensors read bit-exactly;
Q8_0 / Q4_0 read back equal to the package's own dequantisation; llama.cpp's Q/K row permutation is
checked against Hugging Face's layout; every malformed header is refused with one line naming the file
and the field, in a subprocess under an address-space cap.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import asset
from memcap import assert_refused, load_under_cap

import lumi
from lumi.config import PRESETS, ModelConfig
from lumi.errors import CheckpointError
from lumi.formats.gguf import gguf_name, is_gguf, read_gguf, read_gguf_header
from lumi.tokenizer import gguf_tokenizer
from lumi.formats.llama2c import read_llama2c, write_llama2c
from lumi.formats.synthetic import synthetic_weights
from lumi.model import Model
from lumi.sampler import SamplingParams
from lumi.storage import BF16, BlockQ8, to_float32

gguf = pytest.importorskip("gguf")
import gguf.quants  # noqa: E402

T = gguf.GGMLQuantizationType
SMALL = PRESETS["stories260K"]  # dim 64, hidden 172, 5 layers, 8 heads, 4 kv heads (GQA), vocab 512
# every width a multiple of 32, for Q8_0 / Q4_0
BLOCKY = ModelConfig(64, 128, 2, 8, 4, 96, 64, rope_layout="interleaved", stop_ids=(2,))
CORPUS_PATH = Path(__file__).parent / "data" / "tokenizer_corpus.txt"
LOADER = "lumi.formats.gguf:read_gguf"


def write_gguf(path, config: ModelConfig, weights: dict, *, qtype=T.F32, arch="llama", skip=(), shapes=None,
               extra=None, omit_keys=(), tokenizer=None, eos=2) -> dict:
    """A GGUF llama model via gguf.GGUFWriter. Matrices are stored as ``qtype``, vectors as F32 (as llama.cpp does).

    Returns the arrays handed to the writer by GGUF name (bytes for BF16 / quantized types).
    """
    w = gguf.GGUFWriter(str(path), arch)
    a = arch
    keys = {
        f"{a}.context_length": config.max_seq_len, f"{a}.embedding_length": config.dim,
        f"{a}.feed_forward_length": config.hidden_dim, f"{a}.block_count": config.n_layers,
        f"{a}.attention.head_count": config.n_heads, f"{a}.attention.head_count_kv": config.n_kv_heads,
        f"{a}.rope.dimension_count": config.head_dim,
        "tokenizer.ggml.bos_token_id": config.bos_id, "tokenizer.ggml.eos_token_id": eos,
    }
    for key, value in keys.items():
        if key not in omit_keys:
            w.add_uint32(key, value)
    if f"{a}.attention.layer_norm_rms_epsilon" not in omit_keys:
        w.add_float32(f"{a}.attention.layer_norm_rms_epsilon", config.norm_eps)
    w.add_float32(f"{a}.rope.freq_base", config.rope_theta)
    if tokenizer is not None:
        tokenizer(w)
    for key, (add, value) in (extra or {}).items():
        getattr(w, add)(key, value)
    written = {}
    for canonical, array in weights.items():
        name = gguf_name(canonical)
        if name in skip:
            continue
        array = np.ascontiguousarray(array, dtype=np.float32)
        if shapes and name in shapes:
            array = np.zeros(shapes[name], dtype=np.float32)
        if array.ndim == 1 or qtype == T.F32:
            data = array
        elif qtype == T.F16:
            data = array.astype(np.float16)
        else:
            data = gguf.quants.quantize(array, qtype)
        if data.dtype == np.uint8:
            w.add_tensor(name, data, raw_dtype=qtype)
        else:
            w.add_tensor(name, data)
        written[name] = data
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return written


def greedy(config, weights, n=24):
    model = Model(config, {k: to_float32(v) for k, v in weights.items()})
    return lumi.generate(model, [config.bos_id, 10, 20], n, sampling=SamplingParams(temperature=0),
                         ignore_eos=True).run().generated_ids


# --- well-formed files ----------------------------------------------------------------


@pytest.mark.parametrize("tied", [True, False])
def test_f32_gguf_is_the_same_model_as_llama2c(tmp_path, tied):
    """Same synthetic weights as llama2.c .bin (interleaved RoPE) and as F32 GGUF (no permutation): same model."""
    config = SMALL.replace(tie_embeddings=tied)
    weights = synthetic_weights(config, seed=7)
    write_llama2c(tmp_path / "m.bin", config, weights)
    write_gguf(tmp_path / "m.gguf", config, weights)
    bin_config, bin_weights = read_llama2c(tmp_path / "m.bin")
    gguf_config, gguf_weights = read_gguf(tmp_path / "m.gguf")
    # llama2.c's run.c also stops on BOS; GGUF names its own end tokens
    assert gguf_config == bin_config.replace(stop_ids=(2,))
    assert gguf_config.rope_layout == "interleaved" and gguf_config.tie_embeddings == tied
    assert set(gguf_weights) == set(bin_weights) == set(config.tensor_shapes())
    for name, a in gguf_weights.items():
        assert a.dtype == np.float32 and np.array_equal(a, bin_weights[name]), name
        assert not a.flags.writeable  # zero-copy views of the mapped file
    tokens = np.array([1, 10, 20, 30, 400], dtype=np.int32)
    logits_bin = Model(bin_config, bin_weights).forward(tokens, 0)
    logits_gguf = Model(gguf_config, {k: to_float32(v) for k, v in gguf_weights.items()}).forward(tokens, 0)
    np.testing.assert_allclose(logits_gguf, logits_bin, atol=1e-4, rtol=0)
    assert greedy(gguf_config, gguf_weights) == greedy(bin_config, bin_weights)


def llama_cpp_permute(weights: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute: Hugging Face q/k rows -> Meta's interleaved order."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2)
            .reshape(weights.shape))


def test_gguf_qk_rows_are_llama_cpp_permuted_to_interleaved(tmp_path):
    """Hugging Face weights (rotate_half RoPE), converted as llama.cpp does, run as interleaved GGUF: same logits."""
    config = SMALL.replace(tie_embeddings=False)
    hf = synthetic_weights(config.replace(rope_layout="half"), seed=8)
    converted = dict(hf)
    for i in range(config.n_layers):
        converted[f"layers.{i}.attention.wq"] = llama_cpp_permute(hf[f"layers.{i}.attention.wq"], config.n_heads,
                                                                  config.n_heads)
        converted[f"layers.{i}.attention.wk"] = llama_cpp_permute(hf[f"layers.{i}.attention.wk"], config.n_heads,
                                                                  config.n_kv_heads)
    write_gguf(tmp_path / "m.gguf", config, converted)
    gguf_config, gguf_weights = read_gguf(tmp_path / "m.gguf")
    assert gguf_config.rope_layout == "interleaved"
    tokens = np.array([1, 5, 50, 500, 7, 70], dtype=np.int32)
    logits_hf = Model(config.replace(rope_layout="half"), hf).forward(tokens, 0)
    logits_gguf = Model(gguf_config, {k: to_float32(v) for k, v in gguf_weights.items()}).forward(tokens, 0)
    np.testing.assert_allclose(logits_gguf, logits_hf, atol=1e-4, rtol=0)
    # and without the permutation the logits differ: the check has teeth
    write_gguf(tmp_path / "raw.gguf", config, hf)
    raw_logits = Model(*read_gguf(tmp_path / "raw.gguf")).forward(tokens, 0)
    assert np.abs(raw_logits - logits_hf).max() > 1e-2


@pytest.mark.parametrize("qtype, dtype", [(T.F16, np.float16), (T.BF16, BF16)])
def test_16_bit_tensors_read_bit_exactly(tmp_path, qtype, dtype):
    weights = synthetic_weights(SMALL, seed=9)
    written = write_gguf(tmp_path / "m.gguf", SMALL, weights, qtype=qtype)
    config, read = read_gguf(tmp_path / "m.gguf")
    assert config == SMALL.replace(stop_ids=(2,))
    for canonical, a in read.items():
        expected = written[gguf_name(canonical)]
        if expected.ndim == 1:
            assert a.dtype == np.float32 and np.array_equal(a, expected), canonical
            continue
        assert a.dtype == dtype and a.shape == weights[canonical].shape, canonical
        assert not a.flags.writeable
        assert np.array_equal(a.view(np.uint16), expected.view(np.uint16).reshape(a.shape)), canonical


@pytest.mark.parametrize("qtype", [T.Q8_0, T.Q4_0])
def test_quantized_tensors_equal_the_reference_dequantisation(tmp_path, qtype):
    weights = synthetic_weights(BLOCKY, seed=10)
    written = write_gguf(tmp_path / "m.gguf", BLOCKY, weights, qtype=qtype)
    config, read = read_gguf(tmp_path / "m.gguf")
    assert config.vocab_size == BLOCKY.vocab_size and not config.tie_embeddings  # output.weight quantized too
    n_blocks = 0
    for canonical, a in read.items():
        data = written[gguf_name(canonical)]
        if data.dtype != np.uint8:
            continue
        assert isinstance(a, BlockQ8), canonical
        rows, cols = weights[canonical].shape
        assert a.q.shape == (rows, cols) and a.q.dtype == np.int8 and a.scales.shape == (rows, cols // 32)
        if qtype == T.Q4_0:
            assert a.q.min() >= -8 and a.q.max() <= 7
        reference = gguf.quants.dequantize(data, qtype)
        assert reference.shape == (rows, cols)
        assert np.array_equal(a.dequantize(), reference), canonical
        n_blocks += a.scales.size
    assert n_blocks > 0
    # the model runs on them (widened to float32 here; the lead's Model keeps int8)
    logits = Model(config, {k: to_float32(v) for k, v in read.items()}).forward(np.array([1, 2, 3]), 0)
    assert np.all(np.isfinite(logits))


def test_header_agrees_with_the_reference_reader(tmp_path):
    path = tmp_path / "m.gguf"
    write_gguf(path, BLOCKY.replace(tie_embeddings=False), synthetic_weights(BLOCKY.replace(tie_embeddings=False)),
               qtype=T.Q8_0)
    header = read_gguf_header(path)
    reference = gguf.GGUFReader(str(path))
    assert header.version == 3 and header.alignment == 32
    assert [t.name for t in reference.tensors] == list(header.tensors)
    for t in reference.tensors:
        mine = header.tensors[t.name]
        assert mine.offset == t.data_offset and mine.nbytes == t.n_bytes
        assert mine.ggml_type == int(t.tensor_type)
        assert list(reversed(mine.shape)) == [int(n) for n in t.shape]
    assert {k for k in reference.fields if not k.startswith("GGUF.")} == set(header.metadata)
    assert header.get_int("llama.block_count") == 2 and header.get_str("general.architecture") == "llama"


def test_is_gguf(tmp_path):
    path = tmp_path / "model.weights"
    write_gguf(path, BLOCKY, synthetic_weights(BLOCKY))
    assert is_gguf(path) and is_gguf(tmp_path / "absent.gguf")
    (tmp_path / "m.bin").write_bytes(b"\0" * 64)
    assert not is_gguf(tmp_path / "m.bin") and not is_gguf(tmp_path)


# --- malformed files: hand-built bytes ----------------------------------------------------


def _s(text) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(data)) + data


def _kv(key, vtype: int, payload: bytes) -> bytes:
    return _s(key) + struct.pack("<I", vtype) + payload


def _kv_str(key, value) -> bytes:
    return _kv(key, 8, _s(value))


def _kv_u32(key, value: int) -> bytes:
    return _kv(key, 4, struct.pack("<I", value))


def _ti(name, dims, ggml_type=0, offset=0) -> bytes:
    return (_s(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
            + struct.pack("<IQ", ggml_type, offset))


ARCH = _kv_str("general.architecture", "llama")
NORM = _ti("output_norm.weight", [64])


def _raw(kvs=(ARCH,), tis=(NORM,), data=b"\0" * 256, *, magic=b"GGUF", version=3, n_tensors=None, n_kv=None,
         alignment=32) -> bytes:
    head = magic + struct.pack("<IQQ", version, len(tis) if n_tensors is None else n_tensors,
                               len(kvs) if n_kv is None else n_kv) + b"".join(kvs) + b"".join(tis)
    return head + b"\0" * (-len(head) % alignment) + data


def _patch_type(data: bytes, name: str, ggml_type: int) -> bytes:
    """Set one tensor's ggml type in a written file (the info follows its name: n_dims, dims, type)."""
    at = data.index(_s(name)) + len(_s(name))
    (n_dims,) = struct.unpack_from("<I", data, at)
    out = bytearray(data)
    struct.pack_into("<I", out, at + 4 + 8 * n_dims, ggml_type)
    return bytes(out)


HUGE = 1 << 62
RAW_CASES = {
    "empty file": (b"", "header.magic"),
    "bad magic": (_raw(magic=b"GGML"), "header.magic: expected"),
    "bad version": (_raw(version=4), "header.version: version 4"),
    "version 1": (_raw(version=1), "header.version: version 1"),
    "big-endian version": (_raw(version=3 << 24), "big-endian"),
    "huge tensor count": (_raw(n_tensors=(1 << 64) - 1), "header.tensor_count"),
    "huge kv count": (_raw(n_kv=HUGE), "header.metadata_kv_count"),
    "huge key length": (_raw(kvs=[struct.pack("<Q", HUGE) + b"general"]), "metadata[0].key: string length"),
    "huge string value": (_raw(kvs=[_kv("general.architecture", 8, struct.pack("<Q", HUGE) + b"llama")]),
                          "general.architecture: string length"),
    "huge array length": (_raw(kvs=[ARCH, _kv("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, HUGE))]),
                          "tokenizer.ggml.tokens: array of"),
    "huge numeric array": (_raw(kvs=[ARCH, _kv("tokenizer.ggml.scores", 9, struct.pack("<IQ", 6, 1 << 40))]),
                           "tokenizer.ggml.scores: array of"),
    "huge nested array": (_raw(kvs=[ARCH, _kv("x.nested", 9, struct.pack("<IQ", 9, 1) + struct.pack("<IQ", 0, HUGE))]),
                          "x.nested[0]: array of"),
    "nesting too deep": (_raw(kvs=[ARCH, _kv("x.deep", 9, struct.pack("<IQ", 9, 1) * 6 + struct.pack("<IQ", 0, 1))]),
                         "nested more than"),
    "unknown value type": (_raw(kvs=[ARCH, _kv("x.odd", 13, b"\0" * 8)]), "x.odd: unknown value type 13"),
    "unknown array element type": (_raw(kvs=[ARCH, _kv("x.odd", 9, struct.pack("<IQ", 99, 1))]),
                                   "x.odd: unknown array element type 99"),
    "duplicate key": (_raw(kvs=[ARCH, ARCH]), "general.architecture: duplicate"),
    "bad alignment": (_raw(kvs=[ARCH, _kv_u32("general.alignment", 24)]), "general.alignment: must be a power of two"),
    "truncated metadata": (_raw(kvs=[ARCH + _kv_u32("llama.block_count", 5)[:-2]], tis=[], data=b"", n_kv=2,
                                alignment=1), "llama.block_count: needs bytes"),
    "huge tensor name": (_raw(tis=[struct.pack("<Q", HUGE) + b"output_norm"]), "tensor[0].name: string length"),
    "n_dims 0": (_raw(tis=[_ti("output_norm.weight", [])]), "output_norm.weight.n_dims: must be in 1..4, got 0"),
    "n_dims 5": (_raw(tis=[_ti("output_norm.weight", [2] * 5)]), "output_norm.weight.n_dims: must be in 1..4, got 5"),
    "dim 0": (_raw(tis=[_ti("token_embd.weight", [64, 0])]), "token_embd.weight.dims[1]: must be >= 1"),
    "dims product overflows": (_raw(tis=[_ti("token_embd.weight", [1 << 32, 1 << 32])]), "overflows int64"),
    "dims larger than the file": (_raw(tis=[_ti("token_embd.weight", [1 << 31, 1 << 20])]), "more than the whole file"),
    "unknown ggml type": (_raw(tis=[_ti("output_norm.weight", [64], ggml_type=99)]),
                          "output_norm.weight.type: unknown ggml type 99"),
    "row not a whole block": (_raw(tis=[_ti("blk.0.attn_q.weight", [40, 2], ggml_type=8)]), "multiple of 32"),
    "offset not aligned": (_raw(tis=[_ti("output_norm.weight", [64], offset=4)]),
                           "output_norm.weight.offset: 4 is not a multiple of the alignment 32"),
    "offset beyond the file": (_raw(tis=[_ti("output_norm.weight", [64], offset=1 << 40)]),
                               "output_norm.weight.offset: data at bytes"),
    "tensor runs past the end": (_raw(data=b"\0" * 200), "output_norm.weight.offset: data at bytes"),
    "overlapping tensors": (_raw(tis=[NORM, _ti("blk.0.attn_norm.weight", [64], offset=128)], data=b"\0" * 512),
                            ("blk.0.attn_norm.weight.offset: data at bytes", "overlaps output_norm.weight")),
    "duplicate tensor": (_raw(tis=[NORM, _ti("output_norm.weight", [64], offset=256)], data=b"\0" * 512),
                         "output_norm.weight: duplicate tensor"),
}


@pytest.mark.parametrize("case", sorted(RAW_CASES))
def test_malformed_headers_are_refused_under_a_memory_cap(tmp_path, case):
    data, expected = RAW_CASES[case]
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    assert_refused(str(path), str(path) + ": ", expected, loader=LOADER)


# --- malformed models: well-formed GGUF, wrong for lumi ------------------------------------


def _model_case(tmp_path, **kwargs) -> Path:
    path = tmp_path / "bad.gguf"
    write_gguf(path, BLOCKY, synthetic_weights(BLOCKY), **kwargs)
    return path


MODEL_CASES = {
    "unknown architecture": (dict(arch="gpt2"), "general.architecture: 'gpt2' is not supported"),
    "missing tensor": (dict(skip=("blk.1.ffn_up.weight",)), "blk.1.ffn_up.weight: missing"),
    "missing embeddings": (dict(skip=("token_embd.weight",)), "token_embd.weight: missing"),
    "wrong shape": (dict(shapes={"blk.0.attn_k.weight": (64, 64)}), "blk.0.attn_k.weight: has shape (64, 64)"),
    "missing key": (dict(omit_keys=("llama.embedding_length",)), "llama.embedding_length: missing"),
    "missing epsilon": (dict(omit_keys=("llama.attention.layer_norm_rms_epsilon",)),
                        "llama.attention.layer_norm_rms_epsilon: missing"),
    "key of the wrong type": (dict(extra={"llama.block_count": ("add_string", "two")}),
                              "llama.block_count: must be an integer"),
    "vocab size disagrees": (dict(extra={"llama.vocab_size": ("add_uint32", 97)}), "llama.vocab_size: is 97"),
    "heads do not divide dim": (dict(extra={"llama.attention.head_count": ("add_uint32", 7)}), "not divisible"),
    "huge layer count": (dict(extra={"llama.block_count": ("add_uint32", 1 << 31)}), "llama.block_count: must be in"),
    "bos outside vocab": (dict(extra={"tokenizer.ggml.bos_token_id": ("add_uint32", 96)}),
                          "tokenizer.ggml.bos_token_id: must be in 0..95"),
    "rope scaling": (dict(extra={"llama.rope.scaling.type": ("add_string", "linear"),
                                 "llama.rope.scaling.factor": ("add_float32", 4.0)}), "llama.rope.scaling.type"),
}


@pytest.mark.parametrize("case", sorted(MODEL_CASES) + ["unsupported tensor type"])
def test_wrong_models_are_refused_under_a_memory_cap(tmp_path, case):
    if case == "unsupported tensor type":
        path = _model_case(tmp_path)
        path.write_bytes(_patch_type(path.read_bytes(), "blk.0.attn_q.weight", int(T.I32)))  # same size as F32
        expected = "blk.0.attn_q.weight.type: unsupported tensor type I32"
    else:
        kwargs, expected = MODEL_CASES[case]
        path = _model_case(tmp_path, **kwargs)
    assert_refused(str(path), str(path) + ": ", expected, loader=LOADER)


def test_a_good_file_loads_under_the_cap(tmp_path):
    path = tmp_path / "good.gguf"
    write_gguf(path, BLOCKY, synthetic_weights(BLOCKY), qtype=T.Q4_0)
    assert load_under_cap(str(path), loader=LOADER) == (0, "")


# --- the tokenizer in the metadata ------------------------------------------------------------

SPACE = "\u2581"


def _vocab_writer(tokens, scores, types, model="llama", bos=1, eos=2):
    def add(w):
        w.add_tokenizer_model(model)
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        if types is not None:
            w.add_token_types(types)
    return add


def _tiny_vocab():
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [SPACE, "h", "e", "l", "o", "he", "ll", SPACE + "he", "llo", SPACE + "hello"]
    scores = [0.0] * 259 + [-1.0, -2.0, -2.0, -2.0, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0]
    types = [2, 3, 3] + [6] * 256 + [1] * 10
    return tokens, scores, types


@pytest.mark.parametrize("with_types", [True, False])
def test_tokenizer_from_metadata(tmp_path, with_types):
    tokens, scores, types = _tiny_vocab()
    path = tmp_path / "m.gguf"
    config = BLOCKY.replace(vocab_size=len(tokens))
    write_gguf(path, config, synthetic_weights(config),
               tokenizer=_vocab_writer(tokens, scores, types if with_types else None))
    tokenizer = gguf_tokenizer(path)
    assert (tokenizer.vocab_size, tokenizer.bos_id, tokenizer.eos_id) == (len(tokens), 1, 2)
    assert tokenizer.path == str(path)
    hello = tokens.index(SPACE + "hello")
    assert tokenizer.encode("hello") == [1, hello]
    assert tokenizer.encode("hello\u00e9", bos=False) == [hello, 3 + 0xC3, 3 + 0xA9]  # é by byte fallback
    assert tokenizer.decode([1, hello, 3 + 0xC3, 3 + 0xA9, 2]) == "hello\u00e9"
    assert read_gguf(path)[0].vocab_size == tokenizer.vocab_size


TOKENIZER_CASES = {
    "no tokenizer": (None, "tokenizer.ggml.model: missing"),
    "gpt2 bpe": (_vocab_writer(["a", "b", "c"], [0.0] * 3, [1] * 3, model="gpt2"), "'gpt2' is not supported"),
    "scores length": (_vocab_writer(["<unk>", "<s>", "</s>", "a"], [0.0] * 3, None), "tokenizer.ggml.scores: has 3"),
    "unknown token type": (_vocab_writer(["<unk>", "<s>", "</s>", "a"], [0.0] * 4, [2, 3, 3, 9]),
                           "tokenizer.ggml.token_type[3]: unknown token type 9"),
    "bad byte piece": (_vocab_writer(["<unk>", "<s>", "</s>", "<0xZZ>"], [0.0] * 4, [2, 3, 3, 6]), "piece[3]"),
}


@pytest.mark.parametrize("case", sorted(TOKENIZER_CASES))
def test_bad_tokenizer_metadata(tmp_path, case):
    add, expected = TOKENIZER_CASES[case]
    path = tmp_path / "m.gguf"
    write_gguf(path, BLOCKY, synthetic_weights(BLOCKY), tokenizer=add)
    with pytest.raises(CheckpointError) as info:
        gguf_tokenizer(path)
    assert str(info.value).startswith(str(path) + ": ") and expected in str(info.value), str(info.value)
    if add is None:
        assert gguf_tokenizer(path, required=False) is None


def test_llama_tokenizer_in_gguf_encodes_like_sentencepiece(tmp_path, assets):
    spm = pytest.importorskip("sentencepiece")
    reference = spm.SentencePieceProcessor(model_file=str(asset(assets, "models/tokenizer.model")))
    tokens, scores, types = [], [], []
    for i in range(reference.vocab_size()):
        tokens.append(reference.id_to_piece(i))
        scores.append(reference.get_score(i))
        types.append(3 if reference.is_control(i) else 2 if reference.is_unknown(i) else 6 if reference.is_byte(i)
                     else 5 if reference.is_unused(i) else 1)
    path = tmp_path / "llama.gguf"
    config = BLOCKY.replace(vocab_size=reference.vocab_size(), max_seq_len=16)
    write_gguf(path, config, synthetic_weights(config), tokenizer=_vocab_writer(tokens, scores, types))
    tokenizer = gguf_tokenizer(path)
    assert (tokenizer.vocab_size, tokenizer.bos_id, tokenizer.eos_id) == (32000, 1, 2)
    corpus = CORPUS_PATH.read_text(encoding="utf-8").split("\n")[:-1]
    assert len(corpus) >= 300
    mismatched = [line for line in corpus if tokenizer.encode(line) != reference.encode(line, add_bos=True)]
    assert mismatched == []
    whole = "\n".join(corpus)
    ids = reference.encode(whole, add_bos=True)
    assert tokenizer.encode(whole) == ids
    assert tokenizer.decode(ids) == reference.decode(ids)
