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
    assert [(r["h2d_per_step"], r["d2h_per_step"]) for r in sections["transfers"]["rows"]] == [(0, 0), (1, 1), (1, 1)]
    assert sections["bandwidth"]["decode_s_per_token"] > 0 and sections["bandwidth"]["copy_bytes_per_s"] > 0
    assert all("decode_s_per_token" in r for r in sections["offload"]["rows"])
