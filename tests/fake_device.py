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
