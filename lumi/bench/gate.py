"""The regression gate: base and head measured interleaved, sampled until an interval decides.

For each config, base and head are checked out side by side (``git worktree``, kept under
``.lumi-regress/`` so numba's cache and the synthetic weights carry over between gates) and measured
by the same probe (``probe.py``), a fresh process per sample, in rounds of base, head, head, base: a
drift of the machine hits both sides alike. Each side first runs one untimed process (it compiles
numba's kernels and fills caches), and every process warms up before it times.

After each round, for decode and prefill seconds per token, the ratio head/base (> 1: head is slower)
gets its Hodges-Lehmann estimate and a distribution-free 95% interval (the pairwise log ratios between
the samples, cut at the exact Mann-Whitney quantiles). Sampling stops once every metric is decided
against the config's ``tolerance``:

- ``ok``: the interval lies wholly at or below 1 + tolerance;
- ``regressed``: it lies wholly above;
- ``inconclusive``: the budget ran out with the interval straddling it; the verdict says how many
  samples (and seconds) would settle it at the spread seen.

Beside time, in the first round's processes (two a side, which must agree), deterministic counters
(``probe.py``): allocations and bytes a decode step, float64 operations and host reads a step on an
emulated device, weight bytes per storage kind and strided weights after load. Any counter that grows
from base to head is ``counters`` whatever the clock says (one that shrinks is reported, and passes).
A config with a reference whose head ids differ from the base's is ``wrong``, before any speed verdict.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import LumiError

if TYPE_CHECKING:  # the configs' reader (YAML) is imported when a gate runs, not with the CLI's parser
    from .config import BenchConfig

# the exit status of each verdict; a gate over several configs exits with its most severe one
EXIT_CODES = {"ok": 0, "regressed": 1, "inconclusive": 3, "counters": 4, "wrong": 5}
SEVERITY = ("wrong", "regressed", "counters", "inconclusive", "ok")
# (name, the probe's statistic): a process's lower-quartile decode step and its quickest prompt (probe.py)
METRICS = (("decode", "decode_s_per_token"), ("prefill", "prefill_s_per_token"))
CONFIDENCE = 0.95
DEFAULT_BUDGET_S = 40.0  # per config, after its warm-up processes
MIN_ROUNDS = 2  # rounds of base, head, head, base before an interval may decide
MAX_ROUNDS = 60
COUNTER_STEPS = 8
TREES = ".lumi-regress"  # under the repository root, git-ignored


# ----------------------------------------------------------------------------------------------------------
# the interval


def _u_counts(m: int, n: int) -> list[int]:
    """counts[u]: orderings of m head and n base values (no ties) with U = u (U: pairs where head is larger).

    The largest value overall is a head value (it beats all n base values) or a base value (it beats
    none): c(m, n, u) = c(m - 1, n, u - n) + c(m, n - 1, u).
    """
    prev_row = [[1] for _ in range(n + 1)]  # m = 0: U = 0 whatever n
    for i in range(1, m + 1):
        row = [[1]]  # n = 0: U = 0
        for j in range(1, n + 1):
            a, b = prev_row[j], row[j - 1]  # c(i - 1, j, u - j), c(i, j - 1, u)
            counts = [0] * (i * j + 1)
            for u, c in enumerate(a):
                counts[u + j] += c
            for u, c in enumerate(b):
                counts[u] += c
            row.append(counts)
        prev_row = row
    return prev_row[n]


@dataclass
class Interval:
    estimate: float  # the Hodges-Lehmann ratio head/base: the median of the pairwise ratios
    low: float
    high: float


def ratio_interval(head: list[float], base: list[float], confidence: float = CONFIDENCE) -> Interval | None:
    """The ratio head/base of two sets of positive samples, with its distribution-free interval.

    Hodges-Lehmann on the logs: the estimate is the median of the m n pairwise log ratios; the interval runs
    from the k-th smallest to the k-th largest of them, k the largest with P(U <= k - 1) <= (1 - confidence)
    / 2 under the exact Mann-Whitney distribution (coverage >= ``confidence`` for a shift of the log
    samples). None when the samples are too few for any such k (fewer than 4 a side at 95%).
    """
    m, n = len(head), len(base)
    if not m or not n:
        return None
    diffs = sorted(math.log(h) - math.log(b) for h in head for b in base)
    counts, total = _u_counts(m, n), math.comb(m + n, m)
    alpha, cumulative, k = (1 - confidence) / 2, 0, 0
    for u, c in enumerate(counts):
        cumulative += c
        if cumulative / total > alpha:
            break
        k = u + 1
    if k == 0:
        return None
    return Interval(math.exp(statistics.median(diffs)), math.exp(diffs[k - 1]), math.exp(diffs[m * n - k]))


def decide(interval: Interval | None, tolerance: float) -> str | None:
    """"ok", "regressed", or None while the interval straddles 1 + tolerance."""
    if interval is None:
        return None
    if interval.low > 1 + tolerance:
        return "regressed"
    if interval.high <= 1 + tolerance:
        return "ok"
    return None


def samples_to_settle(interval: Interval, n: int, tolerance: float) -> int | None:
    """Samples a side that would settle an undecided interval, at the spread seen (its width shrinks as
    1/sqrt(n)); None when the estimate sits on the tolerance itself."""
    half = (math.log(interval.high) - math.log(interval.low)) / 2
    gap = abs(math.log(interval.estimate) - math.log(1 + tolerance))
    if gap < 1e-3:
        return None
    return max(n + 1, math.ceil(n * (half / gap) ** 2))


# ----------------------------------------------------------------------------------------------------------
# the trees and the probe


@dataclass
class Tree:
    label: str  # base | head
    commit: str
    path: Path


KEEP_TREES = 6  # worktrees kept under .lumi-regress/ (the most recently used), each with its numba cache


def checkout(root: Path, commit: str, label: str) -> Tree:
    """A worktree of ``commit`` under ``root/.lumi-regress``, reused when it is already there; the least
    recently used beyond ``KEEP_TREES`` are removed."""
    path = root / TREES / commit[:12]
    if (path / "lumi" / "__init__.py").exists():
        os.utime(path)  # used now
    else:
        if path.exists():
            shutil.rmtree(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", "--force", str(path), commit],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise LumiError(f"git worktree add {commit[:12]}: {proc.stderr.strip() or 'failed'}")
    trees = sorted((p for p in (root / TREES).iterdir() if (p / "lumi").is_dir()), key=lambda p: p.stat().st_mtime)
    for old in trees[:-KEEP_TREES]:
        if old != path:
            subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(old)], capture_output=True)
    return Tree(label, commit, path)


def probe_input(cfg: BenchConfig, counters: bool) -> dict:
    """What the probe measures for a config: its first point (prompt, generation, threads, gpu_layers)."""
    from ..config import PRESETS
    from ..formats import load_checkpoint
    from ..formats.synthetic import is_synthetic, parse_spec
    from .runner import prompt_ids

    model = cfg.model
    if is_synthetic(model):  # its shape from the preset: nothing drawn here
        vocab = PRESETS[parse_spec(model)[0]].vocab_size
    else:
        if not os.path.isabs(model):
            model = str((Path(cfg.path).parent / model).resolve())
        vocab = load_checkpoint(model)[0].vocab_size  # a memory map: the header alone is read
    return {"model": model, "backend": cfg.backend, "dtype": cfg.dtype, "kernels": cfg.kernels,
            "gpu_layers": cfg.gpu_layers[0], "threads": cfg.threads[0],
            "prompt_ids": prompt_ids(cfg.prompt_tokens[0], vocab), "gen_tokens": cfg.gen_tokens[0],
            "warmup": max(1, cfg.warmup), "counters": counters, "count_steps": COUNTER_STEPS}


def run_probe(probe: Path, tree: Tree, job: dict, timeout: float = 900) -> dict:
    """One probe process over ``tree``'s lumi: its JSON line, or a LumiError with the end of its stderr."""
    env = {**os.environ, "PYTHONPATH": str(tree.path)}
    proc = subprocess.run([sys.executable, str(probe), json.dumps(job)], env=env, capture_output=True, text=True,
                          timeout=timeout)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-6:])
        raise LumiError(f"{tree.label} ({tree.commit[:12]}): the probe failed with status {proc.returncode}:\n{tail}")
    result = json.loads(lines[-1])
    if Path(result["lumi"]).resolve() != (tree.path / "lumi").resolve():
        raise LumiError(f"{tree.label}: the probe imported {result['lumi']}, not {tree.path / 'lumi'}")
    return result


