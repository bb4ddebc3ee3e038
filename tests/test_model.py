"""The forward pass: cache parity, weight layout, float32 only, RoPE layouts, biases."""

import numpy as np
import pytest
from float64_guard import GUARD, GUARD_DEVICE, Float64Error, GuardedArray
from helpers import greedy, synthetic_model

import lumi
from lumi.config import PRESETS
from lumi.formats.llama2c import write_llama2c
from lumi.formats.synthetic import synthetic_weights
from lumi.model import Model
from lumi.model.ops import apply_rope, rope_tables, swiglu

TOL = 5e-4


@pytest.fixture(scope="module")
def stories15m_file(tmp_path_factory):
    """A synthetic stories15M-shaped checkpoint written to disk in llama2.c v0 format."""
    path = tmp_path_factory.mktemp("ckpt") / "stories15M.bin"
    config = PRESETS["stories15M"]
    write_llama2c(path, config, synthetic_weights(config, seed=7))
    return path


def test_prefill_then_decode_equals_token_by_token(stories15m_file, record_property):
    model = lumi.load_model(stories15m_file)
    prompt = [1, 450, 4996, 17354, 1701, 432, 17204, 975, 278, 17366]
    ids_a, logits_a, margin_a = greedy(model, prompt, 64, prefill=True)
    ids_b, logits_b, margin_b = greedy(model, prompt, 64, prefill=False)
    margin = min(margin_a, margin_b)
    record_property("min_top1_top2_margin", margin)
    print(f"smallest top-1/top-2 logit margin over 64 greedy tokens: {margin:.4f}")
    assert ids_a == ids_b
    assert np.abs(logits_a - logits_b).max() < TOL
    assert margin > 1e-2, "synthetic logits too flat: greedy comparisons would flip on float32 noise"
    assert len(set(ids_a)) > 3, "a degenerate synthetic model repeating one token proves little"


def test_synthetic_margins_are_decisive_for_every_small_preset():
    for preset in ("stories260K", "stories15M"):
        _, logits, margin = greedy(synthetic_model(preset), [1], 64)
        assert np.isfinite(logits).all()
        assert margin > 1e-2, preset


def test_synthetic_is_deterministic():
    a, b = synthetic_weights(PRESETS["stories260K"], 3), synthetic_weights(PRESETS["stories260K"], 3)
    c = synthetic_weights(PRESETS["stories260K"], 4)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["layers.0.attention.wq"], c["layers.0.attention.wq"])


@pytest.mark.parametrize("kernels", ["numpy", "numba"])
def test_every_product_weight_is_in_the_layout_the_product_wants(kernels):
    """Float32 matrices under the NumPy kernels: column-major (w.T a C-contiguous (in, out) matrix, BLAS's plain
    product); under the fused kernels: C-contiguous (out, in) rows. Never a strided view."""
    if kernels == "numba":
        pytest.importorskip("numba")
    config = PRESETS["stories260K"].replace(tie_embeddings=False)
    model = Model(config, synthetic_weights(config), kernels=kernels)
    seen = {}
    real = model.ops.matmul
    want = "f_contiguous" if kernels == "numpy" else "c_contiguous"

    def checked(x, w, residual=None):
        assert w.ndim == 2 and getattr(w.flags, want), f"weight {w.shape} is not {want} (kernels {kernels})"
        assert w.dtype == np.float32
        assert w.shape[1] == x.shape[-1], f"weight {w.shape} is not (out, in) for input {x.shape}"
        seen[id(w)] = w
        return real(x, w, residual)

    model.ops.matmul = checked
    model.prefill(np.array([1, 5, 9], dtype=np.int32), 0)
    if kernels == "numpy":
        model.decode(7, 3)
    matrices = {name: a for name, a in model.weight_arrays().items() if a.ndim == 2 and name != "tok_embeddings"}
    unused = [name for name, a in matrices.items() if id(a) not in seen]
    assert not unused, f"weights never reached the product: {unused}"
    for name, a in model.weight_arrays().items():
        layout = "c_contiguous" if name == "tok_embeddings" or a.ndim == 1 else want  # an untied table: lookups
        assert getattr(a.flags, layout) and a.dtype == np.float32, name


