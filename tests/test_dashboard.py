"""lumi dashboard: two runners' asv results merged and published into pages that need no network.

The history is made here: a small git repository, the project's asv.conf.json and suite
description, and asv result files for two machines (as the CPU and the GPU job upload them).
The browser test runs where Chromium is installed and is skipped with the reason elsewhere.
"""

from __future__ import annotations

import functools
import http.server
import json
import math
import re
import shutil
import struct
import subprocess
import threading
import zlib
from pathlib import Path

import pytest

pytest.importorskip("asv", reason="lumi dashboard runs asv publish (lumi[bench] or lumi[test])")

from lumi.bench.dashboard import (CDN_TO_VENDORED, VENDOR, DashboardError, external_references,  # noqa: E402
                                  merge_results, offline_index)
from lumi.cli import main  # noqa: E402
from lumi.errors import LumiError  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DECODE = "benchmarks.Decode.time_decode_s_per_token"
PREFILL = "benchmarks.Prefill.time_prefill_s_per_token"
COLUMNS = ["result", "params", "version", "started_at", "duration", "stats_ci_99_a", "stats_ci_99_b",
           "stats_q_25", "stats_q_75", "stats_number", "stats_repeat", "samples", "profile"]
SUITE = json.loads((ROOT / "results" / "benchmarks.json").read_text())
CONFIGS = [v.strip("'") for v in SUITE[DECODE]["params"][0]]
# decode s/token per config on the first runner; stories15M-fp32 is 40% slower from the fifth commit on
BASE = {"default": 4.0e-3, "stories15M-fp32": 3.9e-3, "stories15M-fp32-numba": 2.9e-3, "stories260K-fp32": 3.2e-4}
COMMITS = 8


def _git(repo: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "PATH": "/usr/bin:/bin", "HOME": str(repo)}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env=env).stdout.strip()


def _result_file(folder: Path, machine: dict, commit: str, date: int, decode: dict[str, float]) -> None:
    results = {}
    for bench, scale in ((DECODE, 1.0), (PREFILL, 0.1)):
        values = [decode[c] * scale if c in decode else math.nan for c in CONFIGS]
        n = len(CONFIGS)
        results[bench] = [values, [[repr(c) for c in CONFIGS]], "lumi-bench-1", date, 1.0, [None] * n, [None] * n,
                          [None] * n, [None] * n, [1] * n, [12] * n, [None] * n]
    params = {k: machine[k] for k in ("arch", "cpu", "machine", "num_cpu", "os", "ram")}
    doc = {"commit_hash": commit, "env_name": "virtualenv-py3.11", "date": date, "params": {**params, "python": "3.11"},
           "python": "3.11", "requirements": {}, "env_vars": {}, "result_columns": COLUMNS, "results": results,
           "durations": {}, "version": 2}
    (folder / f"{commit[:8]}-virtualenv-py3.11.json").write_text(json.dumps(doc))


def _runner(root: Path, name: str, cpu: str, commits: list[tuple[str, int]], decode_at) -> Path:
    """A runner's uploaded results folder: ``<root>/<machine>/`` with machine.json and one file per commit."""
    machine = {"arch": "x86_64", "cpu": cpu, "machine": name, "num_cpu": "2", "os": "Linux", "ram": "25000000000",
               "version": 1}
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "machine.json").write_text(json.dumps(machine))
    for i, (commit, date) in enumerate(commits):
        _result_file(folder, machine, commit, date, decode_at(i))
    (root / "benchmarks.json").write_text(json.dumps(SUITE))
    return root


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """(repository, [runner folders]): a git history of COMMITS commits and two runners' results of it."""
    repo = tmp_path_factory.mktemp("project")
    _git(repo, "init", "-q", "-b", "main")
    shutil.copyfile(ROOT / "asv.conf.json", repo / "asv.conf.json")
    commits = []
    for i in range(COMMITS):
        (repo / "file.txt").write_text(f"{i}\n")
        _git(repo, "add", "-A")
        _git(repo, "commit", "-q", "-m", f"commit {i}", "--date", f"2026-11-{10 + i}T12:00:00")
        commits.append((_git(repo, "rev-parse", "HEAD"), int(_git(repo, "log", "-1", "--format=%ct")) * 1000))

    def first(i):
        return {c: v * (1.4 if c == "stories15M-fp32" and i >= 4 else 1.0) for c, v in BASE.items()}

    a = _runner(repo.parent / "artifact-cpu", "lumi-bench", "Intel(R) Xeon(R) Processor", commits, first)
    b = _runner(repo.parent / "artifact-cpu-2", "lumi-bench-2", "AMD EPYC", commits[-3:],
                lambda i: {c: v * 0.8 for c, v in BASE.items()})
    return repo, [a, b]


