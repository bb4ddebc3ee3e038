"""The regression gate: its interval, its verdicts and exit codes, and the probe's deterministic counters.

The counters are shown to catch each of the seed's regressions, planted in a copy of the package (a
float64 scalar in attention, RoPE tables in float64, weights held as transposed views, an eager per-token
log of an array, bf16 weights widened to float32 at load), and a whole gate runs over two commits of a
scratch repository. No timing is asserted anywhere: only what the counters and the interval arithmetic
decide.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import lumi
from lumi.bench import gate
from lumi.bench.config import CONFIG_DIR
from lumi.cli import main

PACKAGE = Path(lumi.__file__).parent
PROBE = PACKAGE / "bench" / "probe.py"
PROMPT = [1, 45, 300, 7, 99, 12, 256, 3]


# ----------------------------------------------------------------------------------------------------------
# the interval and the verdicts


def test_the_interval_brackets_the_ratio_and_narrows_with_samples():
    rng = random.Random(0)
    base = [rng.lognormvariate(0, 0.05) for _ in range(12)]
    head = [1.2 * rng.lognormvariate(0, 0.05) for _ in range(12)]
    interval = gate.ratio_interval(head, base)
    assert interval.low < 1.2 < interval.high and 1.1 < interval.low
    assert gate.decide(interval, 0.10) == "regressed"
    few = gate.ratio_interval(head[:4], base[:4])
    assert few.high - few.low > interval.high - interval.low
    same = gate.ratio_interval(base, list(base))
    assert same.estimate == pytest.approx(1.0) and same.low < 1 < same.high
    assert gate.decide(same, 0.10) == "ok"
    assert gate.ratio_interval(head[:3], base[:3]) is None  # no 95% interval from 3 a side


def test_the_interval_covers_the_true_ratio_as_often_as_it_says():
    rng = random.Random(1)
    trials, covered = 400, 0
    for _ in range(trials):
        base = [rng.lognormvariate(0, 0.1) for _ in range(6)]
        head = [1.05 * rng.lognormvariate(0, 0.1) for _ in range(6)]
        i = gate.ratio_interval(head, base)
        covered += i.low <= 1.05 <= i.high
    assert covered / trials >= 0.93  # 95% nominal (exact quantiles: at least that, up to the test's noise)


def test_a_straddling_interval_is_inconclusive_and_says_what_would_settle_it():
    i = gate.Interval(1.08, 1.0, 1.17)
    assert gate.decide(i, 0.10) is None
    n = gate.samples_to_settle(i, 6, 0.10)
    assert n > 6
    assert gate.samples_to_settle(gate.Interval(1.1, 1.0, 1.2), 6, 0.10) is None  # on the tolerance itself


def result(verdicts, counters=None, ids=("a", "a"), reference=True, settle=None):
    r = gate.ConfigResult("c", 0.10, reference)
    r.metrics = [gate.Metric(name, 1.0, 1.0, gate.Interval(1, 0.9, 1.1), v, settle) for name, v in
                 zip(("decode", "prefill"), verdicts)]
    r.counters = counters or {}
    r.ids = {"base": [ids[0]], "head": [ids[1]]}
    r.sample_s = 1.0
    r.verdict, r.findings = gate._verdict(r)
    return r


def test_verdicts_rank_and_each_has_its_exit_code():
    grew = {"float64_ops_per_step": {"base": 0, "head": 2.0, "change": "grew"}}
    shrank = {"alloc_per_step": {"base": 219, "head": 6, "change": "shrank"}}
    assert result(["ok", "ok"]).verdict == "ok"
    assert result(["ok", "ok"], shrank).verdict == "ok"  # reported, and passes
    assert result(["ok", "ok"], grew).verdict == "counters"
    assert result(["regressed", "ok"], grew).verdict == "regressed"
    assert result(["regressed", "ok"], grew, ids=("a", "b")).verdict == "wrong"
    assert result(["ok", "ok"], ids=("a", "b"), reference=False).verdict == "ok"  # no reference: ids may drift
    inconclusive = result(["ok", "inconclusive"], settle=20)
    assert inconclusive.verdict == "inconclusive" and any("--budget 40" in f for f in inconclusive.findings)
    codes = {v: gate.exit_code([result(list(v))]) for v in (("ok", "ok"), ("regressed", "ok"), ("ok", "inconclusive"))}
    assert codes == {("ok", "ok"): 0, ("regressed", "ok"): 1, ("ok", "inconclusive"): 3}
    assert gate.exit_code([result(["ok", "ok"], grew), result(["ok", "inconclusive"])]) == 4
    assert len(set(gate.EXIT_CODES.values())) == len(gate.EXIT_CODES) and 2 not in gate.EXIT_CODES.values()


def test_counters_compare_per_kind_and_leave_out_unstable_ones():
    base = [{"counters": {"weight_bytes": {"bf16": 100}, "alloc_per_step": 5.0, "host_reads_per_step": 1.0}}] * 2
    head = [{"counters": {"weight_bytes": {"fp32": 200}, "alloc_per_step": 4.0, "host_reads_per_step": 1.0}},
            {"counters": {"weight_bytes": {"fp32": 200}, "alloc_per_step": 9.0, "host_reads_per_step": 1.0}}]
    moved, unstable = gate.compare_counters(base, head)
    assert unstable == ["alloc_per_step"]
    assert moved == {"weight_bytes[bf16]": {"base": 100, "head": 0, "change": "shrank"},
                     "weight_bytes[fp32]": {"base": 0, "head": 200, "change": "grew"}}


def test_a_head_that_cannot_run_is_wrong_and_a_base_that_cannot_is_an_error(monkeypatch, tmp_path):
    from lumi.bench.config import load_config
    from lumi.errors import LumiError

    cfg = load_config(CONFIG_DIR / "stories260K-fp32.yaml")
    trees = (gate.Tree("base", "b" * 40, tmp_path), gate.Tree("head", "h" * 40, tmp_path))

    def head_fails(probe, tree, job, timeout=900):
        if tree.label == "head":
            raise LumiError("head (hhhh): the probe failed with status 1:\nTypeError: boom")
        return {}

    monkeypatch.setattr(gate, "run_probe", head_fails)
    r = gate.gate_config(cfg, trees, tmp_path / "probe.py", 1.0)
    assert r.verdict == "wrong" and "boom" in r.findings[0] and gate.exit_code([r]) == 5
    monkeypatch.setattr(gate, "run_probe", lambda probe, tree, job, timeout=900: (_ for _ in ()).throw(
        LumiError("base (bbbb): the probe failed")))
    with pytest.raises(LumiError, match="base"):
        gate.gate_config(cfg, trees, tmp_path / "probe.py", 1.0)


# ----------------------------------------------------------------------------------------------------------
# the probe's counters against planted regressions


def probe(package_parent: Path, **overrides) -> dict:
    job = {"model": "synthetic:stories260K?seed=0", "backend": "numpy", "dtype": "fp32", "kernels": "numpy",
           "gpu_layers": 0, "threads": 1, "prompt_ids": PROMPT, "gen_tokens": 8, "warmup": 1, "timed": 1,
           "counters": True, "count_steps": 4, **overrides}
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(package_parent), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(PROBE), json.dumps(job)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(out["lumi"]).resolve() == (package_parent / "lumi").resolve()
    return out


@pytest.fixture(scope="module")
def clean():
    return probe(PACKAGE.parent)


@pytest.fixture
def planted(tmp_path):
    """A copy of the package with one edit: (path relative to lumi/, old text, new text) -> its parent."""

    def make(module: str, old: str, new: str) -> Path:
        shutil.copytree(PACKAGE, tmp_path / "lumi", ignore=shutil.ignore_patterns("__pycache__"))
        path = tmp_path / "lumi" / module
        text = path.read_text()
        assert old in text, f"{module} no longer holds the line to plant into: {old}"
        path.write_text(text.replace(old, new))
        return tmp_path

    return make


def test_a_clean_tree_counts_no_float64_no_strided_weight_and_one_host_read_a_step(clean):
    c = clean["counters"]
    assert c["float64_ops_per_step"] == 0 and c["noncontiguous_weights"] == 0
    assert c["host_reads_per_step"] == 1  # the chosen token, once a step
    assert c["array_ops_per_step"] > 50  # the emulated device really saw the step
    assert c["alloc_per_step"] > 0 and c["alloc_bytes_per_step"] > 0
    assert set(c["weight_bytes"]) == {"fp32"}


def test_counters_are_deterministic(clean):
    assert probe(PACKAGE.parent)["counters"] == clean["counters"]


@pytest.mark.parametrize("module, old, new", [
    ("model/ops.py", "    scores *= F32(1 / math.sqrt(hd))", "    scores *= np.float64(1 / math.sqrt(hd))"),
    ("model/ops.py", "inv_freq = F32(theta) ** -(xp.arange(0, head_dim, 2, dtype=F32) / F32(head_dim))",
     "inv_freq = theta ** -(xp.arange(0, head_dim, 2) / head_dim)"),
], ids=["float64 scalar in attention", "float64 RoPE tables"])
def test_float64_in_the_step_is_counted(planted, clean, module, old, new):
    got = probe(planted(module, old, new))["counters"]
    assert got["float64_ops_per_step"] > clean["counters"]["float64_ops_per_step"] == 0


def test_an_eager_log_of_an_array_is_a_host_read_a_step(planted, clean):
    old = "        logits = self._last_logits(tokens, start_pos)\n        return int("
    new = ("        logits = self._last_logits(tokens, start_pos)\n"
           "        log.debug(f'top logit {logits.max():.3f}')\n        return int(")
    got = probe(planted("model/transformer.py", old, new))["counters"]
    assert got["host_reads_per_step"] == clean["counters"]["host_reads_per_step"] + 1


def test_weights_held_as_strided_views_are_counted(planted, clean):
    """Every other column of a doubled matrix: the same values, contiguous in neither order."""
    old = "    if isinstance(w, np.ndarray):\n        return device.to_device(w)"
    new = "    if isinstance(w, np.ndarray):\n        return device.to_device(np.repeat(w, 2, axis=1)[:, ::2])"
    got = probe(planted("model/layers.py", old, new))["counters"]
    assert got["noncontiguous_weights"] > 0 == clean["counters"]["noncontiguous_weights"]


def test_bf16_weights_widened_to_float32_at_load_are_counted(planted):
    clean_bf16 = probe(PACKAGE.parent, dtype="bf16")["counters"]["weight_bytes"]
    old = "        w = resident(to_storage(stack_rows(list(arrays)), dtype))"
    new = "        w = resident(to_storage(stack_rows(list(arrays)), 'fp32' if dtype == 'bf16' else dtype))"
    widened = probe(planted("model/layers.py", old, new), dtype="bf16")["counters"]["weight_bytes"]
    assert clean_bf16["bf16"] > 0 and "bf16" not in widened
    assert widened["fp32"] - clean_bf16["fp32"] == 2 * clean_bf16["bf16"]


# ----------------------------------------------------------------------------------------------------------
# a whole gate over two commits


def git(repo: Path, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def test_a_gate_over_two_commits_catches_a_planted_float64_and_exits_with_its_code(tmp_path, monkeypatch, capsys):
    repo = tmp_path / "repo"
    shutil.copytree(PACKAGE, repo / "lumi", ignore=shutil.ignore_patterns("__pycache__"))
    git(repo, "init", "-q")
    git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "add", "lumi")
    git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "base")
    ops = repo / "lumi" / "model" / "ops.py"
    ops.write_text(ops.read_text().replace("    scores *= F32(1 / math.sqrt(hd))",
                                           "    scores *= np.float64(1 / math.sqrt(hd))"))
    git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-am", "head: float64 in attention")
    monkeypatch.chdir(repo)
    report = tmp_path / "gate.json"
    code = main(["regress", "HEAD~1", "HEAD", "--config", str(CONFIG_DIR / "stories260K-fp32.yaml"),
                 "--budget", "6", "--json", str(report), "--markdown", str(tmp_path / "gate.md")])
    out = capsys.readouterr().out
    doc = json.loads(report.read_text())
    (r,) = doc["results"]
    assert r["counters"]["float64_ops_per_step"]["change"] == "grew"
    assert r["verdict"] in ("counters", "regressed") and code == gate.EXIT_CODES[r["verdict"]] == doc["exit_code"]
    assert "float64_ops_per_step: 0 ->" in out and "head/base" in out
    assert "| stories260K-fp32 | decode |" in (tmp_path / "gate.md").read_text()
    assert all(len(v) == r["samples"] for side in r["raw"].values() for v in side.values())
    assert math.isfinite(r["metrics"][0]["interval"]["estimate"])


def test_copies_across_a_gpu_boundary_are_counted_per_step():
    """count_transfers on the emulated CUDA device (tests/fake_cuda.py), lumi's kernels behind CuPy's
    interface: the whole model there, a greedy step sends its token up and brings the next one down; with two
    layers there (the head on the host), the activation goes up and comes back down through the staging."""
    from fake_cuda import CUDA_FAKE

    from lumi.bench import probe as probe_module

    cfg = {"model": "synthetic:stories260K?seed=0", "dtype": "fp32", "gpu_layers": -1}
    assert probe_module.count_transfers(lumi, CUDA_FAKE, cfg, PROMPT, 4) == {"to_host_per_step": 1.0,
                                                                             "to_device_per_step": 1.0}
    offload = probe_module.count_transfers(lumi, CUDA_FAKE, {**cfg, "gpu_layers": 2}, PROMPT, 4)
    assert offload == {"to_host_per_step": 1.0, "to_device_per_step": 1.0}
    assert probe_module.count_transfers(lumi, CUDA_FAKE, {**cfg, "gpu_layers": 0}, PROMPT, 4) == {
        "to_host_per_step": 0.0, "to_device_per_step": 0.0}
