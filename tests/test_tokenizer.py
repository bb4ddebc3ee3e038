"""Tokenizers against sentencepiece, llama2.c's pinned ids, and malformed files.

The first half builds its vocabularies in ``tmp_path`` (a hand-made
tokenizer.bin and a tiny trained sentencepiece model) and runs anywhere; the
second half uses the Llama 2 tokenizer files from the shared assets.
"""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest
import sentencepiece as spm

from conftest import asset
from lumi.errors import CheckpointError, UsageError
from lumi.tokenizer import (
    Llama2cTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    check_vocab,
    find_tokenizer,
    load_tokenizer,
)

CORPUS_PATH = Path(__file__).parent / "data" / "tokenizer_corpus.txt"
# One entry per line, only the newline stripped (not splitlines(): it would
# also split at the form feed, vertical tab and U+2028 some lines contain).
CORPUS = CORPUS_PATH.read_text(encoding="utf-8").split("\n")[:-1]

SPACE = "\u2581"  # sentencepiece's space symbol '▁'
SPECIALS = [b"<unk>", b"\n<s>\n", b"\n</s>\n"]  # ids 0, 1, 2 as llama2.c's export writes them
BYTE_PIECES = [b"<0x%02X>" % byte for byte in range(256)]  # ids 3..258
FIRST_TEXT_ID = 3 + 256


def expected_round_trip(text: str) -> str:
    """What decode(encode(text)) gives back.

    sentencepiece turns ' ' into '▁' before encoding, so a literal '▁' in the
    text is a space to it and decodes as ' '. That is the one character class
    of the corpus that cannot round-trip; Llama2cTokenizer replaces '▁' the
    same way to give sentencepiece's ids.
    """
    return text.replace(SPACE, " ")


def llama2c_bytes(pieces: list[tuple[bytes, float]], max_token_length: int | None = None) -> bytes:
    """A tokenizer.bin: int32 max_token_length, then (float32 score, int32 length, bytes) per piece."""
    if max_token_length is None:
        max_token_length = max(len(piece) for piece, _ in pieces)
    out = [struct.pack("<i", max_token_length)]
    for piece, score in pieces:
        out.append(struct.pack("<fi", score, len(piece)) + piece)
    return b"".join(out)


def export_llama2c(sp: spm.SentencePieceProcessor) -> bytes:
    """A sentencepiece model in llama2.c's format, as llama2.c's tokenizer.py exports it."""
    pieces = []
    for i in range(sp.vocab_size()):
        piece = sp.id_to_piece(i)
        if i == sp.bos_id():
            piece = "\n<s>\n"
        elif i == sp.eos_id():
            piece = "\n</s>\n"
        pieces.append((piece.replace(SPACE, " ").encode(), sp.get_score(i)))
    return llama2c_bytes(pieces)


def stream_decode(tokenizer: Tokenizer, ids: list[int]) -> list[str]:
    """Each push's output, then flush's."""
    stream = tokenizer.stream()
    return [stream.push(token) for token in ids] + [stream.flush()]


# --- a hand-made tokenizer.bin --------------------------------------------------

TINY_TEXT = {  # piece -> score; the highest score merges first
    b" ": -100.0,
    b"a": -100.0,
    b"b": -100.0,
    b"c": -100.0,
    b"e": -100.0,
    b"h": -100.0,
    b"t": -100.0,
    b"<": -100.0,
    b">": -100.0,
    b"s": -100.0,
    b"u": -100.0,
    b"n": -100.0,
    b"k": -100.0,
    b"ab": -1.0,
    b"bc": -2.0,
    b"th": -1.0,
    b"he": -2.0,
    b" t": -3.0,
    b"the": -4.0,
    b" the": -5.0,
    # Enough to build "<unk>" and "<s>" from text, if specials were in the dictionary.
    b"<u": -6.0,
    b"<un": -6.0,
    b"<unk": -6.0,
    b"<s": -6.0,
}


def tiny_pieces(text: dict[bytes, float] = TINY_TEXT) -> list[tuple[bytes, float]]:
    return [(piece, 0.0) for piece in SPECIALS + BYTE_PIECES] + list(text.items())


