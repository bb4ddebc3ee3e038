"""Run a loader in a subprocess under an address-space cap that a naive reader would blow.

The cap is set after the imports, to the process's own address space then plus
the file's size plus a small margin: a reader that allocates what a lying header
claims fails with MemoryError instead of passing. (A cap set inside the pytest
process itself would break BLAS threads and later tests.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

MARGIN = 64 << 20

_CHILD = textwrap.dedent("""
    import resource, sys
    import numpy as np
    import lumi
    from lumi.errors import LumiError
    import importlib
    spec, file_bytes, margin = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    module, _, function = (sys.argv[4] if len(sys.argv) > 4 else "lumi.formats:load_checkpoint").partition(":")
    load_checkpoint = getattr(importlib.import_module(module), function)
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    cap = vm + file_bytes + margin
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    try:
        loaded = load_checkpoint(spec)  # noqa: F841 (kept alive until exit)
    except LumiError as e:
        print(e, file=sys.stderr)
        sys.exit(2)
    except MemoryError:
        print("MemoryError", file=sys.stderr)
        sys.exit(3)
    sys.exit(0)
""")


def load_under_cap(spec: str, loader: str = "lumi.formats:load_checkpoint") -> tuple[int, str]:
    """(exit status, stderr) of ``load_checkpoint(spec)`` (or ``loader``, "module:function") in a capped subprocess.

    2 with a one-line message: refused cleanly; 0: loaded; 3: MemoryError; anything else: a crash.
    """
    size = os.path.getsize(spec) if os.path.isfile(spec) else sum(
        os.path.getsize(os.path.join(spec, f)) for f in os.listdir(spec)) if os.path.isdir(spec) else 0
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _CHILD, spec, str(size), str(MARGIN), loader], capture_output=True,
                          text=True, timeout=120, env=env)
    return proc.returncode, proc.stderr.strip()


def assert_refused(spec: str, where: str, expected, loader: str = "lumi.formats:load_checkpoint") -> None:
    """The loader refuses ``spec`` under the cap: status 2 and one line starting with ``where`` (the file
    at fault) that contains ``expected`` (a string, or a tuple of strings)."""
    status, message = load_under_cap(spec, loader)
    assert status == 2, (status, message)
    assert message.startswith(where) and "\n" not in message, message
    for part in expected if isinstance(expected, tuple) else (expected,):
        assert part in message, message
