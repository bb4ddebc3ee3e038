"""One measurement of one config in a fresh process, for ``lumi regress``: its time, its greedy ids, its counters.

The gate runs this file as a script (a copy beside its work) with the tree under test first on ``PYTHONPATH``,
so the same probe measures base and head however their insides differ: it uses only the standard library,
NumPy, threadpoolctl and lumi's public API (``lumi.load_model``, ``lumi.generate``, ``model.weight_arrays``,
``lumi.formats.load_checkpoint``, ``lumi.model.Model``, ``lumi.backends.Device``).

Input: one JSON object (argv[1]) with the config's model, backend, dtype, kernels, gpu_layers, threads,
prompt ids, generated tokens, warm-up generations and whether to count. Output: one JSON line.

Time: after ``warmup`` whole generations (numba compiled, pages faulted, BLAS's threads started),
``timed`` more: the lower quartile of all their decode steps' seconds, and the quickest prompt's seconds
per token. Interference from other processes on a shared machine only ever adds time, so the quiet end
of a process's samples is what the code costs, while a real slowdown moves every step; the median step
is recorded beside it.

Counters (deterministic, measured after the timed generation, never during it; a plain ``lumi generate``
pays nothing, since nothing here is imported by the engine):

- ``alloc_per_step`` / ``alloc_bytes_per_step``: NumPy data allocations and their bytes in a decode
  step, counted by a NEP 49 allocator installed for the duration (on the calling thread: NumPy's handler
  is per context);
- ``float64_ops_per_step``: NumPy operations with a float64 or complex128 input or result, per step, and
  ``host_reads_per_step``: values read back to the host (``to_host``, ``float()``, ``int()``, ``bool()``,
  ``.item()``, formatting), both on an emulated device: the model placed whole (``gpu_layers=-1``) on an
  array module whose arrays count what they see, reductions returning 0-d arrays as a GPU's do. A
  float64 scalar in attention or RoPE, or an eagerly evaluated log argument, shows here whatever the clock;
  ``array_ops_per_step``: the NumPy operations it saw a step (the interpreter's share of a small model);
- ``to_host_per_step`` / ``to_device_per_step`` (a GPU backend): copies across the device's boundary per
  decode step, staged ones included (``count_transfers``; a test runs it on the emulated CUDA device);
- ``weight_bytes``: bytes held per storage kind after load (a 16-bit model widened at load shows as fp32),
  and ``noncontiguous_weights``: weights the products would read through a strided view (contiguous in
  neither order: the host's float32 matrices are column-major on purpose, ``model.layers``).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import statistics
import sys
import time
import types

import numpy as np

DOUBLE = (np.dtype(np.float64), np.dtype(np.complex128))  # a complex128 is a pair of float64s


class Float64Error(AssertionError):
    """A float64 (or complex128) array where lumi computes in float32 (``CountedArray.strict``)."""


# ----------------------------------------------------------------------------------------------------------
# an array module that counts what its arrays see


class CountedArray(np.ndarray):
    """A NumPy array whose ufunc and array-function hooks see every operation applied to it.

    ``counts`` (per class): ``float64`` operations, ``host_reads`` and ``checks`` (operations inspected, so
    a caller can show the hooks were really in the path). A subclass may set ``strict`` (raise
    ``Float64Error`` at the first float64 instead of counting) and ``scalars_as_arrays`` (results NumPy
    gives as scalars, reductions', come back as 0-d arrays, as on a GPU, so reading one on the host is
    seen). Every result is an array of the class that made it.
    """

    counts = {"float64": 0, "host_reads": 0, "checks": 0}
    strict = False
    scalars_as_arrays = True

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        cls = type(self)
        inputs = tuple(_plain(x) for x in inputs)
        _check(cls, inputs, f"input of {ufunc.__name__}.{method}")
        if out is not None:
            kwargs["out"] = tuple(_plain(x) for x in out)
        return _counted(cls, getattr(ufunc, method)(*inputs, **kwargs), f"{ufunc.__name__}.{method}")

    def __array_function__(self, func, types_, args, kwargs):
        return _counted(type(self), super().__array_function__(func, types_, args, kwargs), func.__name__)

    def astype(self, dtype, *args, **kwargs):
        plain = self.view(np.ndarray)
        _check(type(self), plain, "input of astype")
        return _counted(type(self), plain.astype(dtype, *args, **kwargs), "astype")

    def _read(self, how):
        type(self).counts["host_reads"] += 1
        return how(self.view(np.ndarray))

    def __float__(self):
        return self._read(float)

    def __int__(self):
        return self._read(int)

    def __bool__(self):
        return self._read(bool)

    def __format__(self, spec):
        return self._read(lambda a: format(a[()] if a.ndim == 0 else a, spec))

    def __str__(self):
        return self._read(str)

    def __repr__(self):
        return self._read(repr)

    def item(self, *args):
        return self._read(lambda a: a.item(*args))

    def tolist(self):
        return self._read(lambda a: a.tolist())


def _plain(x):
    return x.view(np.ndarray) if isinstance(x, CountedArray) else x


def _check(cls, values, where: str) -> None:
    cls.counts["checks"] += 1
    for v in values if isinstance(values, tuple) else (values,):
        if isinstance(v, tuple):
            _check(cls, v, where)
        elif getattr(v, "dtype", None) is not None and v.dtype in DOUBLE:  # (dtype == None is float64's test)
            if cls.strict:
                raise Float64Error(f"{v.dtype} array in {where}")
            cls.counts["float64"] += 1


def _counted(cls, result, where: str):
    _check(cls, result, where)
    if isinstance(result, tuple):
        return tuple(_counted(cls, r, where) for r in result)
    if isinstance(result, np.generic) and cls.scalars_as_arrays:
        return np.asarray(result).view(cls)
    if isinstance(result, np.ndarray) and not isinstance(result, cls):
        return result.view(cls)
    return result


def counting_module(cls=CountedArray) -> types.SimpleNamespace:
    """NumPy's namespace with every function's result a ``cls`` array: creation functions too, so a table or
    a mask built in float64 is seen at birth."""

    def wrap(func):
        name = getattr(func, "__name__", repr(func))

        def counted(*args, **kwargs):
            return _counted(cls, func(*args, **kwargs), name)

        counted.__name__ = name
        return counted

    namespace = {}
    for name in dir(np):
        if name.startswith("_"):
            continue
        try:
            value = getattr(np, name)
        except AttributeError:  # names NumPy lists but has deprecated away
            continue
        namespace[name] = wrap(value) if callable(value) and not isinstance(value, type) else value
    return types.SimpleNamespace(**namespace)


def to_host(x):
    """A counted array's values on the host: a device-to-host copy on a GPU, counted."""
    if isinstance(x, CountedArray):
        type(x).counts["host_reads"] += 1
        return x.view(np.ndarray)
    return np.asarray(x)


