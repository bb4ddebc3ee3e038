"""Benchmark output: a readable table, JSON, CSV and Markdown; files written whole or not at all."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile

SCHEMA_VERSION = 1

# (header, result key, format) for the table, CSV and Markdown
COLUMNS = [
    ("config", "config", "{}"),
    ("dtype", "dtype", "{}"),
    ("kernels", "kernels", "{}"),
    ("threads", "threads_applied", "{}"),
    ("test", "test", "{}"),
    ("prefill t/s", "prefill_tokens_per_s", "{:.1f}"),
    ("decode t/s", "decode_tokens_per_s", "{:.1f}"),
    ("s/token", "decode_s_per_token", "{:.5f}"),
    ("±", "decode_spread", "{:.1%}"),
    ("ttft s", "ttft_s", "{:.4f}"),
    ("load s", "load_s", "{:.2f}"),
    ("peak RSS MiB", "peak_rss_mib", "{:.0f}"),
    ("GB/token", "weight_gb_per_token", "{:.3f}"),
    ("BW frac", "bandwidth_fraction", "{:.0%}"),
    ("PF frac", "prefill_sgemm_fraction", "{:.0%}"),
    ("answer", "answer", "{}"),
]


def _row(result: dict) -> dict:
    spread = result["spread"]["decode_s_per_token"]
    ref = result.get("reference")
    derived = {
        "answer": "-" if ref is None else (f"ok {ref['agreed']}/{ref['prefix']}" if ref["valid"]
                                           else f"INVALID {ref['agreed']}/{ref['prefix']}"),
        "decode_spread": (spread["max"] - spread["min"]) / 2 / result["decode_s_per_token"],
        "peak_rss_mib": result["peak_rss_bytes"] / 2**20,
        "weight_gb_per_token": result["weight_bytes_per_token"] / 1e9,
    }
    return {key: (derived[key] if key in derived else result.get(key)) for _, key, _ in COLUMNS}


def _cells(result: dict) -> list[str]:
    row = _row(result)
    return ["n/a" if row[key] is None else fmt.format(row[key]) for _, key, fmt in COLUMNS]


def table(doc: dict) -> str:
    headers = [h for h, _, _ in COLUMNS]
    rows = [_cells(r) for r in doc["results"]]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.rjust(w) if i > 0 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    env = doc["env"]
    blas = ", ".join(f"{b['internal_api']} {b['version']} {b['architecture']}" for b in env["blas"]) or "none found"
    bw = "; ".join(f"{int(t)} thread(s): {b['gemv_bytes_per_s'] / 1e9:.1f} GB/s"
                   + (f", sgemm {b['sgemm_flops_per_s'] / 1e9:.0f} GFLOP/s" if "sgemm_flops_per_s" in b else "")
                   for t, b in doc["bandwidth"].items())
    head = [f"lumi {env['lumi_version']} ({env['git_commit'] or 'no git'}), numpy {env['numpy']}, BLAS {blas}",
            f"{env['cpu']}, {env['usable_cores']} usable cores; GEMV bandwidth {bw}",
            "± is half the min-max range of decode s/token; BW frac = weight bytes per token / s per token / GEMV bandwidth;",
            "PF frac = a prompt's FLOPs per token x prefill tokens/s / the sgemm rate (CPU runs);",
            "answer: greedy ids agreeing with the config's reference (INVALID: the speed is not for the right answer)"]
    text = "\n".join(head + ["", line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows]) + "\n"
    for r in doc["results"]:
        if "profile" in r:
            from .profile import render

            text += "\n" + render(r["profile"], f"{r['config']} {r['test']} t{r['threads_applied']}")
    return text


def markdown(doc: dict) -> str:
    headers = [h for h, _, _ in COLUMNS]
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(_cells(r)) + " |" for r in doc["results"]]
    env = doc["env"]
    commit = f"`{env['git_commit']}`" if env.get("git_commit") else "an unknown commit"
    out += ["", f"lumi {env['lumi_version']} at {commit} on {env['cpu']} ({env['usable_cores']} cores)"]
    return "\n".join(out) + "\n"


def to_csv(doc: dict) -> str:
    buffer = io.StringIO()
    keys = [k for k in doc["results"][0] if k not in ("spread", "samples", "profile", "widening", "split_rows", "reference")] \
        if doc["results"] else []
    writer = csv.writer(buffer)
    writer.writerow(keys)
    for r in doc["results"]:
        writer.writerow([r[k] for k in keys])
    return buffer.getvalue()


def to_json(doc: dict) -> str:
    return json.dumps(doc, indent=1) + "\n"


FORMATS = {"table": table, "json": to_json, "csv": to_csv, "markdown": markdown}


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a whole file or nothing: a temporary file beside it, then a rename."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".lumi-", dir=directory)
    umask = os.umask(0)  # mkstemp makes 0600; the file gets what open() would have given it
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