@pytest.fixture(scope="module")
def published(project, tmp_path_factory):
    """html/ built by ``lumi dashboard --merge A --merge B`` in the project, and its overview data."""
    repo, runners = project
    html = repo / "html"
    code = _in(repo, main, ["dashboard", "--results", str(repo / "results"), "--html", str(html),
                            *[x for r in runners for x in ("--merge", str(r))]])
    assert code == 0
    text = (html / "lumi" / "data.js").read_text()
    return html, json.loads(text[text.index("=") + 1:].rstrip().rstrip(";"))


def _in(folder: Path, fn, *args):
    import os

    here = os.getcwd()
    os.chdir(folder)
    try:
        return fn(*args)
    finally:
        os.chdir(here)


def test_vendored_copies_are_complete_and_licensed():
    for url, rel in CDN_TO_VENDORED.items():
        path = VENDOR / rel
        assert path.is_file() and path.stat().st_size > 1000, (url, path)
        folder = path.parent
        licensed = any(p.name.upper().startswith("LICENSE") for p in folder.iterdir()) or \
            "MIT license" in path.read_text(errors="replace")[:2000]
        assert licensed, f"{folder}: no licence beside the vendored file"


def test_asvs_own_index_needs_the_network_and_the_published_one_does_not(published, tmp_path):
    import asv

    shipped = Path(asv.__file__).parent / "www" / "index.html"
    (tmp_path / "index.html").write_text(shipped.read_text())
    assert len(external_references(tmp_path)) >= 10  # the CDN tags this module exists for
    html, _ = published
    assert external_references(html) == []
    index = (html / "index.html").read_text()
    assert "vendor/jquery-3.3.1/jquery.min.js" in index and "https://" not in index


def test_the_check_fails_when_a_cdn_link_is_put_back(published, tmp_path):
    html, _ = published
    copy = tmp_path / "html"
    shutil.copytree(html, copy)
    page = copy / "index.html"
    page.write_text(page.read_text().replace(
        "</head>", '<script src="https://cdn.jsdelivr.net/npm/bootstrap@3.1.1/dist/js/bootstrap.min.js"></script></head>'))
    found = external_references(copy)
    assert found == ["index.html: <script> src=https://cdn.jsdelivr.net/npm/bootstrap@3.1.1/dist/js/bootstrap.min.js"]
    (copy / "lumi" / "lumi.css").write_text("@import 'https://fonts.example.org/a.css';")
    assert "lumi/lumi.css: css https://fonts.example.org/a.css" in external_references(copy)


def test_an_unknown_external_resource_is_an_error_naming_it():
    text = '<head><script src="https://cdn.example.org/new-asv-dependency.js"></script></head>'
    with pytest.raises(DashboardError, match="new-asv-dependency.js"):
        offline_index(text, "html/index.html")


def test_two_machines_on_one_dashboard(published):
    html, data = published
    index = json.loads((html / "index.json").read_text())
    assert sorted(index["machines"]) == ["lumi-bench", "lumi-bench-2"]
    assert sorted(data["machines"]) == ["lumi-bench", "lumi-bench-2"]
    decode = next(b for b in data["benchmarks"] if b["benchmark"] == DECODE)
    ci = next(t for t in decode["tiers"] if t["tier"] == "ci")
    rows = {r["config"]: r for r in ci["configs"]}
    assert len(rows["default"]["machines"]["lumi-bench"]) == COMMITS
    assert len(rows["default"]["machines"]["lumi-bench-2"]) == 3
    assert rows["default"]["machines"]["lumi-bench-2"][-1][1] == pytest.approx(BASE["default"] * 0.8)
    assert ci["log"]  # 0.32 ms to 5.6 ms: more than a decade


