"""Benchmark run configs: one YAML file per run, checked against a schema.

Every key is known; an unknown or mistyped one is an error naming the file,
the key and what was expected. Axes (prompt tokens, generated tokens,
threads, gpu_layers) may be lists, and the run is their cross product, like
llama-bench's.

    name: stories15M-fp32          # unique; the asv parameter and the result key
    purpose: CI regression job ... # what the config is for
    model: synthetic:stories15M?seed=0
    tokenizer: null                # optional; ids are synthetic either way
    backend: numpy                 # numpy | cupy
    dtype: fp32                    # fp32 | fp16 | bf16 | int8
    kernels: numpy                 # numpy | numba (the optional fused decode kernels, lumi[fused])
    gpu_layers: 0                  # int or list; -1 = everything on the GPU
    threads: 1                     # int or list; BLAS threads
    workload:
      prompt_tokens: 128           # int or list
      gen_tokens: 64               # int or list
      warmup: 1                    # untimed repetitions first
      repetitions: 7               # timed repetitions
    tier: ci                       # ci | nightly | gpu: which job runs it (default nightly)
    tolerance: 0.10                # allowed relative slowdown before `lumi regress` fails
    reference:                     # optional: greedy ids the run must reproduce, else it is invalid
      ids_file: references/stories15M-seed0.json   # prompt_ids + generated_ids, relative to this file
      prefix: 32                   # how many must agree (default: all)
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import LumiError
from ..backends.numba import KERNELS
from ..storage import STORAGE_DTYPES

BACKENDS = ("numpy", "cupy")
# Which job runs a config: ci (every pull request's gate, and tox -e bench), nightly (the larger CPU models),
# gpu (tox -e bench-gpu on a GPU runner).
TIERS = ("ci", "nightly", "gpu")
DTYPES = tuple(STORAGE_DTYPES)

def _config_dir() -> Path:
    """The repository's configs/ in a checkout, or the copy a wheel installs as lumi/configs."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent.parent / "configs", here.parent / "configs"):
        if candidate.is_dir():
            return candidate
    return here.parent / "configs"


CONFIG_DIR = _config_dir()


class ConfigError(LumiError):
    """``configs/x.yaml: workload.repetitions: expected an integer >= 1, got -3``."""

    def __init__(self, path, key: str | None, problem: str):
        self.path, self.key = os.fspath(path), key
        super().__init__(f"{self.path}: {key}: {problem}" if key else f"{self.path}: {problem}")


@dataclass(frozen=True)
class RunPoint:
    """One point of a config's cross product."""

    prompt_tokens: int
    gen_tokens: int
    threads: int
    gpu_layers: int

    @property
    def test(self) -> str:
        """llama-bench style label: pp128+tg64."""
        return f"pp{self.prompt_tokens}+tg{self.gen_tokens}"


@dataclass(frozen=True)
class Reference:
    """Greedy ids a run must reproduce: the answer that speed must not change.

    From a JSON file with ``prompt_ids`` and ``generated_ids`` (a golden file from
    an independent implementation, or ids recorded from the fp32 run of the same
    synthetic model); ``prefix`` is how many of them must agree (16-bit and int8
    storage may legitimately drift later).
    """

    path: str
    prompt_ids: tuple[int, ...]
    ids: tuple[int, ...]
    prefix: int


@dataclass(frozen=True)
class BenchConfig:
    path: str
    name: str
    purpose: str
    model: str
    tokenizer: str | None
    backend: str
    dtype: str
    kernels: str
    gpu_layers: tuple[int, ...]
    threads: tuple[int, ...]
    prompt_tokens: tuple[int, ...]
    gen_tokens: tuple[int, ...]
    warmup: int
    repetitions: int
    tolerance: float
    reference: Reference | None = None
    tier: str = "nightly"

    def points(self) -> list[RunPoint]:
        return [RunPoint(p, g, t, n) for p, g, t, n in
                itertools.product(self.prompt_tokens, self.gen_tokens, self.threads, self.gpu_layers)]


_TOP = {"name", "purpose", "model", "tokenizer", "backend", "dtype", "kernels", "gpu_layers", "threads", "workload", "tolerance",
        "reference", "tier"}
_REQUIRED = ("name", "purpose", "model", "workload")
_WORKLOAD = {"prompt_tokens", "gen_tokens", "warmup", "repetitions"}


