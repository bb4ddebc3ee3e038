"""Tokenizers: text <-> token ids for Llama-family models, one module per kind of file.

* ``tokenizer.model``: a sentencepiece model (``sentencepiece``).
* ``tokenizer.bin``: llama2.c's export of the same vocabulary, or a GGUF
  file's own vocabulary, encoded by ``run.c``'s greedy BPE (``llama2c``).
* ``tokenizer.json``: a Hugging Face tokenizer (``hf_json``, optional extra).

``load_tokenizer`` picks the kind by suffix; ``find_tokenizer`` looks beside a
checkpoint for one whose vocabulary fits the model.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import CheckpointError, UsageError
from .base import TOKENIZER_NAMES, DecodeTable, PieceKind, StreamDecoder, Tokenizer
from .hf_json import HFJsonTokenizer
from .llama2c import Llama2cTokenizer, gguf_tokenizer
from .sentencepiece import SentencePieceTokenizer



def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Loads ``path`` by its suffix: ``.model`` (sentencepiece), ``.bin`` (llama2.c), ``.gguf`` (its metadata)
    or ``.json`` (a Hugging Face tokenizer.json, through the optional ``tokenizers`` library).

    Raises:
        CheckpointError: the file is missing, has another suffix, or is malformed.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(path, None, "no such file")
    loaders = {".model": SentencePieceTokenizer, ".bin": Llama2cTokenizer, ".gguf": gguf_tokenizer,
               ".json": HFJsonTokenizer}
    loader = loaders.get(path.suffix.lower())
    if loader is None:
        raise CheckpointError(
            path, None, "unknown tokenizer format: expected a sentencepiece .model, a llama2.c .bin, a .gguf or a tokenizer.json"
        )
    return loader(path)


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
            tokenizer = gguf_tokenizer(model_path, required=False)  # None: no tokenizer metadata
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


__all__ = ["DecodeTable", "HFJsonTokenizer", "Llama2cTokenizer", "PieceKind", "SentencePieceTokenizer",
           "StreamDecoder", "Tokenizer", "check_vocab", "find_tokenizer", "fits", "gguf_tokenizer", "load_tokenizer"]