# ----------------------------------------------------------------------------------------------------------
# one config


@dataclass
class Metric:
    name: str
    base_median: float | None = None
    head_median: float | None = None
    interval: Interval | None = None
    verdict: str = "inconclusive"
    settle_samples: int | None = None  # a side, when inconclusive


@dataclass
class ConfigResult:
    config: str
    tolerance: float
    has_reference: bool
    verdict: str = "ok"
    metrics: list[Metric] = field(default_factory=list)
    samples: int = 0  # a side
    wall_s: float = 0.0
    sample_s: float = 0.0  # mean seconds of one probe process
    counters: dict = field(default_factory=dict)  # name -> {"base": v, "head": v, "change": "grew" | "shrank"}
    unstable: list[str] = field(default_factory=list)  # counters that differed between two runs of one side
    counter_values: dict = field(default_factory=dict)  # base / head -> every counter of its first run
    raw: dict = field(default_factory=dict)  # base / head -> metric -> each process's seconds per token, in order
    ids: dict = field(default_factory=dict)  # base / head -> fingerprint of the greedy ids
    findings: list[str] = field(default_factory=list)


def _flatten(counters: dict) -> dict:
    flat = {}
    for key, value in counters.items():
        if isinstance(value, dict):
            for kind, v in value.items():
                flat[f"{key}[{kind}]"] = v
        else:
            flat[key] = value
    return flat