# ----------------------------------------------------------------------------------------------------------
# NumPy's data allocations, counted (NEP 49)


class _Allocator(ctypes.Structure):
    _fields_ = [("ctx", ctypes.c_void_p), ("malloc", ctypes.c_void_p), ("calloc", ctypes.c_void_p),
                ("realloc", ctypes.c_void_p), ("free", ctypes.c_void_p)]


class _Handler(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char * 127), ("version", ctypes.c_uint8), ("allocator", _Allocator)]


_SET_HANDLER = 304  # PyDataMem_SetHandler's index in NumPy's C-API table (numpy/__multiarray_api.h, NumPy >= 1.22)


class AllocationCounter:
    """Counts NumPy's array-data allocations (and their bytes) made on this thread while entered.

    NumPy takes its allocator from a context variable (NEP 49): while entered, this thread's arrays get
    their memory through ctypes callbacks into the C library's allocator, counted. An array made here is
    freed through the same callbacks whenever it goes, so a process that used this ends with ``os._exit``
    (after flushing its output): no callback may run while the interpreter tears ctypes down.
    """

    _made = None

    def __init__(self):
        self.count = self.bytes = 0
        if AllocationCounter._made is None:
            AllocationCounter._made = self._make()

    @staticmethod
    def _make():
        libc = ctypes.CDLL(None)
        for name, restype, argtypes in (("malloc", ctypes.c_void_p, [ctypes.c_size_t]),
                                        ("calloc", ctypes.c_void_p, [ctypes.c_size_t, ctypes.c_size_t]),
                                        ("realloc", ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_size_t]),
                                        ("free", None, [ctypes.c_void_p])):
            getattr(libc, name).restype, getattr(libc, name).argtypes = restype, argtypes
        live = []  # the counters entered now (innermost last)

        def note(n):
            for counter in live:
                counter.count += 1
                counter.bytes += n

        malloc = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)(
            lambda ctx, size: (note(size), libc.malloc(size))[1])
        calloc = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t)(
            lambda ctx, n, size: (note(n * size), libc.calloc(n, size))[1])
        realloc = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)(
            lambda ctx, ptr, size: (note(size), libc.realloc(ptr, size))[1])
        free = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)(
            lambda ctx, ptr, size: libc.free(ptr))
        handler = _Handler(b"lumi-counting", 1, _Allocator(None, ctypes.cast(malloc, ctypes.c_void_p),
                                                           ctypes.cast(calloc, ctypes.c_void_p),
                                                           ctypes.cast(realloc, ctypes.c_void_p),
                                                           ctypes.cast(free, ctypes.c_void_p)))
        new_capsule = ctypes.pythonapi.PyCapsule_New
        new_capsule.restype, new_capsule.argtypes = ctypes.py_object, [ctypes.c_void_p, ctypes.c_char_p,
                                                                        ctypes.c_void_p]
        capsule = new_capsule(ctypes.addressof(handler), b"mem_handler", None)
        get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
        get_pointer.restype, get_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
        table = ctypes.cast(get_pointer(np._core._multiarray_umath._ARRAY_API, None),
                            ctypes.POINTER(ctypes.c_void_p))
        set_handler = ctypes.PYFUNCTYPE(ctypes.py_object, ctypes.py_object)(table[_SET_HANDLER])
        # everything the callbacks and the capsule point at, kept for the life of the process
        return types.SimpleNamespace(capsule=capsule, set=set_handler, live=live,
                                     keep=(libc, malloc, calloc, realloc, free, handler))

    def __enter__(self):
        made = AllocationCounter._made
        self._previous = made.set(made.capsule)
        made.live.append(self)
        return self

    def __exit__(self, *exc):
        made = AllocationCounter._made
        made.live.remove(self)
        made.set(self._previous)
        return False


