"""The command line: output formats, one-line errors with exit status 2, Ctrl-C."""

import json
import os
import select
import signal
import subprocess
import sys
import time

import pytest
from conftest import asset

import lumi
from lumi.cli import main
from lumi.formats.llama2c import write_llama2c
from lumi.formats.synthetic import synthetic_weights

STATS = ["prefill_tokens", "prefill_s", "prefill_tokens_per_s", "decode_tokens", "decode_s", "decode_s_per_token",
         "decode_tokens_per_s", "decode_path"]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_json_output(capsys):
    code, out, err = run(capsys, "generate", "synthetic:stories260K", "--prompt-ids", "1,5,9", "-n", "12",
                         "--ignore-eos", "--json")
    assert code == 0 and err == ""
    result = json.loads(out)
    assert result["prompt_ids"] == [1, 5, 9] and len(result["generated_ids"]) == 12
    assert list(result["stats"]) == STATS
    assert result["stats"]["prefill_tokens"] == 3 and result["stats"]["decode_tokens"] == 11
    assert "text" not in result  # no tokenizer, no text


def test_streaming_ids_and_closing_line(capsys):
    code, out, err = run(capsys, "generate", "synthetic:stories260K", "--prompt-ids", "1", "-n", "5", "--ignore-eos")
    assert code == 0
    assert len(out.split()) == 5 and all(t.isdigit() for t in out.split())
    assert "prefill" in err and "tok/s" in err and "s/token" in err
    assert err.strip().endswith("on the numpy path")  # fp32: auto keeps the NumPy path


def test_seeded_sampling_is_reproducible(capsys):
    argv = ["generate", "synthetic:stories260K", "--prompt-ids", "1", "-n", "20", "--temperature", "1.0",
            "--top-p", "0.9", "--seed", "3", "--ignore-eos", "--json"]
    first = json.loads(run(capsys, *argv)[1])["generated_ids"]
    assert json.loads(run(capsys, *argv)[1])["generated_ids"] == first
    argv[argv.index("3")] = "4"
    assert json.loads(run(capsys, *argv)[1])["generated_ids"] != first


def test_stop_ids_end_generation(capsys):
    model = lumi.load_model("synthetic:stories260K")
    full = lumi.generate(model, [1], 40, ignore_eos=True).run().generated_ids
    stop = full[5]
    config = model.config.replace(stop_ids=(stop,))
    model.config = config
    gen = lumi.generate(model, [1], 40).run()
    assert gen.generated_ids == full[: full.index(stop) + 1] and gen.finish_reason == "stop"


@pytest.fixture
def truncated(tmp_path):
    path = tmp_path / "trunc.bin"
    write_llama2c(path, lumi.PRESETS["stories260K"], synthetic_weights(lumi.PRESETS["stories260K"]))
    path.write_bytes(path.read_bytes()[:5000])
    return str(path)


ERRORS = [
    (["--prompt-ids", "1", "--temperature", "-1"], "--temperature"),
    (["--prompt-ids", "1", "--top-p", "0"], "--top-p"),
    (["--prompt", "Once upon a time"], "--prompt"),
    (["--prompt-ids", "1,x"], "--prompt-ids"),
    (["--prompt-ids", "1,999"], "out of range"),
    (["--prompt-ids", "1,2,3,4,5", "--max-seq-len", "4"], "longer than the context"),
    (["--prompt-ids", "1", "--max-seq-len", "100000"], "--max-seq-len"),
    (["--prompt-ids", "1", "-n", "600"], "-n"),
    (["--prompt-ids", "1", "--top-k", "abc"], "--top-k"),
    ([], "one of the arguments"),
]


@pytest.mark.parametrize("extra, expected", ERRORS, ids=[e[1] for e in ERRORS])
def test_bad_options_give_one_line_and_exit_2(capsys, extra, expected):
    code, out, err = run_catching(capsys, "generate", "synthetic:stories260K", *extra)
    assert code == 2
    assert err.count("\n") == 1 and expected in err, err


