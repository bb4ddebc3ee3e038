"""llama2.c's ``tokenizer.bin``, and a GGUF file's sentencepiece-style vocabulary, encoded like ``run.c``.

``tokenizer.bin`` is llama2.c's export of a sentencepiece vocabulary, encoded
by the greedy BPE of llama2.c's ``run.c``. Layout, little-endian, with no
piece count (pieces run to the end of the file)::

    int32    max_token_length          longest piece, in bytes
    per piece:
      float32  score                   merge priority, higher merges first
      int32    length                  0..max_token_length
      uint8    bytes[length]           UTF-8 text, sentencepiece's '▁' as ' '

A GGUF file's vocabulary (``formats.gguf.read_gguf_vocab``) is the same kind
of data in the file's metadata: ``gguf_tokenizer`` builds the same tokenizer.
"""

from __future__ import annotations

import heapq
import math
import os
import struct
from collections.abc import Sequence

from ..errors import CheckpointError
from ..formats import gguf
from .base import (BOS_ID, EOS_ID, FIRST_BYTE_ID, UNK_ID, MAX_TOKEN_LENGTH_LIMIT, SPACE, DecodeTable, PieceKind, Tokenizer,
                   read_bytes)


class Llama2cTokenizer(Tokenizer):
    """llama2.c's ``tokenizer.bin`` (layout in the module docstring), encoded like ``run.c``.

    Ids 0, 1, 2 are <unk>, <s>, </s>. If piece 3 is ``<0x00>`` the vocabulary
    uses byte fallback and ids 3..258 must be ``<0x00>``..``<0xFF>``;
    otherwise characters missing from the vocabulary encode as <unk>.
    """

    def __init__(self, path: str | os.PathLike):
        pieces, scores = _read_llama2c(path)
        self._setup(path, pieces, scores, _llama2c_kinds(path, pieces), BOS_ID, EOS_ID)

    @classmethod
    def from_pieces(
        cls,
        path: str | os.PathLike,
        pieces: Sequence[bytes],
        scores: Sequence[float],
        kinds: Sequence[PieceKind] | None = None,
        bos_id: int = BOS_ID,
        eos_id: int = EOS_ID,
    ) -> Llama2cTokenizer:
        """A vocabulary held in memory (e.g. a GGUF file's tokenizer metadata), encoded like ``run.c``.

        ``pieces`` are UTF-8 bytes with sentencepiece's '▁' already written as
        ' ', and byte pieces spelled ``<0xHH>``. Without ``kinds`` the pieces
        follow tokenizer.bin's fixed layout (ids 0..2 special, then 256 byte
        pieces if piece 3 is ``<0x00>``). With ``kinds``, only NORMAL pieces
        are matched and merged, the UNKNOWN piece (else id 0) stands for
        unencodable characters, and byte fallback is on when BYTE pieces exist
        (then all 256 must). ``path`` names the source in errors.
        """
        if len(scores) != len(pieces):
            raise CheckpointError(path, "scores", f"has {len(scores)} entries for {len(pieces)} pieces")
        if kinds is None:
            if len(pieces) < FIRST_BYTE_ID:
                raise CheckpointError(
                    path, "pieces", f"holds {len(pieces)} pieces; a vocabulary starts with <unk>, <s>, </s>"
                )
            kinds = _llama2c_kinds(path, pieces)
        elif len(kinds) != len(pieces):
            raise CheckpointError(path, "kinds", f"has {len(kinds)} entries for {len(pieces)} pieces")
        for name, token in (("bos_id", bos_id), ("eos_id", eos_id)):
            if not 0 <= token < len(pieces):
                raise CheckpointError(path, name, f"must be in 0..{len(pieces) - 1}, got {token}")
        self = cls.__new__(cls)
        self._setup(path, list(pieces), [float(s) for s in scores], list(kinds), bos_id, eos_id)
        return self

    def _setup(self, path, pieces: list[bytes], scores: list[float], kinds: list[PieceKind], bos_id: int,
               eos_id: int) -> None:
        """What both constructors share: the decode table, merge scores, text and byte lookups."""
        byte_ids: dict[int, int] = {}
        for i, (kind, piece) in enumerate(zip(kinds, pieces)):
            if kind is PieceKind.BYTE:
                if len(piece) != 6 or not (piece.startswith(b"<0x") and piece.endswith(b">")):
                    raise CheckpointError(path, f"piece[{i}]", f"a byte piece must be <0xHH>, got {piece!r}")
                try:
                    byte = int(piece[3:5], 16)
                except ValueError:
                    raise CheckpointError(path, f"piece[{i}]", f"a byte piece must be <0xHH>, got {piece!r}") from None
                byte_ids.setdefault(byte, i)
        if byte_ids and len(byte_ids) != 256:
            raise CheckpointError(path, "pieces", f"byte fallback needs all 256 byte pieces, found {len(byte_ids)}")
        super().__init__(path, DecodeTable(kinds, pieces), bos_id, eos_id)

        self._byte_ids = [byte_ids[b] for b in range(256)] if byte_ids else None  # byte fallback when set
        self._unk_id = next((i for i, kind in enumerate(kinds) if kind is PieceKind.UNKNOWN), UNK_ID)
        self._scores = scores  # id -> merge score
        # Text piece -> id, for code-point lookup and merges. Unlike run.c,
        # special and byte pieces are left out (as in sentencepiece), so literal
        # text such as "<s>" or "<0x41>" never becomes a control or byte id.
        # A duplicated piece keeps its lowest id.
        self._ids: dict[bytes, int] = {}
        for i, (kind, piece) in enumerate(zip(kinds, pieces)):
            if kind is PieceKind.NORMAL:
                self._ids.setdefault(piece, i)
        self._all_ids: dict[bytes, int] = {}  # every piece, specials included, for piece_id
        for i, piece in enumerate(pieces):
            self._all_ids.setdefault(piece, i)

    def piece_id(self, piece: str) -> int | None:
        return self._all_ids.get(piece.replace(SPACE, " ").encode())

    def encode(self, text: str, bos: bool = True) -> list[int]:
        ids = [self.bos_id] if bos else []
        if not text:
            return ids
        # sentencepiece writes ' ' as '▁' before encoding, so a literal '▁' in
        # the text is a space to it; do the same to give the same ids.
        text = " " + text.replace(SPACE, " ")  # ' ': the dummy prefix
        symbols: list[bytes | int] = []  # bytes: mergeable text; int: a final id
        for char in text:
            utf8 = char.encode()
            if utf8 in self._ids:
                symbols.append(utf8)
            elif self._byte_ids is not None:
                symbols.extend(self._byte_ids[byte] for byte in utf8)
            else:
                symbols.append(self._unk_id)
        return ids + self._merge(symbols)

    def _merge(self, symbols: list[bytes | int]) -> list[int]:
        """run.c's BPE: merge the adjacent pair whose concatenation is the
        highest-scoring piece, leftmost on ties, until no pair is a piece.

        run.c rescans every pair per merge (O(n^2)); here a heap holds the
        candidate pairs keyed by (-score, left position), and the symbols form
        a linked list. An entry is stale once either side has changed; it is
        skipped when popped. ``symbols`` is consumed.
        """
        n = len(symbols)
        next_ = list(range(1, n + 1))  # next live symbol, n at the end
        prev = list(range(-1, n - 1))  # previous live symbol, -1 at the start
        heap: list[tuple[float, int, bytes]] = []  # (-score, left index, merged piece)

        def push_pair(left: int) -> None:
            right = next_[left]
            if right == n:
                return
            a, b = symbols[left], symbols[right]
            if isinstance(a, bytes) and isinstance(b, bytes):
                merged = a + b
                token = self._ids.get(merged)
                if token is not None:
                    heapq.heappush(heap, (-self._scores[token], left, merged))

        for left in range(n - 1):
            push_pair(left)
        while heap:
            _, left, merged = heapq.heappop(heap)
            right = next_[left]
            a = symbols[left]
            b = symbols[right] if right < n else None
            if not (isinstance(a, bytes) and isinstance(b, bytes) and a + b == merged):
                continue  # stale: a side was merged away or grew
            symbols[left], symbols[right] = merged, None
            next_[left] = next_[right]
            if next_[left] < n:
                prev[next_[left]] = left
            if prev[left] >= 0:
                push_pair(prev[left])
            push_pair(left)
        return [s if isinstance(s, int) else self._ids[s] for s in symbols if s is not None]


