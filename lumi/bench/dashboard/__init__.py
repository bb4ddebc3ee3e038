"""``lumi dashboard``: asv's HTML dashboard of ``results/``, complete offline, with lumi's overview page.

``asv publish`` (asv 0.6.6) writes pages that load jQuery, flot, Bootstrap and three small plugins
from CDNs: opened without a network (a CI artifact, an air-gapped box) they show only asv's
"external dependencies failed to load". The build here:

1. optionally merges results from other runners (``--merge DIR``: each DIR holds asv's
   ``<machine>/`` folders, as the CPU and GPU jobs upload them) into ``results/``;
2. runs ``asv publish``;
3. replaces every CDN tag in the published ``index.html`` by a copy vendored in this package
   (``vendor/``, pinned to the versions asv's pages were written against, with their licences)
   and fails, before writing, on any external resource it does not know (a newer asv);
4. adds lumi's pages: ``overview.html`` (sec/token per config over commits, one plot per tier and
   benchmark, a log axis where a tier's configs span more than a decade, every config listed
   with its points per machine or the reason it has none, asv's detected regressions), and a
   small script in asv's own pages that opens its graphs on a log axis when the configs span
   decades and selects only configs with points.

The published folder references no external URL (``external_references`` checks it, and the
tests run it); ``asv preview`` or ``lumi dashboard --serve`` shows it (asv's pages fetch JSON, so
they need a web server, not ``file://``).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ...errors import LumiError
from ..config import TIERS, load_config, shipped_configs

HERE = Path(__file__).resolve().parent
VENDOR = HERE / "vendor"
STATIC = HERE / "static"  # lumi's own script and style, published as html/lumi/

# asv 0.6.6's index.html loads these; each is replaced by the vendored file. jQuery, the orderBars
# plugin, Bootstrap and blueimp-md5 are byte-identical to what the CDN serves (asv's SRI hashes
# match); cdnjs minifies flot itself, so flot ships as the npm release's unminified source; npm has
# no stupidtable 1.0.1 (cdnjs's name for it), so 1.1.3, the same plugin's last 1.x, stands in.
CDN_TO_VENDORED = {
    "https://code.jquery.com/jquery-3.3.1.min.js": "jquery-3.3.1/jquery.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.min.js": "flot-0.8.3/jquery.flot.js",
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.time.min.js": "flot-0.8.3/jquery.flot.time.js",
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.selection.min.js":
        "flot-0.8.3/jquery.flot.selection.js",
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.categories.min.js":
        "flot-0.8.3/jquery.flot.categories.js",
    "https://cdn.jsdelivr.net/npm/flot-orderbars@1.0.0/js/jquery.flot.orderBars.js":
        "flot-orderbars-1.0.0/jquery.flot.orderBars.js",
    "https://cdnjs.cloudflare.com/ajax/libs/stupidtable/1.0.1/stupidtable.min.js":
        "stupid-table-plugin-1.1.3/stupidtable.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/blueimp-md5/2.19.0/js/md5.min.js": "blueimp-md5-2.19.0/md5.min.js",
    "https://cdn.jsdelivr.net/npm/bootstrap@3.1.1/dist/js/bootstrap.min.js": "bootstrap-3.1.1/bootstrap.min.js",
    "https://cdn.jsdelivr.net/npm/bootstrap@3.1.1/dist/css/bootstrap.min.css": "bootstrap-3.1.1/bootstrap.min.css",
}
# asv's navbar credits itself with a link to its repository; offline it leads nowhere, so it becomes text
ASV_HOME_LINK = re.compile(r'<a href="https://github\.com/airspeed-velocity/asv/?"[^>]*>(.*?)</a>', re.S)

# what the overview plots: asv's benchmark name -> (title, what one value is)
PLOTTED = {
    "benchmarks.Decode.time_decode_s_per_token": ("Decode", "seconds per generated token"),
    "benchmarks.Prefill.time_prefill_s_per_token": ("Prefill", "seconds per prompt token"),
}
LOG_AXIS_SPAN = 10.0  # a log axis once the largest value is this many times the smallest

_TAG = re.compile(r"<(script|link|img|iframe|source|embed|object|a)\b[^>]*>", re.I)
_ATTR = re.compile(r"""\b(src|href|data)\s*=\s*(["'])(.*?)\2""", re.I | re.S)
_CSS_URL = re.compile(r"""url\(\s*(["']?)(.*?)\1\s*\)|@import\s+(["'])(.*?)\3""", re.I)
_EXTERNAL = re.compile(r"^\s*(?:[a-z][a-z0-9+.-]*:)?//", re.I)  # http://, https://, //host, ftp://


class DashboardError(LumiError):
    """A dashboard that cannot be built as promised: the message names the file and what is wrong."""


def external_references(html_dir: Path) -> list[str]:
    """Every reference to another host in the published pages: ``file: tag attr=URL`` lines.

    Looks at the attributes a browser loads or follows (``src``, ``href``, ``data`` of script, link,
    img, iframe, source, embed, object and a tags) in every ``.html`` file, and at ``url()`` and
    ``@import`` in every ``.css`` file. Data the pages fetch is relative by construction (asv's
    JSON). ``[]`` is a dashboard that renders with no network.
    """
    found = []
    for path in sorted(html_dir.rglob("*.html")):
        text = path.read_text(encoding="utf-8", errors="replace")
        for tag in _TAG.finditer(text):
            for attr in _ATTR.finditer(tag.group(0)):
                if _EXTERNAL.match(attr.group(3)):
                    found.append(f"{path.relative_to(html_dir)}: <{tag.group(1).lower()}> "
                                 f"{attr.group(1).lower()}={attr.group(3)}")
    for path in sorted(html_dir.rglob("*.css")):
        text = path.read_text(encoding="utf-8", errors="replace")
        for m in _CSS_URL.finditer(text):
            url = m.group(2) if m.group(2) is not None else m.group(4)
            if url and _EXTERNAL.match(url):
                found.append(f"{path.relative_to(html_dir)}: css {url}")
    return found


def offline_index(text: str, source: str = "index.html") -> str:
    """asv's index.html with every known CDN tag pointing at ``vendor/``; any other external resource is an error."""
    def local(tag: re.Match) -> str:
        whole = tag.group(0)
        for attr in _ATTR.finditer(whole):
            url = attr.group(3)
            if url in CDN_TO_VENDORED:
                path = "vendor/" + CDN_TO_VENDORED[url]
                if tag.group(1).lower() == "link":
                    return f'<link rel="stylesheet" href="{path}">'
                # keep asv's own failure page for a file that did not load
                return f'<script src="{path}" onerror="js_load_failure()">'
        return whole

    text = ASV_HOME_LINK.sub(r"\1", text)
    text = re.sub(r"<(script|link)\b[^>]*>", local, text)
    leftover = [m.group(0) for m in _TAG.finditer(text)
                if any(_EXTERNAL.match(a.group(3)) for a in _ATTR.finditer(m.group(0)))]
    if leftover:
        raise DashboardError(f"{source}: external resources this lumi has no vendored copy of (an asv other than "
                             f"0.6.6?): {'; '.join(leftover)}")
    return text


# -- merging results from several runners ------------------------------------------------------

def merge_results(sources: list[Path], results: Path, *, keep: bool = False) -> list[str]:
    """Copy asv's per-machine folders from each source into ``results``; returns what was merged.

    A source is a folder holding ``<machine>/machine.json`` folders (a runner's ``results/``, as an
    artifact). Result files are per commit and environment, so two runners of one machine name
    write different files for different commits; the same file with different contents (one
    commit measured twice) is an error naming both, or with ``keep`` the file already in
    ``results`` stays (an earlier source wins) and the returned lines name it. Two descriptions
    of one machine are always an error. ``benchmarks.json`` (the suite's description) is taken
    from a source when ``results`` has none.
    """
    merged = []
    for source in sources:
        if not source.is_dir():
            raise DashboardError(f"--merge {source}: no such folder")
        machines = sorted(p.parent for p in source.glob("*/machine.json"))
        if not machines:
            raise DashboardError(f"--merge {source}: no <machine>/machine.json in it (an asv results folder?)")
        for machine in machines:
            target = results / machine.name
            target.mkdir(parents=True, exist_ok=True)
            n, kept = 0, []
            for f in sorted(machine.glob("*.json")):
                dst = target / f.name
                if dst.exists() and dst.read_bytes() != f.read_bytes():
                    if f.name == "machine.json":
                        raise DashboardError(f"{f}: machine {machine.name!r} is described differently in {dst}; "
                                             f"two runners share the name (give each its own --machine)")
                    if not keep:
                        raise DashboardError(f"{f}: differs from {dst} (the same commit measured twice under "
                                             f"machine {machine.name!r}; --keep-first keeps the one there)")
                    kept.append(f.name)
                if not dst.exists():
                    shutil.copyfile(f, dst)
                    n += 1
            merged.append(f"{machine.name}: {n} new file(s) from {source}"
                          + (f"; kept the earlier {', '.join(kept)}" if kept else ""))
        suite = source / "benchmarks.json"
        if suite.exists() and not (results / "benchmarks.json").exists():
            shutil.copyfile(suite, results / "benchmarks.json")
    return merged


# -- the overview ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ConfigInfo:
    name: str
    tier: str
    purpose: str
    backend: str

    @property
    def why_empty(self) -> str:
        """Why a config has no points on a machine, from what runs it."""
        if self.backend == "cupy":
            return "needs a GPU: tox -e bench-gpu on the self-hosted GPU runner (machine lumi-gpu)"
        if self.tier == "nightly":
            return "nightly tier: tox -e bench-nightly (the larger CPU models), not run on every commit"
        return "ci tier, not measured yet here: tox -e bench"


def shipped_config_info() -> dict[str, ConfigInfo]:
    out = {}
    for path in shipped_configs():
        cfg = load_config(path)
        out[cfg.name] = ConfigInfo(cfg.name, cfg.tier, " ".join(cfg.purpose.split()), cfg.backend)
    return out


def _graph_params(path: str | Path) -> dict[str, str]:
    """asv's graph path ``graphs/arch-x86_64/branch-main/.../machine-NAME/...`` as its parameters."""
    return dict(part.split("-", 1) for part in Path(path).parts if "-" in part)


def _series(html_dir: Path, benchmark: str, configs: list[str]) -> dict[tuple[str, str], list]:
    """(config, machine) -> ``[[revision, value], ...]`` from asv's published graphs of ``benchmark`` on main
    (``configs``: the benchmark's parameter values, in asv's order); configs without a value left out."""
    series: dict[tuple[str, str], list] = {}
    for path in (html_dir / "graphs").rglob(f"{benchmark}.json"):
        params = _graph_params(path.relative_to(html_dir / "graphs").parent)
        if "machine" not in params or params.get("branch", "main") != "main":
            continue
        for revision, values in json.loads(path.read_text()):
            for name, value in zip(configs, values if isinstance(values, list) else [values]):
                if value is not None and math.isfinite(value):
                    series.setdefault((name, params["machine"]), []).append([revision, value])
    return series


def _spans_decades(points) -> bool:
    """Whether the positive values of ``[[revision, value], ...]`` lists span more than ``LOG_AXIS_SPAN``."""
    values = [v for pts in points for _, v in pts if v > 0]
    return bool(values) and max(values) / min(values) > LOG_AXIS_SPAN


def overview_data(html_dir: Path, configs: dict[str, ConfigInfo]) -> dict:
    """What overview.html shows, from asv's published ``index.json``, ``graphs/`` and ``regressions.json``.

    Series are per (benchmark, tier, config, machine): ``[[revision, value], ...]`` in commit order,
    revision being asv's commit number (``revisions`` maps it to hash and date).
    """
    index = json.loads((html_dir / "index.json").read_text())
    machines = {name: {k: info.get(k) for k in ("cpu", "num_cpu", "ram", "os", "arch")}
                for name, info in index["machines"].items()}
    every = {bench: _series(html_dir, bench, [v.strip("'") for v in meta["params"][0]] if meta["params"] else [])
             for bench, meta in index["benchmarks"].items()}
    benchmarks = []
    for bench, (title, unit) in PLOTTED.items():
        if bench not in every:
            continue
        tiers = []
        for tier in TIERS:
            rows = [{"config": name, "purpose": configs[name].purpose, "why_empty": configs[name].why_empty,
                     "machines": {m: every[bench].get((name, m), []) for m in machines}}
                    for name in sorted(c.name for c in configs.values() if c.tier == tier)]
            log = _spans_decades(pts for row in rows for pts in row["machines"].values())
            tiers.append({"tier": tier, "configs": rows, "log": log})
        benchmarks.append({"benchmark": bench, "title": title, "unit": unit, "tiers": tiers})
    regressions = json.loads((html_dir / "regressions.json").read_text()).get("regressions", [])
    return {
        "project": index.get("project"),
        "machines": machines,
        "revisions": {r: [h[: index.get("hash_length", 8)], index["revision_to_date"].get(r)]
                      for r, h in index["revision_to_hash"].items()},
        "benchmarks": benchmarks,
        "regressions": [_regression(r, index) for r in regressions],
        "log_axis": sorted(bench for bench, series in every.items() if _spans_decades(series.values())),
        "with_points": sorted({config for series in (every[b] for b in PLOTTED if b in every) for config, _ in series}),
    }


def _regression(entry: list, index: dict) -> dict:
    """asv's regressions.json row ``[name(params), graph_path, graph_params, param_index, last_value,
    best_value, [[rev_before, rev_after, value_before, value_after], ...]]`` as named fields (a
    ``before`` of None: the jump is one commit)."""
    name, graph_path, _params, _idx, last, best, jumps = entry[:7]
    bench, _, arg = name.partition("(")
    parts = _graph_params(graph_path)
    hashes, n = index["revision_to_hash"], index.get("hash_length", 8)

    def short(revision):
        return None if revision is None else hashes.get(str(revision), "?")[:n]

    return {"benchmark": bench, "config": arg.rstrip(")").strip("'") or None, "machine": parts.get("machine"),
            "last": last, "best": best,
            "jumps": [{"before": short(a), "after": short(b), "from": va, "to": vb} for a, b, va, vb in jumps]}


# -- the build ---------------------------------------------------------------------------------

def build(results: Path, html: Path, *, merge: list[Path] = (), keep_first: bool = False,
          asv_conf: Path = Path("asv.conf.json"), log=print) -> Path:
    """Merge, publish, make offline, add the overview; returns ``html/index.html``. See the module doc."""
    for line in merge_results(list(merge), results, keep=keep_first):
        log(f"merged {line}")
    if not (results / "benchmarks.json").exists():
        raise DashboardError(f"{results}/benchmarks.json: missing (asv writes it on its first run; "
                             f"run tox -e bench, or --merge a runner's results)")
    if not asv_conf.exists():
        raise DashboardError(f"{asv_conf}: missing (run lumi dashboard from the repository's root)")
    try:
        from asv import util as asv_util
    except ImportError:
        raise DashboardError("lumi dashboard runs asv publish, and asv is not installed: pip install 'lumi[bench]'") \
            from None
    if html.exists() and any(html.iterdir()) and not (html / "asv.js").exists():
        raise DashboardError(f"--html {html}: exists and is not a dashboard (asv publish empties the folder first)")
    with tempfile.TemporaryDirectory(prefix="lumi-dashboard-") as tmp:
        conf = Path(tmp) / "asv.conf.json"  # the project's asv.conf.json, reading results from `results`
        settings = asv_util.load_json(str(asv_conf), 1, js_comments=True)
        for key in ("repo", "benchmark_dir", "env_dir"):  # asv reads paths relative to the config's folder
            if key in settings:
                settings[key] = str((asv_conf.parent / settings[key]).resolve())
        settings["results_dir"] = str(results.resolve())
        settings["version"] = 1  # load_json checks and drops it
        conf.write_text(json.dumps(settings))
        command = [sys.executable, "-m", "asv", "--config", str(conf), "publish", "--html-dir", str(html.resolve())]
        log("+ " + " ".join(command))
        done = subprocess.run(command, capture_output=True, text=True)
    output = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        raise DashboardError(f"asv publish failed ({done.returncode}):\n{output}")
    for line in output.splitlines():
        if "warn" in line.lower() or "error" in line.lower():
            log(f"asv: {line.strip()}")

    index = html / "index.html"
    text = offline_index(index.read_text(encoding="utf-8"), str(index))
    shutil.copytree(VENDOR, html / "vendor", dirs_exist_ok=True)
    shutil.copytree(STATIC, html / "lumi", dirs_exist_ok=True)
    shutil.copyfile(HERE / "overview.html", html / "overview.html")
    data = overview_data(html, shipped_config_info())
    (html / "lumi" / "data.js").write_text("window.LUMI_DASHBOARD = " + json.dumps(data, indent=0) + ";\n")
    hook = ('    <link href="lumi/lumi.css" rel="stylesheet" type="text/css"/>\n'
            '    <script src="lumi/data.js"></script>\n    <script src="lumi/asv-pages.js"></script>\n  </head>')
    text = text.replace("</head>", hook, 1)
    text = text.replace('<li id="nav-li-" class="active">',
                        '<li id="nav-li-lumi"><a href="overview.html">lumi: by tier</a></li>\n\t'
                        '<li id="nav-li-" class="active">', 1)
    index.write_text(text, encoding="utf-8")

    left = external_references(html)
    if left:
        raise DashboardError(f"{html}: the published pages still reference other hosts: {'; '.join(left)}")
    return index


def serve(html: Path, port: int, *, log=print) -> None:
    """Serve ``html`` on 127.0.0.1:``port`` until interrupted (asv's pages fetch their JSON: no ``file://``)."""
    import functools
    import http.server

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(html))
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError as e:
        raise DashboardError(f"--serve {port}: cannot listen on 127.0.0.1:{port} ({e.strerror or e})") from None
    log(f"serving {html} on http://127.0.0.1:{server.server_address[1]}/overview.html (Ctrl-C stops)")
    with server:
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
