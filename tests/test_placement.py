"""Placement across a device boundary, exercised on the CPU with a stand-in device.

``FAKE`` (``fake_device.py``) behaves like CuPy where it matters here, and its
boundary copies count. So the tests show, without a GPU, that each layer's
weights and cache live on its device and that activations cross a boundary
once per boundary per step.
"""

from collections import Counter

import numpy as np
import pytest
from fake_device import COPIES, FAKE, DeviceArray, _to_device

import lumi
from lumi.backends import CPU, get_device, placement
from lumi.config import PRESETS
from lumi.errors import UsageError
from lumi.formats.synthetic import synthetic_weights
from lumi.model import Model
from lumi.sampler import SamplingParams


def test_the_stand_in_refuses_mixing():
    with pytest.raises(TypeError, match="missed transfer"):
        _to_device(np.ones(3)) + np.ones(3)
    config = PRESETS["stories260K"]
    model = Model(config, synthetic_weights(config), device=FAKE, gpu_layers=2)
    model.rope[FAKE] = model.rope[CPU]  # a table left on the host: the forward pass must trip over it
    with pytest.raises(TypeError, match="missed transfer"):
        model.forward(np.array([1, 2], dtype=np.int32), 0)


@pytest.mark.parametrize("gpu_layers", [0, 2, 5, -1])
def test_logits_match_the_cpu_for_every_placement(gpu_layers):
    config = PRESETS["stories260K"]
    weights = synthetic_weights(config, seed=1)
    tokens = np.array([1, 20, 40, 60], dtype=np.int32)
    expected = Model(config, weights).forward(tokens, 0)
    model = Model(config, weights, device=FAKE, gpu_layers=gpu_layers)
    on = [layer.device is FAKE for layer in model.layers]
    assert on == [gpu_layers == -1 or i < gpu_layers for i in range(config.n_layers)]
    assert (model.head is FAKE) == (gpu_layers == -1)
    for layer, cache_kv in zip(model.layers, model.cache.kv):  # weights and KV cache on the layer's device
        assert isinstance(layer.wqkv, DeviceArray) == (layer.device is FAKE)
        assert isinstance(cache_kv, DeviceArray) == (layer.device is FAKE)
    logits = model.forward(tokens, 0)
    assert type(logits) is np.ndarray  # logits come back to the host
    # the host's float32 products read column-major matrices and the device's rows: other summation orders,
    # float32 rounding apart (logits up to about 30 here)
    assert np.abs(logits - expected).max() < 5e-6 * np.abs(expected).max()


@pytest.mark.parametrize("gpu_layers, h2d, d2h", [(0, 0, 0), (2, 1, 1), (5, 1, 1), (-1, 1, 1)])
def test_one_copy_each_way_per_boundary_per_step(gpu_layers, h2d, d2h):
    """Partial offload: x goes up before layer 0 and down after the last device layer.
    Everything on the device: the token ids go up and the logits come down; weights never move."""
    config = PRESETS["stories260K"]
    model = Model(config, synthetic_weights(config), device=FAKE, gpu_layers=gpu_layers)
    model.prefill(np.array([1, 2, 3], dtype=np.int32), 0)
    for pos in range(3, 8):
        COPIES.clear()
        model.decode(5, pos)
        del COPIES["d2h_bytes"]
        assert COPIES == Counter({k: v for k, v in (("h2d", h2d), ("d2h", d2h)) if v}), (gpu_layers, COPIES)


@pytest.mark.parametrize("sampling", [SamplingParams(), SamplingParams(temperature=0.8, top_p=0.9),
                                      SamplingParams(temperature=1.0, top_k=40), SamplingParams(temperature=0.7)])
def test_all_on_the_device_a_step_sends_only_the_chosen_id_to_the_host(sampling):
    """The token is chosen where the logits are: one 4-byte copy down per step, the id one up."""
    config = PRESETS["stories260K"]
    weights = synthetic_weights(config, seed=2)
    model = Model(config, weights, device=FAKE, gpu_layers=-1)
    steps = []
    original = model.next_token

    def counted(*args):
        COPIES.clear()
        token = original(*args)
        steps.append(dict(COPIES))
        return token

    model.next_token = counted
    ids = lumi.generate(model, [1, 2, 3], 12, sampling=sampling, seed=7, ignore_eos=True).run().generated_ids
    assert len(steps) == 12
    assert all(step == {"h2d": 1, "d2h": 1, "d2h_bytes": 4} for step in steps), steps
    host = lumi.generate(Model(config, weights), [1, 2, 3], 12, sampling=sampling, seed=7, ignore_eos=True).run()
    assert ids == host.generated_ids  # same seed, same tokens on both backends


