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

import logging
import math
import os
import shutil
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qsl

import numpy as np

from ..config import PRESETS, STACKED_ROWS, ModelConfig
from ..errors import UsageError

log = logging.getLogger("lumi")
PREFIX = "synthetic:"
LOGIT_STD = 16.0  # spread of the logits; sets the greedy top-1/top-2 margins
# Norm of a token's embedding relative to sqrt(dim). Kept small: the first norm
# rescales it anyway, and with a tied classifier a large one makes each token
# predict itself forever.
EMBED_RMS = 0.5
# Shapes of at least this many bytes are drawn once into an on-disk cache and memory-mapped after that.
CACHE_MIN_BYTES = 1 << 30
# Names the cached files: change it whenever the weights a seed gives change.
GENERATION = f"g1-logit{LOGIT_STD:g}-embed{EMBED_RMS:g}"


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


def _norm_value(config: ModelConfig, name: str) -> np.float32:
    """A norm weight's constant: 1, but a tied classifier's final norm sets the logits' spread
    (logits = norm(x) . embedding rows)."""
    return np.float32(LOGIT_STD / EMBED_RMS if name == "norm" and config.tie_embeddings else 1)


def _host_generator(seed: int, index: int) -> np.random.Generator:
    return np.random.Generator(np.random.SFC64(np.random.SeedSequence([seed, index])))


def _scale(out, std: float) -> None:
    """U[0, 1) in place to U[-s sqrt3, s sqrt3], which has std s."""
    out -= np.float32(0.5)
    out *= np.float32(math.sqrt(12) * std)


def _fill(job) -> None:
    """Draw one tensor: uniform with the given std, from its own generator."""
    seed, index, out, std = job
    _host_generator(seed, index).random(dtype=np.float32, out=out)  # U[0, 1)
    _scale(out, std)


def _carve(flat: np.ndarray, config: ModelConfig) -> dict[str, np.ndarray]:
    """Every tensor as a view of one flat float32 buffer, stacked groups (q/k/v, gate/up) back to back."""
    shapes = config.tensor_shapes()
    weights: dict[str, np.ndarray] = {}
    offset = 0
    for name, shape in shapes.items():
        if name in weights:
            continue
        layer, _, suffix = name.partition(".")[2].partition(".") if name.startswith("layers.") else ("", "", name)
        group = next((g for g in STACKED_ROWS if suffix in g), (suffix,))
        for member in (f"layers.{layer}.{n}" if layer else n for n in group):
            member_shape = shapes[member]
            size = math.prod(member_shape)
            weights[member] = flat[offset : offset + size].reshape(member_shape)
            offset += size
    assert offset == flat.size
    return {name: weights[name] for name in shapes}


def _draw(weights: dict[str, np.ndarray], config: ModelConfig, seed: int) -> None:
    """Fill the tensors in place. Each has its own generator, so the schedule does not matter."""
    jobs = []
    for index, (name, a) in enumerate(weights.items()):
        if name.endswith("norm"):
            a[...] = _norm_value(config, name)
        else:
            jobs.append((seed, index, a, _std(config, name)))
    jobs.sort(key=lambda job: -job[2].size)  # largest first keeps the workers evenly loaded
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        list(pool.map(_fill, jobs))  # numpy's generators release the GIL


