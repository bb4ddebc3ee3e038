"""``python -m lumi.bench.asv_tier TIER ASV-ARGS...``: ``asv ASV-ARGS --bench REGEX``, REGEX selecting the configs
whose ``tier`` is TIER (``configs/*.yaml``), so tox and CI choose benchmarks by tier, never by a name pattern.

With ``--machine NAME`` among the arguments, the machine is described first (``ensure_asv_machine``):
a name whose committed ``results/NAME/machine.json`` is another box is a one-line error (exit 2)."""

from __future__ import annotations

import re
import subprocess
import sys

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
    if "--machine" in argv[:-1]:
        try:
            ensure_asv_machine(argv[argv.index("--machine") + 1])
        except LumiError as e:
            print(f"lumi: error: {e}", file=sys.stderr)
            return 2
    command = [sys.executable, "-m", "asv", *argv[1:], "--bench", tier_regex(argv[0])]
    print("+ " + " ".join(command), file=sys.stderr, flush=True)
    return subprocess.call(command)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