def test_no_float64_anywhere_in_prefill_and_decode():
    """The whole model runs on the guarded array module; any float64 input or result raises."""
    for preset, changes in (("stories260K", {}), ("stories260K", dict(rope_layout="half", attention_bias=True,
                                                                        tie_embeddings=False))):
        config = PRESETS[preset].replace(**changes)
        model = Model(config, synthetic_weights(config), device=GUARD_DEVICE, gpu_layers=-1)
        assert isinstance(model.layers[0].wqkv, GuardedArray) and isinstance(model.rope[GUARD_DEVICE][0], GuardedArray)
        before = GuardedArray.counts["checks"]
        logits = model.forward(np.array([1, 2, 3, 4], dtype=np.int32), 0)
        logits = model.decode(5, 4)
        assert logits.dtype == np.float32
        assert GuardedArray.counts["checks"] - before > 100, "the guard saw too few operations to prove anything"


def test_the_guard_catches_float64():
    x = GUARD.ones(3, dtype=np.float32)
    with pytest.raises(Float64Error):
        x * np.arange(3)  # int64 times float32 promotes to float64
    with pytest.raises(Float64Error):
        x + np.float64(1)  # a NumPy float64 scalar is not weak
    with pytest.raises(Float64Error):
        GUARD.arange(4.0)  # a float64 table
    with pytest.raises(Float64Error):
        GUARD.sqrt(GUARD.asarray(np.array([4], dtype=np.int64)))
    with pytest.raises(Float64Error):
        x.astype(np.complex64) * np.complex128(1j)  # a complex128 scalar is not weak either
    assert (x * 2.0).dtype == np.float32  # Python scalars are weak: fine


