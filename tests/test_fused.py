"""The optional fused kernels (``--kernels numba``) against the pure NumPy path, the reference."""

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import asset

pytest.importorskip("numba", reason="numba (lumi[fused], in the test extra) is not installed")

import lumi  # noqa: E402
from lumi.backends import numba as fused  # noqa: E402
from lumi.bench.config import load_config  # noqa: E402
from lumi.cli import main  # noqa: E402
from lumi.config import PRESETS  # noqa: E402
from lumi.errors import UsageError  # noqa: E402
from lumi.formats.synthetic import synthetic_weights  # noqa: E402
from lumi.backends import CPU  # noqa: E402
from lumi.backends.numba.ops import ops as numba_ops  # noqa: E402
from lumi.model import Model  # noqa: E402
from lumi.model.ops import OPS  # noqa: E402
from lumi.backends.cpu import BLAS, widened_matmul_t  # noqa: E402
from lumi.storage import BlockQ8, HalfMatrix, quantize_q8, to_float32, to_storage  # noqa: E402

RNG = np.random.default_rng(0)
DTYPES = ["fp32", "bf16", "fp16", "int8"]


def reference(x, stored):
    """The NumPy path's product: BLAS on the weights widened block by block."""
    return x @ stored.T if isinstance(stored, np.ndarray) else widened_matmul_t(x, stored)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows, cols", [(7, 64), (5, 96), (1037, 512)])  # row tails; serial and threaded sizes
def test_fused_product_equals_the_widened_product(dtype, rows, cols):
    w = RNG.standard_normal((rows, cols)).astype(np.float32)
    x = RNG.standard_normal((1, cols)).astype(np.float32)
    stored = to_storage(w, dtype)
    assert fused.kind(stored) == dtype
    got = fused.gemv(x, stored)
    want = reference(x, stored)
    assert got.shape == (1, rows) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * np.abs(want).max())  # summation order only


@pytest.mark.parametrize("threads", [1, 2])
def test_threaded_product_covers_every_row(threads):
    import numba

    w = to_storage(RNG.standard_normal((4099, 64)).astype(np.float32), "bf16")  # above the threading threshold
    assert w.nbytes >= fused.PARALLEL_MIN_BYTES
    x = RNG.standard_normal((1, 64)).astype(np.float32)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    got = fused.gemv(x, w)
    np.testing.assert_allclose(got, reference(x, w), rtol=0, atol=2e-5 * np.abs(got).max())


def test_every_finite_fp16_is_widened_exactly():
    halves = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    finite = halves[np.isfinite(halves)]  # 63488 values: subnormals, signed zeros, the largest normals
    block = HalfMatrix(finite[: len(finite) // 64 * 64].reshape(-1, 64))
    assert block.path == "fp16-bits"
    for col in range(64):  # a one-hot x picks out one column: the widened values themselves
        x = np.zeros((1, 64), dtype=np.float32)
        x[0, col] = 1
        np.testing.assert_array_equal(fused.gemv(x, block)[0], block.a[:, col].astype(np.float32))


def test_fp16_extremes_widen_exactly():
    values = np.array([0.0, -0.0, 6e-8, -6e-8, 6.1e-5, 65504, -65504, 1.0, -2.5, 0.333], dtype=np.float16)
    block = HalfMatrix(np.tile(values[:, None], (1, 64)))
    x = np.zeros((1, 64), dtype=np.float32)
    x[0, 3] = 1
    np.testing.assert_array_equal(fused.gemv(x, block)[0], values.astype(np.float32))


def test_fp16_inf_and_nan_widen_exactly_too():
    values = np.array([np.inf, -np.inf, np.nan, 1.5], dtype=np.float16)
    block = HalfMatrix(np.tile(values[:, None], (1, 64)))
    assert block.path == "fp16-numpy-cast" and fused.kind(block) == "fp16"  # the hardware conversion handles them
    x = np.zeros((1, 64), dtype=np.float32)
    x[0, 5] = 1
    got = fused.gemv(x, block)[0]  # inf * 0 in the other lanes is NaN, as in the NumPy path
    with np.errstate(invalid="ignore"):
        want = widened_matmul_t(x, block)[0]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))