class _Reader:
    """Typed access to one mapping of the YAML file, with errors naming the key."""

    def __init__(self, path, data, prefix=""):
        self.path, self.data, self.prefix = path, data, prefix

    def fail(self, key, problem):
        return ConfigError(self.path, self.prefix + key, problem)

    def string(self, key, default=None, choices=None):
        value = self.data.get(key, default)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise self.fail(key, f"expected a non-empty string, got {value!r}")
        if choices and value not in choices:
            raise self.fail(key, f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    def integer(self, key, default, minimum):
        value = self.data.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise self.fail(key, f"expected an integer >= {minimum}, got {value!r}")
        return value

    def axis(self, key, default, minimum):
        """An integer or a non-empty list of distinct integers."""
        value = self.data.get(key, default)
        values = value if isinstance(value, list) else [value]
        if not values or any(not isinstance(v, int) or isinstance(v, bool) or v < minimum for v in values):
            raise self.fail(key, f"expected an integer >= {minimum} or a list of them, got {value!r}")
        if len(set(values)) != len(values):
            raise self.fail(key, f"repeats a value: {value!r}")
        return tuple(values)


def load_config(path: str | os.PathLike) -> BenchConfig:
    """Read and check one config file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(path, None, "no such config file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(path, None, f"cannot read: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise ConfigError(path, None, f"{where}not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise ConfigError(path, None, "expected a mapping of keys at the top level")
    unknown = sorted(set(map(str, data)) - _TOP)
    if unknown:
        raise ConfigError(path, unknown[0], f"unknown key (known: {', '.join(sorted(_TOP))})")
    for key in _REQUIRED:
        if key not in data:
            raise ConfigError(path, key, "missing (required)")
    top = _Reader(path, data)
    workload = data["workload"]
    if not isinstance(workload, dict):
        raise top.fail("workload", "expected a mapping with prompt_tokens, gen_tokens, warmup, repetitions")
    unknown = sorted(set(map(str, workload)) - _WORKLOAD)
    if unknown:
        raise ConfigError(path, f"workload.{unknown[0]}", f"unknown key (known: {', '.join(sorted(_WORKLOAD))})")
    work = _Reader(path, workload, "workload.")
    tolerance = data.get("tolerance", 0.10)
    if not isinstance(tolerance, (int, float)) or isinstance(tolerance, bool) or not 0 < tolerance < 10:
        raise top.fail("tolerance", f"expected a relative slowdown such as 0.05, in (0, 10), got {tolerance!r}")
    config = BenchConfig(
        path=str(path),
        name=top.string("name"),
        purpose=top.string("purpose"),
        model=top.string("model"),
        tokenizer=top.string("tokenizer"),
        backend=top.string("backend", "numpy", BACKENDS),
        dtype=top.string("dtype", "fp32", DTYPES),
        kernels=top.string("kernels", "numpy", KERNELS),
        gpu_layers=top.axis("gpu_layers", 0, -1),
        threads=top.axis("threads", 1, 1),
        prompt_tokens=work.axis("prompt_tokens", 128, 1),
        gen_tokens=work.axis("gen_tokens", 64, 1),
        warmup=work.integer("warmup", 1, 0),
        repetitions=work.integer("repetitions", 5, 1),
        tolerance=float(tolerance),
        tier=top.string("tier", "nightly", TIERS),
        reference=_reference(path, data.get("reference")),
    )
    if config.backend == "numpy" and config.gpu_layers != (0,):
        raise top.fail("gpu_layers", f"must be 0 with backend numpy, got {data['gpu_layers']!r}")
    model = config.model
    if not model.startswith("synthetic:") and not (path.parent / model).exists() and not Path(model).exists():
        raise top.fail("model", f"no such checkpoint: {model}")
    return config


def _reference(path: Path, data) -> Reference | None:
    """``reference: {ids_file: FILE, prefix: N}``, FILE relative to the config."""
    if data is None:
        return None
    if not isinstance(data, dict) or set(map(str, data)) - {"ids_file", "prefix"} or "ids_file" not in data:
        raise ConfigError(path, "reference", f"expected a mapping with ids_file (and optionally prefix), got {data!r}")
    ref = _Reader(path, data, "reference.")
    ids_path = path.parent / ref.string("ids_file")
    try:
        doc = json.loads(ids_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(path, "reference.ids_file", f"cannot read {ids_path}: {e}") from None
    lists = {}
    for key in ("prompt_ids", "generated_ids"):
        value = doc.get(key) if isinstance(doc, dict) else None
        if not isinstance(value, list) or not value or not all(isinstance(i, int) and i >= 0 for i in value):
            raise ConfigError(path, "reference.ids_file", f"{ids_path}: {key} must be a non-empty list of token ids")
        lists[key] = tuple(value)
    prefix = ref.integer("prefix", len(lists["generated_ids"]), 1)
    if prefix > len(lists["generated_ids"]):
        raise ConfigError(path, "reference.prefix", f"{prefix} exceeds the {len(lists['generated_ids'])} ids in "
                                                    f"{ids_path}")
    return Reference(str(ids_path), lists["prompt_ids"], lists["generated_ids"], prefix)


def resolve(name_or_path: str) -> Path:
    """A config by path, or by name from the configs shipped with lumi ('default', 'stories15M-fp32')."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    shipped = CONFIG_DIR / f"{name_or_path}.yaml"
    if shipped.exists():
        return shipped
    known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    raise ConfigError(name_or_path, None, f"no such config file or shipped config (shipped: {known})")


def shipped_configs() -> list[Path]:
    return sorted(CONFIG_DIR.glob("*.yaml"))


def tier_configs(tier: str) -> list[Path]:
    """The shipped configs of a tier (``TIERS``), by name."""
    if tier not in TIERS:
        raise ConfigError(tier, None, f"no such tier (tiers: {', '.join(TIERS)})")
    return [p for p in shipped_configs() if load_config(p).tier == tier]
