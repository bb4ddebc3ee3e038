"""``python -m lumi.bench.gpucheck``: every GPU check and measurement in one run, one report.

GPU time is scarce (a lent machine, minutes at a time, no network), so this
needs no installs beyond the preinstalled CuPy and writes everything it finds
to one JSON and one Markdown file, each section recorded even when another
fails:

- kernels: each of lumi's CUDA kernels (``backends.cuda.kernels``) against the generic
  operation it replaces, on random inputs;
- golden: stories260K greedy ids against llama2.c's, and logits (prompt and
  decode steps) against the CPU backend, for gpu_layers 0, 2 and -1; with fp16
  and bf16 weights on the device, the first 32 ids;
- transfers: host<->device copies (and bytes) per generation step, counted,
  with every other device-to-host synchronisation made an error (cupyx); the
  kernel launches of a step, by name (CUPTI, through torch.profiler where
  PyTorch is installed);
- bandwidth: device-to-device copy bandwidth, then decode sec/token (host
  clock and CUDA events) of a big synthetic shape with everything on the GPU,
  per storage dtype, and the fraction of that bandwidth it reaches; for
  comparison, the graph one step at a time (no step launched ahead), the
  kernels launched eagerly, and the step composed from CuPy's array
  functions; and a 128-token prompt's speed (16-bit: through GemmEx, and
  widened for sgemm);
- offload: decode sec/token as a function of gpu_layers and dtype under a
  memory-pool limit that emulates a 12 GiB card, up to the most that fit; and
  an activation's round trip across the boundary, pageable against staged.

The big shapes' weights are drawn on the GPU itself (``synthetic.DeviceWeights``).

``--backend numpy`` (with small shapes) runs the same code on the CPU: that is
how the tests exercise it without a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import math
import os
import statistics
import sys
import time
import traceback
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from .. import __version__, generate
from ..backends import Device, get_device, is_cupy
from ..backends import numba as fused
from ..backends.cuda.kernels import memory_bandwidth, rows_per_warp
from ..config import PRESETS
from ..formats import load_checkpoint
from ..formats.synthetic import DeviceWeights
from ..model import Model
from ..sampler import SamplingParams
from ..storage import QK
from .env import copy_bandwidth, sync


def _syncs(device: Device, allowed: bool):
    """On CuPy, a scope in which any device-to-host synchronisation raises unless ``allowed``; elsewhere a no-op."""
    if not is_cupy(device):
        return contextlib.nullcontext()
    import cupyx

    return cupyx.allow_synchronize(allowed)


def _counting(device: Device, counts: Counter) -> Device:
    """The same device, with its boundary copies counted. Only the copies that wait by design (one down, or up
    out of a staging buffer its previous copy may still be reading) are allowed to synchronise."""

    def counted(copy, direction: str, waits: bool):
        def run(a, *rest):
            counts[direction] += 1
            if direction == "d2h":
                counts["d2h_bytes"] += a.nbytes
            with _syncs(device, True) if waits else contextlib.nullcontext():
                return copy(a, *rest)

        return run

    staging = device.staging
    if staging is not None:  # activations crossing at a partial offload, and a graph step's token (no wait)
        staging = SimpleNamespace(up=counted(staging.up, "h2d", True), down=counted(staging.down, "d2h", True),
                                  copy_down=counted(staging.copy_down, "d2h", False), pinned=staging.pinned)
    return dataclasses.replace(device, to_device=counted(device.to_device, "h2d", False),
                               to_host=counted(device.to_host, "d2h", True), staging=staging)


def _free(device: Device) -> None:
    gc.collect()  # whatever a dropped model left in reference cycles
    if not device.host_memory and hasattr(device.xp, "get_default_memory_pool"):
        device.xp.get_default_memory_pool().free_all_blocks()


def kernels(device: Device) -> dict:
    """Each of lumi's CUDA kernels against the generic operation it replaces, on random inputs, on the device."""
    from ..backends.cuda.storage import convert_on_device
    from ..model.ops import OPS, apply_rope

    if device.kernels is None:
        return {"skipped": f"{device.name} has no fused kernels"}
    xp, k, rows = device.xp, device.kernels, []
    rng = np.random.default_rng(0)

    def put(*shape):
        return device.to_device(rng.standard_normal(shape, dtype=np.float32))

    def at(pos):
        return device.to_device(np.array([pos], dtype=np.int32))

    def row(name, got, want, tol=1e-4):
        diff = float(xp.abs(got - want).max()) / max(float(xp.abs(want).max()), 1e-30)
        rows.append({"kernel": name, "max_rel_diff": diff, "ok": diff < tol})

    variants = {r: type(k)(xp, r) for r in (1, 2, 4)}
    for out_dim, in_dim in ((4096, 4096), (11, 4096), (64, 172), (101, 96)):  # vector and scalar paths, short groups
        x, w32 = put(1, in_dim), put(out_dim, in_dim) / np.float32(math.sqrt(in_dim))
        for dtype in ("fp32", "fp16", "bf16", "int8"):
            w = convert_on_device(w32, dtype, xp)
            want = OPS["matmul"](x, w)
            for r, variant in variants.items():
                row(f"gemv {dtype} {out_dim}x{in_dim} r{r}", variant.gemv(x, w), want)
                residual = put(1, out_dim)
                expect = residual + want
                row(f"gemv+residual {dtype} {out_dim}x{in_dim} r{r}", variant.gemv(x, w, residual), expect)
    for d in (64, 288, 4096, 5000):  # 5000: beyond what the kernel holds in registers
        x, w = put(3, d), put(d)
        row(f"rmsnorm {d}", k.rmsnorm(x[:1].copy(), w, np.float32(1e-5)), OPS["norm"](x[:1], w, np.float32(1e-5), xp))
        row(f"rmsnorm 3x{d}", k.rmsnorm(x, w, np.float32(1e-5)), OPS["norm"](x, w, np.float32(1e-5), xp))
    for layout in ("interleaved", "half"):
        qkv, cos, sin = put(1, 3 * 4 * 16), put(10, 8), put(10, 8)
        want = qkv.copy()
        apply_rope(want[:, : 2 * 64].reshape(1, 8, 16), cos, sin, 7, layout)
        ok = k.rope(qkv[:, : 2 * 64].reshape(1, 8, 16), cos, sin, at(7), layout)
        row(f"rope {layout}", qkv if ok else want + np.float32(1), want)
    kv, cache = put(1, 2, 4, 16), put(2, 4, 10, 16)
    want = cache.copy()
    want[:, :, 6:7] = kv.transpose(1, 2, 0, 3)
    ok = k.store(kv, cache, at(6))
    row("store_kv", cache if ok else want + np.float32(1), want)
    pos = at(41)
    k.advance(pos)
    rows.append({"kernel": "advance", "ok": int(pos[0]) == 42})
    # contexts within one chunk and across many (the last block combines), forced splits, the scalar path (hd 6);
    # each twice, so a counter left behind by the first launch would show in the second
    for H, Hkv, hd, L, S, splits in ((8, 4, 8, 1, 6, None), (8, 4, 8, 37, 42, None), (32, 32, 128, 300, 305, None),
                                     (32, 8, 128, 2000, 2005, None), (4, 2, 6, 9, 14, None), (32, 32, 128, 1, 4096, 16),
                                     (32, 32, 128, 300, 305, 1), (32, 32, 128, 300, 320, 32), (4, 2, 6, 700, 900, 3),
                                     (32, 8, 128, 9000, 9000, None)):
        q, cache = put(1, H, hd), put(2, Hkv, S, hd)
        want = OPS["attention"](q, cache[0, :, :L], cache[1, :, :L], L - 1, xp)
        for launch in ("first", "again"):
            row(f"attend H{H} Hkv{Hkv} hd{hd} L{L} S{S} splits {splits or 'auto'} {launch}",
                k.attend(q, cache[0], cache[1], at(L - 1), splits), want)
    gu = put(1, 2 * 11008)
    row("swiglu 11008", k.swiglu(gu, 11008), OPS["activation"](gu, 11008, xp))
    for T, out_dim, in_dim in ((128, 4096, 4096), (9, 11, 96), (3, 101, 64)):  # prompts' 16-bit products (GemmEx)
        x, w32 = put(T, in_dim), put(out_dim, in_dim) / np.float32(math.sqrt(in_dim))
        for dtype in ("fp16", "bf16"):
            w = convert_on_device(w32, dtype, xp)
            rounded = convert_on_device(x, dtype, xp).rows(slice(None))  # x as GemmEx reads it: in w's type
            want = OPS["matmul"](rounded, w)
            got = k.gemm(x, w)
            row(f"gemm {dtype} {T}x{in_dim}->{out_dim}", got if got is not None else want + np.float32(1), want)
            residual = put(T, out_dim)
            expect = residual + want
            got = k.gemm(x, w, residual)
            row(f"gemm+residual {dtype} {T}x{in_dim}->{out_dim}", got if got is not None else expect + 1, expect)
    if device.staging is not None:  # activations through the page-locked buffers, up and back, a prompt's then a step's
        for T in (128, 1):
            a = rng.standard_normal((T, 4096), dtype=np.float32)
            up = device.staging.up(a)
            back = device.staging.down(up * np.float32(2))
            rows.append({"kernel": f"staging {T}x4096", "ok": bool(np.array_equal(back, 2 * a))})
    return {"rows": rows, "ok": all(r["ok"] for r in rows)}


