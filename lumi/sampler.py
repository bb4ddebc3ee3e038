"""Choosing the next token: greedy, temperature, top-k, top-p.

Pure functions of the logits, the parameters and an explicit, seeded
``numpy.random.Generator``: the same seed gives the same tokens. The uniform
draw happens here on the host, so any backend that hands over its logits (or
runs the same inverse-CDF selection) picks the same ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import UsageError

F32 = np.float32


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # keep the k most likely tokens; 0 = all
    top_p: float = 1.0  # keep the smallest set whose probability reaches p; 1 = all

    def __post_init__(self):
        if not self.temperature >= 0:
            raise UsageError("--temperature", f"must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise UsageError("--top-k", f"must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise UsageError("--top-p", f"must be in (0, 1], got {self.top_p}")


def sample(logits, params: SamplingParams, rng: np.random.Generator) -> int:
    """One token id from logits (V,) float32."""
    if params.temperature == 0:
        return int(np.argmax(logits))
    z = np.asarray(logits, dtype=F32) / F32(params.temperature)  # (V,)
    ids = None  # candidate ids, most likely first; None = the whole vocabulary in id order
    if 0 < params.top_k < z.size:
        ids = np.argpartition(z, -params.top_k)[-params.top_k:]
    if params.top_p < 1:
        if ids is None:
            # llama2.c's shortcut: a token below (1 - p) / (V - 1) of the top can never be needed
            # to reach mass p, so sort only the rest
            probs = _softmax(z)
            ids = np.flatnonzero(probs >= F32((1 - params.top_p) / (z.size - 1)))
        ids = ids[np.argsort(-z[ids], kind="stable")]
        probs = _softmax(z[ids])
        keep = int(np.searchsorted(np.cumsum(probs), F32(params.top_p))) + 1
        ids = ids[:keep]
    elif ids is not None:
        ids = np.sort(ids)
    probs = _softmax(z if ids is None else z[ids])
    cdf = np.cumsum(probs)  # float32
    u = rng.random(dtype=F32) * cdf[-1]
    i = min(int(np.searchsorted(cdf, u, side="right")), cdf.size - 1)
    return int(i if ids is None else ids[i])


def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()
