"""cuda.Kernels' host side on the CPU: launch plans, arguments, fallbacks and positions, against NumPy emulations.

The CUDA C itself needs a GPU (``python -m lumi.bench.gpucheck`` checks every kernel
there); this checks everything around it that does not.
"""

import dataclasses
import json

import numpy as np
import pytest
from conftest import asset
from fake_cuda import CUBLAS, CUDA, CUDA_FAKE, LAUNCHES, XP
from fake_device import COPIES, DeviceArray

from lumi.config import PRESETS
from lumi.backends.cuda.kernels import WARPS, Kernels, rows_per_warp
from lumi.formats import load_checkpoint
from lumi.formats.synthetic import synthetic_weights
from lumi.generate import generate
from lumi.model import Model
from lumi.model.ops import OPS
from lumi.backends.cuda.storage import convert_on_device


def put(a):
    return np.ascontiguousarray(a, dtype=np.float32).view(DeviceArray)


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16", "int8"])
@pytest.mark.parametrize("shape", [(4096, 256), (11, 96), (64, 172), (9000, 64)])
def test_gemv_plans_its_launch_and_passes_its_arguments(dtype, shape):
    rows, cols = shape
    rng = np.random.default_rng(0)
    w = convert_on_device(put(rng.standard_normal(shape)), dtype, XP)
    x, residual = put(rng.standard_normal((1, cols))), put(rng.standard_normal((1, rows)))
    k = Kernels(XP)
    want = x @ (w.rows(slice(None)) if dtype != "fp32" else w).T
    LAUNCHES.clear()
    np.testing.assert_allclose(k.gemv(x, w), want, rtol=1e-5, atol=1e-5)
    expect = residual + want
    assert k.gemv(x, w, residual) is residual
    np.testing.assert_allclose(residual, expect, rtol=1e-5, atol=1e-5)
    (name, grid, block), _ = LAUNCHES
    r = rows_per_warp(dtype, rows)
    assert name == f"gemv_{dtype}_r{r}" and block == (32 * WARPS,)
    assert grid[0] * WARPS * r >= rows > (grid[0] - 1) * WARPS * r  # every row, no idle block


def test_gemv_declines_what_it_cannot_take():
    k = Kernels(XP)
    w = put(np.ones((8, 16)))
    assert k.gemv(put(np.ones((2, 16))), w) is None  # two tokens: the prompt path's
    assert k.gemv(put(np.ones((1, 16))), np.ones((8, 16), dtype=np.float32)) is None  # not a device array
    assert k.gemv(put(np.ones((1, 16))), w, residual=put(np.ones((1, 9)))) is None  # residual of the wrong width


def test_misaligned_vectors_take_the_scalar_path():
    k = Kernels(XP)
    w = put(np.ones((8, 64)))
    plan = k._plan(w)
    assert plan[5]  # rows and x aligned: 16-byte loads
    x = put(np.ones(65))[1:].reshape(1, 64)  # 4 bytes off a 16-byte boundary
    seen = []
    real = plan[0]
    plan = (lambda grid, block, args: (seen.append(args[-1]), real(grid, block, args)), *plan[1:])
    k.gemv(x, w, plans={id(w): (w, plan)})
    assert seen == [0]


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("shape", [(5, 64, 96), (3, 96, 11), (128, 256, 512)])
def test_gemm_passes_cublas_its_arguments(dtype, shape):
    """GemmEx, emulated from raw addresses as cuBLAS reads them (column-major): x rounded to the weight's type."""
    T, cols, rows = shape
    rng = np.random.default_rng(1)
    w = convert_on_device(put(rng.standard_normal((rows, cols))), dtype, XP)
    x, residual = put(rng.standard_normal((T, cols))), put(rng.standard_normal((T, rows)))
    rounded = x.astype(np.float16).astype(np.float32) if dtype == "fp16" else convert_on_device(x, "bf16", XP).rows(
        slice(None))
    want = rounded @ w.rows(slice(None)).T
    k = Kernels(XP)
    CUBLAS["calls"].clear()
    np.testing.assert_allclose(k.gemm(x, w), want, rtol=1e-5, atol=1e-4)
    expect = residual + want
    assert k.gemm(x, w, residual) is residual  # beta = 1: added in place
    np.testing.assert_allclose(residual, expect, rtol=1e-5, atol=1e-4)
    assert CUBLAS["calls"] == [(1, 0, rows, T, cols)] * 2 and CUBLAS["mode"] == 1  # the caller's pointer mode back


