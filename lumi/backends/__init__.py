"""Where arrays live and which kernels run on them: the CPU (NumPy, optionally numba) or a GPU (CuPy).

A ``Device`` bundles an array module with the two copies that cross its
boundary and, on a GPU, lumi's kernels. The model takes one explicitly (never
``np = cupy``) and asks each backend for its op table (the operations of
``lumi.model.ops.OPS``, in the same signatures):

- ``cpu``: NumPy and BLAS; 16-bit and int8 products widened a block at a time,
  split over threads; the BLAS pool's thread count;
- ``numba``: fused one-pass kernels for a one-token step (``--kernels numba``);
- ``cuda``: lumi's CUDA kernels, page-locked staging, CUDA graphs.

CuPy and numba are imported only when asked for.
"""


from __future__ import annotations

from ..errors import UsageError
from .device import ALL_LAYERS, CPU, Device, cross, is_cupy, memory_stats, placement, ranges


def get_device(backend: str) -> Device:
    if backend == "numpy":
        return CPU
    if backend == "cupy":
        return cupy_device()
    raise UsageError("--backend", f"must be numpy or cupy, got {backend!r}")


def cupy_device(fused: bool = True) -> Device:
    """The current CUDA device through CuPy, or a one-line error saying what is missing.

    ``fused``: decode steps run lumi's own kernels (``cuda.kernels``); False
    composes them from CuPy's array functions alone, as a reference to compare against.
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
    from .cuda.kernels import Kernels
    from .cuda.staging import Staging

    return Device(f"cuda:{cupy.cuda.runtime.getDevice()}", cupy, cupy.asarray, cupy.asnumpy,
                  kernels=Kernels(cupy) if fused else None, staging=Staging(cupy))


__all__ = ["ALL_LAYERS", "CPU", "Device", "cross", "cupy_device", "get_device", "is_cupy", "memory_stats",
           "placement", "ranges"]