def compare_counters(base_runs: list[dict], head_runs: list[dict]) -> tuple[dict, list[str]]:
    """Counters that differ between base and head ({name: base, head, change}), and those unstable within a
    side (left out of the comparison)."""
    base = [_flatten(r["counters"]) for r in base_runs]
    head = [_flatten(r["counters"]) for r in head_runs]
    unstable = sorted({k for runs in (base, head) for k in set().union(*runs) if len({r.get(k) for r in runs}) > 1})
    moved = {}
    for key in sorted(set(base[0]) | set(head[0])):
        if key in unstable:
            continue
        b, h = base[0].get(key, 0), head[0].get(key, 0)
        if b != h:
            moved[key] = {"base": b, "head": h, "change": "grew" if h > b else "shrank"}
    return moved, unstable


def gate_config(cfg: BenchConfig, trees: tuple[Tree, Tree], probe: Path, budget_s: float,
                progress=None) -> ConfigResult:
    """Measure one config on base and head until its metrics are decided or ``budget_s`` is spent."""
    say = progress or (lambda message: None)
    result = ConfigResult(cfg.name, cfg.tolerance, cfg.reference is not None)
    t_start = time.perf_counter()
    quiet = probe_input(cfg, counters=False)
    counting = {**quiet, "counters": True}
    base, head = trees
    try:
        for tree in trees:  # untimed: numba compiles into the tree's cache, synthetic weights are drawn
            say(f"{cfg.name}: warming {tree.label}")
            run_probe(probe, tree, quiet)
    except LumiError as error:
        if tree is base:
            raise  # nothing to compare against: a usage error, not a verdict on head
        result.verdict, result.findings = "wrong", [f"head does not run this config: {error}"]
        result.wall_s = time.perf_counter() - t_start
        return result
    samples = {"base": [], "head": []}
    counted = {"base": [], "head": []}
    t_measure, process_s = time.perf_counter(), []
    for round_ in range(MAX_ROUNDS):
        for tree in (base, head, head, base):
            t0 = time.perf_counter()
            run = run_probe(probe, tree, counting if round_ == 0 else quiet)
            process_s.append(time.perf_counter() - t0)
            samples[tree.label].append(run)
            if round_ == 0:
                counted[tree.label].append(run)
        result.samples = len(samples["base"])
        result.metrics = []
        for name, key in METRICS:
            b = [r[key] for r in samples["base"]]
            h = [r[key] for r in samples["head"]]
            metric = Metric(name, statistics.median(b), statistics.median(h), ratio_interval(h, b))
            metric.verdict = decide(metric.interval, cfg.tolerance) if round_ + 1 >= MIN_ROUNDS else None
            result.metrics.append(metric)
        shown = "  ".join(f"{m.name} {_interval_text(m.interval)}" for m in result.metrics)
        say(f"{cfg.name}: {result.samples} a side  {shown}")
        spent = time.perf_counter() - t_measure
        if all(m.verdict for m in result.metrics):
            break
        if round_ + 1 >= MIN_ROUNDS and spent + 4 * statistics.mean(process_s) > budget_s:
            break  # (the first rounds run whatever the budget: an interval needs 4 samples a side)
    result.sample_s = statistics.mean(process_s)
    for metric in result.metrics:
        if metric.verdict is None:
            metric.verdict = "inconclusive"
            if metric.interval is not None:
                metric.settle_samples = samples_to_settle(metric.interval, result.samples, cfg.tolerance)
    result.counters, result.unstable = compare_counters(counted["base"], counted["head"])
    result.counter_values = {side: _flatten(runs[0]["counters"]) for side, runs in counted.items()}
    result.ids = {side: sorted({r["ids"] for r in runs}) for side, runs in samples.items()}
    result.raw = {side: {name: [r[key] for r in runs] for name, key in METRICS} for side, runs in samples.items()}
    result.wall_s = time.perf_counter() - t_start
    result.verdict, result.findings = _verdict(result)
    return result