@pytest.fixture
def tiny(tmp_path) -> Llama2cTokenizer:
    path = tmp_path / "tokenizer.bin"
    path.write_bytes(llama2c_bytes(tiny_pieces()))
    return Llama2cTokenizer(path)


def tiny_ids(*pieces: bytes) -> list[int]:
    """Ids of TINY_TEXT pieces in the tiny vocabulary."""
    return [FIRST_TEXT_ID + list(TINY_TEXT).index(piece) for piece in pieces]


def test_tiny_vocabulary(tiny):
    assert tiny.vocab_size == FIRST_TEXT_ID + len(TINY_TEXT)
    assert (tiny.bos_id, tiny.eos_id) == (1, 2)
    assert tiny.encode("") == [1]
    assert tiny.encode("", bos=False) == []


def test_encode_merges_highest_score_first(tmp_path, tiny):
    # "bc" (-2) loses to "ab" (-1); with the scores swapped, "bc" wins.
    assert tiny.encode("abc", bos=False) == tiny_ids(b" ", b"ab", b"c")
    path = tmp_path / "swapped.bin"
    path.write_bytes(llama2c_bytes(tiny_pieces({**TINY_TEXT, b"ab": -2.0, b"bc": -1.0})))
    assert Llama2cTokenizer(path).encode("abc", bos=False) == tiny_ids(b" ", b"a", b"bc")


def test_encode_ties_merge_leftmost(tmp_path, tiny):
    path = tmp_path / "tied.bin"
    path.write_bytes(llama2c_bytes(tiny_pieces({**TINY_TEXT, b"ab": -1.0, b"bc": -1.0})))
    assert Llama2cTokenizer(path).encode("abc", bos=False) == tiny_ids(b" ", b"ab", b"c")


def test_encode_chains_merges_through_the_dummy_prefix(tiny):
    # " ", "t", "h", "e": "th" (-1) beats "he" (-2) and " t" (-3); then "the" (-4), then " the" (-5).
    assert tiny.encode("the") == [1] + tiny_ids(b" the")
    assert tiny.encode("the the", bos=False) == tiny_ids(b" the", b" the")
    assert tiny.encode(" the", bos=False) == tiny_ids(b" ", b" the")


def test_encode_falls_back_to_bytes(tiny):
    # 'é' (C3 A9) and '😀' (F0 9F 98 80) are not pieces: each UTF-8 byte b becomes id b + 3.
    assert tiny.encode("aé😀", bos=False) == tiny_ids(b" ", b"a") + [
        0xC3 + 3, 0xA9 + 3, 0xF0 + 3, 0x9F + 3, 0x98 + 3, 0x80 + 3,
    ]


@pytest.mark.parametrize("text", ["<unk>", "<s>", "<0x41>"])
def test_literal_special_text_stays_text(tiny, text):
    ids = tiny.encode(text, bos=False)
    assert not set(ids) & {0, 1, 2, 3 + 0x41}, ids
    assert tiny.decode(ids) == text


def test_without_byte_pieces_unknown_characters_are_unk(tmp_path):
    path = tmp_path / "nobytes.bin"
    path.write_bytes(llama2c_bytes([(piece, 0.0) for piece in SPECIALS] + [(b" ", -1.0), (b"a", -1.0)]))
    tokenizer = Llama2cTokenizer(path)
    assert tokenizer.vocab_size == 5
    assert tokenizer.encode("aé a", bos=False) == [3, 4, 0, 3, 4]
    assert tokenizer.decode([3, 4, 0, 3, 4]) == "a ⁇  a"  # sentencepiece's rendering of <unk>


@pytest.mark.parametrize(
    "text", ["abc", "the the", "  two leading spaces", "trailing ", "é😀 <unk> \t\n", "<s></s>"]
)
def test_tiny_round_trip(tiny, text):
    ids = tiny.encode(text)
    assert tiny.decode(ids) == text
    assert "".join(stream_decode(tiny, ids)) == text


