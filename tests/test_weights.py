"""Storage dtypes: 16-bit and int8 weights, widened block by block inside the product."""

import json
import os

import numpy as np
import pytest
from conftest import asset
from float64_guard import GUARD_DEVICE, GuardedArray

import lumi
from lumi.config import PRESETS
from lumi.formats.synthetic import synthetic_weights
from lumi.model import Model
from lumi.backends.cpu import block_rows, widened_matmul_t
from lumi.storage import BF16, QK, BlockQ8, HalfMatrix, quantize_q8, stack_rows, to_float32, to_storage

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "int8"])
@pytest.mark.parametrize("cols", [64, 172, 4096])
@pytest.mark.parametrize("tokens", [1, 3])  # one token's bf16 and int8 rows: einsum (``matvec_rows``)
def test_widened_product_equals_the_product_with_the_widened_matrix(dtype, cols, tokens, monkeypatch):
    from lumi import storage

    monkeypatch.setattr(storage, "BLOCK_BYTES", 4096)  # several blocks, and int8's block sums in several rounds
    w = RNG.standard_normal((300, cols)).astype(np.float32)
    x = RNG.standard_normal((tokens, cols)).astype(np.float32)
    stored = to_storage(w, dtype)
    wide = stored.dequantize() if isinstance(stored, BlockQ8) else to_float32(stored.a)
    expected = x @ wide.T
    assert np.abs(widened_matmul_t(x, stored) - expected).max() <= 1e-5 * np.abs(expected).max()  # order of sums only
    if cols == 4096:
        assert block_rows(3, cols) < 300  # the product really runs in several blocks


def test_fp16_bit_path_is_exact_for_every_finite_half():
    halves = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16)
    finite = halves[np.isfinite(halves)].reshape(-1, 64)  # 63488 values, 992 rows
    stored = HalfMatrix(finite)
    assert stored.path == "fp16-bits"
    out = np.empty(finite.shape, dtype=np.float32)
    stored.widen_rows(0, finite.shape[0], out)
    expected = finite.astype(np.float32)
    assert np.array_equal(out, expected) and np.array_equal(np.signbit(out), np.signbit(expected))


def test_fp16_with_inf_keeps_the_exact_cast():
    w = np.ones((4, 8), dtype=np.float16)
    w[2, 3] = np.inf
    stored = HalfMatrix(w)
    assert stored.path == "fp16-numpy-cast"
    out = np.empty((4, 8), dtype=np.float32)
    assert np.array_equal(stored.widen_rows(0, 4, out), w.astype(np.float32))


def test_int8_blocks_bound_the_error_and_the_bytes():
    w = RNG.standard_normal((64, 4096)).astype(np.float32)
    q = quantize_q8(w)
    assert q.scales.shape == (64, 4096 // QK)
    absmax = np.abs(w.reshape(64, -1, QK)).max(axis=-1, keepdims=True)
    assert (np.abs(q.dequantize() - w).reshape(64, -1, QK) <= absmax / 254 * 1.0001).all()
    assert q.nbytes / w.nbytes == pytest.approx(1.125 / 4)
    per_row = quantize_q8(RNG.standard_normal((8, 172)).astype(np.float32))  # 172 % 32 != 0: one block per row
    assert per_row.scales.shape == (8, 1)
    assert np.array_equal(per_row.rows(np.array([3, 5])), per_row.dequantize()[[3, 5]])


def test_bf16_is_held_in_16_bits_and_stacking_keeps_the_dtype():
    w = RNG.standard_normal((10, 64)).astype(np.float32)
    stored = to_storage(w, "bf16")
    assert stored.a.dtype == BF16 and stored.nbytes == w.nbytes // 2 and stored.a.flags.c_contiguous
    stacked = stack_rows([w.astype(BF16), w.astype(BF16)])
    assert stacked.dtype == BF16 and stacked.shape == (20, 64)
    flat = np.arange(40 * 64, dtype=np.float32)
    a, b = flat[: 10 * 64].reshape(10, 64), flat[10 * 64 : 40 * 64].reshape(30, 64)
    assert np.shares_memory(stack_rows([a, b]), flat)  # adjacent rows: a view, no copy


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "int8"])
def test_models_in_every_dtype_stay_float32_and_close_to_fp32(dtype):
    config = PRESETS["stories260K"].replace(tie_embeddings=False)
    weights = synthetic_weights(config, seed=3)
    tokens = np.array([1, 7, 42, 99], dtype=np.int32)
    ref = Model(config, weights).forward(tokens, 0)
    model = Model(config, weights, dtype=dtype)
    logits = model.forward(tokens, 0)
    assert logits.dtype == np.float32
    assert np.abs(logits - ref).max() < {"fp16": 0.05, "bf16": 0.5, "int8": 1.0}[dtype]
    assert model.weight_bytes() < Model(config, weights).weight_bytes() * {"fp16": 0.51, "bf16": 0.51, "int8": 0.3}[dtype]
    assert set(model.widening_paths().values()) >= {HalfMatrix(np.zeros((1, 1), np.float16)).path
                                                     if dtype == "fp16" else {"bf16": "bf16-ml_dtypes-cast",
                                                                              "int8": "int8-blocks"}[dtype]}


@pytest.mark.parametrize("dtype", ["bf16", "int8"])
def test_no_float64_with_16_bit_and_int8_storage(dtype):
    config = PRESETS["stories260K"]
    model = Model(config, synthetic_weights(config), dtype=dtype, device=GUARD_DEVICE, gpu_layers=-1)
    before = GuardedArray.counts["checks"]
    model.forward(np.array([1, 2, 3], dtype=np.int32), 0)
    assert model.decode(4, 3).dtype == np.float32
    assert GuardedArray.counts["checks"] - before > 100


