"""The benchmark harness: config schema errors, `lumi bench` output, whole-or-nothing files."""

import json
import os

import pytest

from lumi.bench.config import ConfigError, load_config, shipped_configs
from lumi.bench.report import write_atomic
from lumi.cli import main

TINY = """\
name: tiny
purpose: tests
model: "synthetic:stories260K?seed=1"
threads: [1]
workload: {prompt_tokens: [8, 16], gen_tokens: 6, warmup: 0, repetitions: 2}
tolerance: 0.2
"""


@pytest.mark.parametrize("path", shipped_configs(), ids=lambda p: p.stem)
def test_every_shipped_config_is_valid_and_named_after_its_file(path):
    cfg = load_config(path)
    assert cfg.name == path.stem and cfg.purpose and cfg.points()


def test_shipped_configs_cover_the_required_runs():
    names = {p.stem for p in shipped_configs()}
    for size in ("stories260K", "stories15M", "stories110M", "tinyllama-1.1B"):
        assert {f"{size}-fp32", f"{size}-bf16"} <= names
    assert {"default", "llama2-7B-bf16", "llama2-7B-fp16-gpu-all", "llama2-7B-bf16-gpu-all",
            "llama2-7B-fp16-gpu20", "llama2-7B-bf16-gpu20"} <= names


