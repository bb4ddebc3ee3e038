"""lumi: a Llama-family inference engine in NumPy, and a benchmark harness for it.

    >>> import lumi
    >>> model = lumi.load_model("synthetic:stories15M")
    >>> result = lumi.generate(model, [1], max_new_tokens=16).run()
    >>> result.generated_ids
"""

from __future__ import annotations

__version__ = "0.1.0"

import os

from .backends import ALL_LAYERS, get_device
from .config import PRESETS, ModelConfig
from .errors import CheckpointError, LumiError, UsageError
from .formats import load_checkpoint
from .backends.numba import check_kernels, resolve
from .generate import Generation, generate
from .model import Model
from .sampler import SamplingParams


def load_model(spec: str | os.PathLike, *, max_seq_len: int | None = None, dtype: str = "fp32",
               backend: str = "numpy", gpu_layers: int = ALL_LAYERS, kernels: str = "auto") -> Model:
    """A ready model from a checkpoint path or ``synthetic:PRESET[?seed=N]``.

    ``max_seq_len`` caps the context (and so the KV cache) below the model's own;
    ``dtype`` is the weights' storage: "fp32", "fp16", "bf16" (16 bits, widened
    block by block in the products) or "int8" (blocks of 32 with float32 scales).
    ``backend="cupy"`` puts ``gpu_layers`` transformer layers on the GPU (-1: all of
    them plus the embedding, final norm and classifier; 0: none). ``kernels="numba"``
    runs decode's steps through lumi's fused kernels (``lumi.backends.numba``; needs numba),
    "numpy" the NumPy path, "auto" the fused kernels for fp16 when numba is installed
    (``backends.numba.resolve``); ``Model.decode_path()`` says which ran.
    """
    device = get_device(backend)  # before loading: a missing CuPy or GPU is a one-line error at once
    kernels = resolve(kernels, dtype)
    check_kernels(kernels)
    config, weights = load_checkpoint(spec)
    return Model(config, weights, max_seq_len=max_seq_len, dtype=dtype, device=device, gpu_layers=gpu_layers,
                 kernels=kernels)


__all__ = [
    "PRESETS", "CheckpointError", "Generation", "LumiError", "Model", "ModelConfig", "SamplingParams",
    "UsageError", "__version__", "generate", "load_checkpoint", "load_model",
]
