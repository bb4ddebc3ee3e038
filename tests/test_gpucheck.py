"""The GPU check script runs end to end on the CPU backend (its logic, without a GPU)."""

import json

from conftest import ASSETS

from lumi.gpucheck import main


def test_gpucheck_dry_run_on_the_cpu(tmp_path):
    code = main(["--backend", "numpy", "--big", "stories260K", "--small", "stories260K", "--steps", "3",
                 "--copy-bytes", str(1 << 20), "--out", str(tmp_path), "--assets", str(ASSETS)])
    assert code == 0
    report = json.loads((tmp_path / "gpucheck.json").read_text())
    sections = report["sections"]
    assert "gpucheck" in (tmp_path / "gpucheck.md").read_text()
    if (ASSETS / "golden").is_dir():
        assert sections["golden"]["ok"] is True
    else:
        assert "error" in sections["golden"]
    # the counting wrapper is a device of its own, so the CPU dry run crosses a (host) boundary too
    # partial offload brings the (1, d) activation down; all on the device only the chosen id: 4 bytes
    rows = sections["transfers"]["rows"]
    assert [(r["h2d_per_step"], r["d2h_per_step"]) for r in rows] == [(0, 0), (1, 1), (1, 1)]
    assert rows[2]["d2h_bytes_per_step"] == 4
    bandwidth = sections["bandwidth"]
    assert [r["dtype"] for r in bandwidth["rows"]] == ["fp16", "bf16"] and bandwidth["copy_bytes_per_s"] > 0
    assert all(r["decode_s_per_token"] > 0 for r in bandwidth["rows"])
    assert {r["dtype"] for r in sections["offload"]["rows"]} == {"fp16", "bf16"}
    assert all("decode_s_per_token" in r for r in sections["offload"]["rows"])
