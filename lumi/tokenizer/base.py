"""What every tokenizer shares: piece kinds, one per-id decode table, streaming decode, the base class.

Every tokenizer decodes through one per-id table (:class:`DecodeTable`), so
:meth:`Tokenizer.decode` and :class:`StreamDecoder` render ids identically and
match ``sentencepiece``'s ``decode`` for the ids that encoding produces.
"""

from __future__ import annotations

import abc
import codecs
import enum
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..errors import CheckpointError

SPACE = "\u2581"  # '▁': sentencepiece's stand-in for ' ' inside pieces
UNK_SURFACE = " \u2047 ".encode()  # ' ⁇ ': how sentencepiece renders <unk>

# llama2.c's fixed special ids; tokenizer.bin does not record them.
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
FIRST_BYTE_ID = 3  # with byte fallback, ids 3..258 are the pieces <0x00>..<0xFF>

MAX_TOKEN_LENGTH_LIMIT = 65536  # sanity bound on tokenizer.bin's header
TOKENIZER_NAMES = ("tokenizer.model", "tokenizer.bin", "tokenizer.json")  # find_tokenizer's search order


class PieceKind(enum.Enum):
    """What a vocabulary entry is, which decides how it renders as text."""

    NORMAL = "normal"  # text; '▁' already replaced by ' '
    BYTE = "byte"  # '<0xHH>': the single raw byte 0xHH
    CONTROL = "control"  # <s>, </s>: renders as nothing
    UNKNOWN = "unknown"  # <unk>: renders as ' ⁇ '


class DecodeTable:
    """Per-id bytes that decoding joins, shared by ``decode`` and ``StreamDecoder``.

    ``text[id]`` is the UTF-8 (or, for byte pieces, raw) bytes token ``id``
    adds to the output. ``space_prefixed[id]`` marks text pieces that start
    with a space: on the first token that renders anything, that space is the
    dummy prefix encoding added, and it is dropped (as sentencepiece does).
    """

    def __init__(self, kinds: Sequence[PieceKind], pieces: Sequence[bytes], dummy_prefix: bool = True):
        assert len(kinds) == len(pieces)
        self.text: list[bytes] = []
        self.space_prefixed: list[bool] = []
        for kind, piece in zip(kinds, pieces):
            if kind is PieceKind.NORMAL:
                text = piece
            elif kind is PieceKind.BYTE:
                text = bytes([int(piece[3:5], 16)])  # b"<0x0A>" -> b"\n"
            elif kind is PieceKind.CONTROL:
                text = b""
            else:
                text = UNK_SURFACE
            self.text.append(text)
            self.space_prefixed.append(dummy_prefix and kind is PieceKind.NORMAL and text.startswith(b" "))

    def __len__(self) -> int:
        return len(self.text)

    def render(self, token: int, at_start: bool) -> tuple[bytes, bool]:
        """The bytes ``token`` adds, and whether the output is still at its start.

        The output stays at its start through tokens that render nothing (BOS,
        EOS), so ``[BOS, '▁Hello']`` decodes to ``"Hello"`` like ``['▁Hello']``.
        """
        if not 0 <= token < len(self.text):
            raise ValueError(f"token id {token} is outside the vocabulary 0..{len(self.text) - 1}")
        text = self.text[token]
        if not at_start:
            return text, False
        if not text:
            return text, True
        return (text[1:] if self.space_prefixed[token] else text), False


class StreamDecoder:
    """Decodes ids one at a time, for printing tokens as they are generated.

    Push every id from the start of the sequence, prompt included: only the
    first visible piece loses its dummy-prefix space. Bytes of a character
    split across byte-fallback tokens are held back until it is complete, so
    the concatenated output of ``push`` and ``flush`` equals ``decode(ids)``.
    """

    def __init__(self, table: DecodeTable):
        self._table = table
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._at_start = True

    def push(self, token: int) -> str:
        """Adds one id; returns the text it completes (possibly "")."""
        piece, self._at_start = self._table.render(token, self._at_start)
        return self._utf8.decode(piece)

    def flush(self) -> str:
        """Ends the stream: an unfinished UTF-8 sequence comes out as U+FFFD."""
        return self._utf8.decode(b"", final=True)


class Tokenizer(abc.ABC):
    """A vocabulary that turns text into ids and back.

    Attributes:
        path: the file the vocabulary came from.
        vocab_size: number of pieces; ids run 0..vocab_size-1.
        bos_id, eos_id: begin- and end-of-sequence ids.
    """

    def __init__(self, path: str | os.PathLike, table: DecodeTable, bos_id: int, eos_id: int):
        self.path = os.fspath(path)
        self.vocab_size = len(table)
        self.bos_id = bos_id
        self.eos_id = eos_id
        self._table = table

    @abc.abstractmethod
    def encode(self, text: str, bos: bool = True) -> list[int]:
        """Token ids of ``text``, preceded by ``bos_id`` when ``bos``."""

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids``; invalid UTF-8 from byte pieces becomes U+FFFD.

        Matches sentencepiece's ``decode`` except on invalid UTF-8, where
        Python's 'replace' gives one U+FFFD per maximal invalid subpart and
        sentencepiece one per byte.
        """
        out = bytearray()
        at_start = True
        for token in ids:
            piece, at_start = self._table.render(token, at_start)
            out += piece
        return out.decode("utf-8", errors="replace")

    def stream(self) -> StreamDecoder:
        """A fresh incremental decoder over this vocabulary."""
        return StreamDecoder(self._table)

    @abc.abstractmethod
    def piece_id(self, piece: str) -> int | None:
        """The id of a piece spelled exactly so (e.g. ``"</s>"``, ``"<|eot_id|>"``), or None."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r}, vocab_size={self.vocab_size})"


def read_bytes(path: str | os.PathLike) -> bytes:
    """The whole file, or a CheckpointError naming it."""
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise CheckpointError(path, None, f"cannot read ({error.strerror or error})") from error
