"""Where arrays live: the CPU (NumPy) or a GPU (CuPy), and which layers go where.

A ``Device`` bundles an array module with the two copies that cross its
boundary. The model takes one explicitly (never ``np = cupy``); CuPy is
imported only when asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import UsageError


@dataclass(frozen=True, eq=False)
class Device:
    name: str
    xp: object  # the array module: numpy, cupy, or a stand-in with the same functions
    to_device: Callable  # host ndarray -> array on this device
    to_host: Callable  # array on this device -> host ndarray
    host_memory: bool = False  # its arrays are NumPy arrays in host memory (the CPU, or a stand-in for tests)
    kernels: object = None  # fused kernels for a one-token step on this device (``cuda.Kernels``), or None
    staging: object = None  # page-locked buffers for activations crossing to and from the host (``cuda.Staging``)


CPU = Device("cpu", np, np.asarray, np.asarray, host_memory=True)


def cupy_device(fused: bool = True) -> Device:
    """The current CUDA device through CuPy, or a one-line error saying what is missing.

    ``fused``: decode steps run lumi's own kernels (``cuda.py``); False composes
    them from CuPy's array functions alone, as a reference to compare against.
    """
    try:
        import cupy
    except ImportError:
        raise UsageError("--backend", "cupy: CuPy is not installed (pip install 'lumi[gpu]', or cupy-cuda13x "
                                      "for CUDA 13)") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # CUDA driver missing or broken: CuPy raises its own runtime errors
        raise UsageError("--backend", f"cupy: CuPy is installed but CUDA is not usable ({error})") from None
    if count == 0:
        raise UsageError("--backend", "cupy: CuPy is installed but no CUDA GPU is visible")
    from .cuda import Kernels, Staging

    return Device(f"cuda:{cupy.cuda.runtime.getDevice()}", cupy, cupy.asarray, cupy.asnumpy,
                  kernels=Kernels(cupy) if fused else None, staging=Staging(cupy))


def cross(x, source: Device, target: Device):
    """An activation (T, d) from source's memory to target's: at most one copy down and one up, through a GPU's
    page-locked staging buffers where it has them (the copy up then runs asynchronously)."""
    host = x if source.host_memory else source.staging.down(x) if source.staging else source.to_host(x)
    if target.host_memory:
        return host
    return target.staging.up(host) if target.staging else target.to_device(host)


def is_cupy(device: Device) -> bool:
    """Whether device is a real GPU through CuPy (not the CPU, nor a stand-in for tests with CuPy's interface)."""
    return not device.host_memory and getattr(device.xp, "__name__", None) == "cupy"


def get_device(backend: str) -> Device:
    if backend == "numpy":
        return CPU
    if backend == "cupy":
        return cupy_device()
    raise UsageError("--backend", f"must be numpy or cupy, got {backend!r}")


def placement(n_layers: int, gpu_layers: int) -> tuple[list[bool], bool]:
    """(per layer: on the device?, head on the device?) for ``--gpu-layers``.

    0: everything on the CPU; N: the first N transformer layers on the device, with the
    embedding, final norm and classifier on the CPU; -1: all layers and the head.
    """
    if gpu_layers < -1 or gpu_layers > n_layers:
        raise UsageError("--gpu-layers", f"must be -1 (all), 0 (none) or 1..{n_layers} layers, got {gpu_layers}")
    if gpu_layers == -1:
        return [True] * n_layers, True
    return [i < gpu_layers for i in range(n_layers)], False


def memory_stats(device: Device) -> dict | None:
    """A GPU's memory as the run sees it: CuPy's pool (used, held) and the device's free and total; None elsewhere."""
    xp = device.xp
    if not hasattr(xp, "get_default_memory_pool"):
        return None
    pool = xp.get_default_memory_pool()
    free, total = xp.cuda.runtime.memGetInfo()
    return {"pool_used_bytes": pool.used_bytes(), "pool_held_bytes": pool.total_bytes(), "device_free_bytes": free,
            "device_total_bytes": total}
