"""``synthetic:PRESET[?seed=N]``: deterministic random weights of any preset shape.

No download, and quick to make (uniform draws in float32, one generator per
tensor). The scales are chosen so that activations stay finite and greedy
decisions are decisive: each projection keeps unit variance, the residual
branches are damped by 1/sqrt(2 n_layers), and the classifier gives logits with
a standard deviation near ``LOGIT_STD``. With a plain 0.02 initialisation the
logits are nearly uniform and the top-1/top-2 margin falls to float32 noise, so
two correct code paths would disagree on ids for no reason.
"""

from __future__ import annotations

import math
from urllib.parse import parse_qsl

import numpy as np

from ..config import PRESETS, ModelConfig
from ..errors import UsageError

PREFIX = "synthetic:"
LOGIT_STD = 8.0  # spread of the logits; sets the greedy top-1/top-2 margins
EMBED_STD = 0.5  # token embeddings: below the residual branches, so the next token is not just the current one


def is_synthetic(spec: str) -> bool:
    return str(spec).startswith(PREFIX)


def parse_spec(spec: str) -> tuple[str, int]:
    """'synthetic:stories15M?seed=3' -> ('stories15M', 3)."""
    body = spec[len(PREFIX):]
    preset, _, query = body.partition("?")
    if preset not in PRESETS:
        raise UsageError("MODEL", f"unknown preset {preset!r} in {spec!r}; presets: {', '.join(PRESETS)}")
    seed = 0
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
        if key != "seed":
            raise UsageError("MODEL", f"unknown option {key!r} in {spec!r} (known: seed)")
        if not value.isdigit():
            raise UsageError("MODEL", f"seed must be a non-negative integer in {spec!r}, got {value!r}")
        seed = int(value)
    return preset, seed


def _std(config: ModelConfig, name: str) -> float:
    """Standard deviation of one tensor's entries (see the module docstring)."""
    d, h = config.dim, config.hidden_dim
    branch = 1 / math.sqrt(2 * config.n_layers)
    kind = name.rsplit(".", 1)[-1]
    if kind in ("wq", "wk", "wv", "w1", "w3"):
        return 1 / math.sqrt(d)
    if kind == "wo":
        return branch / math.sqrt(d)
    if kind == "w2":
        return branch / math.sqrt(h)
    if kind in ("bq", "bk", "bv"):
        return 0.1
    if kind == "tok_embeddings":
        return EMBED_STD
    if kind == "output":
        return LOGIT_STD / math.sqrt(d)
    raise KeyError(name)


def synthetic_weights(config: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Weights for ``config`` drawn from uniform distributions, reproducible from ``seed``."""
    weights: dict[str, np.ndarray] = {}
    for index, (name, shape) in enumerate(config.tensor_shapes().items()):
        if name.endswith("norm"):
            a = np.ones(shape, dtype=np.float32)
            if name == "norm" and config.tie_embeddings:  # logits = norm(x) . embedding rows
                a *= np.float32(LOGIT_STD / (EMBED_STD * math.sqrt(config.dim)))
        else:
            rng = np.random.default_rng([seed, index])
            a = rng.random(shape, dtype=np.float32)  # U[0, 1)
            a -= np.float32(0.5)
            a *= np.float32(math.sqrt(12) * _std(config, name))  # U[-s sqrt3, s sqrt3] has std s
        weights[name] = a
    return weights


def load_synthetic(spec: str) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    preset, seed = parse_spec(spec)
    config = PRESETS[preset]
    return config, synthetic_weights(config, seed)
