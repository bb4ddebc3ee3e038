"""A device: an array module, the copies across its boundary, and where each layer goes.

The model takes a ``Device`` explicitly (never ``np = cupy``); ``CPU`` is the
host's. ``lumi.backends.get_device`` makes the others.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import UsageError


@dataclass(frozen=True, eq=False)
class Device:
    name: str
    xp: object  # the array module: numpy, cupy, or a stand-in with the same functions
    to_device: Callable  # host ndarray -> array on this device
    to_host: Callable  # array on this device -> host ndarray
    host_memory: bool = False  # its arrays are NumPy arrays in host memory (the CPU, or a stand-in for tests)
    kernels: object = None  # lumi's kernels for this device's steps (``cuda.kernels.Kernels``), or None
    staging: object = None  # page-locked buffers for activations crossing to and from the host (``cuda.staging``)


CPU = Device("cpu", np, np.asarray, np.asarray, host_memory=True)


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


ALL_LAYERS = -1  # ``gpu_layers``'s default everywhere: every layer and the head on the device


def placement(n_layers: int, gpu_layers: int) -> tuple[list[bool], bool]:
    """(per layer: on the device?, head on the device?) for ``--gpu-layers``.

    0: everything on the CPU; N: the first N transformer layers on the device, with the
    embedding, final norm and classifier on the CPU; ``ALL_LAYERS`` (-1): all layers and the head.
    """
    if gpu_layers < ALL_LAYERS or gpu_layers > n_layers:
        raise UsageError("--gpu-layers", f"must be -1 (all), 0 (none) or 1..{n_layers} layers, got {gpu_layers}")
    if gpu_layers == ALL_LAYERS:
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


class Ranges:
    """NVTX ranges (``cupy.cuda.nvtx``) around each step and layer, for Nsight Systems and other profilers.

    On with ``LUMI_NVTX=1`` (or ``Model(nvtx=True)``): each costs a few
    microseconds of host time, so it stays off when not profiling. A step
    replayed as a CUDA graph shows one range per replay, not per layer.
    """

    def __init__(self, nvtx):
        self.nvtx = nvtx

    @contextmanager
    def __call__(self, label: str, value):
        self.nvtx.RangePush(f"{label} {value}")
        try:
            yield
        finally:
            self.nvtx.RangePop()


NO_RANGE = nullcontext()


def ranges(device, enabled: bool):
    """A ``(label, value) -> context manager`` marking NVTX ranges on ``device``'s profiler timeline; a no-op
    elsewhere. The name is formatted only when ranges are on: nothing is built per layer and token otherwise."""
    nvtx = getattr(getattr(device.xp, "cuda", None), "nvtx", None)
    return Ranges(nvtx) if enabled and nvtx is not None else lambda label, value: NO_RANGE
