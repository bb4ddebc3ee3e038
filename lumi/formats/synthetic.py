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
import os
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qsl

import numpy as np

from ..config import PRESETS, ModelConfig
from ..errors import UsageError
from ..model import STACKED_ROWS

PREFIX = "synthetic:"
LOGIT_STD = 16.0  # spread of the logits; sets the greedy top-1/top-2 margins
# Norm of a token's embedding relative to sqrt(dim). Kept small: the first norm
# rescales it anyway, and with a tied classifier a large one makes each token
# predict itself forever.
EMBED_RMS = 0.5


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
        return EMBED_RMS / math.sqrt(d)
    if kind == "output":
        return LOGIT_STD / math.sqrt(d)
    raise KeyError(name)


def _fill(job) -> None:
    """Draw one tensor: uniform with the given std, from its own generator."""
    seed, index, out, std = job
    rng = np.random.Generator(np.random.SFC64(np.random.SeedSequence([seed, index])))
    rng.random(dtype=np.float32, out=out)  # U[0, 1)
    out -= np.float32(0.5)
    out *= np.float32(math.sqrt(12) * std)  # U[-s sqrt3, s sqrt3] has std s


def synthetic_weights(config: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Weights for ``config`` drawn from uniform distributions, reproducible from ``seed``.

    Tensors the model stacks (q/k/v, gate/up) are drawn into one buffer per
    layer so the model takes them without a copy; tensors are drawn in parallel,
    each from its own generator, so the result does not depend on the schedule.
    """
    shapes = config.tensor_shapes()
    index = {name: i for i, name in enumerate(shapes)}
    weights: dict[str, np.ndarray] = {}
    jobs = []
    for name, shape in shapes.items():
        if name in weights:
            continue
        if name.endswith("norm"):
            a = np.ones(shape, dtype=np.float32)
            if name == "norm" and config.tie_embeddings:  # logits = norm(x) . embedding rows
                a *= np.float32(LOGIT_STD / EMBED_RMS)
            weights[name] = a
            continue
        prefix, _, suffix = name.rpartition("layers.")[2].partition(".") if name.startswith("layers.") else ("", "", name)
        group = next((g for g in STACKED_ROWS if suffix in g), (suffix,))
        names = [f"layers.{prefix}.{n}" if prefix else n for n in group]
        rows = [shapes[n][0] for n in names]
        buffer = np.empty((sum(rows), *shape[1:]), dtype=np.float32)
        for n, a in zip(names, np.split(buffer, np.cumsum(rows)[:-1])):
            weights[n] = a
            jobs.append((seed, index[n], a, _std(config, n)))
    jobs.sort(key=lambda job: -job[2].size)  # largest first keeps the workers evenly loaded
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        list(pool.map(_fill, jobs))  # numpy's generators release the GIL
    return {name: weights[name] for name in shapes}


def load_synthetic(spec: str) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    preset, seed = parse_spec(spec)
    config = PRESETS[preset]
    return config, synthetic_weights(config, seed)