def test_weights_without_a_kernel_stay_on_the_numpy_path():
    per_row = quantize_q8(RNG.standard_normal((4, 40)).astype(np.float32))  # 40 % 32 != 0: one block per row
    assert isinstance(per_row, BlockQ8) and fused.kind(per_row) is None
    x = np.ones((1, 40), dtype=np.float32)
    assert fused.gemv(x, per_row) is None
    ops = numba_ops(SimpleNamespace(output=None), OPS)
    np.testing.assert_array_equal(ops["matmul"](x, per_row), widened_matmul_t(x, per_row))
    wide = quantize_q8(RNG.standard_normal((4, 128)).astype(np.float32))
    left = BlockQ8(wide.q[:, :64], wide.scales[:, :2])  # rows 128 bytes apart: the kernel reads rows by address
    assert fused.kind(left) is None and fused.gemv(np.ones((1, 64), dtype=np.float32), left) is None


@pytest.mark.parametrize("dtype", DTYPES)
def test_model_with_numba_kernels_matches_the_numpy_path(dtype):
    config = PRESETS["stories15M"].replace(n_layers=2, max_seq_len=64)
    weights = synthetic_weights(config, seed=3)
    plain = Model(config, weights, dtype=dtype)
    fast = Model(config, weights, dtype=dtype, kernels="numba")
    prompt = np.array([1, 17, 400, 9], dtype=np.int32)
    a, b = plain.prefill(prompt), fast.prefill(prompt)  # only the classifier (one position) is fused here
    np.testing.assert_allclose(b, a, rtol=0, atol=5e-4)
    for pos in range(4, 12):
        token = int(np.argmax(a))
        a, b = plain.decode(token, pos), fast.decode(token, pos)
        assert b.dtype == np.float32
        np.testing.assert_allclose(b, a, rtol=0, atol=5e-4)  # logits are O(16): fp32 summation order only
    paths = fast.widening_paths()
    assert paths["wqkv"] == paths["w2"] == f"{dtype}-numba-fused"
    assert paths["attention_norm"] == "fp32"


def test_golden_ids_with_numba_kernels(assets):
    checkpoint = asset(assets, "models/stories260K.bin")
    golden = json.loads(asset(assets, "golden/stories260K_greedy.json").read_text())["generated_ids"]
    model = lumi.load_model(checkpoint, kernels="numba")
    assert lumi.generate(model, [1], 256, ignore_eos=True).run().generated_ids == golden


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_16_bit_numba_ids_match_fp32_on_stories260K(assets, dtype):
    checkpoint = asset(assets, "models/stories260K.bin")
    golden = json.loads(asset(assets, "golden/stories260K_greedy.json").read_text())["generated_ids"]
    model = lumi.load_model(checkpoint, dtype=dtype, kernels="numba")
    assert lumi.generate(model, [1], 32, ignore_eos=True).run().generated_ids == golden[:32]


def test_decoding_hands_the_cores_to_numba_and_back():
    from threadpoolctl import threadpool_limits

    import numba

    model = Model(PRESETS["stories260K"], synthetic_weights(PRESETS["stories260K"]), kernels="numba")
    with threadpool_limits(2):
        with model.decoding():
            assert BLAS.threads() == 1  # BLAS keeps attention's small products, on one thread
            assert numba.get_num_threads() == min(2, numba.config.NUMBA_NUM_THREADS)
            with model.decoding():  # re-entrant: a decode step inside a generation hands nothing over
                model.decode(1, 0)
                assert BLAS.threads() == 1
            assert BLAS.threads() == 1
        assert BLAS.threads() == 2
        gen = lumi.generate(model, [1, 2], 5, ignore_eos=True)
        for _ in gen:
            pass
        assert BLAS.threads() == 2 and len(gen.generated_ids) == 5


def test_numpy_kernels_leave_blas_alone():
    from threadpoolctl import threadpool_limits

    model = Model(PRESETS["stories260K"], synthetic_weights(PRESETS["stories260K"]))
    with threadpool_limits(2), model.decoding():
        assert BLAS.threads() == 2


