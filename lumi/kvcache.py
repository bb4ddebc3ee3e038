"""The key/value cache: preallocated per layer, written at explicit positions."""

from __future__ import annotations

import numpy as np


class KVCache:
    """Keys and values for every layer, laid out (n_kv_heads, max_seq_len, head_dim).

    Head-major so that attention over the live prefix ``[:, :length]`` is one
    batched product per kv head with unit-stride rows. Each layer has its own
    arrays, created with that layer's array module, so a layer and its cache can
    live on the same device. ``zeros`` maps fresh pages lazily: an unused tail
    of a long context costs no resident memory.
    """

    def __init__(self, n_layers: int, n_kv_heads: int, max_seq_len: int, head_dim: int, xps):
        shape = (n_kv_heads, max_seq_len, head_dim)
        self.max_seq_len = max_seq_len
        self.k = [xp.zeros(shape, dtype=np.float32) for xp in xps]
        self.v = [xp.zeros(shape, dtype=np.float32) for xp in xps]

    def update(self, layer: int, start_pos: int, k, v):
        """Store k, v (T, n_kv_heads, head_dim) at positions [start_pos, start_pos + T).

        Returns the live keys and values, (n_kv_heads, start_pos + T, head_dim) views.
        """
        end = start_pos + k.shape[0]
        kc, vc = self.k[layer], self.v[layer]
        kc[:, start_pos:end] = k.transpose(1, 0, 2)
        vc[:, start_pos:end] = v.transpose(1, 0, 2)
        return kc[:, :end], vc[:, :end]

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.k) + sum(a.nbytes for a in self.v)