GEMV_SHAPES = {"wqkv": (12288, 4096), "w13": (22016, 4096), "w2": (4096, 11008), "output": (32000, 4096)}  # 7B's


def gemv_speed(device: Device, repeats: int = 30) -> dict:
    """Each storage's GEMV kernel on Llama-2-7B's product shapes, by rows per warp: time and fraction of copy bandwidth."""
    from ..backends.cuda.storage import convert_on_device

    if device.kernels is None:
        return {"skipped": f"{device.name} has no fused kernels"}
    xp, copy = device.xp, copy_bandwidth(device, 1 << 30)
    variants = {r: type(device.kernels)(xp, r) for r in (None, 1, 2, 4)}  # None: the default choice per shape
    memory = device.kernels.memory_bytes_per_s
    rows = []
    for storage in ("fp16", "bf16", "int8", "fp32"):
        for name, (out_dim, in_dim) in GEMV_SHAPES.items():
            w = convert_on_device(xp.random.RandomState(0).random_sample((out_dim, in_dim), dtype=np.float32), storage,
                                  xp)
            x, y = xp.ones((1, in_dim), dtype=np.float32), xp.zeros((1, out_dim), dtype=np.float32)
            for r, variant in variants.items():
                plans: dict = {}
                for _ in range(3):
                    variant.gemv(x, w, y, plans)
                start, end = xp.cuda.Event(), xp.cuda.Event()
                start.record()
                for _ in range(repeats):
                    variant.gemv(x, w, y, plans)
                end.record()
                end.synchronize()
                seconds = xp.cuda.get_elapsed_time(start, end) / 1e3 / repeats
                rows.append({"storage": storage, "weight": name, "shape": [out_dim, in_dim],
                             "rows_per_warp": r or f"default ({rows_per_warp(storage, out_dim, memory)})",
                             "us": seconds * 1e6, "bytes_per_s": w.nbytes / seconds,
                             "fraction_of_copy_bandwidth": w.nbytes / seconds / copy})
            del w
            _free(device)
    return {"copy_bytes_per_s": copy, "repeats": repeats, "rows": rows, "attend": attend_speed(device, repeats)}


