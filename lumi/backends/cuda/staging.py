"""Page-locked host buffers for activations crossing a GPU's boundary (a partial offload)."""

from __future__ import annotations

import math

import numpy as np


class Staging:
    """Page-locked host buffers for the activations that cross a GPU's boundary (partial offload), one each way.

    A copy from pageable memory goes through the driver's own bounce buffer
    and blocks the host; from page-locked memory it is one DMA. So an
    activation going up is copied into the up buffer and sent asynchronously
    on the current stream: the host goes on to launch the layer's kernels
    while it travels. One coming down lands in the down buffer, which the
    caller may use (and modify) until the next copy down. Each buffer grows
    to the largest activation seen (a prompt's) and is reused after that.
    """

    def __init__(self, cupy):
        self.cp = cupy
        self._up = self._down = None  # page-locked bytes, grown to the largest activation each way
        self._sent = None  # event after the last copy up: its buffer is not rewritten before that copy is done

    def _buffer(self, held, shape, dtype):
        """(the bytes held, grown if need be; an array of shape and dtype at their start)."""
        n = math.prod(shape) * np.dtype(dtype).itemsize
        if held is None or held.size < n:
            held = self.pinned((n,), np.uint8)
        return held, held[:n].view(dtype).reshape(shape)

    def up(self, host: np.ndarray):
        """A host activation on the device, sent asynchronously from the up buffer."""
        if self._sent is not None:
            self._sent.synchronize()  # normally long done: a step's copy down waited for everything before it
        self._up, staged = self._buffer(self._up, host.shape, host.dtype)
        np.copyto(staged, host)
        stream = self.cp.cuda.get_current_stream()
        device = self.cp.empty(host.shape, dtype=host.dtype)
        device.set(staged, stream=stream)
        self._sent = stream.record()
        return device

    def pinned(self, shape, dtype) -> np.ndarray:
        """A page-locked host array of its own (for ``copy_down``)."""
        n = math.prod(shape) * np.dtype(dtype).itemsize  # the array keeps the memory alive (its base)
        return np.frombuffer(self.cp.cuda.alloc_pinned_memory(max(n, 1)), dtype=np.uint8, count=n).view(
            dtype).reshape(shape)

    def copy_down(self, x, out: np.ndarray, stream):
        """Enqueue a device array's copy into the page-locked ``out`` on ``stream``, without waiting: the event
        after it (``out`` holds x once it has happened)."""
        if not x.flags.c_contiguous:
            x = self.cp.ascontiguousarray(x)
        runtime = self.cp.cuda.runtime
        runtime.memcpyAsync(out.ctypes.data, x.data.ptr, x.nbytes, runtime.memcpyDeviceToHost, stream.ptr)
        return stream.record()

    def down(self, x) -> np.ndarray:
        """A device activation in the down buffer (valid until the next copy down), once its stream has made it."""
        self._down, staged = self._buffer(self._down, x.shape, x.dtype)
        self.copy_down(x, staged, self.cp.cuda.get_current_stream()).synchronize()
        return staged
