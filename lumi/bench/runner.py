"""One measurement path for ``lumi bench`` and asv: ``Session`` runs a config.

A repetition is one real generation through ``lumi.generate`` (greedy, EOS
ignored) on a fixed, seeded prompt: its prefill time, its time to first
token and its decode sec/token are the samples. ``run_config`` runs every
point of a config in a fresh process, so the peak resident set it reports
belongs to that config alone (the high-water mark only rises).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

from ..backends import CPU, memory_stats
from ..backends.cpu import applied_threads, thread_limit  # noqa: F401 (thread_limit: asv's benchmarks import it here)
from ..errors import LumiError, UsageError
from .config import BenchConfig, ConfigError, RunPoint, load_config

PROMPT_SEED = 1234  # the benchmark prompt's ids: fixed forever, so results stay comparable across commits
METRICS = ("prefill_s", "prefill_tokens_per_s", "ttft_s", "decode_s_per_token", "decode_tokens_per_s")


def check_supported(cfg: BenchConfig) -> None:
    """A config this machine cannot run (numba or CuPy missing, no GPU) is a clear error, not a silent fallback."""
    from ..backends import get_device
    from ..backends.numba import missing

    if cfg.kernels == "numba" and missing():
        raise ConfigError(cfg.path, "kernels", missing())
    try:
        get_device(cfg.backend)
    except UsageError as e:
        raise ConfigError(cfg.path, "backend", e.problem) from None


def prompt_ids(n: int, vocab_size: int) -> list[int]:
    """BOS then n - 1 seeded ids, away from the special ids at the bottom of the vocabulary."""
    rng = np.random.default_rng(PROMPT_SEED)
    low = min(3, vocab_size - 1)
    return [1] + rng.integers(low, vocab_size, size=n - 1).tolist()


def fingerprint(ids: list[int]) -> str:
    """A short hash of the greedy ids: the answer, to check that speed did not change it."""
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]


class Session:
    """A loaded model for one config; ``repetition`` runs one timed generation.

    With several ``gpu_layers`` values the checkpoint stays loaded and ``place``
    rebuilds the model for each (one placement in memory at a time).
    """

    def __init__(self, cfg: BenchConfig):
        from ..backends import get_device
        from ..config import PRESETS
        from ..formats import load_checkpoint
        from ..formats.synthetic import DeviceWeights, parse_spec

        check_supported(cfg)
        self.cfg = cfg
        context = max(p + g for p in cfg.prompt_tokens for g in cfg.gen_tokens)
        t0 = time.perf_counter()
        model_spec = cfg.model
        if not model_spec.startswith("synthetic:") and not os.path.isabs(model_spec):
            beside = os.path.join(os.path.dirname(cfg.path), model_spec)
            model_spec = beside if os.path.exists(beside) else model_spec
        self.device = get_device(cfg.backend)
        self.copy_bytes_per_s = None  # measured once, on a GPU
        if model_spec.startswith("synthetic:") and not self.device.host_memory and cfg.reference is None:
            # drawn on the GPU itself, a tensor at a time: no host copy of a 7B model, no upload
            # (the numbers differ from the host's draws, so not with a reference file made from those)
            preset, seed = parse_spec(model_spec)
            self.config, weights = PRESETS[preset], DeviceWeights(PRESETS[preset], self.device, seed)
        else:
            self.config, weights = load_checkpoint(model_spec)
        self.weights_made_on = "device" if isinstance(weights, DeviceWeights) else "host"
        self._weights = weights if len(cfg.gpu_layers) > 1 else None  # kept only to place the model again
        self.model = self._build(weights, cfg.gpu_layers[0])
        self.load_s = time.perf_counter() - t0
        if context > self.model.max_seq_len:
            raise ConfigError(cfg.path, "workload", f"prompt_tokens + gen_tokens = {context} exceeds the model's "
                                                    f"context of {self.model.max_seq_len}")

    def _build(self, weights, gpu_layers: int):
        from ..model import Model

        self.gpu_layers = gpu_layers
        return Model(self.config, weights, dtype=self.cfg.dtype, kernels=self.cfg.kernels, device=self.device,
                     gpu_layers=gpu_layers)

    def place(self, gpu_layers: int) -> None:
        """The model with ``gpu_layers`` layers on the device (rebuilt only when that changes)."""
        if gpu_layers != self.gpu_layers:
            self.model = None  # free the old placement's device memory before making the new one
            self.model = self._build(self._weights, gpu_layers)

    def repetition(self, point: RunPoint) -> dict:
        from ..generate import generate

        ids = prompt_ids(point.prompt_tokens, self.model.config.vocab_size)
        t0 = time.perf_counter()
        gen = generate(self.model, ids, point.gen_tokens, ignore_eos=True)
        tokens = iter(gen)
        next(tokens)
        ttft = time.perf_counter() - t0
        for _ in tokens:
            pass
        s = gen.stats
        return {"prefill_s": s.prefill_s, "prefill_tokens_per_s": s.prefill_tokens_per_s, "ttft_s": ttft,
                "decode_s_per_token": s.decode_s_per_token, "decode_tokens_per_s": s.decode_tokens_per_s,
                "decode_s": s.decode_s, "ids": gen.generated_ids}


def measure_point(session: Session, point: RunPoint, progress=None) -> dict:
    """Warm-up, then the timed repetitions of one point; medians plus the raw samples."""
    cfg = session.cfg
    session.place(point.gpu_layers)
    samples: dict[str, list] = {m: [] for m in METRICS}
    ids = None
    with thread_limit(point.threads):
        threads = applied_threads()
        total = cfg.warmup + cfg.repetitions
        for rep in range(total):
            if progress:
                step = (f"warm-up {rep + 1}/{cfg.warmup}" if rep < cfg.warmup
                        else f"rep {rep - cfg.warmup + 1}/{cfg.repetitions}")
                progress(f"{cfg.name} {point.test} t{point.threads}: {step}")
            r = session.repetition(point)
            if rep < cfg.warmup:
                continue
            if ids is None:
                ids = r["ids"]
            elif r["ids"] != ids:
                raise LumiError(f"{cfg.name}: greedy ids changed between repetitions (non-deterministic engine)")
            for m in METRICS:
                samples[m].append(r[m])
    model = session.model
    result = {
        "config": cfg.name,
        "test": point.test,
        "model": cfg.model,
        "backend": cfg.backend,
        "dtype": cfg.dtype,
        "kernels": cfg.kernels,
        "threads": point.threads,
        "threads_applied": threads,
        "gpu_layers": point.gpu_layers,
        "gpu_layers_resolved": sum(d is not CPU for d in model.placement),  # layers on the device
        "head_on_device": model.head is not CPU,
        "prefill_tokens": point.prompt_tokens,
        "decode_tokens": point.gen_tokens - 1,
    }
    for m in METRICS:
        result[m] = statistics.median(samples[m])
    result["decode_s"] = result["decode_s_per_token"] * result["decode_tokens"]
    result["load_s"] = session.load_s
    result["weights_made_on"] = session.weights_made_on
    result["weight_bytes_per_token"] = model.decode_weight_bytes()
    result["prefill_flops_per_token"] = model.prefill_flops(point.prompt_tokens) / point.prompt_tokens
    result["widening"] = model.widening_paths()  # the path each kind of weight actually took
    result["split_rows"] = model.split_products(threads)  # products on Python threads, BLAS held at one
    result["gpu_step"] = model.gpu_step()  # what a decode step ran on the GPU (a CUDA graph, kernels, ...)
    result["graph_error"] = model.graph_error
    if cfg.kernels == "numba":
        from ..backends.numba import provenance

        result["fused"] = provenance(threads)
    if session.device is not CPU:
        from .env import copy_bandwidth

        result["device_memory"] = memory_stats(session.device)
        if session.copy_bytes_per_s is None:
            session.copy_bytes_per_s = copy_bandwidth(session.device)
        result["device_copy_bytes_per_s"] = session.copy_bytes_per_s  # the GPU's floor, for the bandwidth fraction
    result["ids_fingerprint"] = fingerprint(ids)
    result["spread"] = {m: {"min": min(v), "max": max(v), "stdev": statistics.pstdev(v)} for m, v in samples.items()}
    result["samples"] = samples
    return result


def peak_rss_bytes() -> int:
    """This process's peak resident set. On Linux, VmHWM (/proc/self/status): getrusage's ru_maxrss also counts
    the parent's peak when the process was started by vfork and exec, as ``subprocess`` starts each config, so
    every config reported at least the resident set the bandwidth measurement had left as the parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:  # not Linux
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def check_reference(session: Session) -> dict | None:
    """Greedy ids from the config's reference prompt against the reference ids; None without a reference.

    ``valid`` is False when the first ``prefix`` ids do not all agree.
    """
    from ..generate import generate

    ref = session.cfg.reference
    if ref is None:
        return None
    with thread_limit(session.cfg.threads[0]):
        ids = generate(session.model, ref.prompt_ids, ref.prefix, ignore_eos=True).run().generated_ids
    agreed = next((i for i, (a, b) in enumerate(zip(ids, ref.ids)) if a != b), min(len(ids), ref.prefix))
    return {"file": ref.path, "prefix": ref.prefix, "agreed": agreed, "valid": agreed >= ref.prefix}


