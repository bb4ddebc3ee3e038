"""What the numba backend's Python side and its kernels agree on (kept apart so neither imports the other)."""

PARALLEL_MIN_BYTES = 1 << 17  # a product of fewer weight bytes runs on the calling thread, not numba's pool
PHASES = ("norm", "matmul", "rope", "cache", "attention", "activation")  # the kinds the layer kernel's clock times
