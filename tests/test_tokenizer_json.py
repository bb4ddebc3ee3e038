"""Hugging Face tokenizer.json (byte-level BPE, as Llama 3 and Qwen2 ship) through the tokenizers library."""

import json

import pytest

from lumi.errors import CheckpointError, UsageError
from lumi.tokenizer import HFJsonTokenizer, check_vocab, find_tokenizer, load_tokenizer

tokenizers = pytest.importorskip("tokenizers", reason="the optional 'tokenizers' library is not installed")

CORPUS = [
    "Once upon a time, a little fox jumped over the lazy dog.",
    "Numbers 12345 and   runs of spaces\tand tabs.",
    "Accents: café, naïve, Ærøskøbing; Greek: αβγ; CJK: 你好世界; emoji: 🦊🎉",
    " leading space and trailing space ",
]
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny byte-level BPE tokenizer.json with Llama 3's special tokens, and its tokenizer_config.json."""
    folder = tmp_path_factory.mktemp("hf")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 20, trainer)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<|begin_of_text|>",
                                                              "eos_token": {"content": "<|eot_id|>"}}))
    return folder


def test_encode_matches_the_library_and_decode_round_trips(model_dir):
    ours = load_tokenizer(model_dir / "tokenizer.json")
    ref = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    assert isinstance(ours, HFJsonTokenizer)
    assert ours.bos_id == ref.token_to_id("<|begin_of_text|>") and ours.eos_id == ref.token_to_id("<|eot_id|>")
    for text in CORPUS:
        ids = ours.encode(text, bos=False)
        assert ids == ref.encode(text, add_special_tokens=False).ids
        assert ours.encode(text) == [ours.bos_id] + ids
        assert ours.decode(ids) == text == ref.decode(ids)  # byte-level: no dummy prefix to drop
        stream = ours.stream()
        assert "".join(stream.push(t) for t in [ours.bos_id] + ids) + stream.flush() == text


def test_special_pieces_are_single_ids_and_render_nothing(model_dir):
    ours = load_tokenizer(model_dir / "tokenizer.json")
    eot = ours.piece_id("<|eot_id|>")
    assert eot is not None and ours.piece_id("<|nonexistent|>") is None
    assert ours.decode([eot] + ours.encode("hi", bos=False)) == "hi"


def test_found_in_a_model_directory_and_padded_vocabularies_fit(model_dir):
    size = load_tokenizer(model_dir / "tokenizer.json").vocab_size
    tok, warning = find_tokenizer(model_dir, size + 64)  # HF models often pad the embedding
    assert tok is not None and warning is None
    check_vocab(tok, size + 64)
    with pytest.raises(UsageError, match="--tokenizer"):
        check_vocab(tok, size - 1)


def test_a_broken_tokenizer_json_is_a_clear_error(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(CheckpointError, match="not a tokenizer.json"):
        load_tokenizer(bad)


def test_llama3_chat_template_runs_on_a_tokenizer_json(model_dir):
    import lumi
    from lumi.chat import TEMPLATES, ChatSession

    tok = load_tokenizer(model_dir / "tokenizer.json")
    session = ChatSession(lumi.load_model("synthetic:stories260K"), tok, TEMPLATES["llama3"], system="Be brief.",
                          max_new_tokens=6)
    turn = session.reply("Hello fox")
    list(turn)
    ids = turn.prompt_ids
    assert ids[0] == tok.piece_id("<|begin_of_text|>") and ids.count(tok.piece_id("<|eot_id|>")) == 2
    assert tok.decode(ids).endswith("assistant\n\n")