def measure_config(cfg: BenchConfig, progress=None, profile: bool = False) -> list[dict]:
    """Every point of a config, in this process (use ``run_config`` for an isolated one).

    With ``profile``, each point also gets a per-op profile of its decode steps,
    taken after (and apart from) the timed repetitions.
    """
    from .profile import profile_decode

    session = Session(cfg)
    results = [measure_point(session, point, progress) for point in cfg.points()]
    peak = peak_rss_bytes()
    if progress and cfg.reference:
        progress(f"{cfg.name}: checking {cfg.reference.prefix} greedy ids against {cfg.reference.path}")
    reference = check_reference(session)
    for point, r in zip(cfg.points(), results):
        r["peak_rss_bytes"] = peak
        r["reference"] = reference
        r["valid"] = reference is None or reference["valid"]  # speed never at the cost of the answer
        if profile:
            if progress:
                progress(f"{cfg.name} {point.test} t{point.threads}: profiling")
            session.place(point.gpu_layers)
            with thread_limit(point.threads):
                ids = prompt_ids(point.prompt_tokens, session.model.config.vocab_size)
                r["profile"] = profile_decode(session.model, ids, max(point.gen_tokens - 1, 1))
    return results


def run_config(cfg: BenchConfig, progress=None, profile: bool = False) -> list[dict]:
    """``measure_config`` in a fresh Python process; its progress lines are relayed."""
    cmd = [sys.executable, "-m", "lumi.bench.runner", cfg.path] + (["--profile"] if profile else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        line = line.rstrip("\n")
        if line.startswith("progress: ") and progress:
            progress(line[len("progress: "):])
        elif line.startswith("error: "):
            proc.wait()
            raise LumiError(line[len("error: "):])
        elif line:
            print(line, file=sys.stderr)
    out = proc.stdout.read()
    if proc.wait() != 0:
        raise LumiError(f"{cfg.path}: the benchmark process failed with status {proc.returncode}")
    return json.loads(out)


def _worker(path: str, profile: bool) -> int:
    try:
        cfg = load_config(path)
        results = measure_config(cfg, lambda msg: print("progress: " + msg, file=sys.stderr, flush=True), profile)
    except LumiError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    json.dump(results, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(_worker(sys.argv[1], "--profile" in sys.argv[2:]))