def test_gemm_declines_what_it_cannot_take():
    rng = np.random.default_rng(2)
    w = put(rng.standard_normal((8, 32)))
    x = put(rng.standard_normal((4, 32)))
    half = convert_on_device(w, "fp16", XP)
    assert Kernels(XP).gemm(x, w) is None  # float32 weights: sgemm's, as before
    assert Kernels(XP).gemm(x, convert_on_device(w, "int8", XP)) is None  # int8: widened blocks
    assert Kernels(XP, gemm=False).gemm(x, half) is None
    assert Kernels(XP).gemm(put(rng.standard_normal((4, 64)))[:, ::2], half) is None  # not contiguous
    assert Kernels(XP).gemm(x, half, residual=put(np.ones((4, 9)))) is None


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_a_prompt_through_gemm_moves_logits_no_more_than_16_bit_storage_does(dtype):
    """Rounding a prompt's activations to the weights' 16-bit type (GemmEx's inputs) moves the logits by the
    same order as storing the weights in 16 bits at all: within twice that on a random model."""
    config = PRESETS["stories260K"]
    weights = synthetic_weights(config, seed=4)
    prompt = np.array([1, 7, 9, 30, 2], dtype=np.int32)
    fp32, host = Model(config, weights).prefill(prompt), Model(config, weights, dtype=dtype).prefill(prompt)
    CUBLAS["calls"].clear()
    model = Model(config, weights, dtype=dtype, device=CUDA_FAKE, gpu_layers=-1, cuda_graphs=False)
    got = model.prefill(prompt)
    assert len(CUBLAS["calls"]) == 4 * config.n_layers  # the classifier's one row is the GEMV kernel's
    assert np.abs(got - host).max() <= 2 * np.abs(host - fp32).max()


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_16_bit_ids_through_gemm_prompts_match_fp32_on_stories260K(assets, dtype):
    golden = json.loads(asset(assets, "golden/stories260K_greedy.json").read_text())["generated_ids"]
    config, weights = load_checkpoint(asset(assets, "models/stories260K.bin"))
    model = Model(config, weights, dtype=dtype, device=CUDA_FAKE, gpu_layers=-1, cuda_graphs=False)
    prompt = [1, *golden[:8]]  # nine tokens: a prompt's products through GemmEx
    assert generate(model, prompt, 24, ignore_eos=True).run().generated_ids == golden[8:32]


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16", "int8"])
def test_a_model_on_the_emulated_gpu_decodes_as_the_cpu_in_ten_launches_a_layer(dtype):
    config = PRESETS["stories260K"]
    weights = synthetic_weights(config, seed=4)
    expected = Model(config, weights, dtype=dtype)
    # prompts widen as the host does (GemmEx rounds x to 16 bits: tested above), so the logits agree to fp32's order
    device = dataclasses.replace(CUDA_FAKE, kernels=Kernels(XP, gemm=False))
    model = Model(config, weights, dtype=dtype, device=device, gpu_layers=-1, cuda_graphs=False)
    assert model.gpu_step() == "lumi-kernels"
    prompt = np.array([1, 7, 9], dtype=np.int32)
    np.testing.assert_allclose(model.prefill(prompt), expected.prefill(prompt), atol=1e-4)
    for pos, token in enumerate([11, 13, 17], start=3):
        LAUNCHES.clear()
        COPIES.clear()
        np.testing.assert_allclose(model.decode(token, pos), expected.decode(token, pos), atol=1e-4)
        names = [name for name, _, _ in LAUNCHES]
        n = config.n_layers
        # per layer: 2 norms, 4 products (residual adds inside), rope, the cache store, attention, SwiGLU;
        # then the final norm, the classifier and the position's step. (The token's gather and the argmax
        # are CuPy's, outside these.)
        assert len(names) == 10 * n + 3
        assert names.count("store_kv") == n and names.count("attend") == n and names.count("advance") == 1
        assert COPIES["h2d"] == 1  # the token; the position moved on on the device
    COPIES.clear()
    model.decode(5, 1)  # a jump back: the position goes up once (with the token), then moves on on the device
    assert COPIES["h2d"] == 2 and int(model.positions[device].buffer[0]) == 2