def attend_speed(device: Device, repeats: int, H: int = 32, hd: int = 128, S: int = 8192) -> list[dict]:
    """One layer's decode attention (Llama-2-7B's heads, a float32 cache of S positions) by live context:
    one block a head against the context split over ceil(S / 256) blocks a head; microseconds, and the
    bandwidth of the live keys and values read."""
    xp, k = device.xp, device.kernels
    cache = xp.random.RandomState(1).random_sample((2, H, S, hd), dtype=np.float32)
    q = xp.random.RandomState(2).random_sample((1, H, hd), dtype=np.float32)
    rows = []
    for L in (128, 1024, 4096, 8192):
        pos = device.to_device(np.array([L - 1], dtype=np.int32))
        row = {"context": L, "cache_positions": S}
        for label, splits in (("one_block_a_head", 1), ("split", None)):
            if k.attend(q, cache[0], cache[1], pos, splits) is None:  # one block cannot hold this many scores
                continue
            start, end = xp.cuda.Event(), xp.cuda.Event()
            start.record()
            for _ in range(repeats):
                k.attend(q, cache[0], cache[1], pos, splits)
            end.record()
            end.synchronize()
            seconds = xp.cuda.get_elapsed_time(start, end) / 1e3 / repeats
            row[f"{label}_us"] = seconds * 1e6
            row[f"{label}_bytes_per_s"] = 2 * H * L * hd * 4 / seconds
        rows.append(row)
    return rows


