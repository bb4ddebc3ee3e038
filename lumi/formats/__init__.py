"""Checkpoint readers. Each returns ``(ModelConfig, weights)`` with weights keyed
by the canonical names of ``ModelConfig.tensor_shapes()``, (out, in) row order;
format quirks (row permutations, reversed dims, negative vocab sizes) stay in
the reader."""

from __future__ import annotations

import os

import numpy as np

from ..config import ModelConfig
from ..errors import CheckpointError
from .gguf import is_gguf, read_gguf
from .hf import is_hf, read_hf
from ._io import warn_non_finite
from .llama2c import is_llama2c, read_llama2c
from .synthetic import is_synthetic, load_synthetic


def load_checkpoint(spec: str | os.PathLike) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """Read a model: GGUF, a llama2.c ``.bin``, a Hugging Face directory (safetensors), or ``synthetic:PRESET[?seed=N]``."""
    spec = os.fspath(spec)
    if is_synthetic(spec):
        return load_synthetic(spec)
    if not os.path.exists(spec):
        raise CheckpointError(spec, None, "no such file")
    if is_gguf(spec):  # before llama2.c: it sniffs the magic, so a GGUF named *.bin still reads as GGUF
        config, weights = read_gguf(spec)
    elif is_llama2c(spec):
        config, weights = read_llama2c(spec)
    elif is_hf(spec):
        return read_hf(spec)  # warns about non-finite vectors itself, naming the shard and the HF tensor
    else:
        raise CheckpointError(spec, None, "unknown model format (expected a GGUF file, a llama2.c .bin file, a "
                                          "Hugging Face model directory or synthetic:PRESET)")
    warn_non_finite(weights, lambda name: spec)
    return config, weights
