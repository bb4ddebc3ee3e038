"""safetensors files: a zero-copy, bounds-checked reader and an atomic writer.

Layout (https://github.com/huggingface/safetensors)::

    uint64 LE        N, the header's length in bytes
    N bytes          a UTF-8 JSON object (the library pads it with spaces to a multiple of 8):
                       {"__metadata__": {str: str}  (optional),
                        NAME: {"dtype": "F32", "shape": [d0, d1, ...], "data_offsets": [begin, end]}, ...}
    the data         every tensor's bytes, row-major little-endian, at [begin, end) relative to here

The reader enforces the library's own rules before making any array: the header
fits the file, every entry has exactly those fields with the right types,
``end - begin == prod(shape) * itemsize``, and the regions, sorted by offset,
tile the data exactly (start at 0, no gaps, no overlaps, end at the end of the
file). It reads F32, F16 and BF16 (as ``ml_dtypes.bfloat16``); other dtypes
are refused by name. Nothing in a file is ever executed.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping

import numpy as np

from ..storage import BF16
from ._io import MappedFile

HEADER_LIMIT = 100 << 20  # the safetensors library's own limit on the JSON header
MAX_DIMS = 8
MAX_ELEMENTS = 1 << 40  # per tensor; far above any real one, and Python ints cannot overflow below it

DTYPES: dict[str, np.dtype] = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": BF16}
_NAMES = {np.dtype("<f4"): "F32", np.dtype("<f2"): "F16", BF16: "BF16"}
# dtypes the format defines that lumi does not read: named in the error so the user knows it is not corruption
_KNOWN_UNSUPPORTED = ("F64", "F8_E4M3", "F8_E5M2", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL")


def _no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(f"duplicate key {dup!r}")
    return dict(pairs)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def read_header(f: MappedFile) -> tuple[dict, dict[str, str], int]:
    """(entries by name, metadata, data start) from a mapped file; every entry checked, no array made.

    Each entry is ``(dtype, shape, begin, end)`` with offsets relative to the data start.
    """
    (n,) = f.unpack("<Q", 0, "header length")
    if n > HEADER_LIMIT:
        raise f.error("header length", f"{n} bytes exceeds the {HEADER_LIMIT}-byte limit (corrupt, or not safetensors)")
    if n > f.size - 8:
        raise f.error("header length", f"{n} bytes, but only {f.size - 8} bytes follow it (truncated or corrupt)")
    if n < 2:
        raise f.error("header", f"{n} bytes is too short for a JSON object")
    raw = bytes(f.buffer[8 : 8 + n])
    if raw[:1] != b"{":
        raise f.error("header", "must be a JSON object starting with '{' (not a safetensors file?)")
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates,
                            parse_constant=lambda c: (_ for _ in ()).throw(ValueError(f"{c} is not valid JSON")))
    except (UnicodeDecodeError, ValueError) as e:
        raise f.error("header", f"not valid JSON: {str(e).splitlines()[0]}") from None
    if not isinstance(header, dict):
        raise f.error("header", f"must be a JSON object, got {type(header).__name__}")

    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise f.error("header.__metadata__", "must be an object of string values")

    data_start = 8 + n
    data_size = f.size - data_start
    entries: dict[str, tuple[np.dtype, tuple[int, ...], int, int]] = {}
    for name, entry in header.items():
        field = f"header[{name!r}]"
        if not isinstance(entry, dict):
            raise f.error(field, f"must be an object, got {type(entry).__name__}")
        if set(entry) != {"dtype", "shape", "data_offsets"}:
            extra = sorted(set(entry) - {"dtype", "shape", "data_offsets"})
            missing = sorted({"dtype", "shape", "data_offsets"} - set(entry))
            raise f.error(field, f"must have exactly dtype, shape, data_offsets (missing {missing}, unexpected {extra})")
        code = entry["dtype"]
        if not isinstance(code, str):
            raise f.error(field + ".dtype", f"must be a string, got {code!r}")
        if code not in DTYPES:
            kind = "unsupported" if code in _KNOWN_UNSUPPORTED else "unknown"
            raise f.error(field + ".dtype", f"{kind} dtype {code!r} (lumi reads {', '.join(DTYPES)})")
        dtype = DTYPES[code]
        shape = entry["shape"]
        if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(_is_int(s) and s >= 0 for s in shape):
            raise f.error(field + ".shape", f"must be a list of at most {MAX_DIMS} non-negative integers, got {shape!r}"[:300])
        count = 1
        for s in shape:
            count *= s
            if count > MAX_ELEMENTS:
                raise f.error(field + ".shape", f"{shape} has more than {MAX_ELEMENTS} elements (corrupt)")
        offsets = entry["data_offsets"]
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
            raise f.error(field + ".data_offsets", f"must be [begin, end] integers, got {offsets!r}"[:300])
        begin, end = offsets
        if not 0 <= begin <= end:
            raise f.error(field + ".data_offsets", f"[{begin}, {end}] must satisfy 0 <= begin <= end")
        if end > data_size:
            raise f.error(field + ".data_offsets",
                          f"[{begin}, {end}] runs past the data, which has {data_size} bytes (truncated or corrupt)")
        if end - begin != count * dtype.itemsize:
            raise f.error(field + ".data_offsets", f"[{begin}, {end}] holds {end - begin} bytes, but shape {shape} "
                                                   f"of {code} needs {count * dtype.itemsize}")
        entries[name] = (dtype, tuple(shape), begin, end)

    # the regions must tile the data exactly: sorted by offset, each starts where the last ended
    position, previous = 0, None
    for name, (_, _, begin, end) in sorted(entries.items(), key=lambda item: (item[1][2], item[1][3])):
        if begin != position:
            what = "overlaps" if begin < position else "leaves a gap after"
            after = f"{previous!r} (which ends at {position})" if previous is not None else "the start of the data"
            raise f.error(f"header[{name!r}].data_offsets",
                          f"[{begin}, {end}] {what} {after}; tensors must be contiguous")
        position, previous = end, name
    if position != data_size:
        raise f.error("data_offsets", f"the tensors end at data byte {position}, but the data has {data_size} bytes "
                                      f"(trailing bytes, or a missing tensor)")
    return entries, metadata, data_start


def read_safetensors(path: str | os.PathLike, *, with_metadata: bool = False):
    """Every tensor of a safetensors file by name, as read-only zero-copy views of the memory map.

    float32 and float16 arrays, and ``ml_dtypes.bfloat16`` for BF16. With
    ``with_metadata``, returns ``(tensors, metadata)``.
    """
    f = MappedFile(path)
    entries, metadata, start = read_header(f)
    tensors = {name: f.array(start + begin, dtype, shape, f"header[{name!r}]")
               for name, (dtype, shape, begin, _) in entries.items()}
    return (tensors, metadata) if with_metadata else tensors


# ----------------------------------------------------------------------------
# writing


def _storable(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == BF16:
        return np.require(a, requirements="C")
    if a.dtype.newbyteorder("<") in _NAMES:
        return np.require(a, dtype=a.dtype.newbyteorder("<"), requirements="C")  # keeps 0-d arrays 0-d
    raise ValueError(f"cannot write dtype {a.dtype} to safetensors (lumi writes float32, float16, bfloat16)")


def write_tensors(path: str | os.PathLike, entries: list[tuple[str, np.dtype, tuple[int, ...], Callable]],
                  metadata: Mapping[str, str] | None = None) -> int:
    """Write ``(name, dtype, shape, make)`` entries, calling ``make()`` for each tensor's array only
    when its bytes are written (so a converted copy of one tensor at a time is alive). Atomic: a
    temporary file, then a rename. Returns the file's size."""
    path = os.fspath(path)
    header: dict = {}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise ValueError("safetensors metadata must map strings to strings")
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name, dtype, shape, _ in entries:
        dtype = np.dtype(dtype)
        if dtype not in _NAMES:
            raise ValueError(f"{name}: cannot write dtype {dtype} to safetensors")
        size = math.prod(shape) * dtype.itemsize
        header[name] = {"dtype": _NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the library aligns the data to 8 bytes the same way
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as out:
            out.write(len(text).to_bytes(8, "little"))
            out.write(text)
            for name, dtype, shape, make in entries:
                a = _storable(make())
                if a.dtype != np.dtype(dtype) or a.shape != tuple(shape):
                    raise ValueError(f"{name}: produced {a.dtype}{a.shape}, declared {np.dtype(dtype)}{tuple(shape)}")
                out.write(a.reshape(-1).view(np.uint8).data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return 8 + len(text) + offset


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> None:
    """Write float32/float16/bfloat16 arrays by name, in sorted name order, atomically."""
    entries = []
    for name in sorted(tensors):
        a = tensors[name]
        if not isinstance(name, str) or name == "__metadata__":
            raise ValueError(f"bad tensor name {name!r}")
        dtype = np.asarray(a).dtype
        dtype = BF16 if dtype == BF16 else dtype.newbyteorder("<")
        entries.append((name, dtype, tuple(np.shape(a)), lambda a=a: a))
    write_tensors(path, entries, metadata)

