"""A CuPy-like stand-in device for tests without a GPU.

``FAKE`` behaves like CuPy where it matters: its arrays refuse to mix with
host arrays in any operation, elements and reductions are 0-d device arrays,
and every crossing goes through ``to_device`` or ``to_host``, which count
copies (and bytes down) in ``COPIES``.
"""

from __future__ import annotations

import types
from collections import Counter

import numpy as np

from lumi.backends import Device


class DeviceArray(np.ndarray):
    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        _refuse_host(inputs + (out or ()), ufunc.__name__)
        inputs = tuple(x.view(np.ndarray) if isinstance(x, DeviceArray) else x for x in inputs)
        if out is not None:
            kwargs["out"] = tuple(x.view(np.ndarray) for x in out)
        return _on_device(getattr(ufunc, method)(*inputs, **kwargs))

    def __getitem__(self, index):
        return _on_device(super().__getitem__(index))

    def __array_function__(self, func, types_, args, kwargs):
        _refuse_host(tuple(a for a in args if isinstance(a, np.ndarray)), func.__name__)
        return _on_device(super().__array_function__(func, types_, args, kwargs))


def _refuse_host(arrays, where):
    for a in arrays:
        if isinstance(a, np.ndarray) and not isinstance(a, DeviceArray) and a.ndim:
            raise TypeError(f"{where}: a host array met a device array (a missed transfer)")


def _on_device(result):
    if isinstance(result, tuple):
        return tuple(_on_device(r) for r in result)
    if isinstance(result, np.generic):  # like CuPy: a reduction or an element is a 0-d array on the device
        return np.asarray(result).view(DeviceArray)
    return result.view(DeviceArray) if isinstance(result, np.ndarray) and not isinstance(result, DeviceArray) \
        else result


COPIES = Counter()


def _to_device(host):
    assert not isinstance(host, DeviceArray), "to_device of an array already on the device"
    COPIES["h2d"] += 1
    return np.array(host).view(DeviceArray)


def _to_host(dev):
    assert isinstance(dev, DeviceArray), "to_host of a host array"
    COPIES["d2h"] += 1
    COPIES["d2h_bytes"] += dev.nbytes
    return np.array(dev.view(np.ndarray))


def _fake_xp():
    def wrap(f):
        return lambda *a, **k: _on_device(f(*a, **k))

    names = {n: getattr(np, n) for n in dir(np) if not n.startswith("_") and hasattr(np, n)}
    return types.SimpleNamespace(**{n: wrap(f) if callable(f) and not isinstance(f, type) else f
                                    for n, f in names.items()})


FAKE = Device("fake-gpu", _fake_xp(), _to_device, _to_host)  # host_memory=False: like a GPU


class ReferenceKernels:
    """``cuda.Kernels`` with each kernel replaced by the generic operation it must equal, counting launches.

    ``Kernels.ops`` (the real wiring, fallbacks included) runs unchanged on top,
    so the tests show which operations of a step reach a kernel, how many
    launches a step makes, and that positions come from the device's copy,
    without a GPU.
    """

    graphs = False  # the stand-in cannot capture a step

    def __init__(self, xp=None, rows_per_warp=None):  # as cuda.Kernels is made: the array module, and a variant
        self.launches = Counter()

    def gemv(self, x, w, residual=None, plans=None):
        from lumi.weights import DeviceMatrix

        self.launches["gemv"] += 1
        y = x @ (w.rows(slice(None)) if isinstance(w, DeviceMatrix) else w).T
        if residual is None:
            return y
        residual += y
        return residual

    def rmsnorm(self, x, w, eps):
        from lumi.model import rmsnorm

        self.launches["rmsnorm"] += 1
        return rmsnorm(x, w, eps, FAKE.xp)

    def rope(self, x, cos, sin, pos, layout):
        from lumi.model import apply_rope

        self.launches["rope"] += 1
        apply_rope(x, cos, sin, int(pos[0]), layout)
        return True

    def store(self, kv, cache, pos):
        self.launches["store"] += 1
        p = int(pos[0])
        cache[:, :, p : p + 1] = kv.transpose(1, 2, 0, 3)
        return True

    def attend(self, q, k, v, pos):
        from lumi.model import attention

        self.launches["attend"] += 1
        L = int(pos[0]) + 1
        return attention(q, k[:, :L], v[:, :L], L - 1, FAKE.xp)

    def swiglu(self, gu, hidden_dim):
        from lumi.model import swiglu

        self.launches["swiglu"] += 1
        return swiglu(gu, hidden_dim, FAKE.xp)

    def advance(self, pos):
        self.launches["advance"] += 1
        pos += 1

    def ops(self, generic, position):
        from lumi.cuda import Kernels

        return Kernels.ops(self, generic, position)
