"""A greedy decode step replayed as one CUDA graph."""

from __future__ import annotations

import weakref

import numpy as np


class StepGraph:
    """A greedy decode step of a model held wholly on one GPU, captured into a CUDA graph once and replayed.

    Eagerly, a 7B step is about 350 launches, each paying Python's and the
    driver's time; replayed, it is one. The step reads its token and position
    from device memory and leaves the chosen token (argmax, int32) where the
    next step reads it, so steady greedy decoding sends nothing up and brings
    4 bytes down. The first call runs eagerly (compiling every kernel and
    filling this graph's own memory pool); the second is captured and replayed.
    The step's temporaries come from that pool, which only this graph uses,
    so no other array ever lands in memory the graph writes.

    One step ahead: since the next step's input is already on the device,
    each call also launches the step after it before waiting for its own
    token, so the GPU works through the host's turnaround (the token's trip
    down, the caller's bookkeeping, the next launch) instead of idling. The
    next call takes that step's token if it asks for exactly that step (the
    token just returned, the next position, and no other forward pass of the
    model in between); otherwise the step ahead is discarded: it wrote only
    the cache entry of a position no live context reads yet, and the
    position and token are sent up again as after any jump.
    """

    lookahead = True  # launch the next step before waiting (False: one step at a time, for comparison)

    def __init__(self, model):
        self._model = weakref.ref(model)  # the model owns this graph: no cycle keeps its device memory alive
        self.device = model.head
        cp = self.device.xp
        self.stream = cp.cuda.Stream()  # a blocking stream: ordered after the default stream's work (prompts)
        self.pool = cp.cuda.MemoryPool()
        self.token = self.device.to_device(np.zeros(1, dtype=np.int32))
        self.token_host = None  # what self.token holds, as far as the host knows (None: a step ahead changed it)
        self.graph = None
        self.warm = False
        self.ahead = None  # the step launched ahead: (position, its input token, the model's passes then, slot, event)
        # page-locked, so each token's copy down is asynchronous (``cupy_device`` gives a GPU its ``Staging``)
        self._slots = [self.device.staging.pinned((1,), np.int32) for _ in range(2)]
        self._slot = 0
        self.hits = 0  # calls answered by the step launched ahead

    @property
    def model(self):
        return self._model()

    def _step(self, pos: int) -> None:
        logits = self.model._last_logits(self.token, pos, tokens_on_device=True)
        self.token[...] = self.device.xp.argmax(logits)

    def _capture(self, pos: int):
        self.stream.begin_capture()
        try:
            self._step(pos)
        finally:
            graph = self.stream.end_capture()
        return graph

    def _replay(self) -> None:
        self.graph.launch(self.stream)

    def _token_down(self):
        """Enqueue the chosen token's copy down (no wait): (its host slot, the event after it)."""
        slot = self._slots[self._slot]
        self._slot ^= 1
        return slot, self.device.staging.copy_down(self.token, slot, self.stream)

    def drain(self) -> None:
        """Wait for whatever this graph's stream still runs (a step ahead), before its memory goes."""
        self.stream.synchronize()
        self.ahead = None

    def run(self, token: int, pos: int) -> int:
        cp, model = self.device.xp, self.model
        position = model.positions[self.device]
        with cp.cuda.using_allocator(self.pool.malloc), self.stream, model._range("graph step at", pos):
            ahead, self.ahead = self.ahead, None
            if ahead is not None and ahead[:3] == (pos, token, model.passes):
                slot, event = ahead[3:]
                self.hits += 1
            else:
                if token != self.token_host:
                    self.token[...] = self.device.to_device(np.array([token], dtype=np.int32))
                position.at(pos)
                if self.graph is None and self.warm:
                    try:
                        self.graph = self._capture(pos)
                    finally:
                        position.host = pos  # the capture ran nothing: the step happens at the launch below
                if self.graph is not None:
                    self._replay()
                    position.host += 1
                else:
                    self._step(pos)
                    self.warm = True
                slot, event = self._token_down()
            if self.lookahead and self.graph is not None and pos + 1 < model.max_seq_len:  # launched before waiting
                self._replay()
                position.host += 1
                self.ahead = (pos + 1, None, model.passes, *self._token_down())
            event.synchronize()
            chosen = int(slot[0])
            if self.ahead is not None:
                self.ahead = (pos + 1, chosen, *self.ahead[2:])  # its input: the token chosen here
            self.token_host = None if self.ahead is not None else chosen
        return chosen
