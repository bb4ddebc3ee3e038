"""A sentencepiece ``tokenizer.model``, encoded by the sentencepiece library."""

from __future__ import annotations

import os

import sentencepiece

from ..errors import CheckpointError
from .base import SPACE, DecodeTable, PieceKind, Tokenizer, read_bytes


class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece ``.model`` file, encoded by the sentencepiece library.

    Decoding assumes Llama 2's normalizer settings: a dummy prefix, and
    whitespace kept as written (no ``remove_extra_whitespaces``).
    """

    def __init__(self, path: str | os.PathLike):
        self._sp = sentencepiece.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(read_bytes(path))
        except RuntimeError as error:  # sentencepiece's only error type for a bad model
            raise CheckpointError(path, None, f"not a sentencepiece model ({error})") from error
        kinds, pieces = [], []
        for i in range(self._sp.vocab_size()):
            if self._sp.is_control(i):
                kinds.append(PieceKind.CONTROL)
            elif self._sp.is_unknown(i):
                kinds.append(PieceKind.UNKNOWN)
            elif self._sp.is_byte(i):
                kinds.append(PieceKind.BYTE)
            else:
                kinds.append(PieceKind.NORMAL)
            pieces.append(self._sp.id_to_piece(i).replace(SPACE, " ").encode())
        super().__init__(path, DecodeTable(kinds, pieces), self._sp.bos_id(), self._sp.eos_id())

    def encode(self, text: str, bos: bool = True) -> list[int]:
        return self._sp.encode(text, add_bos=bos)

    def piece_id(self, piece: str) -> int | None:
        token = self._sp.piece_to_id(piece)
        return token if self._sp.id_to_piece(token) == piece else None
