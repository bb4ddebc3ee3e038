"""``lumi regress BASE HEAD``: is HEAD slower, or wrong, or heavier than BASE?

Two commits (anything ``git rev-parse`` accepts) go through the gate (``gate``): measured interleaved
in fresh processes until a 95% interval of each ratio decides against the config's tolerance, with
deterministic counters and the greedy ids beside the clock. Verdicts and exit statuses: ok 0, regressed 1,
inconclusive 3, counters 4, wrong 5; bad input (an unknown commit or config) is a one-line error and 2.

Two asv result files (``results/<machine>/<commit>-<env>.json``, written with ``--record-samples``)
are compared from their stored samples instead: per config and metric, "regressed" when the head's
median is slower than the base's by more than the config's tolerance AND a one-sided Mann-Whitney U
test says head's samples are larger with p < alpha (exit 1).
"""

from __future__ import annotations

import ast
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LumiError, UsageError
from .gate import _u_counts, seconds_text

# asv benchmark name -> the metric's label; both are seconds per token (larger is worse)
METRICS = {
    "benchmarks.Decode.time_decode_s_per_token": "decode s/token",
    "benchmarks.Prefill.time_prefill_s_per_token": "prefill s/token",
}
DEFAULT_TOLERANCE = 0.10
DEFAULT_ALPHA = 0.01
MACHINE = "lumi-bench"


# ---------------------------------------------------------------------------------------
# Mann-Whitney U


def mann_whitney_greater(head, base) -> tuple[float, float]:
    """(U, p): one-sided Mann-Whitney U test that ``head`` values tend to be larger than ``base``.

    U = #(h > b) + #(h == b) / 2. The p-value is exact (the distribution counted without
    ties, with U rounded down: conservative when there are ties) for up to 50 samples a
    side, else the normal approximation with tie correction and continuity correction.
    """
    head = [float(x) for x in head if not math.isnan(x)]
    base = [float(x) for x in base if not math.isnan(x)]
    m, n = len(head), len(base)
    if not m or not n:
        raise ValueError("Mann-Whitney U needs at least one sample on each side")
    u = sum(1.0 if h > b else 0.5 if h == b else 0.0 for h in head for b in base)
    if m <= 50 and n <= 50:
        counts = _u_counts(m, n)
        return u, sum(counts[math.floor(u):]) / math.comb(m + n, m)
    values = sorted(head + base)
    ties = sum(k ** 3 - k for k in (len(list(g)) for _, g in itertools.groupby(values)))
    N = m + n
    var = m * n / 12 * ((N + 1) - ties / (N * (N - 1)))
    if var <= 0:
        return u, 1.0
    z = (u - m * n / 2 - 0.5) / math.sqrt(var)
    return u, 0.5 * math.erfc(z / math.sqrt(2))


# ---------------------------------------------------------------------------------------
# asv result files


@dataclass
class Entry:
    """One benchmark x config of one result file."""

    status: str  # "ok" | "skipped" | "failed"
    value: float | None = None
    samples: list[float] | None = None
    version: str | None = None


@dataclass
class ResultFile:
    path: str
    commit: str
    entries: dict[tuple[str, str], Entry] = field(default_factory=dict)  # (benchmark, config)

    @property
    def label(self) -> str:
        return self.commit[:8] if self.commit else os.path.basename(self.path)