def test_placement_rules_and_errors():
    assert placement(4, 0) == ([False] * 4, False)
    assert placement(4, 2) == ([True, True, False, False], False)
    assert placement(4, -1) == ([True] * 4, True)
    for bad in (5, -2):
        with pytest.raises(UsageError, match="--gpu-layers"):
            placement(4, bad)
    with pytest.raises(UsageError, match="--gpu-layers"):
        lumi.load_model("synthetic:stories260K", gpu_layers=6)
    assert get_device("numpy") is CPU


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "int8"])
@pytest.mark.parametrize("gpu_layers", [2, -1])
def test_16_bit_and_int8_weights_stay_narrow_on_the_device(dtype, gpu_layers):
    """Device layers hold their weights in the stored width and widen them there; logits equal the CPU's."""
    from lumi.backends.cuda.storage import DeviceMatrix

    config = PRESETS["stories260K"]
    weights = synthetic_weights(config, seed=3)
    tokens = np.array([1, 20, 40, 60], dtype=np.int32)
    expected = Model(config, weights, dtype=dtype).forward(tokens, 0)
    model = Model(config, weights, dtype=dtype, device=FAKE, gpu_layers=gpu_layers)
    for layer in model.layers:
        if layer.device is FAKE:
            assert isinstance(layer.w13, DeviceMatrix) and layer.w13.storage == dtype
            held = [layer.w13.blocks.q, layer.w13.blocks.scales] if dtype == "int8" else [layer.w13.a]
            assert all(isinstance(a, DeviceArray) for a in held)
            assert held[0].itemsize == {"fp16": 2, "bf16": 2, "int8": 1}[dtype]  # never a float32 copy
    assert isinstance(model.output, DeviceMatrix) == (gpu_layers == -1)
    assert model.widening_paths()["w13"] == f"{dtype}-device"
    np.testing.assert_allclose(model.forward(tokens, 0), expected, rtol=0, atol=1e-5)
    model.prefill(tokens, 0)
    COPIES.clear()
    model.decode(5, 4)
    assert (COPIES["h2d"], COPIES["d2h"]) == (1, 1)  # weights never cross per token


def test_cupy_backend_without_cupy_is_a_one_line_error(capsys, without_cupy):
    from lumi.cli import main

    assert main(["generate", "synthetic:stories260K", "--prompt-ids", "1", "--backend", "cupy"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--backend: cupy: CuPy is not installed" in err


def test_weights_made_on_a_device_convert_there_as_on_the_host():
    """``DeviceWeights`` on a stand-in device: converted on the device, every dtype and placement, equal to the host's."""
    from lumi.formats.synthetic import DeviceWeights

    config = PRESETS["stories260K"]
    host = synthetic_weights(config, seed=2)
    made = DeviceWeights(config, CPU, seed=2)
    assert set(made) == set(host) and all(np.array_equal(made[k], host[k]) for k in host)
    tokens = np.array([1, 5, 9], dtype=np.int32)
    for dtype in ("fp32", "fp16", "bf16", "int8"):
        expected = Model(config, host, dtype=dtype).forward(tokens, 0)
        for gpu_layers in (0, 2, -1):
            COPIES.clear()
            model = Model(config, DeviceWeights(config, FAKE, seed=2), dtype=dtype, device=FAKE, gpu_layers=gpu_layers)
            logits = model.forward(tokens, 0)
            if dtype == "fp32" and gpu_layers != 0:  # the device's products read rows, the host's column-major
                assert np.abs(logits - expected).max() < 5e-6 * np.abs(expected).max(), (dtype, gpu_layers)
            else:
                assert np.array_equal(logits, expected), (dtype, gpu_layers)


def test_nvtx_ranges_mark_each_layer_when_asked_and_cost_nothing_when_not():
    import dataclasses
    import types

    class Recorder:
        def __init__(self):
            self.events = []

        def RangePush(self, name):
            self.events.append(("push", name))

        def RangePop(self):
            self.events.append(("pop",))

    recorder = Recorder()
    xp = types.SimpleNamespace(**vars(FAKE.xp), cuda=types.SimpleNamespace(nvtx=recorder))
    device = dataclasses.replace(FAKE, xp=xp)
    config = PRESETS["stories260K"]
    weights = synthetic_weights(config)
    Model(config, weights, device=device, gpu_layers=-1).decode(1, 0)
    assert recorder.events == []  # off unless asked for (LUMI_NVTX=1, or nvtx=True)
    Model(config, weights, device=device, gpu_layers=-1, nvtx=True).decode(1, 0)
    pushes = [e[1] for e in recorder.events if e[0] == "push"]
    assert pushes == ["step at 0"] + [f"layer {i}" for i in range(config.n_layers)]  # formatted only when on
    assert [e[0] for e in recorder.events] == ["push"] + ["push", "pop"] * config.n_layers + ["pop"]


def test_the_model_checks_a_drawing_mapping_by_its_shapes_without_drawing():
    from lumi.formats.synthetic import DeviceWeights

    class Counting(DeviceWeights):
        drawn = 0

        def __getitem__(self, name):
            Counting.drawn += 1
            return super().__getitem__(name)

    config = PRESETS["stories260K"]
    weights = Counting(config, FAKE)
    Model(config, weights, device=FAKE, gpu_layers=-1)
    assert Counting.drawn == len(config.tensor_shapes())  # each tensor once, for the model itself
    wrong = Counting(config, FAKE)
    wrong.shapes = {**wrong.shapes, "norm": (7,)}
    with pytest.raises(lumi.LumiError, match=r"weight norm has shape \(7,\)"):
        Model(config, wrong, device=FAKE, gpu_layers=-1)
