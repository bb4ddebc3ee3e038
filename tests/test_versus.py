"""python -m lumi.bench.versus: the plumbing, with a stand-in for llama2.c's runomp (no C here).

The stand-in prints what runomp prints (the greedy ids, then "achieved tok/s" on stderr) from lumi's
own greedy ids, so every id agrees; the real comparison is measured, not tested (docs/performance.md).
"""

from __future__ import annotations

import json
import sys

from lumi.bench import versus


def test_versus_table_from_a_stand_in(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LUMI_CACHE_DIR", str(tmp_path / "cache"))
    fake = tmp_path / "runomp"
    fake.write_text(f"""#!{sys.executable}
import json, subprocess, sys
out = subprocess.run([{sys.executable!r}, "-m", "lumi", "generate", sys.argv[1], "--prompt-ids", "1", "-n", sys.argv[2],
                      "--ignore-eos", "--json"], capture_output=True, text=True, check=True).stdout
print(" ".join(map(str, json.loads(out)["generated_ids"])))
print("achieved tok/s: 1000.0", file=sys.stderr)
""")
    fake.chmod(0o755)
    out = tmp_path / "rows.json"
    code = versus.main(["--llama2c", str(fake), "--models", "stories260K", "--threads", "1", "--rounds", "2",
                        "--steps", "12", "--engines", "llama2.c,numpy", "--json", str(out)])
    assert code == 0
    table = capsys.readouterr().out
    assert "| stories260K | 1 | 12 | 1000.0 |" in table
    assert "numpy 12/12" in table
    rows = json.loads(out.read_text())
    assert len(rows[0]["samples"]["numpy"]) == 2 and rows[0]["ratio"]["llama2.c"] == 1.0
    assert (tmp_path / "cache" / "versus" / "stories260K-seed0.bin").exists()


def test_versus_refuses_a_missing_binary(tmp_path, capsys):
    try:
        versus.main(["--llama2c", str(tmp_path / "nothing")])
    except SystemExit as e:
        assert e.code == 2
    assert "not an executable" in capsys.readouterr().err
