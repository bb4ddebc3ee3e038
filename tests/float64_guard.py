"""An array module that fails on the first float64 array: the no-float64 proof.

``GUARD`` stands in for ``numpy`` as the model's ``xp``. Every array it makes is a ``GuardedArray``: the
regression gate's counting array (``lumi.bench.probe.CountedArray``) made strict, so its ufunc and
array-function hooks raise ``Float64Error`` when an input or a result of any arithmetic operator,
reduction, product or NumPy function is float64 (or complex128). Creation functions (``arange``,
``zeros``, ``asarray``...) are checked too, so a RoPE table or a mask built in float64 is caught at birth.
"""

from __future__ import annotations

import numpy as np

from lumi.backends import Device
from lumi.bench.probe import DOUBLE, CountedArray, Float64Error, counting_module  # noqa: F401 (re-exported)


class GuardedArray(CountedArray):
    counts = {"float64": 0, "host_reads": 0, "checks": 0}
    strict = True
    scalars_as_arrays = False  # NumPy's own behaviour: the guard changes nothing but its checks


GUARD = counting_module(GuardedArray)


# The guard as a device the whole model can be placed on (``gpu_layers=-1``); its arrays are
# still NumPy arrays in host memory, so every storage dtype runs on it.
GUARD_DEVICE = Device("float64-guard", GUARD, GUARD.asarray, np.asarray, host_memory=True)
