"""``python -m lumi.bench.asv_tier TIER ASV-ARGS...``: ``asv ASV-ARGS --bench REGEX``, REGEX selecting the configs
whose ``tier`` is TIER (``configs/*.yaml``), so tox and CI choose benchmarks by tier, never by a name pattern.

With ``--machine NAME`` among the arguments, the machine is described first (``ensure_asv_machine``):
a name whose committed ``results/NAME/machine.json`` is another box is a one-line error (exit 2).

An existing environment (``-E existing:PYTHON``, what tox's bench envs use) records its interpreter's
path as the result's ``python``, a graph parameter: every checkout (a tox env, a CI workspace) would
start a series of its own. After the run, ``python`` of the files it wrote becomes the interpreter's
version, as asv's own environments record it (``existing_as_version``)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from ..errors import LumiError
from .config import TIERS, tier_configs
from .regress import ensure_asv_machine


def tier_regex(tier: str) -> str:
    """asv's ``--bench`` pattern for every benchmark of the tier's configs (their one asv parameter)."""
    names = "|".join(re.escape(p.stem) for p in tier_configs(tier))
    return rf"[(]'(?:{names})'[)]"


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in TIERS:
        print(f"usage: python -m lumi.bench.asv_tier {{{','.join(TIERS)}}} ASV-ARGS...", file=sys.stderr)
        return 2
    machine = argv[argv.index("--machine") + 1] if "--machine" in argv[:-1] else None
    if machine is not None:
        try:
            ensure_asv_machine(machine)
        except LumiError as e:
            print(f"lumi: error: {e}", file=sys.stderr)
            return 2
    command = [sys.executable, "-m", "asv", *argv[1:], "--bench", tier_regex(argv[0])]
    print("+ " + " ".join(command), file=sys.stderr, flush=True)
    started = time.time()
    code = subprocess.call(command)
    if machine is not None:
        for path in existing_as_version(Path("results") / machine, since=started):
            print(f"lumi: {path}: python recorded as its version", file=sys.stderr)
    return code


def existing_as_version(folder: Path, since: float = 0.0) -> list[Path]:
    """Result files in ``folder`` (written after ``since``) of existing environments whose ``python`` is an
    interpreter's path: it (and ``params.python``) becomes that interpreter's version; returns the files changed."""
    changed = []
    for path in sorted(folder.glob("*-existing-*.json")):
        if path.stat().st_mtime < since:
            continue
        doc = json.loads(path.read_text())
        interpreter = doc.get("python", "")
        if os.sep not in interpreter or not os.access(interpreter, os.X_OK):
            continue
        version = subprocess.run([interpreter, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True).stdout.strip()
        if version:
            doc["python"] = doc.setdefault("params", {})["python"] = version
            path.write_text(json.dumps(doc))
            changed.append(path)
    return changed


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
