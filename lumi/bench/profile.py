"""Where a decode step's time goes: per kind of operation, sampling, and Python between them.

``profile_decode`` times each operation of one model through its ``ops``
table (the model's own, so nothing global changes and an unprofiled model
pays nothing), plus sampling, over real decode steps. "python" is what is
left of each step: interpreter time between the operations. Layers run in
one fused call (``fused.layers``, ``--kernels numba``) time their operations
themselves, in CPU cycles, converted at the cycle counter's rate measured over the
same steps; what such a call spends outside them (its dispatch) is "python".
"""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np

from ..backends import numba as fused
from ..model import Model
from ..model.ops import OPS
from ..sampler import SamplingParams, sample

FUSED = ("block", "step")  # fused calls, which time their operations themselves (``fused.layers``'s clock)
KINDS = (*(kind for kind in OPS if kind not in FUSED), "sampling", "python")


class _Timed:
    """Wraps a model's ops with timers for the duration of a ``with`` block."""

    def __init__(self, model: Model):
        self.model = model
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def _wrap(self, kind: str, func):
        seconds, calls, clock = self.seconds, self.calls, time.perf_counter

        def timed(*args, **kwargs):
            t0 = clock()
            result = func(*args, **kwargs)
            seconds[kind] += clock() - t0
            calls[kind] += 1
            return result

        return timed

    def _clocked(self, func):
        """A fused call (``block``, ``step``) with the clock its kernel adds each operation's cycles to."""
        clock = self.clock

        def clocked(*args):
            return func(*args, clock)

        return clocked

    def __enter__(self):
        self.saved = vars(self.model.ops).copy()
        self.clock = np.zeros(2 * len(fused.PHASES), dtype=np.int64)  # cycles, then calls, per kind
        for kind, func in self.saved.items():
            if kind not in FUSED:
                setattr(self.model.ops, kind, self._wrap(kind, func))
            elif self.model.kernels == "numba":
                setattr(self.model.ops, kind, self._clocked(func))
        return self

    def __exit__(self, *exc):
        vars(self.model.ops).update(self.saved)

    def add_clock(self, cycles_per_second: float) -> None:
        """The fused layers' operations, into the per-kind totals."""
        n = len(fused.PHASES)
        for kind, cycles, calls in zip(fused.PHASES, self.clock[:n], self.clock[n:]):
            if calls:
                self.seconds[kind] += float(cycles) / cycles_per_second
                self.calls[kind] += int(calls)


def profile_decode(model: Model, prompt_ids, steps: int, sampling: SamplingParams | None = None) -> dict:
    """Per-kind seconds per decoded token over ``steps`` decode steps after an untimed prefill."""
    sampling = sampling or SamplingParams()
    rng = np.random.default_rng(0)
    model.reset()
    token = sample(model.prefill(np.asarray(prompt_ids, dtype=np.int32), 0), sampling, rng)
    total = 0.0
    counter = fused.cycle_counter() if model.kernels == "numba" else None  # the fused layers' clock
    with _Timed(model) as timed, model.decoding():
        t_start, c_start = time.perf_counter(), counter() if counter else 0
        for pos in range(len(prompt_ids), len(prompt_ids) + steps):
            t0 = time.perf_counter()
            logits = model.decode(token, pos)
            t1 = time.perf_counter()
            token = sample(logits, sampling, rng)
            t2 = time.perf_counter()
            timed.seconds["sampling"] += t2 - t1
            timed.calls["sampling"] += 1
            total += t2 - t0
        if counter:
            timed.add_clock((counter() - c_start) / (time.perf_counter() - t_start))
    seconds = dict(timed.seconds)
    seconds["python"] = total - sum(seconds.values())
    return {
        "decode_tokens": steps,
        "s_per_token": total / steps,
        "ops": {kind: {"s_per_token": seconds.get(kind, 0.0) / steps,
                       "fraction": seconds.get(kind, 0.0) / total,
                       "calls_per_token": timed.calls.get(kind, 0) / steps} for kind in KINDS},
    }


def render(profile: dict, title: str) -> str:
    lines = [f"{title}: {profile['s_per_token'] * 1e3:.3f} ms per decode step over {profile['decode_tokens']} steps",
             f"  {'op':<11} {'ms/token':>9} {'share':>7} {'calls/token':>12}"]
    for kind, row in sorted(profile["ops"].items(), key=lambda kv: -kv[1]["s_per_token"]):
        lines.append(f"  {kind:<11} {row['s_per_token'] * 1e3:>9.4f} {row['fraction']:>7.1%} "
                     f"{row['calls_per_token']:>12.0f}")
    return "\n".join(lines) + "\n"