def run_catching(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse's own errors exit from inside parse_args
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_bad_models(capsys, tmp_path, truncated):
    for spec, expected in [(str(tmp_path / "nope.bin"), "no such file"), (truncated, "truncated"),
                           ("synthetic:gpt5", "unknown preset"), ("synthetic:stories15M?sede=1", "unknown option")]:
        code, out, err = run(capsys, "generate", spec, "--prompt-ids", "1")
        assert code == 2 and err.count("\n") == 1 and expected in err, err


def test_tokenizer_beside_checkpoint_with_other_vocabulary_is_ignored(capsys, assets):
    checkpoint = asset(assets, "models/stories260K.bin")
    code, out, err = run(capsys, "generate", str(checkpoint), "--prompt-ids", "1", "-n", "4", "--ignore-eos")
    assert code == 0
    assert "warning" in err and "32000" in err and "512" in err
    assert len(out.split()) == 4


def test_explicit_tokenizer_with_other_vocabulary_is_an_error(capsys, assets):
    checkpoint = asset(assets, "models/stories260K.bin")
    tokenizer = asset(assets, "models/tokenizer.model")
    code, out, err = run(capsys, "generate", str(checkpoint), "--tokenizer", str(tokenizer), "--prompt", "Hi")
    assert code == 2 and "--tokenizer" in err and err.count("\n") == 1


def test_text_prompt_with_tokenizer_streams_text(capsys, assets, tmp_path):
    tokenizer = asset(assets, "models/tokenizer.model")
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text("Once upon a time", encoding="utf-8")
    code, out, err = run(capsys, "generate", "synthetic:stories15M", "--tokenizer", str(tokenizer),
                         "--prompt-file", str(prompt_file), "-n", "8", "--ignore-eos", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["prompt_ids"][0] == 1 and len(result["prompt_ids"]) > 2
    assert isinstance(result["text"], str)
    code, out, err = run(capsys, "generate", "synthetic:stories15M", "--tokenizer", str(tokenizer),
                         "--prompt", "Once upon a time", "-n", "8", "--ignore-eos")
    assert code == 0 and out.strip() == result["text"].strip()


def _lumi(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "lumi", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kwargs)


def test_version():
    proc = _lumi("--version")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and out.strip() == f"lumi {lumi.__version__}"


@pytest.mark.skipif(os.name != "posix", reason="sends SIGINT")
def test_ctrl_c_stops_and_still_prints_the_closing_line():
    proc = _lumi("generate", "synthetic:stories110M", "--prompt-ids", "1", "-n", "1000", "--ignore-eos")
    deadline, seen = time.time() + 60, b""
    while time.time() < deadline and len(seen.split()) < 3:  # wait until tokens stream out
        if select.select([proc.stdout], [], [], 0.1)[0]:
            seen += os.read(proc.stdout.fileno(), 4096)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "interrupted" in err and "tok/s" in err and "Traceback" not in err


def test_info_describes_without_running(capsys, tmp_path):
    path = tmp_path / "m.bin"
    write_llama2c(path, lumi.PRESETS["stories260K"], synthetic_weights(lumi.PRESETS["stories260K"]))
    code, out, err = run(capsys, "info", str(path), "--dtype", "bf16", "--json")
    assert code == 0
    info = json.loads(out)
    assert info["parameters"] == lumi.PRESETS["stories260K"].n_params()
    assert info["stored_bytes_by_dtype"] == {"float32": 4 * info["parameters"]}
    assert info["weight_bytes"] < 0.6 * 4 * info["parameters"] and "bf16" in info["widening"]
    assert "bf16-numba-fused" in info["fused"] or info["fused"].startswith("unavailable: numba is not installed")
    code, out, err = run(capsys, "info", "synthetic:stories260K", "--dtype", "int8")
    assert "5 int8 matrices not 32 wide stay on the NumPy path" in out or "unavailable" in out  # w2 is 172 wide
    code, out, err = run(capsys, "info", "synthetic:llama3-8B", "--dtype", "int8")
    assert code == 0 and "128256" in out and "8.03 B" in out
    code, out, err = run(capsys, "info", str(tmp_path / "absent.bin"))
    assert code == 2 and "no such file" in err


def test_threads_option(capsys):
    code, out, err = run(capsys, "generate", "synthetic:stories260K", "--prompt-ids", "1", "-n", "4", "--threads", "1",
                         "--ignore-eos", "--json")
    assert code == 0 and len(json.loads(out)["generated_ids"]) == 4
    code, out, err = run(capsys, "generate", "synthetic:stories260K", "--prompt-ids", "1", "--threads", "0")
    assert code == 2 and "--threads" in err
