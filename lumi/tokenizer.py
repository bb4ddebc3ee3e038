"""Tokenizers: text <-> token ids for Llama-family models.

Two file formats hold a Llama-style vocabulary (BPE pieces with scores, a
dummy-prefix space, byte fallback):

* ``tokenizer.model``: a sentencepiece model, encoded by the sentencepiece
  library (:class:`SentencePieceTokenizer`).
* ``tokenizer.bin``: llama2.c's export of the same vocabulary, encoded by the
  greedy BPE of llama2.c's ``run.c`` (:class:`Llama2cTokenizer`). Layout,
  little-endian, with no piece count (pieces run to the end of the file)::

      int32    max_token_length          longest piece, in bytes
      per piece:
        float32  score                   merge priority, higher merges first
        int32    length                  0..max_token_length
        uint8    bytes[length]           UTF-8 text, sentencepiece's '▁' as ' '

Both decode through one per-id table (:class:`DecodeTable`), so
:meth:`Tokenizer.decode` and :class:`StreamDecoder` render ids identically and
match ``sentencepiece``'s ``decode`` for the ids that encoding produces.
"""

from __future__ import annotations

import abc
import codecs
import enum
import heapq
import json
import math
import os
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece

from lumi.errors import CheckpointError, UsageError

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


class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece ``.model`` file, encoded by the sentencepiece library.

    Decoding assumes Llama 2's normalizer settings: a dummy prefix, and
    whitespace kept as written (no ``remove_extra_whitespaces``).
    """

    def __init__(self, path: str | os.PathLike):
        self._sp = sentencepiece.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(_read_bytes(path))
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
            self._tok = tokenizers.Tokenizer.from_str(_read_bytes(path).decode("utf-8"))
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


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Loads ``path`` by its suffix: ``.model`` (sentencepiece), ``.bin`` (llama2.c), ``.gguf`` (its metadata)
    or ``.json`` (a Hugging Face tokenizer.json, through the optional ``tokenizers`` library).

    Raises:
        CheckpointError: the file is missing, has another suffix, or is malformed.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(path, None, "no such file")
    loaders = {".model": SentencePieceTokenizer, ".bin": Llama2cTokenizer, ".gguf": _read_gguf_tokenizer,
               ".json": HFJsonTokenizer}
    loader = loaders.get(path.suffix.lower())
    if loader is None:
        raise CheckpointError(
            path, None, "unknown tokenizer format: expected a sentencepiece .model, a llama2.c .bin, a .gguf or a tokenizer.json"
        )
    return loader(path)


def _read_gguf_tokenizer(path, required: bool = True):
    from .formats.gguf import read_gguf_tokenizer  # here, not at the top: formats imports this module's neighbours

    return read_gguf_tokenizer(path, required)


def find_tokenizer(model_path: str | os.PathLike, vocab_size: int) -> tuple[Tokenizer | None, str | None]:
    """Looks beside a checkpoint for ``tokenizer.model``, then ``tokenizer.bin``.

    ``model_path`` is the checkpoint file, or a checkpoint folder to look in.

    Returns:
        ``(tokenizer, None)`` for the first file whose vocabulary has
        ``vocab_size`` pieces; ``(None, warning)`` when files exist but none
        fits (wrong size or unreadable), the warning one line naming each;
        ``(None, None)`` when there is no tokenizer file.
    """
    model_path = Path(model_path)
    folder = model_path if model_path.is_dir() else model_path.parent
    problems = []
    if model_path.is_file() and model_path.suffix.lower() == ".gguf":  # the checkpoint's own vocabulary first
        try:
            tokenizer = _read_gguf_tokenizer(model_path, required=False)  # None: no tokenizer metadata
        except CheckpointError as error:
            tokenizer = None
            problems.append(f"ignoring the vocabulary in {error}")
        if tokenizer is not None and tokenizer.vocab_size == vocab_size:
            return tokenizer, None
        if tokenizer is not None:
            problems.append(f"ignoring the vocabulary in {model_path}: {tokenizer.vocab_size} pieces, "
                            f"the model {vocab_size}")
    for name in TOKENIZER_NAMES:
        path = folder / name
        if not path.is_file():
            continue
        try:
            tokenizer = load_tokenizer(path)
        except CheckpointError as error:
            problems.append(f"ignoring {error}")
            continue
        if fits(tokenizer, vocab_size):
            return tokenizer, None
        problems.append(
            f"ignoring {path}: its vocabulary has {tokenizer.vocab_size} pieces, the model {vocab_size}"
        )
    if not problems:
        return None, None
    return None, "; ".join(problems) + "; output is token ids only"


def fits(tokenizer: Tokenizer, vocab_size: int) -> bool:
    """Whether every id the tokenizer makes is an id of a model with ``vocab_size`` embeddings."""
    if getattr(tokenizer, "fits_padded_vocab", False):
        return tokenizer.vocab_size <= vocab_size
    return tokenizer.vocab_size == vocab_size


def check_vocab(tokenizer: Tokenizer, vocab_size: int) -> None:
    """Raises ``UsageError`` unless ``tokenizer`` has the model's ``vocab_size`` pieces.

    A tokenizer.json may have fewer: HF models often pad the embedding past the tokenizer's ids.
    """
    if not fits(tokenizer, vocab_size):
        raise UsageError(
            "--tokenizer",
            f"{tokenizer.path} has {tokenizer.vocab_size} pieces but the model's vocabulary is {vocab_size}",
        )


def _read_bytes(path: str | os.PathLike) -> bytes:
    """The whole file, or a CheckpointError naming it."""
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise CheckpointError(path, None, f"cannot read ({error.strerror or error})") from error


def _read_llama2c(path: str | os.PathLike) -> tuple[list[bytes], list[float]]:
    """Pieces and scores of a tokenizer.bin, every field checked before it is used."""
    data = _read_bytes(path)
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