@pytest.mark.parametrize("S, grid", [(64, (2, 1)), (1000, (2, 16)), (20000, (2, 64))])
def test_attention_splits_a_long_cache_over_blocks(S, grid):
    """ceil(S / 64) chunks a head, at most 64 (then longer chunks); the counters stay zero between launches."""
    from lumi.backends.cuda.kernels import MAX_ATTEND_SPLITS, source

    assert f"#define ATTEND_MAX_SPLITS {MAX_ATTEND_SPLITS} " in source()  # the kernel's room for the chunks' weights
    k = Kernels(XP)
    rng = np.random.default_rng(5)
    q, cache = put(rng.standard_normal((1, 2, 8))), put(rng.standard_normal((2, 1, S, 8)))
    L = min(S, 700)
    LAUNCHES.clear()
    got = k.attend(q, cache[0], cache[1], put(np.array([L - 1])).astype(np.int32))
    want = OPS["attention"](q, cache[0, :, :L], cache[1, :, :L], L - 1, XP)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert LAUNCHES == [("attend", grid, (256,))]


def test_attention_falls_back_when_a_chunk_outgrows_shared_memory():
    k = Kernels(XP)
    q, cache = put(np.ones((1, 2, 8))), put(np.ones((2, 1, 20000, 8)))
    assert k.attend(q, cache[0], cache[1], put(np.zeros(1)).astype(np.int32), splits=1) is None


def test_the_step_graph_runs_its_first_step_eagerly_and_falls_back_when_capture_fails(monkeypatch):
    """``StepGraph`` on the emulated GPU: the first greedy step runs eagerly on the graph's own stream and pool;
    the stand-in cannot capture, so the second one falls back to plain steps, says why, and gives the same ids."""
    import contextlib
    import types

    from lumi.sampler import SamplingParams

    entered = []

    class Stream(CUDA.Stream):
        def __enter__(self):
            entered.append("stream")

    pool = types.SimpleNamespace(malloc=object())
    monkeypatch.setattr(XP, "cuda", types.SimpleNamespace(**{
        **vars(CUDA), "Stream": Stream, "MemoryPool": lambda: pool,
        "using_allocator": lambda malloc: (entered.append("pool") if malloc is pool.malloc else None)
        or contextlib.nullcontext()}), raising=False)
    config = PRESETS["stories260K"]
    weights = synthetic_weights(config, seed=5)
    model, expected = Model(config, weights, device=CUDA_FAKE, gpu_layers=-1), Model(config, weights)
    assert model.cuda_graphs
    rng, greedy = np.random.default_rng(0), SamplingParams()
    prompt = [1, 40, 80]
    ids = [model.next_token(prompt, 0, greedy, rng)]
    want = [expected.next_token(prompt, 0, greedy, rng)]
    assert model._graph is None  # a prompt runs as usual
    COPIES.clear()
    ids.append(model.next_token([ids[-1]], 3, greedy, rng))
    assert model._graph.warm and model._graph.graph is None and entered == ["pool", "stream"]
    # up: the graph's token buffer (made once) and the token written into it; down: the chosen id, 4 bytes
    assert COPIES["h2d"] == 2 and COPIES["d2h"] == 1 and COPIES["d2h_bytes"] == 4
    for pos in range(4, 8):
        ids.append(model.next_token([ids[-1]], pos, greedy, rng))
    assert not model.cuda_graphs and "cannot capture" in model.graph_error
    for pos in range(3, 8):
        want.append(expected.next_token([want[-1]], pos, greedy, rng))
    assert ids == want


def test_staging_reuses_its_page_locked_buffers_and_grows_them_for_a_prompt():
    from fake_cuda import PINNED

    from lumi.backends.cuda.staging import Staging

    staging, rng = Staging(XP), np.random.default_rng(3)
    PINNED.clear()
    for T in (1, 5, 1, 5, 3):
        x = rng.standard_normal((T, 64), dtype=np.float32)
        on_device = staging.up(x)
        assert isinstance(on_device, DeviceArray) and np.array_equal(on_device.view(np.ndarray), x)
        back = staging.down(on_device)
        assert type(back) is np.ndarray and np.array_equal(back, x)
    assert PINNED == [4 * 64, 4 * 64, 5 * 4 * 64, 5 * 4 * 64]  # each way: a step's, then a prompt's, then reused


def test_a_partial_offload_on_the_emulated_gpu_crosses_through_the_staging_buffers():
    from fake_cuda import PINNED

    config = PRESETS["stories260K"]
    weights = synthetic_weights(config, seed=6)
    expected = Model(config, weights)
    model = Model(config, weights, device=CUDA_FAKE, gpu_layers=2)
    prompt = np.array([1, 7, 9], dtype=np.int32)
    np.testing.assert_allclose(model.prefill(prompt), expected.prefill(prompt), atol=1e-4)
    PINNED.clear()
    for pos, token in enumerate([11, 13], start=3):
        COPIES.clear()
        np.testing.assert_allclose(model.decode(token, pos), expected.decode(token, pos), atol=1e-4)
        # the (1, d) activation up once and down once; the host's layers and head take it from there
        assert (COPIES["h2d"], COPIES["d2h"], COPIES["d2h_bytes"]) == (1, 1, 4 * config.dim)
    assert PINNED == []  # the prompt's buffers serve the steps