def _interleaved_to_half(w, n_heads):
    """Reorder each head's rows from interleaved pairs to rotate-half order (what HF's converter does)."""
    out_dim, in_dim = w.shape
    return w.reshape(n_heads, out_dim // n_heads // 2, 2, in_dim).transpose(0, 2, 1, 3).reshape(out_dim, in_dim)


def test_rope_layouts_agree_once_q_k_rows_are_permuted():
    config = PRESETS["stories260K"]
    weights = synthetic_weights(config, seed=1)
    half = dict(weights)
    for i in range(config.n_layers):
        half[f"layers.{i}.attention.wq"] = _interleaved_to_half(weights[f"layers.{i}.attention.wq"], config.n_heads)
        half[f"layers.{i}.attention.wk"] = _interleaved_to_half(weights[f"layers.{i}.attention.wk"], config.n_kv_heads)
    tokens = np.array([1, 40, 80, 120, 160, 200, 240, 280], dtype=np.int32)
    a = Model(config, weights).forward(tokens, 0)
    b = Model(config.replace(rope_layout="half"), half).forward(tokens, 0)
    assert np.abs(a - b).max() < 1e-4
    c = Model(config.replace(rope_layout="half"), weights).forward(tokens, 0)
    assert np.abs(a - c).max() > 1e-2  # the layout really matters


@pytest.mark.parametrize("layout", ["interleaved", "half"])
def test_rope_rotates_each_pair_by_its_position_angle(layout):
    """q and k of a prompt at positions 7.., in place inside qkv (the host's complex64 product for interleaved
    pairs), against the rotation written out in float64; v is left alone."""
    T, heads, hd = 5, 6, 16
    qkv = np.random.default_rng(3).standard_normal((T, 3 * heads * hd), dtype=np.float32)
    x = qkv.copy()
    apply_rope(x[:, : 2 * heads * hd].reshape(T, 2 * heads, hd), *rope_tables(hd, 64, 10000.0, np), 7, layout)
    want = qkv[:, : 2 * heads * hd].reshape(T, 2 * heads, hd).astype(np.float64)
    i = np.arange(hd // 2)
    a, b = (2 * i, 2 * i + 1) if layout == "interleaved" else (i, i + hd // 2)
    angle = (7 + np.arange(T))[:, None, None] * 10000.0 ** (-2 * i / hd)  # (T, 1, hd/2)
    want[..., a], want[..., b] = (want[..., a] * np.cos(angle) - want[..., b] * np.sin(angle),
                                  want[..., b] * np.cos(angle) + want[..., a] * np.sin(angle))
    assert x.dtype == np.float32
    assert np.abs(x[:, : 2 * heads * hd].reshape(T, 2 * heads, hd) - want).max() < 1e-5
    assert np.array_equal(x[:, 2 * heads * hd :], qkv[:, 2 * heads * hd :])


def test_swiglu_is_silu_of_the_gate_times_up():
    gu = np.random.default_rng(4).normal(0, 6, (3, 2 * 40)).astype(np.float32)  # large gates: no overflow
    g, u = gu[:, :40].astype(np.float64), gu[:, 40:].astype(np.float64)
    act = swiglu(gu.copy(), 40, np)
    assert act.shape == (3, 40) and act.dtype == np.float32
    assert np.abs(act - g / (1 + np.exp(-g)) * u).max() < 1e-4 * np.abs(g * u).max()


def test_attention_bias_is_applied():
    config = PRESETS["stories260K"].replace(attention_bias=True)
    weights = synthetic_weights(config)
    tokens = np.array([1, 7, 9], dtype=np.int32)
    zero = {k: (np.zeros_like(v) if k.rsplit(".", 1)[-1] in ("bq", "bk", "bv") else v) for k, v in weights.items()}
    plain = Model(PRESETS["stories260K"], {k: v for k, v in weights.items() if "attention.b" not in k})
    assert np.abs(Model(config, zero).forward(tokens, 0) - plain.forward(tokens, 0)).max() < 1e-5
    assert np.abs(Model(config, weights).forward(tokens, 0) - plain.forward(tokens, 0)).max() > 1e-2


def test_gqa_equals_repeated_kv_heads():
    """Grouped-query attention equals full attention with each kv head's weights repeated."""
    config = PRESETS["stories260K"]  # 8 heads, 4 kv heads
    weights = synthetic_weights(config, seed=2)
    full = dict(weights)
    hd, g = config.head_dim, config.n_heads // config.n_kv_heads
    for i in range(config.n_layers):
        for kind in ("wk", "wv"):
            w = weights[f"layers.{i}.attention.{kind}"].reshape(config.n_kv_heads, hd, config.dim)
            full[f"layers.{i}.attention.{kind}"] = np.repeat(w, g, axis=0).reshape(config.dim, config.dim)
    tokens = np.array([1, 3, 5, 7, 11], dtype=np.int32)
    a = Model(config, weights).forward(tokens, 0)
    b = Model(config.replace(n_kv_heads=config.n_heads), full).forward(tokens, 0)
    assert np.abs(a - b).max() < 1e-4


def test_context_and_token_errors():
    model = synthetic_model("stories260K")
    with pytest.raises(lumi.LumiError, match="out of range"):
        model.forward(np.array([1, 512], dtype=np.int32), 0)
    with pytest.raises(lumi.LumiError, match="exceed the context"):
        model.forward(np.array([1, 2], dtype=np.int32), 511)
    with pytest.raises(lumi.UsageError, match="--max-seq-len"):
        Model(model.config, synthetic_weights(model.config), max_seq_len=513)


def test_big_synthetic_shapes_are_cached_on_disk_and_memory_mapped(tmp_path, monkeypatch):
    from lumi.formats import synthetic

    monkeypatch.setenv("LUMI_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(synthetic, "CACHE_MIN_BYTES", 0)  # cache even the smallest shape
    config, first = synthetic.load_synthetic("synthetic:stories260K?seed=4")
    files = list((tmp_path / "synthetic").iterdir())
    assert [f.name for f in files] == [f"stories260K-seed4-{synthetic.GENERATION}.npy"]  # no temporary left
    _, second = synthetic.load_synthetic("synthetic:stories260K?seed=4")
    fresh = synthetic_weights(config, seed=4)
    for name, a in fresh.items():
        assert np.array_equal(second[name], a) and np.array_equal(first[name], a), name
        assert not second[name].flags.writeable  # a read-only map of the cache file
    model = Model(config, second)  # the model copies the mapped weights into its own memory, once
    assert not np.shares_memory(model.layers[0].wqkv, second["layers.0.attention.wq"])
    assert np.array_equal(model.layers[0].wqkv[: config.dim], second["layers.0.attention.wq"])


def test_weights_from_a_file_map_are_held_in_the_process_memory(tmp_path):
    from lumi.storage import _owner

    path = tmp_path / "m.bin"
    write_llama2c(path, PRESETS["stories260K"], synthetic_weights(PRESETS["stories260K"]))
    for dtype in ("fp32", "bf16", "int8"):
        model = lumi.load_model(path, dtype=dtype)
        for name, w in model.weight_arrays().items():
            arrays = [w] if isinstance(w, np.ndarray) else [getattr(w, "a", None), getattr(w, "q", None)]
            assert all(isinstance(_owner(a), np.ndarray) for a in arrays if a is not None), (dtype, name)