def golden(device: Device, assets: Path) -> dict:
    checkpoint = assets / "models" / "stories260K.bin"
    ids = json.loads((assets / "golden" / "stories260K_greedy.json").read_text())["generated_ids"]
    inputs = np.load(assets / "golden" / "stories260K_greedy.npz")["input_ids"]
    config, weights = load_checkpoint(checkpoint)
    cpu = Model(config, weights)
    cpu_logits = cpu.forward(inputs, 0)
    steps = [1, *ids[:15]]  # decode steps (the fused kernels' path) along the golden sequence
    cpu_steps = [cpu.decode(t, pos) for pos, t in enumerate(steps)]
    rows = []
    for gpu_layers in (0, 2, -1):
        model = Model(config, weights, device=device, gpu_layers=gpu_layers)
        got = generate(model, [1], len(ids), ignore_eos=True).run().generated_ids
        model.reset()
        diff = float(np.abs(model.forward(inputs, 0) - cpu_logits).max())
        model.reset()
        step_diff = max(float(np.abs(model.decode(t, pos) - want).max())
                        for (pos, t), want in zip(enumerate(steps), cpu_steps))
        rows.append({"gpu_layers": gpu_layers, "ids_equal_golden": got == ids, "max_logit_diff_vs_cpu": diff,
                     "max_decode_logit_diff_vs_cpu": step_diff,
                     "ok": got == ids and diff < 5e-4 and step_diff < 5e-4})
    for dtype in ("fp16", "bf16"):  # 16-bit weights held 16-bit on the device: the first 32 ids must equal fp32's
        model = Model(config, weights, dtype=dtype, device=device, gpu_layers=-1)
        got = generate(model, [1], 32, ignore_eos=True).run().generated_ids
        # a nine-token prompt (its products through cuBLAS GemmEx, x rounded to 16 bits), then decoding on
        model.reset()
        prompted = generate(model, [1, *ids[:8]], 24, ignore_eos=True).run().generated_ids
        model.reset()
        host = Model(config, weights, dtype=dtype)  # the same storage on the host: x stays float32 in its products
        diff = float(np.abs(model.forward(inputs, 0) - host.forward(inputs, 0)).max())
        rows.append({"gpu_layers": -1, "dtype": dtype, "first_32_ids_equal_golden": got == ids[:32],
                     "ids_after_9_token_prompt_equal_golden": prompted == ids[8:32],
                     "max_prompt_logit_diff_vs_cpu_same_dtype": diff, "ok": got == ids[:32] and prompted == ids[8:32]})
    return {"rows": rows, "ok": all(r["ok"] for r in rows)}


def _launches(device: Device, step, n: int) -> dict | None:
    """Kernels and copies the GPU ran over n calls of ``step``, per call, by name (CUPTI through torch.profiler).
    A graph runs one step at a time here: a step launched ahead would put n + 1 steps' work in the window."""
    try:
        from torch.profiler import ProfilerActivity, profile
    except ImportError:
        return None
    from ..backends.cuda.graph import StepGraph

    graph = getattr(getattr(step, "model", None), "_graph", None)
    if graph is not None:
        graph.drain()  # a step launched ahead before the window is not counted in it: the first call runs its own
    sync(device)
    StepGraph.lookahead = False
    try:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(n):
                step()
            sync(device)
    finally:
        StepGraph.lookahead = True
    names, micros = Counter(), Counter()
    for event in prof.events():
        if str(getattr(event, "device_type", "")).endswith("CUDA"):
            names[event.name] += 1
            with contextlib.suppress(Exception):
                micros[event.name] += event.time_range.elapsed_us()
    copies = sum(c for name, c in names.items() if name.startswith(("Memcpy", "Memset")))
    return {"per_step": (sum(names.values()) - copies) / n, "copies_per_step": copies / n,
            "float64_kernels": sorted(name for name in names if "float64" in name or "double" in name),
            "by_name_per_step": {name[:60]: c / n for name, c in names.most_common(40)},
            "gpu_us_by_name_per_step": {name[:60]: us / n for name, us in micros.most_common(40)}}


class _Steps:
    """Greedy decode steps as a generation takes them: each chosen token fed back at the next position."""

    def __init__(self, model: Model, pos: int, token: int):
        self.model, self.pos, self.token = model, pos, token

    def __call__(self) -> None:
        self.token = self.model.next_token([self.token], self.pos, SamplingParams(), None)
        self.pos += 1


