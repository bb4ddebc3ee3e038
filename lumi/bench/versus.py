"""``python -m lumi.bench.versus --llama2c PATH``: lumi's decode beside llama2.c's on the same checkpoint file.

llama2.c is not part of lumi: build its ``run.c`` yourself as its Makefile's ``runomp``
(``gcc -Ofast -fopenmp -march=native run.c -lm -o runomp``) and pass the binary. Each model is
a synthetic preset (``synthetic:PRESET?seed=0``) written once as a llama2.c v0 checkpoint into
``$LUMI_CACHE_DIR/versus/``; every engine reads that one file.

One sample is one fresh process: greedy decoding from BOS (id 1) over ``--steps`` positions,
end-of-sequence ignored. Its speed is llama2.c's own figure, positions 2..steps timed after the
first forward pass ("achieved tok/s"), and for lumi ``lumi generate``'s decode tok/s, the same
steps (the BOS prompt's forward pass is the prefill, untimed). Rounds alternate the engines so
that the machine's drift falls on all of them alike; the table gives each engine's median tok/s
and its ratio to llama2.c: the median over rounds of the ratio within a round (on a shared
machine whose bandwidth moves by tens of percent between minutes, a round's engines saw the same
weather; a ratio of medians mixes rounds), and how many greedy ids agree with llama2.c's (the speeds are of the same
answer only where all do; float32 sums in another order may flip a near-tie late).

Threads: ``OMP_NUM_THREADS`` for llama2.c, ``--threads`` for lumi (BLAS, and numba's pool with
``--kernels numba``). For a measurement, unset ``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` in
the command that runs this; the table's header names the BLAS kernel that ran.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from ..errors import LumiError
from ..formats import load_checkpoint
from ..formats.llama2c import write_llama2c
from ..formats.synthetic import cache_dir
from .env import environment

ENGINES = ("llama2.c", "numpy", "numba")
# positions decoded per sample: enough for a steady median, few enough that a 1B model's round stays short
DEFAULT_STEPS = {"stories15M": 128, "stories42M": 128, "stories110M": 128, "tinyllama-1.1B": 32}


def checkpoint(preset: str, log=print) -> Path:
    """``synthetic:PRESET?seed=0`` as a llama2.c v0 file in the cache (written the first time)."""
    path = cache_dir() / "versus" / f"{preset}-seed0.bin"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        log(f"writing {path} (once)")
        config, weights = load_checkpoint(f"synthetic:{preset}?seed=0")
        # llama2.c pairs RoPE's features interleaved; a Hugging Face preset's (tinyllama) pairs halves. Random
        # weights mean nothing either way, so the file is the preset's shapes under llama2.c's convention.
        config = config.replace(rope_layout="interleaved")
        try:
            write_llama2c(path, config, weights)
        except ValueError as e:  # a preset llama2.c cannot hold (attention biases)
            raise LumiError(f"{preset}: not a llama2.c model: {e}") from None
    return path


def sample(engine: str, llama2c: Path, model: Path, steps: int, threads: int) -> tuple[float, list[int]]:
    """(decode tok/s, greedy ids) of one fresh process."""
    env = dict(os.environ)
    if engine == "llama2.c":
        env["OMP_NUM_THREADS"] = str(threads)
        done = subprocess.run([str(llama2c), str(model), str(steps)], capture_output=True, text=True, env=env)
        rate = [line for line in done.stderr.splitlines() if line.startswith("achieved tok/s:")]
        if done.returncode != 0 or not rate:
            raise LumiError(f"{llama2c} {model}: exit {done.returncode}: {done.stderr.strip()[-500:]}")
        return float(rate[0].split(":", 1)[1]), [int(t) for t in done.stdout.split()]
    command = [sys.executable, "-m", "lumi", "generate", str(model), "--prompt-ids", "1", "-n", str(steps),
               "--ignore-eos", "--json", "--threads", str(threads), "--kernels", engine]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise LumiError(f"{' '.join(command)}: exit {done.returncode}: {done.stderr.strip()[-500:]}")
    result = json.loads(done.stdout)
    return result["stats"]["decode_tokens_per_s"], result["generated_ids"]


def paired_ratios(rates: dict[str, list[float]]) -> dict[str, float]:
    """Each engine's median over rounds of its tok/s over llama2.c's in the same round."""
    base = rates["llama2.c"]
    return {e: statistics.median(a / b for a, b in zip(v, base)) for e, v in rates.items()}


def agreed(ids: list[int], reference: list[int]) -> int:
    n = 0
    for a, b in zip(ids, reference):
        if a != b:
            break
        n += 1
    return n


def run(llama2c: Path, presets: list[str], threads: list[int], rounds: int, steps: int | None,
        engines=ENGINES, log=print) -> list[dict]:
    """One row per (preset, threads): each engine's samples, median, ratio to llama2.c and ids agreeing."""
    rows = []
    for preset in presets:
        model = checkpoint(preset, log)
        n = steps or DEFAULT_STEPS.get(preset, 64)
        for t in threads:
            rates = {e: [] for e in engines}
            ids = {}
            for r in range(rounds):
                order = engines if r % 2 == 0 else engines[::-1]  # alternate who goes first
                for engine in order:
                    rate, got = sample(engine, llama2c, model, n, t)
                    rates[engine].append(rate)
                    ids.setdefault(engine, got)
                    log(f"{preset} threads={t} round {r + 1}/{rounds} {engine}: {rate:.1f} tok/s")
            rows.append({"preset": preset, "threads": t, "steps": n, "samples": rates,
                         "median": {e: statistics.median(v) for e, v in rates.items()},
                         "ratio": paired_ratios(rates),
                         "ids_agree": {e: agreed(ids[e], ids["llama2.c"]) for e in engines}})
    return rows