def test_cli_generate_with_numba_kernels(capsys):
    code = main(["generate", "synthetic:stories260K", "--prompt-ids", "1", "-n", "8", "--json", "--kernels", "numba",
                 "--dtype", "bf16"])
    assert code == 0
    fast = json.loads(capsys.readouterr().out)["generated_ids"]
    main(["generate", "synthetic:stories260K", "--prompt-ids", "1", "-n", "8", "--json", "--dtype", "bf16"])
    assert fast == json.loads(capsys.readouterr().out)["generated_ids"]


def test_auto_kernels_take_the_fused_path_for_fp16_and_say_so(capsys):
    code = main(["generate", "synthetic:stories260K", "--prompt-ids", "1", "-n", "8", "--dtype", "fp16", "--json"])
    assert code == 0
    auto = json.loads(capsys.readouterr().out)
    assert auto["stats"]["decode_path"] == "numba"
    main(["generate", "synthetic:stories260K", "--prompt-ids", "1", "-n", "8", "--dtype", "fp16", "--json",
          "--kernels", "numpy"])
    plain = json.loads(capsys.readouterr().out)
    assert plain["stats"]["decode_path"] == "numpy" and plain["generated_ids"] == auto["generated_ids"]
    main(["generate", "synthetic:stories260K", "--prompt-ids", "1", "-n", "4", "--dtype", "fp16"])
    assert capsys.readouterr().err.strip().endswith("on the numba path")
    assert lumi.load_model("synthetic:stories260K", dtype="bf16").kernels == "numpy"  # only fp16 is moved


def test_auto_kernels_without_numba_keep_the_numpy_path(monkeypatch):
    monkeypatch.setattr(fused, "missing", lambda: "numba is not installed (pip install 'lumi[fused]')")
    assert fused.resolve("auto", "fp16") == "numpy"
    assert lumi.load_model("synthetic:stories260K", dtype="fp16").decode_path() == "numpy"