def test_configs_without_points_say_why(published):
    _, data = published
    decode = next(b for b in data["benchmarks"] if b["benchmark"] == DECODE)
    rows = {r["config"]: r for t in decode["tiers"] for r in t["configs"]}
    assert not any(rows["llama2-7B-fp16-gpu-all"]["machines"].values())
    assert "needs a GPU" in rows["llama2-7B-fp16-gpu-all"]["why_empty"]
    assert "nightly" in rows["tinyllama-1.1B-fp32"]["why_empty"]
    assert "stories15M-fp32" in data["with_points"] and "tinyllama-1.1B-fp32" not in data["with_points"]
    assert DECODE in data["log_axis"]


def test_asvs_regressions_are_listed(published):
    _, data = published
    found = [(r["config"], r["machine"]) for r in data["regressions"] if r["benchmark"] == DECODE]
    assert ("stories15M-fp32", "lumi-bench") in found
    jump = next(r for r in data["regressions"] if r["benchmark"] == DECODE and r["config"] == "stories15M-fp32")
    assert jump["jumps"][0]["to"] / jump["jumps"][0]["from"] == pytest.approx(1.4)


def test_merging_the_same_commit_twice_with_other_numbers_is_an_error(project, tmp_path):
    repo, (a, _) = project
    clash = tmp_path / "clash"
    shutil.copytree(a, clash)
    victim = sorted((clash / "lumi-bench").glob("*-virtualenv-*.json"))[0]
    victim.write_text(victim.read_text().replace("0.004", "0.005"))
    results = tmp_path / "results"
    merge_results([a], results)
    with pytest.raises(DashboardError, match=re.escape(victim.name)):
        merge_results([clash], results)
    with pytest.raises(DashboardError, match="no <machine>/machine.json"):
        merge_results([tmp_path], results)


def test_missing_results_is_a_clear_error(tmp_path, capsys):
    code = _in(tmp_path, main, ["dashboard", "--results", str(tmp_path / "none"), "--html", str(tmp_path / "h")])
    assert code == 2
    assert "benchmarks.json: missing" in capsys.readouterr().err


# -- in a real browser ---------------------------------------------------------------------------

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (Debian: apt-get install chromium)")


@pytest.fixture(scope="module")
def served(published):
    html, _ = published
    handler = functools.partial(_QuietHandler, directory=str(html))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _chromium(tmp_path: Path, url: str, *what: str) -> subprocess.CompletedProcess:
    """Headless Chromium on ``url`` with every host but 127.0.0.1 unresolvable: a page that needs the network fails."""
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={tmp_path / 'profile'}", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
               "--enable-logging=stderr", "--v=0", "--window-size=1400,1000", "--virtual-time-budget=10000", *what, url]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def _problems(log: str) -> list[str]:
    return [line for line in log.splitlines()
            if "CONSOLE" in line and ("Uncaught" in line or "Failed to load" in line or "error" in line.lower())]


@needs_chromium
def test_index_and_a_graph_page_draw_offline(served, tmp_path):
    grid = _chromium(tmp_path, served + "/index.html", "--dump-dom")
    assert "Can not determine continental origin of swallow" not in grid.stdout
    assert grid.stdout.count('class="flot-base"') >= 2, "the benchmark grid drew no plots"
    assert _problems(grid.stderr) == []

    page = served + "/index.html#" + DECODE
    graph = _chromium(tmp_path, page, "--dump-dom")
    main_graph = graph.stdout.split('id="main-graph"', 1)[1].split('id="overview"', 1)[0]
    assert 'class="flot-base"' in main_graph
    assert 'id="log-scale" class="btn btn-default btn-xs active"' in graph.stdout  # configs span a decade
    assert _problems(graph.stderr) == []

    shot = tmp_path / "graph.png"
    _chromium(tmp_path, page, f"--screenshot={shot}")
    width, height, pixels = _read_png(shot)
    # the plot area, right of asv's 200-px navigation: series lines are saturated colours, the rest greys
    coloured = sum(1 for y in range(120, height - 150, 2) for x in range(260, width - 40, 2)
                   if max(pixels(x, y)) - min(pixels(x, y)) > 60)
    assert coloured > 150, f"the decode graph drew {coloured} coloured pixels"


