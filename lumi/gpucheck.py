"""``python -m lumi.gpucheck``: every GPU check and measurement in one run, one report.

GPU time is scarce (a lent machine, minutes at a time, no network), so this
needs no installs beyond the preinstalled CuPy and writes everything it finds
to one JSON and one Markdown file, each section recorded even when another
fails:

- golden: stories260K greedy ids against llama2.c's, and logits against the
  CPU backend, for gpu_layers 0, 2 and -1; with fp16 and bf16 weights on the
  device, the first 32 ids;
- transfers: host<->device copies (and bytes) per generation step, counted;
- bandwidth: device-to-device copy bandwidth, then decode sec/token of a big
  synthetic shape with everything on the GPU, per storage dtype (fp16, bf16),
  and the fraction of that bandwidth it reaches;
- offload: decode sec/token as a function of gpu_layers and dtype under a
  memory-pool limit that emulates a 12 GiB card.

``--backend numpy`` (with small shapes) runs the same code on the CPU: that is
how the tests exercise it without a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

import numpy as np

from . import __version__, generate
from .backends import CPU, Device, get_device
from .bench.env import copy_bandwidth, sync
from .formats import load_checkpoint
from .model import Model
from .sampler import SamplingParams


def _counting(device: Device, counts: Counter) -> Device:
    """The same device, with its boundary copies counted."""

    def up(a):
        counts["h2d"] += 1
        return device.to_device(a)

    def down(a):
        counts["d2h"] += 1
        counts["d2h_bytes"] += a.nbytes
        return device.to_host(a)

    return Device(device.name, device.xp, up, down, device.host_memory)


def golden(device: Device, assets: Path) -> dict:
    checkpoint = assets / "models" / "stories260K.bin"
    ids = json.loads((assets / "golden" / "stories260K_greedy.json").read_text())["generated_ids"]
    inputs = np.load(assets / "golden" / "stories260K_greedy.npz")["input_ids"]
    config, weights = load_checkpoint(checkpoint)
    cpu_logits = Model(config, weights).forward(inputs, 0)
    rows = []
    for gpu_layers in (0, 2, -1):
        model = Model(config, weights, device=device, gpu_layers=gpu_layers)
        got = generate(model, [1], len(ids), ignore_eos=True).run().generated_ids
        model.reset()
        diff = float(np.abs(model.forward(inputs, 0) - cpu_logits).max())
        rows.append({"gpu_layers": gpu_layers, "ids_equal_golden": got == ids, "max_logit_diff_vs_cpu": diff,
                     "ok": got == ids and diff < 5e-4})
    for dtype in ("fp16", "bf16"):  # 16-bit weights held 16-bit on the device: the first 32 ids must equal fp32's
        model = Model(config, weights, dtype=dtype, device=device, gpu_layers=-1)
        got = generate(model, [1], 32, ignore_eos=True).run().generated_ids
        rows.append({"gpu_layers": -1, "dtype": dtype, "first_32_ids_equal_golden": got == ids[:32],
                     "ok": got == ids[:32]})
    return {"rows": rows, "ok": all(r["ok"] for r in rows)}


def transfers(device: Device, preset: str) -> dict:
    counts: Counter = Counter()
    rows = []
    config, weights = load_checkpoint(f"synthetic:{preset}")
    for gpu_layers in (0, 2, -1):
        model = Model(config, weights, max_seq_len=64, device=_counting(device, counts), gpu_layers=gpu_layers)
        model.prefill(np.array([1, 2, 3], dtype=np.int32), 0)
        counts.clear()
        steps, rng = 8, np.random.default_rng(0)
        for pos in range(3, 3 + steps):  # as a generation steps: the token is chosen where the logits are
            model.next_token([5], pos, SamplingParams(), rng)
        rows.append({"gpu_layers": gpu_layers, "h2d_per_step": counts["h2d"] / steps,
                     "d2h_per_step": counts["d2h"] / steps, "d2h_bytes_per_step": counts["d2h_bytes"] / steps})
    return {"rows": rows}


def decode_speed(model: Model, device: Device, steps: int) -> float:
    model.prefill(np.array([1, 2, 3, 4], dtype=np.int32), 0)
    times = []
    for pos in range(4, 4 + steps):
        sync(device)
        t0 = time.perf_counter()
        model.decode(7, pos)
        sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def bandwidth(device: Device, preset: str, dtypes: list[str], steps: int, copy_bytes: int) -> dict:
    copy = copy_bandwidth(device, copy_bytes)
    config, weights = load_checkpoint(f"synthetic:{preset}")
    rows = []
    for dtype in dtypes:
        model = Model(config, weights, max_seq_len=64, dtype=dtype, device=device, gpu_layers=-1)
        s = decode_speed(model, device, steps)
        bytes_per_token = model.decode_weight_bytes()
        rows.append({"dtype": dtype, "decode_s_per_token": s, "decode_tokens_per_s": 1 / s,
                     "weight_bytes_per_token": bytes_per_token, "fraction_of_copy_bandwidth": bytes_per_token / s / copy,
                     "paths": model.widening_paths()})
        del model
        if device is not CPU:
            device.xp.get_default_memory_pool().free_all_blocks()
    return {"preset": preset, "copy_bytes_per_s": copy, "rows": rows}


def offload(device: Device, preset: str, dtypes: list[str], steps: int, pool_bytes: int | None) -> dict:
    config, weights = load_checkpoint(f"synthetic:{preset}")
    if pool_bytes and device is not CPU:
        device.xp.get_default_memory_pool().set_limit(size=pool_bytes)
    rows = []
    for dtype in dtypes:
        for gpu_layers in sorted({0, config.n_layers // 4, config.n_layers // 2, 3 * config.n_layers // 4}):
            try:
                model = Model(config, weights, max_seq_len=64, dtype=dtype, device=device, gpu_layers=gpu_layers)
                rows.append({"dtype": dtype, "gpu_layers": gpu_layers,
                             "decode_s_per_token": decode_speed(model, device, steps)})
                del model
            except Exception as error:  # out of device memory under the emulated card's limit
                rows.append({"dtype": dtype, "gpu_layers": gpu_layers, "error": f"{type(error).__name__}: {error}"[:300]})
            if device is not CPU:
                device.xp.get_default_memory_pool().free_all_blocks()
    return {"preset": preset, "pool_limit_bytes": pool_bytes, "rows": rows}


def markdown(report: dict) -> str:
    lines = [f"# lumi gpucheck ({report['lumi_version']}, {report['device']})", ""]
    for name, section in report["sections"].items():
        lines.append(f"## {name}")
        lines.append("```json")
        lines.append(json.dumps(section, indent=1))
        lines.append("```")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lumi.gpucheck", description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="cupy", choices=["cupy", "numpy"])
    p.add_argument("--assets", default=os.environ.get("LUMI_ASSETS", "../shared"))
    p.add_argument("--big", default="llama2-7B", help="preset for the bandwidth and offload runs")
    p.add_argument("--small", default="stories15M", help="preset for the transfer counts")
    p.add_argument("--dtypes", default="fp16,bf16", help="weight storage for the bandwidth and offload runs")
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--copy-bytes", type=int, default=1 << 30)
    p.add_argument("--pool-gib", type=float, default=12.0, help="memory-pool limit for the offload table")
    p.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for gpucheck.json and gpucheck.md")
    args = p.parse_args(argv)
    device = get_device(args.backend)
    dtypes = args.dtypes.split(",")
    report = {"lumi_version": __version__, "device": device.name, "sections": {}}
    if device is not CPU:
        props = device.xp.cuda.runtime.getDeviceProperties(0)
        report["gpu"] = {"name": props["name"].decode() if isinstance(props["name"], bytes) else props["name"],
                         "cupy": device.xp.__version__, "runtime": device.xp.cuda.runtime.runtimeGetVersion(),
                         "driver": device.xp.cuda.runtime.driverGetVersion()}
    checks = {
        "golden": lambda: golden(device, Path(args.assets)),
        "transfers": lambda: transfers(device, args.small),
        "bandwidth": lambda: bandwidth(device, args.big, dtypes, args.steps, args.copy_bytes),
        "offload": lambda: offload(device, args.big, dtypes, args.steps, int(args.pool_gib * 2**30)),
    }
    for name, check in checks.items():
        t0 = time.perf_counter()
        try:
            report["sections"][name] = check()
        except Exception:  # record it and go on: one failing check must not lose the others
            report["sections"][name] = {"error": traceback.format_exc(limit=5)}
        report["sections"][name]["seconds"] = round(time.perf_counter() - t0, 1)
        print(f"{name}: {json.dumps(report['sections'][name])[:400]}", file=sys.stderr, flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpucheck.json").write_text(json.dumps(report, indent=1))
    (out / "gpucheck.md").write_text(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