# ----------------------------------------------------------------------------------------------------------
# the measurement


def storage_kind(w) -> tuple[str, bool]:
    """(the storage kind a stored weight is held in, whether the products read it contiguously)."""
    held = getattr(w, "q", None)
    if held is None:
        held = getattr(w, "a", w)
    kind = getattr(w, "storage", None) or {"float32": "fp32", "float16": "fp16", "float64": "fp64"}.get(
        str(getattr(held, "dtype", "")), str(getattr(held, "dtype", type(w).__name__)))
    flags = getattr(held, "flags", None)  # column-major float32 (model.layers) is contiguous too
    contiguous = flags is None or bool(flags.c_contiguous or flags.f_contiguous)
    return kind, contiguous


def weight_counters(model) -> dict:
    kinds: dict[str, int] = {}
    strided = 0
    for w in model.weight_arrays().values():
        kind, contiguous = storage_kind(w)
        kinds[kind] = kinds.get(kind, 0) + int(w.nbytes)
        strided += not contiguous
    return {"weight_bytes": dict(sorted(kinds.items())), "noncontiguous_weights": strided}


def fingerprint(ids) -> str:
    return hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()[:16]


def timed_generation(lumi, model, prompt, n):
    """(prompt seconds per token, the decode steps' seconds, the generated ids) of one greedy generation."""
    gen = lumi.generate(model, prompt, n, ignore_eos=True)
    steps, ids = [], []
    t0 = time.perf_counter()
    for token in gen:
        t1 = time.perf_counter()
        steps.append(t1 - t0)
        ids.append(int(token))
        t0 = t1
    return steps[0] / len(prompt), steps[1:], ids


def per_step(lumi, model, prompt, steps: int, counts, skip: int = 2) -> dict:
    """How much each of ``counts`` (a dict of counters, or a callable giving one) grows per decode step of a
    greedy generation (``lumi.generate``, the user's path), over ``steps`` steps after the prompt and
    ``skip - 1`` more, which make buffers (and capture a CUDA graph)."""
    read = counts if callable(counts) else lambda: dict(counts)
    gen = iter(lumi.generate(model, prompt, steps + skip, ignore_eos=True))
    for _ in range(skip):
        next(gen)
    before = read()
    for _ in range(steps):
        next(gen)
    after = read()
    return {k: (after[k] - before[k]) / steps for k in after}


def count_steps(lumi, model, prompt, steps: int) -> dict:
    """NumPy allocations per decode step of ``model`` (the run's own kernels)."""
    counter = AllocationCounter()
    with counter:  # counting from the start: the window is read from its running totals
        per = per_step(lumi, model, prompt, steps, lambda: {"count": counter.count, "bytes": counter.bytes})
    return {"alloc_per_step": per["count"], "alloc_bytes_per_step": per["bytes"]}