@needs_chromium
def test_overview_page_draws_a_plot_per_tier_with_points(served, tmp_path):
    dom = _chromium(tmp_path, served + "/overview.html", "--dump-dom")
    assert 'data-ready="1"' in dom.stdout
    assert _problems(dom.stderr) == []
    plots = re.findall(r'<div class="lumi-plot[^"]*" id="plot-Decode-(\w+)"[^>]*>', dom.stdout)
    assert plots == ["ci", "nightly", "gpu"]
    ci = dom.stdout.split('id="plot-Decode-ci"', 1)[1][:200000]
    assert 'class="flot-base"' in ci.split('id="plot-Decode-nightly"', 1)[0]
    assert "No points for tier gpu on any machine" in dom.stdout
    assert "needs a GPU" in dom.stdout


def _read_png(path: Path):
    """(width, height, pixel(x, y) -> (r, g, b)) of an 8-bit RGB or RGBA PNG, as Chromium writes them."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path}: not a PNG"
    pos, idat = 8, b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and color in (2, 6) and interlace == 0, "unexpected PNG layout"
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    bpp = 3 if color == 2 else 4
    raw, stride = zlib.decompress(idat), width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(line)
        prev = line
    return width, height, lambda x, y: tuple(rows[y][x * bpp:x * bpp + 3])


def test_another_box_under_a_committed_machine_name_is_refused(tmp_path, monkeypatch, capsys):
    from asv.machine import Machine

    from lumi.bench.asv_tier import main as asv_tier
    from lumi.bench.regress import ensure_asv_machine

    monkeypatch.setenv("HOME", str(tmp_path))  # asv's ~/.asv-machine.json
    here = Machine.get_defaults()
    for name, cpu in (("same-box", here["cpu"]), ("other-box", "Imaginary CPU 9000")):
        (tmp_path / "results" / name).mkdir(parents=True)
        (tmp_path / "results" / name / "machine.json").write_text(json.dumps({**here, "machine": name, "cpu": cpu}))
    ensure_asv_machine("same-box", tmp_path / "results")  # the same box after a reboot: fine
    assert json.loads((tmp_path / ".asv-machine.json").read_text())["same-box"]["cpu"] == here["cpu"]
    with pytest.raises(LumiError, match="other-box.*another box.*Imaginary CPU 9000.*LUMI_ASV_MACHINE="):
        ensure_asv_machine("other-box", tmp_path / "results")
    monkeypatch.chdir(tmp_path)
    assert asv_tier(["ci", "run", "--machine", "other-box"]) == 2  # one line, before asv starts
    assert "lumi: error: results/other-box/machine.json" in capsys.readouterr().err


def test_keep_first_keeps_the_earlier_measurement_and_says_so(project, tmp_path):
    _, (a, _) = project
    rerun = tmp_path / "rerun"
    shutil.copytree(a, rerun)
    victim = sorted((rerun / "lumi-bench").glob("*-virtualenv-*.json"))[-1]
    victim.write_text(victim.read_text().replace("0.004", "0.005"))
    results = tmp_path / "results"
    lines = merge_results([rerun, a], results, keep=True)
    assert victim.name in lines[-1] and "kept the earlier" in lines[-1]
    assert (results / "lumi-bench" / victim.name).read_text() == victim.read_text()


def test_an_existing_environments_results_are_keyed_by_version_not_path(tmp_path):
    import sys

    from lumi.bench.asv_tier import existing_as_version

    folder = tmp_path / "lumi-bench"
    folder.mkdir()
    path = folder / "abcdef12-existing-py_some_checkout_.tox_bench_bin_python.json"
    path.write_text(json.dumps({"python": sys.executable, "params": {"machine": "lumi-bench", "python": sys.executable}}))
    old = folder / "abcdef00-virtualenv-py3.11.json"
    old.write_text(json.dumps({"python": "3.11", "params": {"python": "3.11"}}))
    assert existing_as_version(folder) == [path]
    version = "%d.%d" % sys.version_info[:2]
    doc = json.loads(path.read_text())
    assert doc["python"] == doc["params"]["python"] == version
    assert existing_as_version(folder) == []  # once is enough
