"""An array module that fails on the first float64 array: the no-float64 proof.

``GUARD`` stands in for ``numpy`` as the model's ``xp``. Every array it makes
is a ``GuardedArray``, whose ufunc and array-function hooks see every
arithmetic operator, reduction, product and NumPy function applied to it, and
raise ``Float64Error`` when an input or a result is float64 (or complex128). Creation
functions (``arange``, ``zeros``, ``asarray``...) are checked too, so a RoPE
table or a mask built in float64 is caught at birth.
"""

from __future__ import annotations

import types

import numpy as np

from lumi.backends import Device

DOUBLE = (np.dtype(np.float64), np.dtype(np.complex128))  # a complex128 is a pair of float64s (RoPE's pairs)


class Float64Error(AssertionError):
    pass


class GuardedArray(np.ndarray):
    checks = 0  # operations inspected, so a test can show the guard was really in the path

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        inputs = tuple(_plain(x) for x in inputs)
        _check(inputs, f"input of {ufunc.__name__}.{method}")
        if out is not None:
            kwargs["out"] = tuple(_plain(x) for x in out)
        result = getattr(ufunc, method)(*inputs, **kwargs)
        return _guarded(result, f"{ufunc.__name__}.{method}")

    def __array_function__(self, func, types_, args, kwargs):
        result = super().__array_function__(func, types_, args, kwargs)
        return _guarded(result, func.__name__)

    def astype(self, dtype, *args, **kwargs):
        return _guarded(np.asarray(self).astype(dtype, *args, **kwargs), "astype")


def _plain(x):
    return x.view(np.ndarray) if isinstance(x, GuardedArray) else x


def _check(values, where: str) -> None:
    GuardedArray.checks += 1
    for v in values if isinstance(values, tuple) else (values,):
        if isinstance(v, tuple):
            _check(v, where)
        elif getattr(v, "dtype", None) is not None and v.dtype in DOUBLE:  # (dtype == None is float64's test)
            raise Float64Error(f"{v.dtype} array in {where}")


def _guarded(result, where: str):
    _check(result, where)
    if isinstance(result, tuple):
        return tuple(_guarded(r, where) for r in result)
    if isinstance(result, np.ndarray) and not isinstance(result, GuardedArray):
        return result.view(GuardedArray)
    return result


def _wrap(func):
    name = getattr(func, "__name__", repr(func))
    def guarded(*args, **kwargs):
        return _guarded(func(*args, **kwargs), name)

    guarded.__name__ = name
    return guarded


def _module():
    namespace = {}
    for name in dir(np):
        if name.startswith("_"):
            continue
        try:
            value = getattr(np, name)
        except AttributeError:  # names NumPy lists but has deprecated away
            continue
        namespace[name] = _wrap(value) if callable(value) and not isinstance(value, type) else value
    return types.SimpleNamespace(**namespace)


GUARD = _module()


# The guard as a device the whole model can be placed on (``gpu_layers=-1``); its arrays are
# still NumPy arrays in host memory, so every storage dtype runs on it.
GUARD_DEVICE = Device("float64-guard", GUARD, GUARD.asarray, np.asarray, host_memory=True)
