"""Choosing the next token: greedy, temperature, top-k, top-p.

Pure functions of the logits, the parameters and an explicit, seeded
``numpy.random.Generator``: the same seed gives the same tokens. ``choose``
runs on the logits' own device and draws its one uniform number on the host,
so every backend runs the same inverse-CDF selection and picks the same ids.
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
    """One token id from host logits (V,) float32."""
    return int(choose(np.asarray(logits), params, rng, np))


def choose(logits, params: SamplingParams, rng: np.random.Generator, xp=np):
    """The next token as a 0-d int32 array on the logits' device (``xp``: numpy, cupy).

    Everything runs where the logits are, so a GPU sends only these 4 bytes to
    the host. The one random number is drawn on the host from ``rng`` (a float32
    uniform, whatever the backend) and the selection is an inverse CDF over the
    candidates, most likely first: the same seed gives the same tokens on every
    backend, up to float32 rounding at a CDF boundary.
    """
    if params.temperature == 0:
        return xp.argmax(logits).astype(np.int32)
    u = rng.random(dtype=F32)  # drawn first, so the stream never depends on the path below
    z = logits.astype(F32, copy=False) / F32(params.temperature)  # (V,)
    V = z.shape[0]
    if params.top_k == 0 and params.top_p == 1:  # the whole vocabulary, in id order
        cdf = xp.cumsum(_softmax(z, xp))
        return xp.minimum(xp.searchsorted(cdf, u * cdf[-1], side="right"), V - 1).astype(np.int32)
    k = params.top_k if 0 < params.top_k < V else V
    if params.top_p < 1 and k == V:
        # llama2.c's shortcut: a token below (1 - p) / (V - 1) of the probability can never be
        # needed to reach mass p; it drops out before the sort (a mask on a device, where
        # compacting would need the count on the host)
        low = _softmax(z, xp) < F32((1 - params.top_p) / (V - 1))
        if xp is np:
            candidates = np.flatnonzero(~low)
            order = candidates[np.argsort(-z[candidates], kind="stable")]
        else:
            order = xp.argsort(-xp.where(low, F32(-np.inf), z))  # CuPy's sort is stable
    elif xp is np and k < V:  # on the host, partition before sorting: O(V) to find the k best, then a sort of k
        candidates = np.argpartition(z, -k)[-k:]
        order = candidates[np.argsort(-z[candidates], kind="stable")]
    else:
        order = xp.argsort(-z, kind="stable") if xp is np else xp.argsort(-z)[:k]
    zs = z[order]  # candidates, most likely first
    if params.top_p < 1:
        cdf = xp.cumsum(_softmax(zs, xp))
        before = xp.concatenate([xp.zeros(1, dtype=F32), cdf[:-1]])  # mass of the more likely candidates
        zs = xp.where(before < F32(params.top_p), zs, F32(-np.inf))  # the nucleus: up to mass p, its last one included
    probs = _softmax(zs, xp)
    cdf = xp.cumsum(probs)
    last = xp.count_nonzero(probs) - 1 if params.top_p < 1 else zs.shape[0] - 1
    i = xp.minimum(xp.searchsorted(cdf, u * cdf[-1], side="right"), last)
    return order[i].astype(np.int32)


def _softmax(z, xp):
    e = xp.exp(z - z.max())
    return e / e.sum()