def markdown(rows: list[dict], engines=ENGINES) -> str:
    env = environment()
    blas = ", ".join(f"{b['internal_api']} {b['version']} ({b['architecture']})" for b in env["blas"]) or "none"
    settings = ", ".join(f"{k}={env['openblas_env'].get(k, '(unset)')}" for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"))
    lines = [f"lumi {env['lumi_version']} at {env['git_commit'] or 'an unknown commit'}; CPU: {env['cpu']}, "
             f"{env['cpu_cores']} cores; BLAS: {blas}; {settings}",
             "", "| model | threads | steps | " + " | ".join(f"{e} tok/s" for e in engines) + " | ids agreeing |",
             "|---|---|---|" + "---|" * len(engines) + "---|"]
    for row in rows:
        cells = []
        for e in engines:
            cell = f"{row['median'][e]:.1f}"
            if e != "llama2.c":
                cell += f" ({row['ratio'][e]:.2f}x)"
            cells.append(cell)
        agree = ", ".join(f"{e} {row['ids_agree'][e]}/{row['steps']}" for e in engines if e != "llama2.c")
        lines.append(f"| {row['preset']} | {row['threads']} | {row['steps']} | " + " | ".join(cells) + f" | {agree} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lumi.bench.versus", description=__doc__.split("\n\n")[0])
    p.add_argument("--llama2c", required=True, type=Path, metavar="PATH", help="llama2.c's runomp binary")
    p.add_argument("--models", default="stories15M,stories110M,tinyllama-1.1B", help="synthetic presets, comma-separated")
    p.add_argument("--threads", default="1,2", help="thread counts, comma-separated (default 1,2)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3): medians of that many")
    p.add_argument("--steps", type=int, help="positions per sample (default: 128, 32 for tinyllama-1.1B)")
    p.add_argument("--engines", default=",".join(ENGINES), help=f"a subset of {','.join(ENGINES)} (llama2.c first)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write every sample there")
    args = p.parse_args(argv)
    engines = tuple(args.engines.split(","))
    if engines[0] != "llama2.c" or not set(engines) <= set(ENGINES):
        p.error(f"--engines: llama2.c first, then any of numpy, numba; got {args.engines}")
    if not os.access(args.llama2c, os.X_OK):
        p.error(f"--llama2c {args.llama2c}: not an executable (build llama2.c's run.c as runomp)")
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    try:
        rows = run(args.llama2c, args.models.split(","), [int(t) for t in args.threads.split(",")], args.rounds,
                   args.steps, engines, log)
    except LumiError as e:
        print(f"lumi: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    sys.stdout.write(markdown(rows, engines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