def test_decode_drops_only_the_dummy_prefix_space(tiny):
    the, space = tiny_ids(b" the", b" ")
    assert tiny.decode([the]) == "the"
    assert tiny.decode([1, the]) == "the"
    assert tiny.decode([1, 1, 2, the]) == "the"  # tokens that render nothing keep the start
    assert tiny.decode([the, 1, the]) == "the the"
    assert tiny.decode([space, the]) == " the"  # only the first visible piece loses its space
    assert tiny.decode([0, the]) == " ⁇  the"  # <unk> renders, so the next piece keeps its space
    assert tiny.decode([0x20 + 3, the]) == "  the"  # a byte piece's space is text, not a prefix
    assert tiny.decode([2]) == ""


def test_decode_rejects_ids_outside_the_vocabulary(tiny):
    for bad in (-1, tiny.vocab_size):
        with pytest.raises(ValueError, match="outside the vocabulary"):
            tiny.decode([bad])
        with pytest.raises(ValueError, match="outside the vocabulary"):
            tiny.stream().push(bad)


def test_stream_holds_back_incomplete_characters(tiny):
    ids = tiny.encode("aé")  # [BOS, ' ', 'a', C3, A9]
    assert stream_decode(tiny, ids) == ["", "", "a", "", "é", ""]


def test_stream_flush_and_decode_replace_a_cut_character(tiny):
    ids = tiny.encode("a😀")[:-1]  # the emoji's last byte missing
    assert tiny.decode(ids) == "a\ufffd"
    assert stream_decode(tiny, ids) == ["", "", "a", "", "", "", "\ufffd"]


# --- malformed tokenizer.bin ------------------------------------------------------


def _valid() -> bytes:
    return llama2c_bytes(tiny_pieces())


def _piece_offset(index: int) -> int:
    """Offset of piece ``index``'s score in ``_valid()``."""
    return 4 + sum(8 + len(piece) for piece, _ in tiny_pieces()[:index])


def _patch(data: bytes, offset: int, fmt: str, value) -> bytes:
    return data[:offset] + struct.pack(fmt, value) + data[offset + struct.calcsize(fmt) :]


MALFORMED = {
    "empty file": (b"", "max_token_length"),
    "short header": (b"\x05\x00", "max_token_length"),
    "zero max_token_length": (_patch(_valid(), 0, "<i", 0), "max_token_length"),
    "absurd max_token_length": (_patch(_valid(), 0, "<i", 1 << 30), "max_token_length"),
    "negative max_token_length": (_patch(_valid(), 0, "<i", -7), "max_token_length"),
    # (A file cut exactly between pieces reads as a shorter vocabulary: the format has no piece count.)
    "truncated piece bytes": (_valid()[: _piece_offset(278) + 8 + 2], "piece[278].bytes"),  # b" the"
    "truncated piece length": (_valid()[: _piece_offset(262) + 6], "piece[262].length"),
    "truncated piece score": (_valid()[: _piece_offset(262) + 2], "piece[262].score"),
    "negative length": (_patch(_valid(), _piece_offset(270) + 4, "<i", -3), "piece[270].length"),
    "length over max_token_length": (_patch(_valid(), _piece_offset(5) + 4, "<i", 100), "piece[5].length"),
    "nan score": (_patch(_valid(), _piece_offset(261), "<f", float("nan")), "piece[261].score"),
    "infinite score": (_patch(_valid(), _piece_offset(261), "<f", float("inf")), "piece[261].score"),
    "no specials": (llama2c_bytes([(b"<unk>", 0.0), (b"<s>", 0.0)]), "pieces"),
    "too few byte pieces": (llama2c_bytes(tiny_pieces()[:100]), "pieces"),
    "byte pieces out of order": (
        llama2c_bytes(tiny_pieces()[:5] + [(b"<0x03>", 0.0), (b"<0x02>", 0.0)] + tiny_pieces()[7:]),
        "piece[5]",
    ),
}