def test_missing_numba_is_a_one_line_error(monkeypatch, capsys):
    monkeypatch.setattr(fused, "missing", lambda: "numba is not installed (pip install 'lumi[fused]')")
    with pytest.raises(UsageError, match=r"--kernels: numba is not installed"):
        lumi.load_model("synthetic:stories260K", kernels="numba")
    assert main(["generate", "synthetic:stories260K", "--prompt-ids", "1", "-n", "2", "--kernels", "numba"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--kernels" in err and "lumi[fused]" in err and len(err.splitlines()) == 1


def test_unknown_kernels_are_refused(tmp_path):
    with pytest.raises(UsageError, match="--kernels: must be one of numpy, numba"):
        Model(PRESETS["stories260K"], synthetic_weights(PRESETS["stories260K"]), kernels="triton")
    cfg = tmp_path / "k.yaml"
    cfg.write_text("name: k\npurpose: t\nmodel: synthetic:stories260K\nkernels: cuda\n"
                   "workload: {prompt_tokens: 4, gen_tokens: 4}\n")
    with pytest.raises(lumi.LumiError, match=r"k.yaml: kernels: expected one of numpy, numba, got 'cuda'"):
        load_config(cfg)


def test_numba_kernels_run_the_host_layers_of_a_partial_offload():
    from fake_device import FAKE

    config = PRESETS["stories260K"]
    weights = synthetic_weights(config)
    expected = Model(config, weights)
    model = Model(config, weights, device=FAKE, gpu_layers=2, kernels="numba")
    numba_op = "ops.<locals>.matmul"
    assert model.step_ops[CPU].matmul.__qualname__ == numba_op and model.step_ops[FAKE].matmul.__qualname__ != numba_op
    expected.prefill(np.array([1, 2], dtype=np.int32))
    model.prefill(np.array([1, 2], dtype=np.int32))
    with model.decoding():
        np.testing.assert_allclose(model.decode(3, 2), expected.decode(3, 2), atol=1e-4)


def test_the_small_decode_kernels_equal_numpys_operations():
    """The kernels a fused layer runs between its products: RMSNorm, RoPE (both layouts), SwiGLU and one-token
    attention (grouped kv heads, a live part of a longer cache, heads split over two threads), against model's
    NumPy operations: float32 summation order only."""
    from lumi.model.ops import apply_rope, rope_tables

    fk = fused._kernels()
    rng = np.random.default_rng(7)
    x, w = rng.standard_normal((1, 288), dtype=np.float32), rng.standard_normal(288, dtype=np.float32)
    np.testing.assert_allclose(fused.rmsnorm(x, w, 1e-5), OPS["norm"](x, w, np.float32(1e-5), np), rtol=2e-6,
                               atol=1e-6)
    assert fused.rmsnorm(np.ones((2, 8), np.float32), np.ones(8, np.float32), 1e-5) is None  # a prompt: NumPy's
    cos, sin = rope_tables(48, 64, 10000.0, np)
    for layout in ("interleaved", "half"):
        qkv = rng.standard_normal((10, 48), dtype=np.float32)
        want = qkv.copy()
        apply_rope(want.reshape(1, 10, 48), cos, sin, 37, layout)
        fk.rope_row(qkv, cos, sin, 37, layout == "interleaved")
        np.testing.assert_allclose(qkv, want, rtol=1e-6, atol=1e-6)
    gu = rng.standard_normal((1, 2 * 768), dtype=np.float32) * 6
    g, up = gu[0, :768].astype(np.float64), gu[0, 768:].astype(np.float64)
    exact = g / (1 + np.exp(-g)) * up
    # numba's sigmoid from exp(-|g|) is good to float32's rounding everywhere; NumPy's (tanh(g/2) + 1) cancels
    # for negative g, so it agrees only absolutely
    act = np.empty(768, dtype=np.float32)
    fk.swiglu_row(gu[0], 768, act)
    np.testing.assert_allclose(act, exact, rtol=1e-6, atol=0)
    np.testing.assert_allclose(OPS["activation"](gu, 768, np)[0], exact, rtol=1e-5, atol=2e-5)
    q = rng.standard_normal((1, 6, 48), dtype=np.float32)
    out, scores = np.empty((6, 48), dtype=np.float32), np.empty(2 * 1000, dtype=np.float32)
    for S, L, shares in ((100, 1, 1), (100, 3, 1), (100, 37, 1), (100, 100, 1), (1000, 1000, 2)):
        cache = rng.standard_normal((2, 2, S, 48), dtype=np.float32)  # g = 3 query heads a kv head
        want = OPS["attention"](q, cache[0, :, :L], cache[1, :, :L], L - 1, np)
        fk.attend(q[0], cache[0], cache[1], L, out, scores, shares)  # 1000 positions: split over two threads
        np.testing.assert_allclose(out.reshape(1, -1), want, rtol=1e-5, atol=1e-6)


def test_a_numba_step_is_one_call(monkeypatch):
    """A decode step with every layer on the host runs its layers, final norm and classifier in one call; a model
    whose layers differ in kind runs a call per run of like layers, then the head's norm and product."""
    config = PRESETS["stories260K"]
    model = Model(config, synthetic_weights(config, seed=3), kernels="numba")
    calls = {name: 0 for name in ("layers", "rmsnorm", "gemv")}
    for name in calls:
        real = getattr(fused, name)

        def counted(*args, _name=name, _real=real):
            out = _real(*args)
            calls[_name] += out is not None and out is not False  # taken, not declined
            return out

        monkeypatch.setattr(fused, name, counted)
    model.prefill(np.array([1, 2, 3], dtype=np.int32))
    assert calls == {"layers": 0, "rmsnorm": 0, "gemv": 1}  # a prompt runs NumPy's operations; its last position's
    with model.decoding():                                   # logits are one token's product
        whole = model.decode(5, 3)
    assert calls == {"layers": 1, "rmsnorm": 0, "gemv": 1}
    reference = Model(config, synthetic_weights(config, seed=3))
    reference.prefill(np.array([1, 2, 3], dtype=np.int32))
    np.testing.assert_allclose(whole, reference.decode(5, 3), rtol=0, atol=1e-5 * np.abs(whole).max())
    model.layers[2].w2 = to_storage(to_float32(model.layers[2].w2), "bf16")  # a layer of another kind: a second run
    vars(model.ops).update(numba_ops(model, OPS))  # the runs are worked out afresh
    with model.decoding():
        model.decode(6, 4)
    assert calls == {"layers": 4, "rmsnorm": 1, "gemv": 2}  # layers 0-1, 2 (bf16's w2), 3-4; then the head


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ["grouped, interleaved", "bias, half", "threads"])
def test_one_call_a_layer_equals_the_step_op_by_op(monkeypatch, dtype, shape):
    """``fused.layers`` (the whole step) against the same model with ``block`` and ``step`` declined (the same
    product kernels, NumPy's operations between them), for every storage dtype, grouped kv heads, a q/k/v bias, both RoPE layouts, and
    the products and attention split over two threads: float32 rounding only, and the cache written at the same
    places."""
    import numba

    from lumi.model.ops import no_block, no_step

    base = PRESETS["stories260K"].replace(max_seq_len=300)  # 8 heads over 4 kv heads, interleaved RoPE
    config = {"grouped, interleaved": base,
              "bias, half": base.replace(attention_bias=True, rope_layout="half", n_kv_heads=8),
              "threads": base.replace(dim=512, hidden_dim=1024, n_heads=8, n_kv_heads=8)}[shape]
    weights = synthetic_weights(config, seed=5)
    fast, slow = (Model(config, weights, dtype=dtype, kernels="numba") for _ in range(2))
    slow.ops.block, slow.ops.step = no_block, no_step
    threads = 2 if shape == "threads" else 1
    monkeypatch.setattr(fused, "_shares", min(threads, numba.config.NUMBA_NUM_THREADS))
    prompt = np.arange(1, 261, dtype=np.int32) % config.vocab_size  # attention split: 2 H L hd 4 >= 128 KiB
    fast.prefill(prompt), slow.prefill(prompt)
    for pos in range(len(prompt), len(prompt) + 4):
        a, b = fast.decode(7 + pos, pos), slow.decode(7 + pos, pos)
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max())
    for i in range(config.n_layers):
        np.testing.assert_allclose(fast.cache.kv[i], slow.cache.kv[i], rtol=0, atol=1e-5)
    fast.reset(), slow.reset()  # a new cache: the fused call must write that one
    fast.prefill(prompt[:5]), slow.prefill(prompt[:5])
    np.testing.assert_allclose(fast.decode(9, 5), slow.decode(9, 5), rtol=0, atol=1e-5 * np.abs(b).max())
    assert np.abs(fast.cache.kv[0][:, :, 5]).max() > 0


