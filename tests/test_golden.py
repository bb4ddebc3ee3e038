"""lumi against llama2.c's run.c on the real stories260K checkpoint (../shared/golden)."""

import json

import numpy as np
import pytest
from conftest import asset

import lumi
from lumi.cli import main

TOL = 5e-4  # two correct float32 implementations differ by up to 1.3e-4; a bug shows as 1e-2 or more


@pytest.fixture(scope="module")
def golden(assets):
    ids = json.loads(asset(assets, "golden/stories260K_greedy.json").read_text())["generated_ids"]
    data = np.load(asset(assets, "golden/stories260K_greedy.npz"))
    return ids, data["input_ids"], data["logits"]


@pytest.fixture(scope="module")
def model(assets):
    return lumi.load_model(asset(assets, "models/stories260K.bin"))


def test_cli_greedy_ids_match_run_c(assets, golden, capsys):
    checkpoint = asset(assets, "models/stories260K.bin")
    code = main(["generate", str(checkpoint), "--prompt-ids", "1", "-n", "256", "--temperature", "0",
                 "--ignore-eos", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["prompt_ids"] == [1]
    assert out["generated_ids"] == golden[0]
    assert out["stats"]["decode_tokens"] == 255


def test_logits_token_by_token(model, golden):
    _, input_ids, expected = golden
    model.reset()
    logits = np.stack([model.forward(input_ids[i : i + 1], i)[0] for i in range(len(input_ids))])
    assert logits.dtype == np.float32
    assert np.abs(logits - expected).max() < TOL


def test_logits_prefilled_at_once(model, golden):
    _, input_ids, expected = golden
    model.reset()
    logits = model.forward(input_ids, 0)
    assert logits.shape == expected.shape and logits.dtype == np.float32
    assert np.abs(logits - expected).max() < TOL


def test_logits_prefill_then_decode(model, golden):
    """Half the inputs prefilled, the rest one by one through the cache."""
    _, input_ids, expected = golden
    model.reset()
    first = model.forward(input_ids[:100], 0)
    rest = [model.forward(input_ids[i : i + 1], i)[0] for i in range(100, len(input_ids))]
    assert np.abs(np.concatenate([first, np.stack(rest)]) - expected).max() < TOL


def test_generate_api_matches(model, golden):
    gen = lumi.generate(model, [1], 256, ignore_eos=True).run()
    assert gen.generated_ids == golden[0]
    assert gen.finish_reason == "length"
