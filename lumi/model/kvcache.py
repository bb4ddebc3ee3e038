"""The key/value cache: preallocated per layer, written at explicit positions."""

from __future__ import annotations

import numpy as np


class KVCache:
    """Keys and values for every layer, one array (2, n_kv_heads, max_seq_len, head_dim) each.

    Head-major so that attention over the live prefix ``[:, :length]`` is one
    batched product per kv head with unit-stride rows; keys and values side by
    side so that a step stores both with one copy (one kernel on a GPU). Each
    layer has its own array, created with that layer's array module, so a layer
    and its cache can live on the same device. ``zeros`` maps fresh pages
    lazily: an unused tail of a long context costs no resident memory.
    """

    def __init__(self, n_layers: int, n_kv_heads: int, max_seq_len: int, head_dim: int, xps):
        shape = (2, n_kv_heads, max_seq_len, head_dim)
        self.max_seq_len = max_seq_len
        self.kv = [xp.zeros(shape, dtype=np.float32) for xp in xps]

    def store(self, layer: int, start_pos: int, kv) -> None:
        """Store kv (T, 2, n_kv_heads, head_dim), keys then values, at positions [start_pos, start_pos + T)."""
        cache = self.kv[layer]
        if kv.shape[0] == 1:  # a decode step: one (2, n_kv_heads, head_dim) slice, no transposed view to walk
            cache[:, :, start_pos] = kv[0]
        else:
            cache[:, :, start_pos : start_pos + kv.shape[0]] = kv.transpose(1, 2, 0, 3)

    def update(self, layer: int, start_pos: int, kv):
        """``store``, then the live keys and values, (n_kv_heads, start_pos + T, head_dim) views."""
        self.store(layer, start_pos, kv)
        end = start_pos + kv.shape[0]
        return self.kv[layer][0, :, :end], self.kv[layer][1, :, :end]

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.kv)