def _verdict(r: ConfigResult) -> tuple[str, list[str]]:
    findings = []
    if len(r.ids["base"]) > 1 or len(r.ids["head"]) > 1:
        findings.append("greedy ids differ between runs of one side")
    wrong = r.has_reference and r.ids["base"] != r.ids["head"]
    if wrong:
        findings.append(f"greedy ids: head {', '.join(r.ids['head'])} against base {', '.join(r.ids['base'])}")
    grew = [k for k, v in r.counters.items() if v["change"] == "grew"]
    for key, v in r.counters.items():
        findings.append(f"{key}: {_number(v['base'])} -> {_number(v['head'])} ({v['change']})")
    for key in r.unstable:
        findings.append(f"{key}: differs between two runs of one side (left out)")
    for m in r.metrics:
        if m.verdict == "inconclusive":
            if m.settle_samples is None:
                findings.append(f"{m.name}: the ratio sits on the tolerance; no budget settles it")
            else:
                seconds = 2 * m.settle_samples * r.sample_s
                findings.append(f"{m.name}: about {m.settle_samples} samples a side would settle it "
                                f"(--budget {math.ceil(seconds)})")
    verdicts = [m.verdict for m in r.metrics]
    for verdict in SEVERITY:
        if (verdict == "wrong" and wrong) or (verdict == "counters" and grew) or verdict in verdicts:
            return verdict, findings
    return "ok", findings