@pytest.mark.parametrize("dtype, prefix", [("fp16", 32), ("bf16", 32)])
def test_16_bit_greedy_ids_match_fp32_on_stories260K(assets, dtype, prefix):
    checkpoint = asset(assets, "models/stories260K.bin")
    golden = json.loads(asset(assets, "golden/stories260K_greedy.json").read_text())["generated_ids"]
    model = lumi.load_model(checkpoint, dtype=dtype)
    ids = lumi.generate(model, [1], prefix, ignore_eos=True).run().generated_ids
    assert ids == golden[:prefix]


@pytest.mark.parametrize("dtype", ["bf16", "fp16", "int8"])
def test_rows_split_across_threads_give_the_same_product(dtype, monkeypatch):
    import threading

    from threadpoolctl import threadpool_limits

    from lumi.backends import cpu
    from lumi.backends.cpu import BLAS

    w = RNG.standard_normal((1500, 4096)).astype(np.float32)  # 6-12 MB stored
    x = RNG.standard_normal((1, 4096)).astype(np.float32)
    stored = to_storage(w, dtype)
    assert cpu.splits_rows(stored)  # 4 MB and up
    with threadpool_limits(1):
        single = widened_matmul_t(x, stored)
    ran, widen = [], cpu._widened_rows
    monkeypatch.setattr(cpu, "_widened_rows", lambda *a: (ran.append(threading.current_thread().name), widen(*a)))
    with threadpool_limits(2):
        split = widened_matmul_t(x, stored)
        assert BLAS.threads() == 2  # restored after the call
        assert len(ran) == 2 and all(name.startswith("lumi-widen") for name in ran)  # two worker threads, half each
        ran.clear()
        widened_matmul_t(np.repeat(x, 2, axis=0), stored)  # a prompt's product: BLAS's own threads, on wide blocks
        assert ran == [threading.current_thread().name]
    assert np.abs(single - split).max() <= 1e-6 * np.abs(single).max()  # BLAS kernels differ on block tails


def test_which_products_split_their_rows():
    """bf16 and int8 one-token products are a few einsum calls a thread and split from 1 MiB; fp16's block loop
    from 4 MiB; float32 never (BLAS's own threads)."""
    from lumi.backends.cpu import SPLIT_MIN_BYTES, SPLIT_ONE_CALL_MIN_BYTES, splits_rows

    def stored(dtype, nbytes):
        itemsize = {"bf16": 2, "fp16": 2, "int8": 1, "fp32": 4}[dtype]
        return to_storage(np.ones((nbytes // (itemsize * 256), 256), np.float32), dtype)

    assert SPLIT_ONE_CALL_MIN_BYTES < SPLIT_MIN_BYTES
    assert splits_rows(stored("bf16", SPLIT_ONE_CALL_MIN_BYTES)) and not splits_rows(stored("bf16", SPLIT_ONE_CALL_MIN_BYTES // 2))
    assert not splits_rows(stored("fp16", SPLIT_MIN_BYTES // 2)) and splits_rows(stored("fp16", SPLIT_MIN_BYTES))
    assert splits_rows(stored("int8", SPLIT_ONE_CALL_MIN_BYTES))  # 1.125 bytes a weight with the scales
    assert not splits_rows(stored("int8", SPLIT_ONE_CALL_MIN_BYTES // 2)) and not splits_rows(stored("fp32", 64 << 20))
    config = PRESETS["stories260K"]
    model = Model(config, synthetic_weights(config, seed=3), dtype="bf16")
    assert model.split_products(2) == []  # 0.5 MB of bf16 weights in all
    model.layers[1].w2 = stored("fp16", SPLIT_MIN_BYTES)  # swapped in for the provenance only: no product runs
    assert model.split_products(2) == ["w2"] and model.split_products(1) == []


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the resident set from /proc (Linux)")
def test_release_drops_a_mapped_array_from_the_resident_set_and_keeps_its_data(tmp_path):
    from lumi.storage import release

    path = tmp_path / "w.npy"
    np.save(path, np.arange(16 << 20, dtype=np.float32).reshape(4096, -1))  # 64 MiB
    mapped = np.load(path, mmap_mode="r")
    total = float(mapped.sum(dtype=np.float64))  # touch every page
    before = _rss_bytes()
    release(mapped[1024:])  # three quarters of it
    after = _rss_bytes()
    assert before - after > 40 << 20
    assert float(mapped.sum(dtype=np.float64)) == total  # faulted back in from the page cache, unchanged
    release(np.ones((4, 4), dtype=np.float32))  # the process's own memory: nothing to do


@pytest.mark.parametrize("rows", [[7], [1], [288], [130, 20, 20], [3, 0, 5]])
@pytest.mark.parametrize("cols", [5, 70, 1])
def test_column_major_stacks_exactly_with_and_without_openblas(rows, cols, monkeypatch):
    from lumi.backends import cpu

    rng = np.random.default_rng(0)
    parts = [rng.standard_normal((r, cols)).astype(np.float32) for r in rows]
    want = np.concatenate(parts)
    fast = cpu.column_major(parts)
    assert fast.flags.f_contiguous and fast.shape == want.shape and np.array_equal(fast, want)
    monkeypatch.setattr(cpu.BLAS, "omatcopy", lambda: None)  # another BLAS: NumPy's copy
    slow = cpu.column_major(parts)
    assert slow.flags.f_contiguous and np.array_equal(slow, want)