def _read_llama2c(path: str | os.PathLike) -> tuple[list[bytes], list[float]]:
    """Pieces and scores of a tokenizer.bin, every field checked before it is used."""
    data = read_bytes(path)
    size = len(data)
    if size < 4:
        raise CheckpointError(path, "max_token_length", f"the file is {size} bytes, shorter than the 4-byte header")
    (max_token_length,) = struct.unpack_from("<i", data, 0)
    if not 1 <= max_token_length <= MAX_TOKEN_LENGTH_LIMIT:
        raise CheckpointError(
            path, "max_token_length", f"must be in 1..{MAX_TOKEN_LENGTH_LIMIT}, got {max_token_length}"
        )

    pieces: list[bytes] = []
    scores: list[float] = []
    offset = 4
    while offset < size:
        field = f"piece[{len(pieces)}]"
        left = size - offset
        if left < 8:  # float32 score + int32 length
            raise CheckpointError(
                path, f"{field}.{'score' if left < 4 else 'length'}", f"truncated: {left} bytes left at offset {offset}"
            )
        score, length = struct.unpack_from("<fi", data, offset)
        offset += 8
        if not math.isfinite(score):
            raise CheckpointError(path, f"{field}.score", f"must be finite, got {score}")
        if not 0 <= length <= max_token_length:
            raise CheckpointError(
                path, f"{field}.length", f"must be in 0..max_token_length ({max_token_length}), got {length}"
            )
        if length > size - offset:
            raise CheckpointError(
                path, f"{field}.bytes", f"truncated: {length} bytes at offset {offset}, the file has {size - offset}"
            )
        pieces.append(data[offset : offset + length])
        scores.append(score)
        offset += length

    if len(pieces) < FIRST_BYTE_ID:
        raise CheckpointError(
            path, "pieces", f"the file holds {len(pieces)} pieces; a vocabulary starts with <unk>, <s>, </s>"
        )
    return pieces, scores