def _param_value(text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def load_result_file(path) -> ResultFile:
    """Read an asv (0.6, format version 2) result file; LumiError naming the file on anything else."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise LumiError(f"{path}: no such result file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LumiError(f"{path}: not an asv result file ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict) \
            or not isinstance(data.get("result_columns"), list):
        raise LumiError(f"{path}: not an asv result file (no 'results' and 'result_columns')")
    columns = data["result_columns"]
    out = ResultFile(path, str(data.get("commit_hash") or ""))
    for bench, row in data["results"].items():
        if bench not in METRICS:
            continue
        if not isinstance(row, list):
            raise LumiError(f"{path}: results.{bench}: expected a list of columns")
        col = dict(zip(columns, row))
        values = col.get("result")
        params = col.get("params") or []
        samples = col.get("samples")
        if not isinstance(values, list):
            values = [values]
        combos = list(itertools.product(*params)) if params else [()]
        if len(combos) != len(values):
            raise LumiError(f"{path}: results.{bench}: {len(values)} results for {len(combos)} parameter sets")
        for i, (combo, value) in enumerate(zip(combos, values)):
            config = ", ".join(str(_param_value(p)) for p in combo) or "-"
            if value is None:
                entry = Entry("failed")
            elif isinstance(value, float) and math.isnan(value):
                entry = Entry("skipped")
            else:
                s = samples[i] if isinstance(samples, list) and i < len(samples) else None
                entry = Entry("ok", float(value), [float(x) for x in s] if s else None, col.get("version"))
            out.entries[(bench, config)] = entry
    return out


# ---------------------------------------------------------------------------------------
# comparison


@dataclass
class Row:
    config: str
    metric: str
    base: float | None
    head: float | None
    ratio: float | None
    tolerance: float
    p: float | None
    verdict: str  # ok | faster | slower (noise) | REGRESSED | FAILED | new | missing in head

    @property
    def bad(self) -> bool:
        return self.verdict in ("REGRESSED", "FAILED")


def config_tolerance(name: str) -> float:
    """The config's ``tolerance`` from its YAML (the shipped configs), else the default."""
    from .config import CONFIG_DIR, load_config

    path = CONFIG_DIR / f"{name}.yaml"
    if not path.exists():
        return DEFAULT_TOLERANCE
    try:
        return load_config(path).tolerance
    except LumiError:
        return DEFAULT_TOLERANCE


def compare(base: ResultFile, head: ResultFile, alpha: float = DEFAULT_ALPHA, tolerance=config_tolerance) -> list[Row]:
    """One row per config and metric measured on at least one side; LumiError when nothing is in common."""
    keys = sorted(set(base.entries) | set(head.entries), key=lambda k: (k[1], list(METRICS).index(k[0])))
    rows, common = [], 0
    for bench, config in keys:
        b = base.entries.get((bench, config), Entry("skipped"))
        h = head.entries.get((bench, config), Entry("skipped"))
        if b.status == "skipped" and h.status == "skipped":
            continue
        tol = tolerance(config)
        row = Row(config, METRICS[bench], b.value, h.value, None, tol, None, "")
        if h.status == "failed":
            row.verdict = "FAILED"
        elif b.status != "ok":
            row.verdict = "new" if h.status == "ok" else b.status
        elif h.status != "ok":
            row.verdict = "missing in head"
        else:
            common += 1
            if not b.samples or not h.samples:
                which = base if not b.samples else head
                raise LumiError(f"{which.path}: {bench}({config}): no samples stored; "
                                f"run asv with --record-samples")
            row.base, row.head = statistics.median(b.samples), statistics.median(h.samples)
            row.ratio = row.head / row.base if row.base > 0 else math.inf
            _, row.p = mann_whitney_greater(h.samples, b.samples)
            if row.ratio > 1 + tol:
                row.verdict = "REGRESSED" if row.p < alpha else "slower (noise)"
            elif row.ratio < 1 / (1 + tol):
                row.verdict = "faster"
            else:
                row.verdict = "ok"
        rows.append(row)
    if not common:
        raise LumiError(f"{base.path} and {head.path}: no config was measured in both "
                        f"(benchmarks {', '.join(METRICS)})")
    return rows


def _cells(row: Row) -> list[str]:
    return [row.config, row.metric, seconds_text(row.base), seconds_text(row.head),
            "-" if row.ratio is None else f"{row.ratio:.3f}", f"{row.tolerance:.0%}",
            "-" if row.p is None else f"{row.p:.2g}", row.verdict]


HEADER = ["config", "metric", "base", "head", "ratio", "tolerance", "p", "verdict"]


def table(rows: list[Row], base: ResultFile, head: ResultFile, alpha: float) -> str:
    cells = [HEADER] + [_cells(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]
    lines = [f"lumi regress: base {base.label}  head {head.label}  (regressed = slower than tolerance "
             f"and Mann-Whitney p < {alpha:g})"]
    for k, c in enumerate(cells):
        lines.append("  ".join(v.ljust(w) if i < 2 or i == len(c) - 1 else v.rjust(w)
                               for i, (v, w) in enumerate(zip(c, widths))).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append(summary(rows))
    return "\n".join(lines) + "\n"


def summary(rows: list[Row]) -> str:
    bad = [r for r in rows if r.bad]
    if not bad:
        return f"OK: no regression in {len({r.config for r in rows})} config(s)"
    return "REGRESSION: " + "; ".join(f"{r.config} {r.metric} {r.verdict.lower()}"
                                      + (f" ({r.ratio:.2f}x, p={r.p:.2g})" if r.ratio is not None else "")
                                      for r in bad)


def markdown(rows: list[Row], base: ResultFile, head: ResultFile, alpha: float) -> str:
    icon = {"REGRESSED": ":x: REGRESSED", "FAILED": ":x: FAILED", "ok": ":white_check_mark: ok",
            "faster": ":rocket: faster", "slower (noise)": ":grey_question: slower (noise)"}
    lines = [f"### lumi regress: `{base.label}` → `{head.label}`", "",
             f"Regressed = head's median slower than the config's tolerance **and** one-sided "
             f"Mann-Whitney U p < {alpha:g} on the raw samples.", "",
             "| " + " | ".join(HEADER) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * 5 + ["---"]) + "|"]
    for r in rows:
        c = _cells(r)
        c[-1] = icon.get(r.verdict, r.verdict)
        lines.append("| " + " | ".join(c) + " |")
    lines += ["", f"**{summary(rows)}**", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# measuring two commits


def _git(root, *args) -> str:
    proc = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise LumiError(f"git {' '.join(args)}: {proc.stderr.strip() or 'failed'}")
    return proc.stdout.strip()


def resolve_commit(root, name: str) -> str:
    proc = subprocess.run(["git", "-C", str(root), "rev-parse", "--verify", "--quiet", f"{name}^{{commit}}"],
                          capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise LumiError(f"{name}: not a commit in {root} (neither a result file nor anything git rev-parse knows)")
    return proc.stdout.strip()


# what makes two boxes one machine in a history: the OS release and a few bytes of RAM may change
# between boots of the same runner; another CPU model or core count is another machine
SAME_MACHINE_KEYS = ("arch", "cpu", "num_cpu")


def ensure_asv_machine(name: str = MACHINE, results: Path | str = "results") -> None:
    """Make sure ~/.asv-machine.json describes machine ``name`` as this box (asv asks interactively otherwise).

    ``asv machine --yes --machine NAME`` would record the name alone; this records the detected
    arch/cpu/ram under the pinned name, so every run of one runner lands in one series. Where
    ``results/NAME/machine.json`` exists and describes another box (``SAME_MACHINE_KEYS``), this
    raises ``LumiError``: its results would join a different machine's history and a hardware
    change would read as a code change. Give each runner its own name instead.
    """
    from asv.machine import Machine, MachineCollection

    info = Machine.get_defaults()
    info["machine"] = name
    recorded = Path(results) / name / "machine.json"
    if recorded.exists():
        try:
            theirs = json.loads(recorded.read_text())
        except (OSError, ValueError) as e:
            raise LumiError(f"{recorded}: not readable JSON ({e})") from None
        differ = [k for k in SAME_MACHINE_KEYS if str(theirs.get(k)) != str(info.get(k))]
        if differ:
            what = ", ".join(f"{k} {theirs.get(k)!r} there, {info.get(k)!r} here" for k in differ)
            raise LumiError(f"{recorded}: machine {name!r} is another box ({what}); its history would mix the "
                            f"two. Name this one, e.g. LUMI_ASV_MACHINE={name}-{_slug(info.get('cpu'))} tox -e bench "
                            f"(or asv --machine NAME)")
    try:
        described = MachineCollection.load(name)
    except Exception:  # asv.util.UserError: not described yet
        described = None
    if described is None or any(str(described.get(k)) != str(info.get(k)) for k in SAME_MACHINE_KEYS):
        MachineCollection.save(name, info)


def _slug(text) -> str:
    words = "".join(c if c.isalnum() else " " for c in str(text or "box").lower()).split()
    return "-".join(w for w in words if w not in ("r", "processor", "cpu", "tm"))[:24] or "box"


def run(args) -> int:
    """``lumi regress`` (see lumi.cli): the most severe verdict's exit status (0 when everything holds)."""
    if not 0 < args.alpha < 1:
        raise UsageError("--alpha", f"must be in (0, 1), got {args.alpha}")
    files = [os.path.isfile(x) or x.endswith(".json") for x in (args.base, args.head)]
    if all(files):
        base, head = load_result_file(args.base), load_result_file(args.head)
        rows = compare(base, head, args.alpha)
        sys.stdout.write(table(rows, base, head, args.alpha))
        _write(args.markdown, "--markdown", lambda: markdown(rows, base, head, args.alpha))
        return 1 if any(r.bad for r in rows) else 0
    if any(files):
        raise LumiError(f"{args.base} {args.head}: give two result files or two commits, not one of each")
    return _run_gate(args)


def _run_gate(args) -> int:
    from . import gate
    from .config import resolve, tier_configs

    if args.budget <= 0:
        raise UsageError("--budget", f"must be a positive number of seconds, got {args.budget}")
    root = Path(_git(os.getcwd(), "rev-parse", "--show-toplevel"))
    base, head = resolve_commit(root, args.base), resolve_commit(root, args.head)
    configs = [resolve(c) for c in args.configs] if args.configs else tier_configs(args.tier)
    if not configs:
        raise UsageError("--tier", f"no shipped config has tier {args.tier}")
    say = (lambda m: print(m, file=sys.stderr, flush=True)) if args.verbose else _quiet_progress()
    results = gate.run_gate(root, base, head, configs, args.budget, say)
    sys.stdout.write(gate.table(results, base, head))
    _write(args.markdown, "--markdown", lambda: gate.markdown(results, base, head))
    _write(args.json, "--json", lambda: gate.to_json(results, base, head))
    return gate.exit_code(results)


def _quiet_progress():
    """One status line on stderr, rewritten in place on a terminal; nothing when stderr is a file."""
    if not sys.stderr.isatty():
        return lambda message: None

    def say(message: str) -> None:
        print(f"\r\033[K{message[:150]}", end="", file=sys.stderr, flush=True)

    return say


def _write(path, option: str, text) -> None:
    if not path:
        return
    from .report import write_atomic

    try:
        write_atomic(path, text())
    except OSError as e:
        raise UsageError(option, f"cannot write {path}: {e.strerror}") from None