def transfers(device: Device, preset: str) -> dict:
    """Copies across the boundary per generation step, with every other synchronisation forbidden; GPU launches."""
    counts: Counter = Counter()
    rows = []
    config, weights = load_checkpoint(f"synthetic:{preset}")
    for gpu_layers, graphs in ((0, False), (2, False), (-1, False), (-1, True)):
        model = Model(config, weights, max_seq_len=64, device=_counting(device, counts), gpu_layers=gpu_layers,
                      cuda_graphs=graphs)
        model.prefill(np.array([1, 2, 3], dtype=np.int32), 0)
        steps, step = 8, _Steps(model, pos=3, token=5)
        step()  # the first step may send the position up once, and builds the graph
        counts.clear()
        try:
            with _syncs(device, False):
                for _ in range(steps):
                    step()
            hidden = None
        except Exception as error:  # cupyx's DeviceSynchronized names the hidden copy
            hidden = f"{type(error).__name__}: {error}"[:300]
        row = {"gpu_layers": gpu_layers, "cuda_graph": model.cuda_graphs, "graph_error": model.graph_error,
               "h2d_per_step": counts["h2d"] / steps,
               "d2h_per_step": counts["d2h"] / steps, "d2h_bytes_per_step": counts["d2h_bytes"] / steps,
               "hidden_sync": hidden}
        if gpu_layers == -1 and is_cupy(device):
            launches = _launches(device, step, steps)
            if launches:
                launches["per_layer_approx"] = launches["per_step"] / config.n_layers
            row["launches"] = launches
        rows.append(row)
    return {"preset": preset, "n_layers": config.n_layers, "rows": rows}


def decode_speed(model: Model, device: Device, steps: int, warmup: int = 2, batches: int = 3) -> dict:
    """Seconds per greedy decode step (the token chosen on the device), the median of ``batches`` runs of
    ``steps`` steps each timed whole, by the host clock and by CUDA events on a GPU. Whole runs in the steady
    state, never a wait for the device between steps: a graph's step launched ahead (``cuda.StepGraph``)
    overlaps the host's turnaround, and each run starts after an untimed step, so that the step it first asks
    for is one launched ahead by a timed step, not one the device finished before the clock started (which
    would count 15 steps' work as 16). The events bracket the same work: each follows the step launched ahead."""
    events = is_cupy(device)
    host, gpu = [], []
    with model.decoding():
        step = _Steps(model, pos=1, token=model.next_token([1], 0, SamplingParams(), None))
        for _ in range(warmup):
            step()
        for _ in range(batches):
            step()  # untimed: the steady state starts after it
            if events:
                start, end = device.xp.cuda.Event(), device.xp.cuda.Event()
                start.record()
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            t1 = time.perf_counter()
            host.append((t1 - t0) / steps)
            if events:
                end.record()
                end.synchronize()
                gpu.append(device.xp.cuda.get_elapsed_time(start, end) / 1e3 / steps)
    result = {"decode_s_per_token": statistics.median(host)}
    if gpu:
        result["event_s_per_token"] = statistics.median(gpu)
    return result


def prefill_speed(model: Model, device: Device, tokens: int, repeats: int = 3) -> dict:
    """Median prompt tokens per second for a prompt of ``tokens`` at position 0 (after one unmeasured run)."""
    prompt = (np.arange(tokens, dtype=np.int32) * 7 + 1) % model.config.vocab_size
    times = []
    for i in range(repeats + 1):
        sync(device)
        t0 = time.perf_counter()
        model.prefill(prompt, 0)  # its logits come down: the prompt is done when it returns
        if i:
            times.append(time.perf_counter() - t0)
    return {"prefill_tokens": tokens, "prefill_tokens_per_s": tokens / statistics.median(times)}


