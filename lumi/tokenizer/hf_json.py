"""A Hugging Face ``tokenizer.json`` (Llama 3, Qwen2...), encoded by the optional ``tokenizers`` library."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import CheckpointError
from .base import SPACE, DecodeTable, PieceKind, Tokenizer, read_bytes


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level BPE spells each byte as one printable character: that character -> the byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
                 *range(ord("\u00ae"), ord("\u00ff") + 1)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


class HFJsonTokenizer(Tokenizer):
    """A Hugging Face ``tokenizer.json`` (Llama 3, Qwen2...), encoded by the ``tokenizers`` library.

    An optional extra (``pip install 'lumi[tokenizers]'``). Byte-level BPE
    vocabularies (GPT-2's printable spelling of bytes) and sentencepiece-style
    ones ('▁' for spaces, ``<0xHH>`` byte pieces) both decode through the shared
    table. BOS and EOS come from ``tokenizer_config.json`` beside it when present
    (a model without a BOS, like Qwen2, gets none). The model's embedding may be
    padded past the tokenizer's ids, so any model vocabulary at least this large fits.
    """

    fits_padded_vocab = True

    def __init__(self, path: str | os.PathLike):
        try:
            import tokenizers
        except ImportError:
            raise CheckpointError(path, None, "reading tokenizer.json needs the optional 'tokenizers' library: "
                                              "pip install 'lumi[tokenizers]'") from None
        try:
            self._tok = tokenizers.Tokenizer.from_str(read_bytes(path).decode("utf-8"))
        except Exception as error:  # the library raises plain Exceptions for a bad file
            raise CheckpointError(path, None, f"not a tokenizer.json ({str(error).splitlines()[0][:200]})") from None
        vocab = self._tok.get_vocab(with_added_tokens=True)  # piece -> id
        size = max(vocab.values()) + 1 if vocab else 0
        specials = {t.content for t in self._tok.get_added_tokens_decoder().values() if t.special}
        byte_level = "ByteLevel" in json.dumps(json.loads(self._tok.to_str()).get("decoder"))
        alphabet = _byte_level_alphabet() if byte_level else {}
        kinds, pieces = [PieceKind.CONTROL] * size, [b""] * size
        for piece, i in vocab.items():
            if piece in specials:
                continue
            if byte_level:
                kinds[i], pieces[i] = PieceKind.NORMAL, bytes(alphabet.get(c, 0) for c in piece)
            elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
                kinds[i], pieces[i] = PieceKind.BYTE, piece.encode()
            else:
                kinds[i], pieces[i] = PieceKind.NORMAL, piece.replace(SPACE, " ").encode()
        self._vocab = vocab
        config = _tokenizer_config(Path(path).parent / "tokenizer_config.json")
        bos, eos = (self._special(config.get(key)) for key in ("bos_token", "eos_token"))
        super().__init__(path, DecodeTable(kinds, pieces, dummy_prefix=not byte_level), bos, eos)

    def _special(self, token) -> int | None:
        content = token.get("content") if isinstance(token, dict) else token
        return self._vocab.get(content) if isinstance(content, str) else None

    def encode(self, text: str, bos: bool = True) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return ([self.bos_id] if bos and self.bos_id is not None else []) + ids

    def piece_id(self, piece: str) -> int | None:
        return self._vocab.get(piece)


def _tokenizer_config(path: Path) -> dict:
    """tokenizer_config.json as a dict ({} when absent); only plain keys are read, nothing is run."""
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(path, None, f"not valid JSON ({error})") from None
    return config if isinstance(config, dict) else {}