@pytest.mark.parametrize("data, field", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_tokenizer_bin(tmp_path, data, field):
    path = tmp_path / "tokenizer.bin"
    path.write_bytes(data)
    with pytest.raises(CheckpointError) as caught:
        load_tokenizer(path)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{path}: {field}: ")
    assert "\n" not in str(caught.value)


def test_load_tokenizer_rejects_missing_files_and_unknown_formats(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_tokenizer(tmp_path / "absent.model")
    other = tmp_path / "vocab.txt"
    other.write_text("{}")
    with pytest.raises(CheckpointError, match=r"vocab\.txt: unknown tokenizer format"):
        load_tokenizer(other)


@pytest.mark.parametrize("data", [b"", b"not a protobuf at all \xff\xfe", bytes(range(256)) * 4])
def test_corrupt_sentencepiece_model(tmp_path, data):
    path = tmp_path / "tokenizer.model"
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match=r"tokenizer\.model: not a sentencepiece model") as caught:
        load_tokenizer(path)
    assert caught.value.path == str(path)


# --- a tiny trained sentencepiece model ---------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A 400-piece BPE model trained on the corpus's ASCII lines, Llama 2's options.

    Like Llama 2's: byte fallback, identity normalization, a dummy prefix,
    whitespace kept as is, digits split. Characters outside the 99.5% coverage
    and every non-ASCII line go through byte fallback.
    """
    prefix = tmp_path_factory.mktemp("spm") / "tiny"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([line for line in CORPUS if line.isascii()]),
        model_prefix=str(prefix),
        model_type="bpe",
        vocab_size=400,
        byte_fallback=True,
        character_coverage=0.995,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        minloglevel=2,
    )
    return prefix.with_suffix(".model")


def test_trained_model_round_trips_the_corpus(trained):
    tokenizer = load_tokenizer(trained)
    assert isinstance(tokenizer, SentencePieceTokenizer)
    assert (tokenizer.vocab_size, tokenizer.bos_id, tokenizer.eos_id) == (400, 1, 2)
    reference = spm.SentencePieceProcessor(model_file=str(trained))
    for line in CORPUS:
        ids = tokenizer.encode(line)
        assert ids == [1] + reference.encode(line)
        assert tokenizer.decode(ids) == expected_round_trip(line)
        assert "".join(stream_decode(tokenizer, ids)) == expected_round_trip(line)


def test_trained_model_exported_to_llama2c_gives_the_same_ids(trained, tmp_path):
    sp = spm.SentencePieceProcessor(model_file=str(trained))
    path = tmp_path / "tokenizer.bin"
    path.write_bytes(export_llama2c(sp))
    exported, original = load_tokenizer(path), load_tokenizer(trained)
    assert isinstance(exported, Llama2cTokenizer)
    assert exported.vocab_size == original.vocab_size
    for line in CORPUS:
        assert exported.encode(line) == original.encode(line), line
    # Decoding agrees for every id, byte pieces and specials included.
    assert [exported.decode([i]) for i in range(400)] == [original.decode([i]) for i in range(400)]


def test_corrupt_copy_of_a_trained_model(trained, tmp_path):
    path = tmp_path / "truncated.model"
    path.write_bytes(trained.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"truncated\.model: "):
        load_tokenizer(path)


# --- find_tokenizer, check_vocab -------------------------------------------------------


def test_find_tokenizer_beside_a_checkpoint(tmp_path, trained):
    model = tmp_path / "model.bin"  # never opened: only its folder matters
    assert find_tokenizer(model, 400) == (None, None)

    (tmp_path / "tokenizer.bin").write_bytes(llama2c_bytes(tiny_pieces()))
    tiny_size = FIRST_TEXT_ID + len(TINY_TEXT)
    found, warning = find_tokenizer(model, tiny_size)
    assert isinstance(found, Llama2cTokenizer) and warning is None
    found, warning = find_tokenizer(tmp_path, tiny_size)  # a checkpoint folder works too
    assert isinstance(found, Llama2cTokenizer) and warning is None

    found, warning = find_tokenizer(model, 512)
    assert found is None
    assert warning == (
        f"ignoring {tmp_path / 'tokenizer.bin'}: its vocabulary has {tiny_size} pieces, the model 512; "
        "output is token ids only"
    )

    # tokenizer.model is tried first; a mismatch there falls through to tokenizer.bin.
    (tmp_path / "tokenizer.model").write_bytes(trained.read_bytes())
    found, warning = find_tokenizer(model, 400)
    assert isinstance(found, SentencePieceTokenizer) and warning is None
    found, warning = find_tokenizer(model, tiny_size)
    assert isinstance(found, Llama2cTokenizer) and warning is None


def test_find_tokenizer_reports_an_unreadable_file(tmp_path):
    (tmp_path / "tokenizer.bin").write_bytes(b"\x01")
    found, warning = find_tokenizer(tmp_path / "model.bin", 32000)
    assert found is None
    assert warning == f"ignoring {tmp_path / 'tokenizer.bin'}: max_token_length: " + (
        "the file is 1 bytes, shorter than the 4-byte header; output is token ids only"
    )


def test_check_vocab(tiny):
    check_vocab(tiny, tiny.vocab_size)
    with pytest.raises(UsageError) as caught:
        check_vocab(tiny, 512)
    assert caught.value.option == "--tokenizer"
    assert str(caught.value) == (
        f"--tokenizer: {tiny.path} has {tiny.vocab_size} pieces but the model's vocabulary is 512"
    )


# --- the Llama 2 tokenizer (shared assets) ------------------------------------------------


@pytest.fixture(scope="module")
def llama_model_path(assets) -> Path:
    return asset(assets, "models/tokenizer.model")


@pytest.fixture(scope="module")
def llama_bin_path(assets) -> Path:
    return asset(assets, "models/tokenizer.bin")


@pytest.fixture(scope="module")
def reference(llama_model_path) -> spm.SentencePieceProcessor:
    """sentencepiece itself, the reference both tokenizers are held to."""
    return spm.SentencePieceProcessor(model_file=str(llama_model_path))


@pytest.fixture(scope="module")
def llama_model(llama_model_path) -> Tokenizer:
    return load_tokenizer(llama_model_path)


@pytest.fixture(scope="module")
def llama_bin(llama_bin_path) -> Tokenizer:
    return load_tokenizer(llama_bin_path)


@pytest.fixture(params=["tokenizer.model", "tokenizer.bin"])
def llama(request) -> Tokenizer:
    return request.getfixturevalue("llama_model" if request.param == "tokenizer.model" else "llama_bin")


def test_llama_vocabularies(llama_model, llama_bin):
    assert isinstance(llama_model, SentencePieceTokenizer)
    assert isinstance(llama_bin, Llama2cTokenizer)
    for tokenizer in (llama_model, llama_bin):
        assert (tokenizer.vocab_size, tokenizer.bos_id, tokenizer.eos_id) == (32000, 1, 2)


def test_export_helper_reproduces_the_llama2c_file(reference, llama_bin_path):
    # The no-assets tests trust export_llama2c; it must match llama2.c's own export byte for byte.
    assert export_llama2c(reference) == llama_bin_path.read_bytes()


# Prompts and ids from llama2.c's test.c (taken there from Meta's Llama 2 examples).
LLAMA2C_PINNED = {
    "": [1],
    "I believe the meaning of life is": [1, 306, 4658, 278, 6593, 310, 2834, 338],
    "Simply put, the theory of relativity states that ": [
        1, 3439, 17632, 1925, 29892, 278, 6368, 310, 14215, 537, 5922, 393, 29871,
    ],
    "A brief message congratulating the team on the launch:\n\n        Hi everyone,\n\n        I just ": [
        1, 319, 11473, 2643, 378, 629, 271, 18099, 278, 3815, 373, 278, 6826, 29901, 13, 13, 4706, 6324, 14332,
        29892, 13, 13, 4706, 306, 925, 29871,
    ],
    "Translate English to French:\n\n        sea otter => loutre de mer\n        peppermint => menthe poivrée\n"
    "        plush girafe => girafe peluche\n        cheese =>": [
        1, 4103, 9632, 4223, 304, 5176, 29901, 13, 13, 4706, 7205, 4932, 357, 1149, 301, 449, 276, 316, 2778, 13,
        4706, 1236, 407, 837, 524, 1149, 6042, 354, 772, 440, 29878, 1318, 13, 4706, 715, 1878, 330, 3055, 1725,
        1149, 330, 3055, 1725, 4639, 28754, 13, 4706, 923, 968, 1149,
    ],
}


@pytest.mark.parametrize("text", LLAMA2C_PINNED)
def test_llama_pinned_ids(llama, text):
    assert llama.encode(text) == LLAMA2C_PINNED[text]
    assert llama.decode(LLAMA2C_PINNED[text]) == text


@pytest.mark.parametrize("bos", [True, False])
def test_llama_files_agree_with_sentencepiece_on_the_corpus(llama_model, llama_bin, reference, bos):
    assert len(CORPUS) >= 300
    mismatched = []
    for line in CORPUS:
        expected = reference.encode(line, add_bos=bos)
        if not llama_model.encode(line, bos=bos) == llama_bin.encode(line, bos=bos) == expected:
            mismatched.append(line)
    assert mismatched == []


def test_llama_files_agree_on_the_whole_corpus(llama_model, llama_bin, reference):
    text = "\n".join(CORPUS)
    ids = reference.encode(text, add_bos=True)
    assert llama_bin.encode(text) == ids
    assert llama_model.encode(text) == ids
    assert llama_bin.decode(ids) == expected_round_trip(text)


def test_llama_round_trip(llama):
    assert any(SPACE in line for line in CORPUS)  # the '▁' lines expected_round_trip explains
    failed = [line for line in CORPUS if llama.decode(llama.encode(line)) != expected_round_trip(line)]
    assert failed == []


def test_llama_stream_equals_decode(llama):
    for line in CORPUS:
        ids = llama.encode(line)
        chunks = stream_decode(llama, ids)
        assert "".join(chunks) == llama.decode(ids) == expected_round_trip(line), line
    # Byte-fallback characters arrive whole: the first bytes of '😀' print nothing.
    assert stream_decode(llama, llama.encode("😀")) == ["", "", "", "", "", "😀", ""]


def test_llama_encode_matches_sentencepiece_on_random_text(llama_model, llama_bin, reference):
    """Seeded random strings of vocabulary pieces and awkward characters."""
    rng = random.Random(0)
    pieces = [reference.id_to_piece(i).replace(SPACE, " ") for i in range(259, 32000)]
    awkward = [" ", "  ", "\t", "\n", "😀", "\u0301", SPACE, "<s>", "</s>", "<unk>", "<0x41>", "\x00", "\ufffd"]
    for _ in range(2000):
        parts = []
        for _ in range(rng.randrange(12)):
            roll = rng.random()
            if roll < 0.8:
                parts.append(rng.choice(pieces))
            elif roll < 0.9:
                parts.append(rng.choice(awkward))
            else:
                parts.append(chr(rng.choice([rng.randrange(0x20, 0xD800), rng.randrange(0xE000, 0x30000)])))
        text = "".join(parts)
        expected = reference.encode(text)
        assert llama_bin.encode(text, bos=False) == expected, text
        assert llama_model.encode(text, bos=False) == expected, text


def test_llama_decode_matches_sentencepiece_on_random_ids(llama, reference):
    """Seeded random id sequences, heavy on specials, byte pieces and space pieces.

    Sequences whose bytes are not valid UTF-8 are only checked for U+FFFD:
    sentencepiece writes one per invalid byte, Python's 'replace' one per
    maximal invalid subsequence.
    """
    rng = random.Random(1)
    awkward = [0, 1, 2, 13, 35, 259, 29871, *range(3, 259)]
    compared = 0
    for _ in range(5000):
        ids = [rng.choice(awkward) if rng.random() < 0.4 else rng.randrange(32000) for _ in range(rng.randrange(6))]
        expected = reference.decode(ids)
        if "\ufffd" in expected:
            assert "\ufffd" in llama.decode(ids)
            continue
        assert llama.decode(ids) == expected, ids
        assert "".join(stream_decode(llama, ids)) == expected, ids
        compared += 1
    assert compared > 3000  # of 5000; the rest hold stray byte pieces


def test_find_tokenizer_warns_for_a_512_piece_model(llama_model_path, llama_bin_path):
    models = llama_model_path.parent
    found, warning = find_tokenizer(models / "fake-512.bin", 512)
    assert found is None
    assert warning == (
        f"ignoring {llama_model_path}: its vocabulary has 32000 pieces, the model 512; "
        f"ignoring {llama_bin_path}: its vocabulary has 32000 pieces, the model 512; "
        "output is token ids only"
    )
    found, warning = find_tokenizer(models / "fake-32000.bin", 32000)
    assert isinstance(found, SentencePieceTokenizer) and warning is None
    assert found.path == str(llama_model_path)
