"""lumi regress on hand-made asv result files: verdicts, exit statuses, Markdown, the U test."""

from __future__ import annotations

import json
import math
import random

import pytest

from lumi.bench import regress
from lumi.cli import main

DECODE = "benchmarks.Decode.time_decode_s_per_token"
PREFILL = "benchmarks.Prefill.time_prefill_s_per_token"
COLUMNS = ["result", "params", "version", "started_at", "duration", "stats_ci_99_a", "stats_ci_99_b",
           "stats_q_25", "stats_q_75", "stats_number", "stats_repeat", "samples", "profile"]
CONFIGS = ["default", "stories15M-fp32", "stories260K-fp32", "stories15M-bf16"]
TIGHT = [0.0100, 0.0101, 0.0099, 0.0100, 0.0102, 0.0098, 0.0100, 0.0101, 0.0099, 0.0100, 0.0101, 0.0099]
NOISY = [0.006, 0.014, 0.008, 0.012, 0.010, 0.007, 0.013, 0.009, 0.011, 0.015, 0.005, 0.010]


def write_result(path, commit, samples_by_config, failed=()):
    """An asv 0.6 result file; configs absent from samples_by_config are skipped (NaN)."""
    results = {}
    for bench in (DECODE, PREFILL):
        values, samples = [], []
        for c in CONFIGS:
            s = samples_by_config.get(c)
            if c in failed:
                values.append(None)
                samples.append(None)
            elif s is None:
                values.append(math.nan)
                samples.append(None)
            else:
                s = s[bench] if isinstance(s, dict) else s
                values.append(sorted(s)[len(s) // 2])
                samples.append(list(s))
        n = len(CONFIGS)
        results[bench] = [values, [[repr(c) for c in CONFIGS]], "lumi-bench-1", 1, 1.0,
                          [None] * n, [None] * n, [None] * n, [None] * n, [1] * n, [12] * n, samples]
    doc = {"commit_hash": commit, "env_name": "virtualenv-py3.11", "date": 1, "params": {}, "python": "3.11",
           "requirements": {}, "env_vars": {}, "result_columns": COLUMNS, "results": results, "durations": {},
           "version": 2}
    path.write_text(json.dumps(doc).replace("NaN", "NaN"))
    return str(path)


def scaled(samples, factor):
    return [x * factor for x in samples]


def run(capsys, *argv):
    code = main(["regress", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_identical_samples_pass(tmp_path, capsys):
    data = {"default": TIGHT, "stories15M-fp32": NOISY}
    b = write_result(tmp_path / "b.json", "a" * 40, data)
    h = write_result(tmp_path / "h.json", "b" * 40, data)
    code, out, _ = run(capsys, b, h)
    assert code == 0, out
    assert "OK: no regression in 2 config(s)" in out
    assert "REGRESSED" not in out


def test_tight_20_percent_slowdown_fails_and_names_the_config(tmp_path, capsys):
    b = write_result(tmp_path / "b.json", "a" * 40, {"default": TIGHT, "stories15M-fp32": TIGHT})
    h = write_result(tmp_path / "h.json", "b" * 40, {"default": TIGHT,
                                                      "stories15M-fp32": {DECODE: scaled(TIGHT, 1.2), PREFILL: TIGHT}})
    md = tmp_path / "summary.md"
    code, out, _ = run(capsys, b, h, "--markdown", md)
    assert code == 1
    line = next(l for l in out.splitlines() if "REGRESSED" in l)
    assert "stories15M-fp32" in line and "decode" in line and "1.200" in line
    assert "REGRESSION: stories15M-fp32 decode s/token" in out
    text = md.read_text()
    assert "| stories15M-fp32 | decode s/token |" in text and "REGRESSED" in text
    assert "default" in out and out.count("REGRESSED") == 1


def test_noisy_overlapping_20_percent_slowdown_is_not_flagged(tmp_path, capsys):
    shuffled = scaled(NOISY, 1.2)
    random.Random(0).shuffle(shuffled)
    b = write_result(tmp_path / "b.json", "a" * 40, {"stories15M-fp32": NOISY})
    h = write_result(tmp_path / "h.json", "b" * 40, {"stories15M-fp32": shuffled})
    code, out, _ = run(capsys, b, h)
    assert code == 0, out
    assert "slower (noise)" in out and "REGRESSED" not in out


def test_slowdown_under_tolerance_passes(tmp_path, capsys):
    # 12% is over stories15M-fp32's 10% but under stories260K-fp32's 15% (from the YAML files)
    b = write_result(tmp_path / "b.json", "a" * 40, {"stories260K-fp32": TIGHT, "default": TIGHT})
    h = write_result(tmp_path / "h.json", "b" * 40, {"stories260K-fp32": scaled(TIGHT, 1.12),
                                                      "default": scaled(TIGHT, 1.05)})
    code, out, _ = run(capsys, b, h)
    assert code == 0, out
    assert "15%" in out
    h2 = write_result(tmp_path / "h2.json", "b" * 40, {"stories260K-fp32": TIGHT, "default": scaled(TIGHT, 1.12)})
    assert run(capsys, b, h2)[0] == 1


def test_a_benchmark_failing_in_head_fails(tmp_path, capsys):
    b = write_result(tmp_path / "b.json", "a" * 40, {"default": TIGHT, "stories15M-fp32": TIGHT})
    h = write_result(tmp_path / "h.json", "b" * 40, {"default": TIGHT}, failed=("stories15M-fp32",))
    code, out, _ = run(capsys, b, h)
    assert code == 1 and "FAILED" in out


def test_skipped_configs_are_left_out(tmp_path, capsys):
    b = write_result(tmp_path / "b.json", "a" * 40, {"default": TIGHT})
    h = write_result(tmp_path / "h.json", "b" * 40, {"default": TIGHT})
    code, out, _ = run(capsys, b, h)
    assert code == 0 and "bf16" not in out


@pytest.mark.parametrize("case", ["missing", "not-json", "not-asv", "no-common", "mixed", "commit", "no-samples"])
def test_bad_input_exits_2(tmp_path, capsys, case):
    good = write_result(tmp_path / "good.json", "a" * 40, {"default": TIGHT})
    if case == "missing":
        argv = [tmp_path / "nope.json", good]
    elif case == "not-json":
        (tmp_path / "x.json").write_text("{not json")
        argv = [good, tmp_path / "x.json"]
    elif case == "not-asv":
        (tmp_path / "x.json").write_text('{"results": []}')
        argv = [good, tmp_path / "x.json"]
    elif case == "no-common":
        argv = [good, write_result(tmp_path / "other.json", "b" * 40, {"stories15M-fp32": TIGHT})]
    elif case == "mixed":
        argv = [good, "HEAD"]
    elif case == "commit":
        argv = ["no-such-commit-anywhere", "HEAD"]
    else:
        doc = json.loads((tmp_path / "good.json").read_text())
        for row in doc["results"].values():
            row[11] = None
        (tmp_path / "bare.json").write_text(json.dumps(doc))
        argv = [good, tmp_path / "bare.json"]
    code, out, err = run(capsys, *argv)
    assert code == 2, (out, err)
    assert err.startswith("lumi: error: ") and err.count("\n") == 1, err


def test_mann_whitney_exact_small_cases():
    # all head above all base: p = 1 / C(m + n, m)
    u, p = regress.mann_whitney_greater([4, 5, 6], [1, 2, 3])
    assert u == 9 and p == pytest.approx(1 / 20)
    u, p = regress.mann_whitney_greater([1, 2, 3], [4, 5, 6])
    assert u == 0 and p == 1.0
    assert sum(regress._u_counts(6, 6)) == math.comb(12, 6)
    # identical samples: every pair ties, U = mn/2, far from significant
    assert regress.mann_whitney_greater(TIGHT, TIGHT)[1] > 0.4


def test_mann_whitney_matches_asv():
    stats = pytest.importorskip("asv._stats")
    rng = random.Random(1)
    for _ in range(20):
        a = [rng.gauss(1.0, 0.1) for _ in range(rng.randint(6, 14))]
        b = [rng.gauss(1.1, 0.1) for _ in range(rng.randint(6, 14))]
        u, p_one = regress.mann_whitney_greater(b, a)
        _, p_two = stats.mann_whitney_u(b, a)
        # asv's two-sided p is twice the smaller tail
        assert min(p_one, 1 - p_one + regress._u_counts(len(b), len(a))[int(u)] / math.comb(len(a) + len(b), len(a))) \
            * 2 == pytest.approx(min(p_two, 1.0), rel=1e-9, abs=1e-12)


def test_mann_whitney_normal_approximation_agrees_with_exact():
    rng = random.Random(2)
    a = [rng.gauss(1.0, 0.1) for _ in range(50)]
    b = [rng.gauss(1.03, 0.1) for _ in range(50)]
    _, exact = regress.mann_whitney_greater(b, a)
    _, approx = regress.mann_whitney_greater(b + [b[0]], a)  # 51 samples: the normal approximation
    assert approx == pytest.approx(exact, rel=0.35, abs=0.02)


def test_asv_selects_the_benchmarks_of_a_tier_by_its_configs():
    import re

    from lumi.bench.asv_tier import tier_regex

    rx = re.compile(tier_regex("ci"))
    assert rx.search("benchmarks.Decode.time_decode_s_per_token('default')")
    assert rx.search("benchmarks.Prefill.time_prefill_s_per_token('stories15M-fp32')")
    assert not rx.search("benchmarks.Decode.time_decode_s_per_token('stories15M-fp32-big')")
    assert not rx.search("benchmarks.Decode.time_decode_s_per_token('tinyllama-1.1B-fp32')")  # nightly
    assert re.compile(tier_regex("gpu")).search("benchmarks.Decode.time_decode_s_per_token('llama2-7B-fp16-gpu20')")
