"""What ran where: the environment of a benchmark run, and the machine's bandwidth."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .. import __version__

GEMV_SHAPE = (11008, 4096)  # Llama-2-7B's FFN: 180 MB of float32
# The GEMVs cycle through this many distinct matrices (1.4 GB), as a decode step streams weights that 1 GB and
# more of others have passed through since it last read them. One matrix read again and again stays partly in a
# large last-level cache (some VMs report hundreds of MiB of L3) and reads faster than streaming can: a floor
# no model's decode could reach.
GEMV_MATRICES = 8
SGEMM_TOKENS = 128  # a prompt's rows against 4096 x 4096 of that matrix: the prefill's floor


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ("-dirty" if dirty else "")) or None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def blas_info() -> list[dict]:
    """The BLAS libraries NumPy loaded, with the kernel (architecture) and thread count in use."""
    from threadpoolctl import threadpool_info

    return [{k: info.get(k) for k in ("internal_api", "version", "architecture", "num_threads", "threading_layer")}
            for info in threadpool_info() if info.get("user_api") == "blas"]


def environment() -> dict:
    try:
        usable_cores = len(os.sched_getaffinity(0))
    except AttributeError:
        usable_cores = os.cpu_count()
    return {
        "lumi_version": __version__,
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": blas_info(),
        "openblas_env": {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS",
                                                    "OMP_NUM_THREADS") if k in os.environ},
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "usable_cores": usable_cores,
        "platform": platform.platform(),
        "machine": platform.node(),
        "gpu": None,  # the CuPy backend fills this in
        "argv": sys.argv,
    }


def measure_bandwidth(threads: int | None, repeats: int = 60, sgemm_repeats: int = 15) -> dict:
    """The machine's floors with BLAS held to ``threads``: the weight-streaming bandwidth of one matrix-vector
    product (decode's) and the float32 matrix-matrix rate (prefill's).

    GEMV: median over ``repeats`` products of a float32 matrix of ``GEMV_SHAPE`` by a
    vector, after two untimed ones, each product on the next of ``GEMV_MATRICES``
    distinct matrices. sgemm: median over ``sgemm_repeats`` products of
    ``SGEMM_TOKENS`` x 4096 rows by 4096 x 4096 of the first matrix, after one untimed.
    ``repeats`` is 60 because a median of 15 moved more between measurements on a shared
    machine than the decode steps it divides (docs/performance.md).
    """
    from ..backends.cpu import applied_threads, thread_limit

    first = np.random.default_rng(0).random(GEMV_SHAPE, dtype=np.float32)
    matrices = [first] + [first + np.float32(i) for i in range(1, GEMV_MATRICES)]  # distinct pages, same kind of values
    x = np.ones(GEMV_SHAPE[1], dtype=np.float32)
    out = np.empty(GEMV_SHAPE[0], dtype=np.float32)
    times = []
    with thread_limit(threads):
        applied = applied_threads()
        for i in range(repeats + 2):
            w = matrices[i % GEMV_MATRICES]
            t0 = time.perf_counter()
            np.matmul(w, x, out=out)
            if i >= 2:
                times.append(time.perf_counter() - t0)
        square = first[: GEMV_SHAPE[1]]  # (4096, 4096) rows of the matrix: C-contiguous, BLAS takes .T as a flag
        rows = np.ones((SGEMM_TOKENS, GEMV_SHAPE[1]), dtype=np.float32)
        product = np.empty((SGEMM_TOKENS, GEMV_SHAPE[1]), dtype=np.float32)
        sgemm = []
        for i in range(sgemm_repeats + 1):
            t0 = time.perf_counter()
            np.matmul(rows, square.T, out=product)
            if i >= 1:
                sgemm.append(time.perf_counter() - t0)
    median = statistics.median(times)
    flops = 2 * SGEMM_TOKENS * GEMV_SHAPE[1] * GEMV_SHAPE[1]
    return {"gemv_bytes_per_s": first.nbytes / median, "gemv_shape": list(GEMV_SHAPE), "gemv_matrices": GEMV_MATRICES,
            "threads": applied,
            "samples_s": times, "sgemm_flops_per_s": flops / statistics.median(sgemm),
            "sgemm_shape": [SGEMM_TOKENS, GEMV_SHAPE[1], GEMV_SHAPE[1]], "sgemm_samples_s": sgemm}


def sync(device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so a host clock times it."""
    if not device.host_memory and hasattr(device.xp, "cuda"):
        device.xp.cuda.get_current_stream().synchronize()


def copy_bandwidth(device, nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth (read + write bytes per second), median of 7: a GPU decode step's floor."""
    xp = device.xp
    src = xp.ones(nbytes // 4, dtype=np.float32)
    dst = xp.empty_like(src)
    times = []
    for _ in range(7):
        sync(device)
        t0 = time.perf_counter()
        xp.copyto(dst, src)
        sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * src.nbytes / statistics.median(times)