def test_axes_make_a_cross_product(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text(TINY.replace("threads: [1]", "threads: [1, 2]"))
    points = load_config(path).points()
    assert [(p.prompt_tokens, p.threads) for p in points] == [(8, 1), (8, 2), (16, 1), (16, 2)]
    assert points[0].test == "pp8+tg6"


BAD = {
    "unknown key": (TINY + "colour: red\n", "colour", "unknown key"),
    "unknown workload key": (TINY.replace("warmup: 0", "warmpu: 0"), "workload.warmpu", "unknown key"),
    "wrong type": (TINY.replace("threads: [1]", "threads: two"), "threads", "expected an integer"),
    "negative count": (TINY.replace("repetitions: 2", "repetitions: -1"), "workload.repetitions", ">= 1"),
    "zero tokens": (TINY.replace("gen_tokens: 6", "gen_tokens: 0"), "workload.gen_tokens", ">= 1"),
    "missing model file": (TINY.replace('"synthetic:stories260K?seed=1"', "nowhere.bin"), "model", "no such"),
    "bad backend": (TINY + "backend: tpu\n", "backend", "numpy, cupy"),
    "bad dtype": (TINY + "dtype: fp8\n", "dtype", "fp32"),
    "gpu layers on numpy": (TINY + "gpu_layers: 4\n", "gpu_layers", "numpy"),
    "missing required": (TINY.replace("purpose: tests\n", ""), "purpose", "missing"),
    "bad tolerance": (TINY.replace("tolerance: 0.2", "tolerance: -1"), "tolerance", "relative slowdown"),
    "not yaml": ("name: [unclosed\n", None, "not valid YAML"),
    "not a mapping": ("- a\n- b\n", None, "mapping"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_configs_name_the_file_and_key(tmp_path, case, capsys):
    text, key, expected = BAD[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(str(path)) and expected in message, message
    if key:
        assert f": {key}: " in message
    assert main(["bench", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err


def test_missing_config(tmp_path, capsys):
    assert main(["bench", str(tmp_path / "absent.yaml")]) == 2
    assert "no such config file" in capsys.readouterr().err


def test_a_cupy_config_without_cupy(tmp_path, capsys, without_cupy):
    path = tmp_path / "gpu.yaml"
    path.write_text(TINY + "backend: cupy\n")
    assert main(["bench", str(path)]) == 2
    err = capsys.readouterr().err
    assert "gpu.yaml: backend: cupy: CuPy is not installed" in err and err.count("\n") == 1


def test_a_cupy_config_runs_each_gpu_layers_point_on_the_device(tmp_path, monkeypatch):
    """With a CuPy-like stand-in for the GPU: one model placement per point, the same answer on every one."""
    from fake_device import FAKE

    import lumi.backends
    from lumi.bench.runner import measure_config

    real = lumi.backends.get_device
    monkeypatch.setattr(lumi.backends, "get_device", lambda backend: FAKE if backend == "cupy" else real(backend))
    monkeypatch.setattr("lumi.bench.env.copy_bandwidth", lambda device, nbytes=0: 1e12)  # no GPU clock here
    path = tmp_path / "gpu.yaml"
    path.write_text(TINY.replace("prompt_tokens: [8, 16]", "prompt_tokens: 8")
                    + "backend: cupy\ndtype: bf16\ngpu_layers: [0, 2, -1]\n")
    results = measure_config(load_config(path))
    assert [(r["gpu_layers"], r["gpu_layers_resolved"], r["head_on_device"]) for r in results] == [
        (0, 0, False), (2, 2, False), (-1, 5, True)]
    assert len({r["ids_fingerprint"] for r in results}) == 1  # placement never changes the answer
    assert all(r["backend"] == "cupy" and r["device_copy_bytes_per_s"] == 1e12 for r in results)
    assert results[2]["widening"]["w13"] == "bf16-device"
    assert all(r["weights_made_on"] == "device" for r in results)  # synthetic weights drawn on the device
    # the stand-in has no kernels of lumi's: its steps compose array functions; all on the CPU, no GPU step
    assert [r["gpu_step"] for r in results] == [None, "array-functions", "array-functions"]


def test_bench_json_has_the_promised_fields(tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    out_file = tmp_path / "result.json"
    assert main(["bench", str(path), "--json", "--output", str(out_file)]) == 0
    table = capsys.readouterr().out
    assert "pp8+tg6" in table and "pp16+tg6" in table  # the table still goes to stdout
    doc = json.loads(out_file.read_text())
    assert doc["schema_version"] == 1 and doc["complete"] is True
    assert doc["env"]["lumi_version"] and doc["env"]["numpy"] and doc["env"]["cpu"]
    assert doc["bandwidth"]["1"]["gemv_bytes_per_s"] > 0 and doc["bandwidth"]["1"]["sgemm_flops_per_s"] > 0
    assert doc["bandwidth"]["1"]["gemv_matrices"] == 8  # distinct matrices in turn: 1.4 GB, not one a cache can hold
    assert len(doc["results"]) == 2
    r = doc["results"][0]
    for key in ("prefill_tokens", "prefill_s", "prefill_tokens_per_s", "decode_tokens", "decode_s",
                "decode_s_per_token", "decode_tokens_per_s", "ttft_s", "load_s", "peak_rss_bytes",
                "weight_bytes_per_token", "bandwidth_fraction", "prefill_flops_per_token", "prefill_sgemm_fraction",
                "samples", "ids_fingerprint", "split_rows"):
        assert key in r, key
    assert r["prefill_tokens"] == 8 and r["decode_tokens"] == 5 and r["threads_applied"] == 1
    assert r["split_rows"] == []  # one thread: no product splits its rows
    assert len(r["samples"]["decode_s_per_token"]) == 2
    assert r["peak_rss_bytes"] > 10 * 2**20 and 0 < r["bandwidth_fraction"] < 100
    assert 0 < r["prefill_sgemm_fraction"] < 100
    assert r["ids_fingerprint"] == doc["results"][1]["ids_fingerprint"] or r["test"] != doc["results"][1]["test"]
    for fmt in ("--csv", "--markdown"):
        assert main(["bench", str(path), fmt]) == 0
        text = capsys.readouterr().out
        assert "pp8+tg6" in text


def test_write_atomic_is_whole_or_nothing(tmp_path):
    target = tmp_path / "result.json"
    target.write_text("old")


    with pytest.raises(TypeError):
        write_atomic(target, 12345)  # fails midway, after the temporary file exists
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["result.json"]
    write_atomic(target, "new")
    assert target.read_text() == "new"


def test_a_written_result_gets_the_mode_open_would_give_it(tmp_path):
    old = os.umask(0o027)
    try:
        write_atomic(tmp_path / "r.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o640  # not mkstemp's 0600


def test_markdown_says_when_the_commit_is_unknown():
    from lumi.bench import report

    env = {"lumi_version": "0.1.0", "git_commit": None, "cpu": "x", "usable_cores": 2, "numpy": "2", "blas": []}
    text = report.markdown({"env": env, "bandwidth": {}, "results": []})
    assert "an unknown commit" in text and "None" not in text


def test_progress_numbers_warm_ups_and_repetitions_apart(tmp_path):
    from lumi.bench.config import load_config
    from lumi.bench.runner import measure_config

    path = tmp_path / "tiny.yaml"
    path.write_text(TINY.replace("warmup: 0", "warmup: 2"))
    said = []
    measure_config(load_config(path), progress=said.append)
    steps = [m.split(": ")[-1] for m in said if "pp8+tg6" in m and ("warm-up" in m or "rep" in m)]
    cfg = load_config(path)
    assert steps == [f"warm-up {i}/{cfg.warmup}" for i in range(1, cfg.warmup + 1)] + \
        [f"rep {i}/{cfg.repetitions}" for i in range(1, cfg.repetitions + 1)]


def test_bench_help_lists_the_shipped_configs_by_tier(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    out = capsys.readouterr().out
    assert "ci:" in out and "stories15M-fp32" in out and "gpu:" in out and "llama2-7B-fp16-gpu20" in out


def test_profile_accounts_for_the_whole_decode_step(tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY.replace("prompt_tokens: [8, 16]", "prompt_tokens: 8"))
    assert main(["bench", str(path), "--profile", "--json"]) == 0
    profile = json.loads(capsys.readouterr().out)["results"][0]["profile"]
    ops = profile["ops"]
    assert set(ops) == {"embed", "norm", "matmul", "rope", "cache", "attention", "activation", "sampling", "python"}
    assert sum(op["fraction"] for op in ops.values()) == pytest.approx(1.0)
    config = load_config(path)
    assert ops["matmul"]["calls_per_token"] == 4 * 5 + 1  # qkv, wo, w13, w2 per layer, and the classifier
    assert ops["sampling"]["calls_per_token"] == 1 and profile["decode_tokens"] == config.gen_tokens[0] - 1
    assert main(["bench", str(path), "--profile"]) == 0
    assert "ms per decode step" in capsys.readouterr().out


def _reference_files(tmp_path, flip: int | None = None):
    """The fp32 greedy ids of the TINY model, recorded through lumi generate; optionally one id changed."""
    import lumi

    ids = lumi.generate(lumi.load_model("synthetic:stories260K?seed=1"), [1], 12, ignore_eos=True).run().generated_ids
    if flip is not None:
        ids[flip] = (ids[flip] + 1) % 512
    (tmp_path / "ref.json").write_text(json.dumps({"prompt_ids": [1], "generated_ids": ids}))
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY.replace("prompt_tokens: [8, 16]", "prompt_tokens: 8") +
                    "reference: {ids_file: ref.json, prefix: 10}\n")
    return path


def test_results_that_reproduce_the_reference_are_valid(tmp_path, capsys):
    path = _reference_files(tmp_path)
    assert main(["bench", str(path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert result["valid"] is True and result["reference"]["agreed"] == 10


def test_a_wrong_answer_marks_the_result_invalid_everywhere(tmp_path, capsys):
    path = _reference_files(tmp_path, flip=6)  # inside the checked prefix of 10
    assert main(["bench", str(path), "--json"]) == 1
    out, err = capsys.readouterr()
    result = json.loads(out)["results"][0]
    assert result["valid"] is False and result["reference"]["agreed"] == 6
    assert "greedy ids differ from the reference" in err
    assert main(["bench", str(path)]) == 1
    assert "INVALID 6/10" in capsys.readouterr().out
    assert main(["bench", str(path), "--markdown"]) == 1
    assert "INVALID" in capsys.readouterr().out
    assert main(["bench", str(path), "--csv"]) == 1
    header, row = capsys.readouterr().out.splitlines()[:2]
    assert dict(zip(header.split(","), row.split(",")))["valid"] == "False"
    # a drift past the stated prefix is allowed (16-bit storage may legitimately change later ids)
    path = _reference_files(tmp_path, flip=11)
    assert main(["bench", str(path)]) == 0
    capsys.readouterr()


def test_bad_references_name_the_key(tmp_path):
    path = _reference_files(tmp_path)
    for text, key in (("reference: {ids_file: nowhere.json}", "reference.ids_file"),
                      ("reference: {ids_file: ref.json, prefix: 99}", "reference.prefix"),
                      ("reference: {ids_file: ref.json, extra: 1}", "reference")):
        path.write_text(TINY + text + "\n")
        with pytest.raises(ConfigError, match=f": {key}: "):
            load_config(path)


def test_a_prompts_flops_count_products_attention_and_the_last_classifier_row():
    from lumi.config import PRESETS
    from lumi.formats.synthetic import synthetic_weights
    from lumi.model import Model

    c = PRESETS["stories260K"]  # dim 64, hidden 172, 5 layers, 8 heads of 8, 4 kv heads, vocab 512
    model = Model(c, synthetic_weights(c))
    kv = c.n_kv_heads * c.head_dim
    per_layer = c.dim * (c.dim + 2 * kv) + c.dim * c.dim + 2 * c.hidden_dim * c.dim + c.dim * c.hidden_dim
    T = 10
    attention = 4 * c.n_heads * c.head_dim * (T * (T + 1) // 2)  # scores and sums over 1 + 2 + ... + T positions
    assert model.prefill_flops(T) == c.n_layers * (2 * T * per_layer + attention) + 2 * c.vocab_size * c.dim


def test_a_config_process_reports_its_own_peak_memory_not_its_parents():
    """Each config runs in a process ``subprocess`` starts by vfork and exec: getrusage's peak there counted the
    parent's peak too (the bandwidth measurement's 1.4 GB made every config report at least that)."""
    import subprocess
    import sys

    import numpy as np

    held = np.ones(300 << 20, dtype=np.uint8)  # 300 MiB resident in this process
    script = "from lumi.bench.runner import peak_rss_bytes; print(peak_rss_bytes())"
    child = int(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout)
    assert 0 < child < 200 << 20 < held.nbytes