def synthetic_weights(config: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Weights for ``config`` drawn from uniform distributions, reproducible from ``seed``.

    All tensors are views of one buffer, the stacked ones adjacent, so the model
    takes q/k/v and gate/up without a copy.
    """
    weights = _carve(np.empty(config.n_params(), dtype=np.float32), config)
    _draw(weights, config, seed)
    return weights


def cache_dir() -> Path:
    """``$LUMI_CACHE_DIR``, else ``$XDG_CACHE_HOME/lumi``, else ``~/.cache/lumi``."""
    if os.environ.get("LUMI_CACHE_DIR"):
        return Path(os.environ["LUMI_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lumi"


def _cached_weights(config: ModelConfig, preset: str, seed: int) -> dict[str, np.ndarray] | None:
    """Weights memory-mapped from the cache, drawn straight into it the first time; None if it cannot be used."""
    n = config.n_params()
    path = cache_dir() / "synthetic" / f"{preset}-seed{seed}-{GENERATION}.npy"
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            if shutil.disk_usage(path.parent).free < 4 * n + (1 << 30):
                return None
            log.info("drawing synthetic %s weights once into %s (%.1f GiB)", preset, path, 4 * n / 2**30)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            try:
                flat = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n,))
                _draw(_carve(flat, config), config, seed)
                flat.flush()
                del flat
                os.replace(tmp, path)  # whole or not at all: a killed run leaves no half file under the name
            finally:
                if tmp.exists():
                    tmp.unlink()
        flat = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return None
    if flat.shape != (n,) or flat.dtype != np.float32:
        return None
    return _carve(flat, config)


def load_synthetic(spec: str) -> tuple[ModelConfig, Mapping[str, np.ndarray]]:
    """Big shapes come memory-mapped from an on-disk cache keyed by preset and seed; small ones are drawn as the
    model asks for each tensor (``DrawnWeights``), so that converting them never holds a second copy of them all."""
    preset, seed = parse_spec(spec)
    config = PRESETS[preset]
    weights = None
    if 4 * config.n_params() >= CACHE_MIN_BYTES:
        weights = _cached_weights(config, preset, seed)
    return config, weights if weights is not None else DrawnWeights(config, seed)


class DrawnWeights(Mapping):
    """Synthetic weights on the host, each tensor drawn when it is asked for and not kept: equal to
    ``synthetic_weights``'s, tensor by tensor (each has its own generator).

    A model converts its weights one at a time (column-major, stacked, narrowed): a
    tensor drawn for that is garbage once converted, where ``synthetic_weights``'s
    one buffer would stay whole beside the converted copy until the load ends.
    """

    def __init__(self, config: ModelConfig, seed: int = 0):
        self.config, self.seed = config, seed
        self.shapes = config.tensor_shapes()
        self.index = {name: i for i, name in enumerate(self.shapes)}

    def __len__(self):
        return len(self.shapes)

    def __iter__(self):
        return iter(self.shapes)

    def __getitem__(self, name: str):
        shape = self.shapes[name]
        if name.endswith("norm"):
            return np.full(shape, _norm_value(self.config, name), dtype=np.float32)
        a = _host_generator(self.seed, self.index[name]).random(shape, dtype=np.float32)
        _scale(a, _std(self.config, name))
        return a


class DeviceWeights(DrawnWeights):
    """Synthetic weights made on a device, each tensor drawn when it is asked for and not kept.

    A GPU draws with CuPy's own generator, so a 7B shape costs no host memory,
    no host time and no transfer, and never more device memory than the model
    plus one float32 tensor. The shapes and scales are ``synthetic_weights``'s;
    the numbers are CuPy's (fine for speed, not for comparing ids with the host).
    A device without CuPy's generator (the CPU, a test's stand-in) gets the host's
    numbers, copied over: there the weights equal ``synthetic_weights``'s.
    ``Model`` reads ``device`` and converts the tensors there.
    """

    def __init__(self, config: ModelConfig, device, seed: int = 0):
        super().__init__(config, seed)
        self.device = device

    def __getitem__(self, name: str):
        shape, xp = self.shapes[name], self.device.xp
        if not self.device.host_memory and getattr(xp, "__name__", None) == "cupy":  # drawn on the GPU itself
            if name.endswith("norm"):
                return xp.full(shape, _norm_value(self.config, name), dtype=np.float32)
            a = xp.random.RandomState(self.seed * 1_000_003 + self.index[name]).random_sample(shape, dtype=np.float32)
            _scale(a, _std(self.config, name))
            return a
        return self.device.to_device(super().__getitem__(name))