def test_the_layer_clock_counts_each_kind_of_operation():
    config = PRESETS["stories260K"]
    model = Model(config, synthetic_weights(config, seed=3), kernels="numba")
    model.prefill(np.array([1, 2, 3], dtype=np.int32))
    clock = np.zeros(2 * len(fused.PHASES), dtype=np.int64)
    x = model.ops.embed(model.tok_embeddings, np.array([4], dtype=np.int32))
    assert model.ops.block(x, 0, 3, clock) == config.n_layers  # all of them, in one call
    calls = dict(zip(fused.PHASES, clock[len(fused.PHASES):]))
    n = config.n_layers
    scratch = np.empty(fused.layer_scratch(config, model.max_seq_len) - 1, dtype=np.float32)
    stack = fused.layer_run(model.layers)
    constants = fused.model_constants(*model.rope[CPU], config.rope_layout, config.n_heads, model.eps)
    with pytest.raises(ValueError, match="scratch too small"):  # numba checks no bounds: the kernel does
        fused.layers(x, tuple(model.cache.kv), 3, stack, constants, scratch)
    assert calls == {"norm": 2 * n, "matmul": 4 * n, "rope": n, "cache": n, "attention": n, "activation": n}
    assert (clock[: len(fused.PHASES)] > 0).all()


