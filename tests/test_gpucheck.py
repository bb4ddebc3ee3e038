"""The GPU check script runs end to end on the CPU backend (its logic, without a GPU)."""

import json

from conftest import ASSETS

from lumi.bench.gpucheck import main


def test_gpucheck_dry_run_on_the_cpu(tmp_path):
    code = main(["--backend", "numpy", "--big", "stories260K", "--small", "stories260K", "--steps", "3",
                 "--copy-bytes", str(1 << 20), "--dtypes", "fp16,bf16", "--out", str(tmp_path), "--assets", str(ASSETS)])
    assert code == 0
    report = json.loads((tmp_path / "gpucheck.json").read_text())
    sections = report["sections"]
    assert "gpucheck" in (tmp_path / "gpucheck.md").read_text()
    if (ASSETS / "golden").is_dir():
        assert sections["golden"]["ok"] is True
    else:
        assert "error" in sections["golden"]
    # the counting wrapper is a device of its own, but in host memory: a partial offload copies nothing; all on
    # the "device", the token goes up and only the chosen id comes down: 4 bytes
    rows = sections["transfers"]["rows"]
    assert [(r["h2d_per_step"], r["d2h_per_step"]) for r in rows] == [(0, 0), (0, 0), (1, 1), (1, 1)]
    assert rows[2]["d2h_bytes_per_step"] == rows[3]["d2h_bytes_per_step"] == 4
    assert not any(r["cuda_graph"] for r in rows)  # no graphs on the CPU
    bandwidth = sections["bandwidth"]
    assert [r["dtype"] for r in bandwidth["rows"]] == ["fp16", "bf16"] and bandwidth["copy_bytes_per_s"] > 0
    assert all(r["decode_s_per_token"] > 0 and r["prefill_tokens_per_s"] > 0 for r in bandwidth["rows"])
    rows = sections["offload"]["rows"]
    assert {r["dtype"] for r in rows} == {"fp16", "bf16", "fp32"}
    assert all("decode_s_per_token" in r for r in rows)
    # stories260K has 5 layers: 0, and the most that fit (all 5, with no pool limit on the CPU); fp32 only the latter
    assert [(r["dtype"], r["gpu_layers"], r["most_that_fit"]) for r in rows] == [
        ("fp16", 0, False), ("fp16", 5, True), ("bf16", 0, False), ("bf16", 5, True), ("fp32", 5, True)]


def test_the_kernel_checks_pass_on_the_emulated_gpu():
    """The ``kernels`` section's comparisons, run against the NumPy emulations of lumi's kernels (``fake_cuda``)."""
    from fake_cuda import CUDA_FAKE

    from lumi.bench.gpucheck import kernels

    section = kernels(CUDA_FAKE)
    assert section["ok"] and len(section["rows"]) > 30
    assert {r["kernel"].split()[0] for r in section["rows"]} == {"gemv", "gemv+residual", "rmsnorm", "rope", "store_kv",
                                                                  "advance", "attend", "swiglu", "gemm",
                                                                  "gemm+residual", "staging"}


def test_transfers_on_the_emulated_gpu():
    """The ``transfers`` section against the emulated GPU: a partial offload sends the (1, d) activation up and
    brings it down once a step, through the page-locked buffers; all on the device, the token up and 4 bytes down."""
    from fake_cuda import CUDA_FAKE

    from lumi.bench.gpucheck import transfers

    rows = transfers(CUDA_FAKE, "stories260K")["rows"]
    assert [(r["gpu_layers"], r["h2d_per_step"], r["d2h_per_step"]) for r in rows[:3]] == [
        (0, 0, 0), (2, 1, 1), (-1, 1, 1)]
    # the stand-in cannot capture a graph: that step falls back, and sends its position up once more (9 in 8 steps)
    assert "cannot capture" in rows[3]["graph_error"] and rows[3]["h2d_per_step"] == 9 / 8
    assert rows[1]["d2h_bytes_per_step"] == 4 * 64 and rows[2]["d2h_bytes_per_step"] == 4
    assert not any(r["hidden_sync"] for r in rows)


def test_crossing_times_on_the_emulated_gpu():
    from fake_cuda import CUDA_FAKE

    from lumi.bench.gpucheck import crossing_speed

    rows = crossing_speed(CUDA_FAKE, 64, repeats=2)
    assert [r["tokens"] for r in rows] == [1, 128] and rows[1]["bytes"] == 128 * 64 * 4
    assert all(r["pageable_round_trip_us"] > 0 and r["staged_round_trip_us"] > 0 for r in rows)


def test_the_bandwidth_section_on_the_emulated_gpu():
    """Its runs (graphs, one step at a time, eager, array functions) and the prompt speeds, GemmEx against widened
    for 16-bit weights; the stand-in cannot capture, so its graph runs record why and decode eagerly."""
    from fake_cuda import CUDA_FAKE

    from lumi.bench.gpucheck import bandwidth

    rows = bandwidth(CUDA_FAKE, "stories260K", ["fp16", "int8"], 3, 1 << 20, prompt_tokens=16)["rows"]
    assert [(r["dtype"], r["mode"]) for r in rows] == [
        ("fp16", "lumi-kernels"), ("int8", "lumi-kernels"), ("fp16", "lumi-kernels (one step at a time)"),
        ("fp16", "lumi-kernels"), ("fp16", "array-functions")]
    assert all("cannot capture" in r["graph_error"] for r in rows[:3]) and rows[3]["graph_error"] is None
    assert rows[0]["prefill_tokens_per_s"] > 0 and rows[0]["prefill_tokens_per_s_widened"] > 0
    assert "prefill_tokens_per_s_widened" not in rows[1]  # int8 prompts have one path
    assert all(r["decode_s_per_token"] > 0 for r in rows)