def bandwidth(device: Device, preset: str, dtypes: list[str], steps: int, copy_bytes: int,
              prompt_tokens: int = 128) -> dict:
    copy = copy_bandwidth(device, copy_bytes)
    config = PRESETS[preset]
    rows = []
    runs = [(dtype, device, True) for dtype in dtypes]  # replayed as a CUDA graph where the model allows
    if device.kernels is not None:  # the graph one step at a time; launched eagerly; CuPy's array functions
        runs += [(dtypes[0], device, "one at a time"), (dtypes[0], device, False),
                 (dtypes[0], dataclasses.replace(device, kernels=None), False)]
    from ..backends.cuda.graph import StepGraph

    for dtype, dev, graphs in runs:
        model = Model(config, DeviceWeights(config, dev), max_seq_len=prompt_tokens + 64, dtype=dtype, device=dev,
                      gpu_layers=-1, cuda_graphs=bool(graphs))
        StepGraph.lookahead = graphs is True
        try:
            speed = decode_speed(model, dev, steps if dev.kernels is not None else max(3, steps // 4))
        finally:
            StepGraph.lookahead = True
        if not rows and is_cupy(dev):  # where the first run's step spends its GPU time, by kernel
            speed["kernels"] = _launches(dev, _Steps(model, pos=1 + 2 + 3 * (steps + 1), token=7), 4)
        if graphs is True:  # a prompt's speed; 16-bit weights through GemmEx, and through widened blocks and sgemm
            speed.update(prefill_speed(model, dev, prompt_tokens))
            if dev.kernels is not None and dtype in ("fp16", "bf16"):
                dev.kernels.use_gemm = False
                try:
                    speed["prefill_tokens_per_s_widened"] = prefill_speed(model, dev, prompt_tokens)[
                        "prefill_tokens_per_s"]
                finally:
                    dev.kernels.use_gemm = True
        bytes_per_token = model.decode_weight_bytes()
        mode = model.gpu_step()
        if mode and graphs == "one at a time":
            mode += " (one step at a time)"
        rows.append({"dtype": dtype, "mode": mode, "graph_error": model.graph_error, **speed,
                     "decode_tokens_per_s": 1 / speed["decode_s_per_token"], "weight_bytes_per_token": bytes_per_token,
                     "fraction_of_copy_bandwidth": bytes_per_token / speed["decode_s_per_token"] / copy,
                     "paths": model.widening_paths()})
        del model
        _free(device)
    return {"preset": preset, "copy_bytes_per_s": copy, "rows": rows}


def _numba_runs() -> bool:
    """Whether lumi's numba kernels compile and run here (they run the host layers of a partial offload)."""
    if fused.missing():
        return False
    try:
        from ..storage import HalfMatrix

        w = HalfMatrix(np.ones((8, 64), dtype=np.float16))
        return bool(np.allclose(fused.gemv(np.ones((1, 64), dtype=np.float32), w), 64))
    except Exception:
        traceback.print_exc()
        return False


def _layer_bytes(config, dtype: str) -> int:
    per = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1 + 4 / QK}[dtype]
    return int(sum(math.prod(s) for n, s in config.tensor_shapes().items() if n.startswith("layers.0.")) * per)


def crossing_speed(device: Device, dim: int, repeats: int = 50) -> list[dict]:
    """Median microseconds for an activation (T, dim) to go up and come back down: from pageable host memory
    (CuPy's plain copies) and through the page-locked staging buffers that a partial offload uses."""
    if device.staging is None:
        return []
    rows = []
    for T in (1, 128):
        a = np.random.default_rng(T).standard_normal((T, dim), dtype=np.float32)
        ways = {"pageable": lambda: device.to_host(device.to_device(a)),
                "staged": lambda: device.staging.down(device.staging.up(a))}
        row = {"tokens": T, "bytes": a.nbytes}
        for way, trip in ways.items():
            times = []
            for i in range(repeats + 3):
                t0 = time.perf_counter()
                trip()
                if i >= 3:
                    times.append(time.perf_counter() - t0)
            row[f"{way}_round_trip_us"] = statistics.median(times) * 1e6
        rows.append(row)
    return rows


def offload(device: Device, preset: str, dtypes: list[str], steps: int, pool_bytes: int | None) -> dict:
    """Decode sec/token by gpu_layers under a memory-pool limit (a smaller card), and the most layers that fit."""
    config = PRESETS[preset]
    host_kernels = "numba" if _numba_runs() else "numpy"
    pool = device.xp.get_default_memory_pool() if not device.host_memory else None
    if pool_bytes and pool is not None:
        pool.set_limit(size=pool_bytes)
    rows = []

    def run(dtype, gpu_layers):
        try:
            model = Model(config, DeviceWeights(config, device), max_seq_len=64, dtype=dtype, device=device,
                          gpu_layers=gpu_layers, kernels=host_kernels)
            row = {"dtype": dtype, "gpu_layers": gpu_layers}
            row.update(decode_speed(model, device, steps, warmup=1))
            if pool is not None:
                row["pool_used_bytes"] = pool.used_bytes()
            del model
            return row
        except Exception as error:  # out of device memory under the emulated card's limit
            return {"dtype": dtype, "gpu_layers": gpu_layers, "error": f"{type(error).__name__}: {error}"[:200]}
        finally:
            _free(device)

    for dtype in dtypes:
        limit = pool_bytes or (1 << 62)
        most = min(config.n_layers, int((limit - (1 << 30)) // _layer_bytes(config, dtype)))
        points = sorted({p for p in (0, 8, 16, 24) if p < config.n_layers and dtype != "fp32"} | {most})
        for gpu_layers in points:
            row = run(dtype, gpu_layers)
            if gpu_layers == most:
                while "error" in row and most > 0:  # the estimate was too high: one layer fewer, until it fits
                    rows.append({**row, "most_that_fit": False})
                    most -= 1
                    row = run(dtype, most)
            row["most_that_fit"] = gpu_layers == points[-1] and "error" not in row
            rows.append(row)
    if pool_bytes and pool is not None:
        pool.set_limit(size=0)
    return {"preset": preset, "pool_limit_bytes": pool_bytes, "host_kernels": host_kernels, "rows": rows,
            "crossing": crossing_speed(device, config.dim)}


def markdown(report: dict) -> str:
    lines = [f"# lumi gpucheck ({report['lumi_version']}, {report['device']})", ""]
    for name, section in report["sections"].items():
        lines.append(f"## {name}")
        lines.append("```json")
        lines.append(json.dumps(section, indent=1))
        lines.append("```")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lumi.bench.gpucheck", description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="cupy", choices=["cupy", "numpy"])
    p.add_argument("--assets", default=os.environ.get("LUMI_ASSETS", "../shared"))
    p.add_argument("--big", default="llama2-7B", help="preset for the bandwidth and offload runs")
    p.add_argument("--small", default="stories15M", help="preset for the transfer counts")
    p.add_argument("--dtypes", default="fp16,bf16,int8,fp32", help="weight storage for the bandwidth runs")
    p.add_argument("--offload-dtypes", default="fp16,bf16,fp32",
                   help="weight storage for the offload table (fp32: only the most layers that fit)")
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--offload-steps", type=int, default=3)
    p.add_argument("--copy-bytes", type=int, default=1 << 30)
    p.add_argument("--pool-gib", type=float, default=12.0, help="memory-pool limit for the offload table")
    p.add_argument("--only", default="", help="comma-separated sections to run (default: all)")
    p.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for gpucheck.json and gpucheck.md")
    args = p.parse_args(argv)
    device = get_device(args.backend)
    report = {"lumi_version": __version__, "device": device.name, "sections": {}}
    if not device.host_memory:
        props = device.xp.cuda.runtime.getDeviceProperties(0)
        report["gpu"] = {"name": props["name"].decode() if isinstance(props["name"], bytes) else props["name"],
                         "cupy": device.xp.__version__, "runtime": device.xp.cuda.runtime.runtimeGetVersion(),
                         "driver": device.xp.cuda.runtime.driverGetVersion(),
                         "memory_bytes_per_s_theoretical": memory_bandwidth(device.xp)}
    checks = {
        "kernels": lambda: kernels(device),
        "gemv": lambda: gemv_speed(device),
        "golden": lambda: golden(device, Path(args.assets)),
        "transfers": lambda: transfers(device, args.small),
        "bandwidth": lambda: bandwidth(device, args.big, args.dtypes.split(","), args.steps, args.copy_bytes),
        "offload": lambda: offload(device, args.big, args.offload_dtypes.split(","), args.offload_steps,
                                   int(args.pool_gib * 2**30)),
    }
    only = [name for name in args.only.split(",") if name]
    unknown = set(only) - set(checks)
    if unknown:
        p.error(f"--only: unknown sections {', '.join(sorted(unknown))} (known: {', '.join(checks)})")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, check in checks.items():
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        try:
            report["sections"][name] = check()
        except Exception:  # record it and go on: one failing check must not lose the others
            report["sections"][name] = {"error": traceback.format_exc(limit=5)}
        report["sections"][name]["seconds"] = round(time.perf_counter() - t0, 1)
        print(f"{name}: {json.dumps(report['sections'][name])[:600]}", file=sys.stderr, flush=True)
        (out / "gpucheck.json").write_text(json.dumps(report, indent=1))  # after each section: a timeout loses none
        (out / "gpucheck.md").write_text(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