def _number(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _interval_text(i: Interval | None) -> str:
    return "-" if i is None else f"{i.estimate:.3f} [{i.low:.3f}, {i.high:.3f}]"


# ----------------------------------------------------------------------------------------------------------
# the gate


def run_gate(root: Path, base: str, head: str, configs: list[Path], budget_s: float = DEFAULT_BUDGET_S,
             progress=None) -> list[ConfigResult]:
    """Every config on base and head (commits, resolved); the probe is this lumi's, copied beside the trees."""
    from .config import load_config

    loaded = [load_config(path) for path in configs]
    trees = (checkout(root, base, "base"), checkout(root, head, "head"))
    probe = root / TREES / "probe.py"
    shutil.copyfile(Path(__file__).with_name("probe.py"), probe)
    return [gate_config(cfg, trees, probe, budget_s, progress) for cfg in loaded]


def exit_code(results: list[ConfigResult]) -> int:
    worst = min((SEVERITY.index(r.verdict) for r in results), default=len(SEVERITY) - 1)
    return EXIT_CODES[SEVERITY[worst]]


HEADER = ["config", "metric", "base s/token", "head s/token", "head/base [95% interval]", "tolerance", "samples",
          "verdict"]


def _rows(results: list[ConfigResult]) -> list[list[str]]:
    rows = []
    for r in results:
        for m in r.metrics:
            rows.append([r.config, m.name, seconds_text(m.base_median), seconds_text(m.head_median), _interval_text(m.interval),
                         f"{r.tolerance:.0%}", str(r.samples), m.verdict])
    return rows


def seconds_text(s: float | None) -> str:
    """A duration in the unit that shows it best: "3.412 ms"."""
    if s is None:
        return "-"
    for unit, scale in (("s", 1), ("ms", 1e-3), ("us", 1e-6)):
        if abs(s) >= scale:
            return f"{s / scale:.3f} {unit}"
    return f"{s / 1e-9:.1f} ns"


def table(results: list[ConfigResult], base: str, head: str) -> str:
    cells = [HEADER] + _rows(results)
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]
    lines = [f"lumi regress: base {base[:12]}  head {head[:12]}  (head/base sec/token: > 1 is slower; "
             f"{CONFIDENCE:.0%} Hodges-Lehmann interval)"]
    for k, c in enumerate(cells):
        lines.append("  ".join(v.ljust(w) for v, w in zip(c, widths)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    for r in results:
        lines.append(f"{r.config}: {r.verdict.upper()} in {r.wall_s:.0f} s"
                     + "".join(f"\n  - {f}" for f in r.findings))
    return "\n".join(lines) + "\n"


def markdown(results: list[ConfigResult], base: str, head: str) -> str:
    icon = {"ok": ":white_check_mark:", "regressed": ":x:", "wrong": ":x:", "counters": ":x:",
            "inconclusive": ":grey_question:"}
    lines = [f"### lumi regress: `{base[:12]}` → `{head[:12]}`", "",
             f"Ratios are head/base seconds per token (> 1: head is slower), with their {CONFIDENCE:.0%} "
             f"Hodges-Lehmann interval; a metric is *regressed* when its interval lies above 1 + tolerance, "
             f"*ok* when at or below it, *inconclusive* otherwise.", "",
             "| " + " | ".join(HEADER) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * 5 + ["---"]) + "|"]
    for row in _rows(results):
        row[-1] = f"{icon.get(row[-1], '')} {row[-1]}"
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    for r in results:
        lines.append(f"- **{r.config}**: {icon.get(r.verdict, '')} {r.verdict} ({r.wall_s:.0f} s)")
        lines += [f"  - {f}" for f in r.findings]
    return "\n".join(lines) + "\n"


def to_json(results: list[ConfigResult], base: str, head: str) -> str:
    return json.dumps({"base": base, "head": head, "confidence": CONFIDENCE, "exit_code": exit_code(results),
                       "results": [asdict(r) for r in results]}, indent=2) + "\n"
