"""Generation: prefill the prompt, then decode one token at a time.

``generate`` returns a ``Generation``: iterate it to stream ids as they are
made (the CLI does), or call ``run()`` to finish. Its ``stats`` are kept up to
date token by token, so a caller interrupted midway (Ctrl-C) still has them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .errors import UsageError
from .model import Model
from .sampler import SamplingParams


@dataclass
class Stats:
    """Timings of one generation; the names are shared with ``lumi bench``."""

    prefill_tokens: int = 0
    prefill_s: float = 0.0  # prompt forward pass and first sample: the time to first token
    decode_tokens: int = 0  # tokens made by single-token decode steps
    # wall time from the first decode step's start to the last one's end, with whatever consumes the tokens in
    # between: a GPU step launched ahead (``cuda.StepGraph``) runs during it, so only the wall time is a token's cost
    decode_s: float = 0.0
    decode_path: str | None = None  # what ran the decode steps (``Model.decode_path``): numpy, numba, a GPU's step

    @property
    def prefill_tokens_per_s(self) -> float | None:
        return self.prefill_tokens / self.prefill_s if self.prefill_s > 0 else None

    @property
    def decode_s_per_token(self) -> float | None:
        return self.decode_s / self.decode_tokens if self.decode_tokens else None

    @property
    def decode_tokens_per_s(self) -> float | None:
        return self.decode_tokens / self.decode_s if self.decode_s > 0 else None

    def as_dict(self) -> dict:
        return {
            "prefill_tokens": self.prefill_tokens,
            "prefill_s": self.prefill_s,
            "prefill_tokens_per_s": self.prefill_tokens_per_s,
            "decode_tokens": self.decode_tokens,
            "decode_s": self.decode_s,
            "decode_s_per_token": self.decode_s_per_token,
            "decode_tokens_per_s": self.decode_tokens_per_s,
            "decode_path": self.decode_path,
        }

    def summary(self) -> str:
        fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
        return (
            f"prefill {self.prefill_tokens} tok at {fmt(self.prefill_tokens_per_s, '.1f')} tok/s, "
            f"decode {self.decode_tokens} tok at {fmt(self.decode_tokens_per_s, '.1f')} tok/s "
            f"({fmt(self.decode_s_per_token, '.4f')} s/token)"
            + (f" on the {self.decode_path} path" if self.decode_path and self.decode_tokens else "")
        )


class Generation:
    """One prompt's generation; iterate for ids, or ``run()`` to completion."""

    def __init__(self, model: Model, prompt_ids, max_new_tokens: int, sampling: SamplingParams,
                 rng: np.random.Generator, stop_ids: frozenset[int], start_pos: int = 0):
        self.model = model
        self.start_pos = start_pos
        self.prompt_ids = [int(t) for t in prompt_ids]
        self.max_new_tokens = max_new_tokens
        self.sampling = sampling
        self.rng = rng
        self.stop_ids = stop_ids
        self.generated_ids: list[int] = []
        self.stats = Stats()
        self.finish_reason: str | None = None  # "length" | "stop" once done

    def __iter__(self):
        model, P = self.model, self.start_pos + len(self.prompt_ids)  # P: the first position after the prompt
        if self.max_new_tokens == 0:
            self.finish_reason = "length"
            return
        t0 = time.perf_counter()
        token = model.next_token(self.prompt_ids, self.start_pos, self.sampling, self.rng)
        self.stats.prefill_tokens, self.stats.prefill_s = len(self.prompt_ids), time.perf_counter() - t0
        with model.decoding():
            start = None
            try:
                for pos in range(P, P + self.max_new_tokens):
                    self.generated_ids.append(token)
                    yield token
                    if token in self.stop_ids:
                        self.finish_reason = "stop"
                        return
                    if pos == P + self.max_new_tokens - 1:
                        break
                    start = time.perf_counter() if start is None else start
                    token = model.next_token([token], pos, self.sampling, self.rng)
                    self.stats.decode_s = time.perf_counter() - start
                    self.stats.decode_tokens += 1
            finally:  # also when the caller stops early (Ctrl-C, close())
                self.stats.decode_path = model.decode_path()
        self.finish_reason = "length"

    def run(self) -> Generation:
        for _ in self:
            pass
        return self


def generate(model: Model, prompt_ids, max_new_tokens: int = 256, *, sampling: SamplingParams | None = None,
             seed: int | None = None, ignore_eos: bool = False, start_pos: int = 0,
             rng: np.random.Generator | None = None, stop_ids=None) -> Generation:
    """Generate up to ``max_new_tokens`` after ``prompt_ids``; stops at the model's stop ids unless ``ignore_eos``.

    The prompt goes at ``start_pos`` (a chat continues its context there, with the
    KV cache of the earlier turns kept); it and every generated token but the last
    must fit the model's context. ``rng`` (else one seeded with ``seed``) drives
    sampling; ``stop_ids`` overrides the model's own.
    """
    prompt_ids = [int(t) for t in prompt_ids]
    V, S = model.config.vocab_size, model.max_seq_len - start_pos
    if not prompt_ids:
        raise UsageError("prompt", "is empty: give at least one token (e.g. BOS)")
    bad = [t for t in prompt_ids if not 0 <= t < V]
    if bad:
        raise UsageError("prompt", f"token id {bad[0]} is out of range for a vocabulary of {V}")
    if max_new_tokens < 0:
        raise UsageError("-n", f"must be >= 0, got {max_new_tokens}")
    context = f"the context of {S} tokens" if not start_pos else f"the {S} positions left in the context"
    if len(prompt_ids) > S:
        raise UsageError("prompt", f"has {len(prompt_ids)} tokens, longer than {context}")
    if max_new_tokens and len(prompt_ids) + max_new_tokens - 1 > S:
        raise UsageError("-n", f"{len(prompt_ids)} prompt tokens + {max_new_tokens} new ones exceed {context} "
                               f"(at most {S - len(prompt_ids) + 1} new ones fit)")
    stops = frozenset() if ignore_eos else frozenset(model.config.stop_ids if stop_ids is None else stop_ids)
    return Generation(model, prompt_ids, max_new_tokens, sampling or SamplingParams(),
                      rng if rng is not None else np.random.default_rng(seed), stops, start_pos)