def test_a_numba_decode_step_allocates_no_array_but_its_logits():
    """tracemalloc's peak over a decode step, past warm-up: with rows of 2048 floats (8 KiB) and 32 logits, any
    array the step made would show; the NumPy path's temporaries do."""
    import tracemalloc

    config = PRESETS["stories15M"].replace(dim=2048, n_heads=16, n_kv_heads=16, hidden_dim=512, n_layers=1,
                                           vocab_size=32, max_seq_len=64)
    weights = synthetic_weights(config, seed=1)
    peaks = {}
    for kernels in ("numba", "numpy"):
        model = Model(config, weights, kernels=kernels)
        model.prefill(np.array([1, 2, 3], dtype=np.int32))
        with model.decoding():
            for pos in range(3, 12):  # warm-up: buffers made, and each kernel loaded (attention's threaded one at L 8)
                model.decode(4, pos)
            tracemalloc.start()
            try:
                for pos in range(12, 16):
                    before = tracemalloc.get_traced_memory()[0]
                    tracemalloc.reset_peak()
                    model.decode(4, pos)
                    peaks[kernels] = max(peaks.get(kernels, 0), tracemalloc.get_traced_memory()[1] - before)
            finally:
                tracemalloc.stop()
    assert peaks["numba"] < 4096 < 8192 < peaks["numpy"]  # Python's own small objects only / arrays


def test_profile_of_a_numba_step_reports_the_fused_layers_operations():
    """--profile with one call a layer: the layer kernel's clock gives each kind its calls and time, and what is
    left for Python is not negative (the cycle counter's rate is measured over the same steps)."""
    from lumi.bench.profile import profile_decode

    config = PRESETS["stories260K"]
    model = Model(config, synthetic_weights(config, seed=3), kernels="numba")
    profile = profile_decode(model, [1, 2, 3], steps=6)
    ops, n = profile["ops"], config.n_layers
    calls = {kind: ops[kind]["calls_per_token"] for kind in ("norm", "matmul", "rope", "cache", "attention",
                                                              "activation")}
    assert calls == {"norm": 2 * n + 1, "matmul": 4 * n + 1, "rope": n, "cache": n, "attention": n, "activation": n}
    assert all(op["s_per_token"] >= 0 for op in ops.values()) and ops["matmul"]["s_per_token"] > 0
    assert sum(op["fraction"] for op in ops.values()) == pytest.approx(1.0)


def test_a_decode_loaded_from_numbas_cache_runs(tmp_path):
    """Kernels compiled in one process and loaded from numba's on-disk cache in the next give the same ids. The
    step's ``fused_kernels.layers``, compiled without parallel=True in a process that had loaded the kernels it
    calls from the cache, segfaulted on its first call when the next process loaded it."""
    import subprocess
    import sys

    script = ("import lumi; from lumi.generate import generate; "
              "model = lumi.load_model('synthetic:stories260K', kernels='numba'); "
              "print(list(generate(model, [1], 8, ignore_eos=True)))")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}

    def run():
        return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)

    runs = [run()]  # compiles every kernel
    for cached in tmp_path.rglob("kernels.layers-*"):
        cached.unlink()
    runs += [run(), run()]  # compiles ``layers`` over the cached kernels; then loads it
    assert [r.returncode for r in runs] == [0, 0, 0], runs[-1].stderr[-2000:]
    assert len({r.stdout for r in runs}) == 1 and len(eval(runs[0].stdout)) == 8
    assert list(tmp_path.rglob("kernels.layers-*.nbi"))  # the last run had it to load


def test_a_blas_loaded_after_the_limit_does_not_outvote_it(monkeypatch):
    """SciPy's OpenBLAS, which numba loads once its kernels run, starts at its own default (the machine's cores):
    the thread count is NumPy's BLAS's, whatever the load order."""
    from lumi.backends.cpu import _Blas

    class Lib:
        def __init__(self, path, n):
            self.filepath, self.n = path, n

        def get_num_threads(self):
            return self.n

    blas = _Blas()
    libs = [Lib("/site-packages/scipy.libs/libscipy_openblas.so", 2), Lib("/site-packages/numpy.libs/libopenblas.so", 1)]
    monkeypatch.setattr(blas, "_handles", lambda: libs)  # load order is not NumPy first
    assert blas.threads() == 1


def test_one_thread_stays_one_thread_with_numba_kernels():
    from threadpoolctl import threadpool_limits

    model = Model(PRESETS["stories260K"], synthetic_weights(PRESETS["stories260K"]), kernels="numba")
    with threadpool_limits(1, user_api="blas"):
        for _ in range(2):  # the first generation loads the kernels (and whatever BLAS numba brings)
            lumi.generate(model, [1], 4, ignore_eos=True).run()
            assert BLAS.threads() == 1
            with model.decoding():
                assert fused.threads() == 1