def _llama2c_kinds(path: str | os.PathLike, pieces: Sequence[bytes]) -> list[PieceKind]:
    """tokenizer.bin's fixed layout: <unk>, <s>, </s>, then 256 byte pieces when piece 3 is <0x00>, then text."""
    first_text = FIRST_BYTE_ID + 256 if _check_byte_pieces(path, pieces) else FIRST_BYTE_ID
    kinds = [PieceKind.UNKNOWN, PieceKind.CONTROL, PieceKind.CONTROL]
    kinds += [PieceKind.BYTE] * (first_text - FIRST_BYTE_ID)
    kinds += [PieceKind.NORMAL] * (len(pieces) - first_text)
    return kinds


def _check_byte_pieces(path: str | os.PathLike, pieces: Sequence[bytes]) -> bool:
    """Whether the vocabulary uses byte fallback (piece 3 is <0x00>); if so, that all 256 are there in order."""
    if len(pieces) <= FIRST_BYTE_ID or pieces[FIRST_BYTE_ID] != b"<0x00>":
        return False
    if len(pieces) < FIRST_BYTE_ID + 256:
        raise CheckpointError(
            path, "pieces", f"byte fallback needs 259 pieces (3 special, 256 bytes), the file holds {len(pieces)}"
        )
    for byte in range(256):
        expected = b"<0x%02X>" % byte
        if pieces[FIRST_BYTE_ID + byte] != expected:
            raise CheckpointError(
                path,
                f"piece[{FIRST_BYTE_ID + byte}]",
                f"expected the byte piece {expected.decode()}, got {pieces[FIRST_BYTE_ID + byte]!r}",
            )
    return True


# how each GGUF token type is encoded: user-defined pieces are matched and merged like normal ones (not
# pre-matched whole, as sentencepiece does; Llama 2 has none), unused ones render as nothing
_GGUF_KINDS = {gguf.TOKEN_NORMAL: PieceKind.NORMAL, gguf.TOKEN_USER_DEFINED: PieceKind.NORMAL,
               gguf.TOKEN_UNKNOWN: PieceKind.UNKNOWN, gguf.TOKEN_CONTROL: PieceKind.CONTROL,
               gguf.TOKEN_UNUSED: PieceKind.CONTROL, gguf.TOKEN_BYTE: PieceKind.BYTE}


def gguf_tokenizer(path: str | os.PathLike, required: bool = True) -> Llama2cTokenizer | None:
    """A GGUF file's own vocabulary (``formats.gguf.read_gguf_vocab``) as a ``Llama2cTokenizer`` (run.c's greedy
    BPE by piece score, byte fallback). With ``required=False``, None for a file with no tokenizer metadata."""
    vocab = gguf.read_gguf_vocab(path, required)
    if vocab is None:
        return None
    kinds = None if vocab.types is None else [_GGUF_KINDS[t] for t in vocab.types]
    space = SPACE.encode()
    pieces = [t.replace(space, b" ") for t in vocab.tokens]
    return Llama2cTokenizer.from_pieces(vocab.path, pieces, vocab.scores, kinds, vocab.bos_id, vocab.eos_id)