def test_two_rows_a_warp_for_16_bit_weights_only_on_fast_memory():
    import types

    from lumi.backends.cuda.kernels import memory_bandwidth

    h100 = types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(
        getDevice=lambda: 0, deviceGetAttribute=lambda attribute, device: {36: 2_619_000, 37: 5120}[attribute])))
    assert memory_bandwidth(h100) == 2 * 2.619e9 * 5120 / 8  # 3.35 TB/s
    assert memory_bandwidth(XP) == 0.0  # unknown: the stand-in has no runtime
    assert rows_per_warp("fp16", 22016, memory_bandwidth(h100)) == 1
    assert rows_per_warp("bf16", 22016, 4.9e12) == 2 and rows_per_warp("bf16", 4096, 4.9e12) == 1
    assert rows_per_warp("int8", 4096) == 2 and rows_per_warp("fp32", 22016, 4.9e12) == 1


def test_rmsnorm_takes_a_prompt_one_block_per_token():
    from lumi.model.ops import rmsnorm

    x, w = put(np.random.default_rng(4).standard_normal((5, 96))), put(np.linspace(0.5, 2, 96))
    LAUNCHES.clear()
    np.testing.assert_allclose(Kernels(XP).rmsnorm(x, w, np.float32(1e-5)), rmsnorm(x, w, np.float32(1e-5), XP),
                               rtol=1e-6)
    assert LAUNCHES == [("rmsnorm", (5,), (96,))]
    assert Kernels(XP).rmsnorm(put(np.ones((5, 192)))[:, ::2], w, np.float32(1e-5)) is None  # not contiguous


def test_the_step_graph_runs_one_step_ahead_and_takes_it_only_when_asked_for_exactly(monkeypatch):
    """A graph emulated (a replay is the captured step run eagerly at the device's position): each call launches
    the next step before waiting for its own token, and the next call takes it when it asks for exactly that
    step. Greedy ids equal the CPU's throughout; a steady step sends nothing up and brings 4 bytes down; a jump,
    another forward pass of the model or a reset discards the step ahead; none is launched past the context."""
    from lumi.backends.cuda.graph import StepGraph
    from lumi.sampler import SamplingParams

    def replay(graph):
        position = graph.model.positions[graph.device]
        mirror, passes = position.host, graph.model.passes
        position.host = int(position.buffer[0])
        graph._step(position.host)  # reads the token and position on the device and advances it there, as captured
        position.host, graph.model.passes = mirror, passes  # run() keeps the mirror; a replay is no forward pass

    monkeypatch.setattr(StepGraph, "_capture", lambda graph, pos: "graph")
    monkeypatch.setattr(StepGraph, "_replay", replay)
    config = PRESETS["stories260K"]
    weights = synthetic_weights(config, seed=5)
    model = Model(config, weights, device=CUDA_FAKE, gpu_layers=-1, max_seq_len=16)
    cpu = Model(config, weights, max_seq_len=16)
    greedy, rng = SamplingParams(), np.random.default_rng(0)

    def both(tokens, pos):
        got, want = model.next_token(tokens, pos, greedy, rng), cpu.next_token(tokens, pos, greedy, rng)
        assert got == want, (tokens, pos)
        return got

    token = both([1, 40, 80], 0)
    for pos in range(3, 9):  # eager, captured, then replays, each with the next step launched ahead
        COPIES.clear()
        token = both([token], pos)
        if pos >= 6:  # steady: the step asked for was already running; nothing up, the 4-byte token down
            assert (COPIES["h2d"], COPIES["d2h"], COPIES["d2h_bytes"]) == (0, 1, 4)
    graph = model._graph
    assert graph.hits == 4 and graph.ahead[:2] == (9, token)
    both([7], 9)  # the right position, another token: the step ahead is discarded
    assert graph.hits == 4
    token = both([token], 3)  # a jump back: likewise (what the step ahead wrote past position 3 is never read)
    token = both([token], 4)
    assert graph.hits == 5
    model.decode(token, 5), cpu.decode(token, 5)  # another forward pass: the step ahead for position 5 is stale
    token = both([token], 5)
    assert graph.hits == 5
    for pos in range(6, 16):  # up to the end of the context: no step is launched past it
        token = both([token], pos)
    assert graph.ahead is None and graph.token_host == token
    model.reset(), cpu.reset()
    assert model._graph is None
    both([1, 2], 0)
