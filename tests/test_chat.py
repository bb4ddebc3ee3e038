"""Chat keeps the KV cache across turns and gives what re-encoding the whole history would."""

import io

import pytest
import sentencepiece

import lumi
from lumi.chat import TEMPLATES, ChatSession
from lumi.cli import main
from lumi.formats.llama2c import write_llama2c
from lumi.formats.synthetic import synthetic_weights
from lumi.tokenizer import SentencePieceTokenizer

TEXT = "\n".join(f"Line {i}: the quick brown fox {i % 7} jumps over the lazy dog, says the [INST] teacher." * 2
                 for i in range(300))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A 512-piece sentencepiece model (the vocabulary of stories260K), with <s> and </s> as controls."""
    folder = tmp_path_factory.mktemp("sp")
    (folder / "corpus.txt").write_text(TEXT)
    sentencepiece.SentencePieceTrainer.train(
        input=str(folder / "corpus.txt"), model_prefix=str(folder / "tokenizer"), vocab_size=512, model_type="bpe",
        byte_fallback=True, bos_id=1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2)
    return SentencePieceTokenizer(folder / "tokenizer.model")


def test_turns_reuse_the_cache_and_match_a_fresh_run(tokenizer):
    model = lumi.load_model("synthetic:stories260K?seed=2")
    session = ChatSession(model, tokenizer, TEMPLATES["llama2"], system="Be brief.", max_new_tokens=12)
    first = session.reply("Hello fox")
    first_ids = list(first)
    assert first.prompt_ids[0] == tokenizer.bos_id and first.start_pos == 0
    cached = len(session.ids)  # the first turn, in the cache: its prompt and reply but the reply's last token
    assert cached == len(first.prompt_ids) + len(first_ids) - 1
    history = session.ids + session.pending  # everything before turn two's own text
    second = session.reply("And the dog?")
    second_ids = list(second)
    # the second turn prefilled only its own tokens, after the cached first turn
    assert second.start_pos == cached
    assert second.prompt_ids[0] == first_ids[-1]  # the reply's last token is fed first
    assert second.stats.prefill_tokens == len(second.prompt_ids) < cached
    # a fresh model fed the whole conversation at once picks the same reply
    fresh = lumi.load_model("synthetic:stories260K?seed=2")
    whole = history + session.encode(TEMPLATES["llama2"].user.format(content="And the dog?"))
    gen = lumi.generate(fresh, whole, len(second_ids), stop_ids=session.stop_ids).run()
    assert gen.generated_ids == second_ids


def test_template_specials_are_single_ids(tokenizer):
    session = ChatSession(lumi.load_model("synthetic:stories260K"), tokenizer, TEMPLATES["llama2"])
    ids = session.encode("<s>[INST] hi [/INST]</s>")
    assert ids[0] == tokenizer.bos_id and ids[-1] == tokenizer.eos_id and ids.count(1) == 1
    with pytest.raises(lumi.UsageError, match="begin_of_text"):
        ChatSession(lumi.load_model("synthetic:stories260K"), tokenizer, TEMPLATES["llama3"])


def test_chat_cli_reads_turns_from_stdin(tokenizer, tmp_path, monkeypatch, capsys):
    checkpoint = tmp_path / "model.bin"
    config = lumi.PRESETS["stories260K"]
    write_llama2c(checkpoint, config, synthetic_weights(config, seed=2))
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello fox\n\nAnd the dog?\n"))
    code = main(["chat", str(checkpoint), "--template", "llama2", "--tokenizer", tokenizer.path, "-n", "8",
                 "--temperature", "0"])
    out, err = capsys.readouterr()
    assert code == 0
    assert out.count("\n") == 2 and err.count("context") == 2  # two replies, each with its closing line
