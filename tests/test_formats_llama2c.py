"""llama2.c checkpoints: both versions round-trip; every malformed header is refused clearly."""

import struct

import numpy as np
import pytest
from conftest import asset

from lumi.config import PRESETS
from lumi.errors import CheckpointError
from lumi.formats import load_checkpoint
from lumi.formats.llama2c import read_llama2c, write_llama2c
from lumi.formats.synthetic import synthetic_weights
from lumi.model import Model

SMALL = PRESETS["stories260K"]


@pytest.mark.parametrize("version", [0, 1])
@pytest.mark.parametrize("tied", [True, False])
def test_round_trip(tmp_path, version, tied):
    config = SMALL.replace(tie_embeddings=tied)
    weights = synthetic_weights(config, seed=5)
    path = tmp_path / "m.bin"
    write_llama2c(path, config, weights, version=version)
    read_config, read_weights = read_llama2c(path)
    assert read_config == config
    assert set(read_weights) == set(weights)
    for name, a in weights.items():
        assert np.array_equal(read_weights[name], a), name
        assert not read_weights[name].flags.writeable  # zero-copy views of the mapped file


def test_v0_and_v1_give_identical_logits(tmp_path):
    config = SMALL.replace(tie_embeddings=False)
    weights = synthetic_weights(config, seed=6)
    tokens = np.array([1, 10, 20, 30], dtype=np.int32)
    logits = []
    for version in (0, 1):
        path = tmp_path / f"v{version}.bin"
        write_llama2c(path, config, weights, version=version)
        logits.append(Model(*read_llama2c(path)).forward(tokens, 0))
    assert np.array_equal(logits[0], logits[1])


def test_real_checkpoint_header(assets):
    config, weights = load_checkpoint(asset(assets, "models/stories260K.bin"))
    assert (config.dim, config.hidden_dim, config.n_layers, config.n_heads, config.n_kv_heads) == (64, 172, 5, 8, 4)
    assert (config.vocab_size, config.max_seq_len, config.tie_embeddings) == (512, 512, True)
    assert config.rope_layout == "interleaved" and "output" not in weights


def _v0_header(dim=64, hidden=172, layers=5, heads=8, kv=4, vocab=512, seq=512):
    return struct.pack("<7i", dim, hidden, layers, heads, kv, vocab, seq)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    path = tmp_path_factory.mktemp("good") / "good.bin"
    write_llama2c(path, SMALL, synthetic_weights(SMALL))
    return path.read_bytes()


@pytest.fixture(scope="module")
def good_v1(tmp_path_factory):
    path = tmp_path_factory.mktemp("good") / "good_v1.bin"
    write_llama2c(path, SMALL, synthetic_weights(SMALL), version=1)
    return path.read_bytes()


def _v1_header(good_v1: bytes, **fields) -> bytes:
    data = bytearray(good_v1)
    offsets = dict(version=4, dim=8, n_layers=16, vocab_size=28, shared=36)
    for name, value in fields.items():
        if name == "shared":
            data[36] = value
        else:
            struct.pack_into("<i", data, offsets[name], value)
    return bytes(data)


MALFORMED = {
    "empty": (lambda g, g1: b"", "header.magic"),
    "short header": (lambda g, g1: g[:20], "header"),
    "truncated weights": (lambda g, g1: g[: len(g) // 2], "truncated"),
    "trailing bytes": (lambda g, g1: g + b"\0" * 8, "the file has"),
    "zero dim": (lambda g, g1: _v0_header(dim=0) + g[28:], "header.dim"),
    "negative layers": (lambda g, g1: _v0_header(layers=-5) + g[28:], "header.n_layers"),
    "huge vocab": (lambda g, g1: _v0_header(vocab=2**31 - 1) + g[28:], "header.vocab_size"),
    "huge dims, small file": (lambda g, g1: _v0_header(dim=65536, hidden=262144, layers=1024, heads=64, kv=64)
                              + g[28:], "is "),
    "heads do not divide dim": (lambda g, g1: _v0_header(heads=7) + g[28:], "not divisible"),
    "kv heads do not divide heads": (lambda g, g1: _v0_header(kv=3) + g[28:], "not divisible"),
    "odd head_dim": (lambda g, g1: _v0_header(dim=72, heads=8, kv=8) + g[28:], "even"),
    "v1 bad version": (lambda g, g1: _v1_header(g1, version=2), "header.version"),
    "v1 bad shared flag": (lambda g, g1: _v1_header(g1, shared=7), "header.shared_classifier"),
    "v1 negative vocab": (lambda g, g1: _v1_header(g1, vocab_size=-512), "header.vocab_size"),
    "v1 truncated": (lambda g, g1: g1[:300], "truncated"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_files_are_refused_with_the_field(tmp_path, good, good_v1, case):
    make, expected = MALFORMED[case]
    path = tmp_path / "bad.bin"
    path.write_bytes(make(good, good_v1))
    with pytest.raises(CheckpointError) as info:
        read_llama2c(path)
    message = str(info.value)
    assert message.startswith(str(path)) and expected in message, message
    assert "\n" not in message


def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "absent.bin")
    (tmp_path / "model.xyz").write_bytes(b"1234")
    with pytest.raises(CheckpointError, match="unknown model format"):
        load_checkpoint(tmp_path / "model.xyz")
    (tmp_path / "dir.bin").mkdir()
    with pytest.raises(CheckpointError, match="directory"):
        load_checkpoint(tmp_path / "dir.bin")


def test_non_finite_norm_weights_warn_naming_the_tensor(tmp_path):
    import warnings

    from lumi.formats._io import NonFiniteWeightWarning

    weights = synthetic_weights(SMALL)
    weights["layers.2.ffn_norm"] = weights["layers.2.ffn_norm"].copy()
    weights["layers.2.ffn_norm"][5] = np.nan
    path = tmp_path / "nan.bin"
    write_llama2c(path, SMALL, weights)
    with pytest.warns(NonFiniteWeightWarning, match=r"nan\.bin: layers\.2\.ffn_norm: holds NaN or Inf"):
        load_checkpoint(path)
    clean = tmp_path / "clean.bin"
    write_llama2c(clean, SMALL, synthetic_weights(SMALL))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_checkpoint(clean)  # no warning for a clean file