def _model(cfg: dict, device, gpu_layers: int):
    from lumi.formats import load_checkpoint
    from lumi.model import Model

    config, weights = load_checkpoint(cfg["model"])
    return Model(config, weights, dtype=cfg["dtype"], device=device, gpu_layers=gpu_layers)


def count_device(lumi, cfg: dict, prompt, steps: int) -> dict:
    """float64 operations, host reads and array operations per decode step, the model placed whole on an
    emulated device."""
    from lumi.backends import Device

    xp = counting_module()
    model = _model(cfg, Device("counting", xp, xp.asarray, to_host, host_memory=True), gpu_layers=-1)
    per = per_step(lumi, model, prompt, steps, CountedArray.counts)
    return {"float64_ops_per_step": per["float64"], "host_reads_per_step": per["host_reads"],
            "array_ops_per_step": per["checks"]}


class _CountingStaging:
    """A device's page-locked staging (``backends.cuda.staging.Staging``) with its copies counted."""

    def __init__(self, staging, counts):
        self._staging, self._counts = staging, counts

    def __getattr__(self, name):
        return getattr(self._staging, name)

    def up(self, host):
        self._counts["to_device"] += 1
        return self._staging.up(host)

    def down(self, x):
        self._counts["to_host"] += 1
        return self._staging.down(x)

    def copy_down(self, x, out, stream):
        self._counts["to_host"] += 1
        return self._staging.copy_down(x, out, stream)


def count_transfers(lumi, device, cfg: dict, prompt, steps: int) -> dict:
    """Copies between host and ``device`` per decode step of a greedy generation, the model placed as the
    config places it: every ``to_host`` / ``to_device`` and every staged copy (a partial offload's
    activations, a CUDA graph's token) counted. A GPU's steady greedy decoding brings one token down."""
    import dataclasses

    counts = {"to_host": 0, "to_device": 0}

    def counted(copy, key):
        def run(x):
            counts[key] += 1
            return copy(x)

        return run

    staging = getattr(device, "staging", None)
    device = dataclasses.replace(device, to_host=counted(device.to_host, "to_host"),
                                 to_device=counted(device.to_device, "to_device"),
                                 **({"staging": _CountingStaging(staging, counts)} if staging is not None else {}))
    per = per_step(lumi, _model(cfg, device, cfg["gpu_layers"]), prompt, steps, counts, skip=3)
    return {"to_host_per_step": per["to_host"], "to_device_per_step": per["to_device"]}


def main(argv) -> int:
    cfg = json.loads(argv[1])
    import lumi
    from threadpoolctl import threadpool_limits

    prompt, n = cfg["prompt_ids"], cfg["gen_tokens"]
    with threadpool_limits(limits=cfg["threads"], user_api="blas"):
        t0 = time.perf_counter()
        model = lumi.load_model(cfg["model"], dtype=cfg["dtype"], backend=cfg["backend"], kernels=cfg["kernels"],
                                gpu_layers=cfg["gpu_layers"])
        load_s = time.perf_counter() - t0
        for _ in range(cfg["warmup"]):
            timed_generation(lumi, model, prompt, n)
        prefills, steps, fingerprints = [], [], set()
        for _ in range(cfg.get("timed", 3)):
            prefill, decode, ids = timed_generation(lumi, model, prompt, n)
            prefills.append(prefill)
            steps += decode
            fingerprints.add(fingerprint(ids))
        out = {"load_s": load_s, "prefill_s_per_token": min(prefills),
               "decode_s_per_token": statistics.quantiles(steps, n=4)[0] if len(steps) > 1 else steps[0],
               "decode_median_s": statistics.median(steps), "ids": ",".join(sorted(fingerprints)),
               "lumi": os.path.dirname(lumi.__file__)}
        if cfg.get("counters"):
            count = cfg.get("count_steps", 8)
            out["counters"] = {**weight_counters(model), **count_steps(lumi, model, prompt, count)}
            if cfg["backend"] == "numpy":
                out["counters"].update(count_device(lumi, cfg, prompt, count))
            else:
                from lumi.backends import get_device

                out["counters"].update(count_transfers(lumi, get_device(cfg["backend"]), cfg, prompt, count))
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    os._exit(0)  # see AllocationCounter


if __name__ == "__main__":
    main(sys.argv)
