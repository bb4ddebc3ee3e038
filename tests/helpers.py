"""Small helpers shared by tests: synthetic models and greedy runs."""

from __future__ import annotations

import numpy as np

from lumi.config import PRESETS
from lumi.formats.synthetic import synthetic_weights
from lumi.model import Model


def synthetic_model(preset: str = "stories260K", seed: int = 0, **config_changes) -> Model:
    config = PRESETS[preset].replace(**config_changes)
    return Model(config, synthetic_weights(config, seed))


def greedy(model: Model, prompt, steps: int, *, prefill: bool = True):
    """Greedy ids, the logits that chose them (steps, V), and the smallest top-1/top-2 margin.

    ``prefill=False`` feeds the prompt one token at a time through the cache.
    """
    model.reset()
    prompt = np.asarray(prompt, dtype=np.int32)
    if prefill:
        logits = model.prefill(prompt, 0)
    else:
        for pos, token in enumerate(prompt):
            logits = model.decode(int(token), pos)
    ids, all_logits, margin = [], [], np.inf
    for step in range(steps):
        top2 = np.partition(logits, -2)[-2:]
        margin = min(margin, float(top2[1] - top2[0]))
        token = int(np.argmax(logits))
        ids.append(token)
        all_logits.append(logits)
        if step < steps - 1:
            logits = model.decode(token, len(prompt) + step)
    return ids, np.stack(all_logits), margin
