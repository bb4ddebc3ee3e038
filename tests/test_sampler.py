"""Sampling: greedy, temperature, top-k, top-p, and reproducibility from a seed."""

import numpy as np
import pytest

from lumi.errors import UsageError
from lumi.sampler import SamplingParams, sample

LOGITS = np.log(np.array([0.05, 0.4, 0.1, 0.3, 0.15], dtype=np.float32))  # probabilities at temperature 1


def draws(params, n=20000, seed=0):
    rng = np.random.default_rng(seed)
    return np.bincount([sample(LOGITS, params, rng) for _ in range(n)], minlength=LOGITS.size) / n


def test_greedy_is_argmax():
    assert sample(LOGITS, SamplingParams(), np.random.default_rng(0)) == 1


def test_temperature_one_follows_the_distribution():
    freq = draws(SamplingParams(temperature=1.0))
    assert np.abs(freq - np.exp(LOGITS)).max() < 0.015


def test_low_temperature_sharpens():
    freq = draws(SamplingParams(temperature=0.25), n=4000)
    assert freq[1] > 0.7


def test_top_k_keeps_only_the_k_best():
    freq = draws(SamplingParams(temperature=1.0, top_k=2))
    assert freq[[0, 2, 4]].sum() == 0
    assert abs(freq[1] - 0.4 / 0.7) < 0.015


def test_top_p_keeps_the_nucleus():
    freq = draws(SamplingParams(temperature=1.0, top_p=0.8))  # 0.4 + 0.3 + 0.15 reaches 0.8
    assert freq[[0, 2]].sum() == 0
    assert abs(freq[4] - 0.15 / 0.85) < 0.015


def test_top_k_and_top_p_together():
    freq = draws(SamplingParams(temperature=1.0, top_k=3, top_p=0.5), n=2000)  # nucleus of 0.4 + 0.3
    assert set(np.flatnonzero(freq)) == {1, 3}


def test_same_seed_same_tokens_on_a_large_vocabulary():
    logits = np.random.default_rng(1).standard_normal(32000).astype(np.float32)
    params = SamplingParams(temperature=0.9, top_p=0.95)
    a = [sample(logits, params, np.random.default_rng(42)) for _ in range(3)]
    rng1, rng2 = np.random.default_rng(7), np.random.default_rng(7)
    assert [sample(logits, params, rng1) for _ in range(50)] == [sample(logits, params, rng2) for _ in range(50)]
    assert len(set(a)) == 1


@pytest.mark.parametrize("kwargs, option", [(dict(temperature=-0.1), "--temperature"), (dict(top_k=-1), "--top-k"),
                                            (dict(top_p=0.0), "--top-p"), (dict(top_p=1.5), "--top-p"),
                                            (dict(temperature=float("nan")), "--temperature")])
def test_bad_parameters(kwargs, option):
    with pytest.raises(UsageError, match=option):
        SamplingParams(**kwargs)
